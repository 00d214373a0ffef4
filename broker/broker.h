/* SPDX-License-Identifier: MIT */
/* vramd internals: pools, grants, clients, the broker. */
#ifndef VRAMD_BROKER_H
#define VRAMD_BROKER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "uapi/vramd.h"

struct pool;
struct broker;

/* ---- pools ------------------------------------------------------------- */

/* A backend.  Everything above this table is backend-agnostic. */
struct pool_ops {
	const char *name;
	/* Creates size bytes (already rounded to the pool's granularity) of
	 * zeroed memory.  Returns 0 and an fd to send (the caller closes it
	 * after sending) plus a backend handle, or -errno with *why set. */
	int (*grant)(struct pool *p, uint64_t size, int *ret_fd, void **ret_handle, const char **why);
	/* Takes back a grant made by an earlier broker (REGISTER after a
	 * restart, or the fd store): checks that fd really is such memory of
	 * size bytes and makes a handle for it (release drops it).  The fd
	 * stays the caller's.  NULL: the backend cannot (-EOPNOTSUPP). */
	int (*adopt)(struct pool *p, int fd, uint64_t size, void **ret_handle, const char **why);
	/* How the broker tells that an fd is the memory of a grant it already
	 * accounts (a REGISTER of it is then a hand-over from the fd store or
	 * refused).  false: by the file's inode (each memfd is a file of its
	 * own).  true: by the open file description (kcmp KCMP_FILE), for
	 * backends whose fds all share one inode (every CUDA POSIX-fd export
	 * is a file of the driver's control device); the broker then keeps a
	 * duplicate of each grant's fd, closed when the grant is released. */
	bool fd_identity;
	/* Drops the backend handle of a grant (the client may still hold its
	 * fd and mapping until it exits). */
	void (*release)(struct pool *p, void *handle, uint64_t size);
	/* Frees the pool's private state. */
	void (*destroy)(struct pool *p);
};

struct pool {
	uint32_t index;
	uint32_t backend;        /* enum vramd_backend */
	uint32_t flags;          /* VRAMD_DEV_* */
	int32_t  numa_node;
	int32_t  ordinal;
	uint64_t total;
	/* A pool whose total is measured from free memory at start (CUDA):
	 * the most it may grow to as memory held across a broker restart is
	 * adopted (it was not free when measured).  0: total is fixed. */
	uint64_t total_max;
	uint64_t used;
	uint64_t reclaimable;
	uint64_t granularity;
	uint8_t  uuid[16];
	char     name[32];
	char     label[64];
	const struct pool_ops *ops;
	void    *priv;
};

/* Host pool ("cpu") of capacity bytes: memfd, hugetlb when the system has
 * huge pages reserved, NUMA-bound when the machine has several nodes.  NULL
 * and errno on failure. */
struct pool *pool_memfd_new_cpu(uint64_t capacity, int numa_node);
/* Simulated GPU cuda:N of capacity bytes, memfd-backed, flagged simulated. */
struct pool *pool_memfd_new_sim(uint32_t n, uint64_t capacity);
/* Frees a pool (its ops->destroy then the struct).  NULL is fine. */
void pool_free(struct pool *p);
/* Derives a stable UUID from a string (for pools without a hardware one). */
void pool_uuid_from_string(uint8_t uuid[16], const char *s);
/* Fills a wire description of the pool. */
void pool_describe(const struct pool *p, struct vramd_device *ret);

/* CUDA pools (pool-cuda.c).  Discovers devices through the Driver API loaded
 * with dlopen; appends up to max pools to out starting at index first and
 * returns how many, or 0 with note set to why none (driver not found, no
 * devices, error text).  Never fails the broker. */
int pool_cuda_discover(struct pool **out, uint32_t max, uint32_t first, char *note, size_t note_len);

/* ---- broker ------------------------------------------------------------ */

struct broker_config {
	const char *socket_path;     /* client socket */
	const char *admin_socket;    /* admin socket, NULL: none */
	const char *state_dir;       /* quotas.json lives here, NULL: no persistence */
	const char *socket_group;    /* group of the client socket ("vram"), if it exists */
	const char *admin_group;     /* members may use admin operations (besides root) */
	const char *config_path;     /* --config FILE, re-read on reload, or NULL */
	uint64_t    sim_gpus[VRAMD_MAX_DEVICES];
	uint32_t    nsim;
	uint64_t    host_pool;       /* 0: default (half of RAM) */
	bool        no_cuda;         /* skip CUDA discovery */
	uint64_t    client_max;      /* bytes one client may hold; 0: unlimited */
	uint32_t    max_clients;
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
};

/* Fills defaults. */
void broker_config_init(struct broker_config *c);

/* Creates a broker: pools, the listening socket (unless listen_fd given),
 * epoll.  NULL and errno on failure, with a message logged. */
struct broker *broker_new(const struct broker_config *cfg);
/* Adds a pool before broker_start; the broker owns it afterwards. */
int broker_add_pool(struct broker *b, struct pool *p);
/* Serves until broker_stop() or SIGTERM/SIGINT (when signals are enabled).
 * Returns 0 or -errno. */
int broker_run(struct broker *b);
/* Runs one event-loop iteration, waiting at most timeout_ms.  For tests
 * that drive an in-process broker. */
int broker_step(struct broker *b, int timeout_ms);
/* Reload (SIGHUP, admin RELOAD): re-reads the config file's limits
 * (client-max, max-clients, max-grants, reclaim-deadline-ms, verbose) and
 * the quota file.  Nothing changes on error.  0 or -errno with err set. */
int broker_reload(struct broker *b, char *err, size_t errlen);
/* Makes broker_run return. */
void broker_stop(struct broker *b);
/* Serves a connected socket as a client (tests use a socketpair).  The
 * broker takes the fd. */
int broker_adopt(struct broker *b, int fd);
/* Releases everything.  NULL is fine. */
void broker_free(struct broker *b);

/* Read-only views for tests. */
uint32_t broker_client_count(const struct broker *b);
uint64_t broker_grant_count(const struct broker *b);
uint64_t broker_protocol_errors(const struct broker *b);
struct pool *broker_pool(const struct broker *b, uint32_t index);
uint32_t broker_pool_count(const struct broker *b);

/* Logging to stderr (journald adds the time). level: 0 error, 1 info,
 * 2 debug (shown with -v). */
void broker_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern int broker_log_level;

/* Config file (INI): fills cfg from FILE; unknown keys and bad values are
 * errors naming the line.  0 or -errno with a message logged. */
int broker_config_load(struct broker_config *cfg, const char *path);
/* Applies one key=value (also what command-line options use). */
int broker_config_set(struct broker_config *cfg, const char *key, const char *value, char *err, size_t errlen);

#endif
