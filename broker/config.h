/* SPDX-License-Identifier: MIT */
/*
 * vramd's configuration: the command-line options and the INI file share
 * their keys (docs/admin.md).  Values are checked as they are set; strings
 * live as long as the process.
 */
#ifndef VRAMD_BROKER_CONFIG_H
#define VRAMD_BROKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uapi/vramd.h"

/* A size, or a share of something (ready-reserve: of each pool; ready-min-
 * free: of the memory vramd may use) when share is set. */
struct broker_amount {
	uint64_t bytes;
	uint32_t bp;             /* the share in basis points (1/100 %), 0..10000 */
	bool     share;
};

/* What amount a comes to out of whole. */
uint64_t broker_amount_of(const struct broker_amount *a, uint64_t whole);

struct broker_config {
	const char *socket_path;     /* client socket */
	const char *admin_socket;    /* admin socket, NULL: none */
	const char *state_dir;       /* quotas.json lives here, NULL: no persistence */
	const char *socket_group;    /* group of the client socket ("vram"), if it exists */
	const char *admin_group;     /* members may use admin operations (besides root) */
	const char *config_path;     /* --config FILE, re-read on reload, or NULL */
	bool        config_optional; /* config_path is the default: a missing file is no error */
	uint64_t    sim_gpus[VRAMD_MAX_DEVICES];
	uint32_t    nsim;
	uint64_t    host_pool;       /* 0: default (half of RAM) */
	bool        no_cuda;         /* skip CUDA discovery */
	uint64_t    client_max;      /* bytes one client may hold; 0: unlimited */
	uint32_t    max_clients;     /* connections on the client socket */
	uint32_t    max_clients_per_uid; /* of one uid (admins exempt) */
	uint64_t    hello_timeout_ms;    /* a connection must say HELLO by then */
	uint32_t    max_grants;      /* per client */
	uint32_t    socket_mode;     /* 0: 0666 */
	int         verbose;
	int         listen_fd;       /* already listening (socket activation), or -1 */
	int         fdstore;         /* -1 auto (on under systemd: NOTIFY_SOCKET), 0 off, 1 on */
	/* Grant fds systemd's fd store handed back at start (FDNAME=grant-...). */
	const int  *restore_fds;
	char *const *restore_names;
	uint32_t    nrestore;
	uint64_t    reclaim_deadline_ms; /* how long RECLAIM waits */
	uint64_t    cache_max;       /* bytes of shared copies per device; 0: cache_max_pct of it */
	uint32_t    cache_max_pct;   /* default 50; 0 (with cache_max 0): no shared copies */
	/* The ready reserve of each host-memory pool (docs/admin.md): populated
	 * memory kept for the next grants, refilled in the background. */
	struct broker_amount ready_reserve;  /* default 25% of each pool; 0: none */
	uint64_t    ready_refill_rate;       /* bytes/s the refill may populate; 0: no cap */
	struct broker_amount ready_min_free; /* memory the reserve leaves free (default 5%) */
};

/* Fills the defaults of an embedded broker (tests): nothing outside the
 * paths the caller sets is touched. */
void broker_config_init(struct broker_config *c);

/* The config file vramd reads when it is given none (--config), if it
 * exists; --no-config reads none. */
#ifndef VRAMD_CONFIG_DEFAULT
#define VRAMD_CONFIG_DEFAULT "/etc/vramd/vramd.conf"
#endif

/* Config file (INI): fills cfg from FILE; unknown keys and bad values are
 * errors naming the file, line and key.  0, or -errno (-ENOENT: no such
 * file, -EINVAL: it does not parse) with err set to "FILE:LINE: KEY: ...". */
int broker_config_load(struct broker_config *cfg, const char *path, char *err, size_t errlen);
/* Frees every string configurations point at: only when none is in use
 * (the fuzz target, between inputs; the broker never calls it). */
void broker_config_forget_strings(void);

/* What a reload reads: the defaults, with the running configuration's
 * config file over them when it has one (an optional file that is missing
 * now leaves the defaults, so a file created after start is read and one
 * removed is forgotten).  *ret is untouched on failure.  0 or -errno as
 * broker_config_load. */
int broker_config_reload(const struct broker_config *running, struct broker_config *ret, char *err, size_t errlen);
/* Applies one key=value (also what command-line options use).  0, or
 * -EINVAL (bad value) / -ENOENT (unknown key) / -ENOMEM with err set to a
 * sentence starting with the key. */
int broker_config_set(struct broker_config *cfg, const char *key, const char *value, char *err, size_t errlen);

#endif
