/* SPDX-License-Identifier: MIT */
/*
 * The broker's own structs, shared by its layers (broker/broker.h has the
 * layout).  Nothing here is API: main.c and the tests use broker.h.
 */
#ifndef VRAMD_BROKER_INTERNAL_H
#define VRAMD_BROKER_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "broker/config.h"
#include "broker/log.h"
#include "broker/pool.h"
#include "broker/quota.h"
#include "uapi/vramd.h"

enum ev_kind { EV_LISTEN, EV_ADMIN_LISTEN, EV_CLIENT, EV_PIDFD, EV_SIGNAL, EV_TIMER, EV_CACHE };

/* What an epoll event is about (its data.ptr). */
struct ev {
	enum ev_kind kind;
	struct client *client; /* EV_CLIENT, EV_PIDFD */
};

struct grant {
	uint64_t id;
	struct pool *pool;
	struct client *owner;
	uint64_t size;
	uint32_t flags;
	void *handle;
	int fd;                /* the fd systemd handed back (restored), or, on an
				* fd_identity pool, the grant's own fd; else -1 */
	dev_t st_dev;          /* identity of its memory (memfd inode), for REGISTER */
	ino_t st_ino;
	bool stored;           /* in systemd's fd store under fdname */
	char fdname[256];
	struct grant *next;    /* owner's list */
};

#define TXQ_MAX 8
#define ASKS_MAX 8
#define ASKED_MAX 32        /* clients one parked ALLOC asks at most */
#define LAT_RING 128        /* RECLAIM answer times kept per client */
#define ADMIN_CONN_MAX 16   /* connections on the admin socket at once */
#define ADMIN_RESERVE 8     /* admins' room on the client socket past max-clients */

/* A RECLAIM sent to a client and not yet answered. */
struct reclaim_ask {
	uint64_t id;
	uint64_t pending_id;     /* the ALLOC waiting for it */
	uint64_t sent_ns;
	uint64_t deadline_ns;
	uint64_t bytes;
	uint32_t pool;
};

/* An ALLOC parked until reclaim frees room (or its deadline passes). */
struct pending {
	uint64_t id;
	struct client *c;
	struct vramd_alloc req;
	uint64_t size;           /* rounded */
	uint64_t deadline_ns;
	uint32_t waiting;        /* RECLAIMs sent for it and not answered */
	uint64_t asked;          /* bytes asked for */
	uint32_t asked_ids[ASKED_MAX]; /* the clients asked (a short answer asks others) */
	uint32_t nasked;
	bool whole;              /* asking for whole grants now (alloc.c, ask_for) */
	struct pending *next;
};

/* A reply queued because the client's socket was full. */
/* What a shared copy is of: a file's identity (taken by the broker with
 * fstat on the fd a client passed), the device, its runs (layout and
 * conversion), and for device memory a client cannot be kept from writing
 * (CUDA), the uid whose clients alone share it. */
struct copy_key {
	dev_t st_dev;
	ino_t st_ino;
	uint64_t size;
	int64_t mtime_ns, ctime_ns;
	uint32_t device;
	uint32_t uid;            /* (uint32_t)-1: shared by every uid */
	uint32_t nruns;
	struct vramd_share_run *runs;
	uint64_t hash;           /* of all the above */
};

enum copy_state { COPY_FILLING, COPY_READY, COPY_FAILED };

/* A SHARE waiting for a copy being filled. */
struct copy_waiter {
	struct client *c;
	uint64_t seq;
	bool filler;             /* its request started the fill */
	struct copy_waiter *next;
};

/* A broker-owned, read-only copy of a checkpoint's bytes (cache.h). */
struct copy {
	uint64_t id;
	struct pool *pool;
	struct copy_key key;
	uint64_t size;           /* bytes, accounted once in pool->used */
	uint64_t *regions;       /* per run (common/layout.h) */
	int fd;                  /* the broker's own (read-write until sealed) */
	int ro_fd;               /* what clients get: read-only (a memfd reopened O_RDONLY; CUDA: the export) */
	void *handle;            /* the backend's */
	int file_fd;             /* while filling: the checkpoint */
	enum copy_state state;
	int error;               /* COPY_FAILED: -errno */
	char why[160];
	_Atomic uint64_t filled;
	_Atomic int done;        /* the fill thread finished (state to be settled) */
	_Atomic int cancel;
	void *fill;              /* while filling: cache-fill.c's state */
	uint32_t refs;           /* clients that map it */
	bool doomed;             /* dropped: no new users, evicted when the last goes */
	bool orphan;             /* re-registered after a restart without its key: never shared anew */
	uint64_t last_use_ns;
	uint64_t last_progress_ns;
	char path[256];          /* for people (readlink of the fd at creation) */
	bool stored;             /* in the fd store */
	char fdname[128];
	struct copy_waiter *waiters;
	struct copy *next;
};

/* A client's use of a copy. */
struct copy_ref {
	struct copy *copy;
	struct copy_ref *next;
};

struct txmsg {
	void *buf;
	size_t len;
	int fd;
};

struct client {
	uint32_t id;
	int fd;
	int pidfd;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	bool hello;
	bool dead;
	char name[VRAMD_NAME_MAX];
	/* A restored placeholder: the name its holder used, for quotas (name
	 * says "restored"). */
	char owner_name[VRAMD_NAME_MAX];
	struct ev ev_sock, ev_pid;
	struct grant *grants;
	uint32_t ngrants;
	uint64_t held;
	uint64_t held_dev[VRAMD_MAX_DEVICES];
	uint64_t reclaimable;
	uint64_t reclaimable_dev[VRAMD_MAX_DEVICES];
	uint32_t reclaims_answered, reclaims_missed;
	bool reclaim_late;
	uint32_t lat_us[LAT_RING]; /* the last RECLAIM answer times (a ring) */
	uint32_t nlat;             /* answers recorded in all */
	uint64_t reclaim_asked, reclaim_freed; /* bytes, in all */
	/* Fair share (fair.h): what it wants and needs at least per device
	 * (DEMAND; 0: what it holds, nothing), and its share as last computed. */
	uint64_t want_dev[VRAMD_MAX_DEVICES];
	uint64_t min_dev[VRAMD_MAX_DEVICES];
	uint64_t share_dev[VRAMD_MAX_DEVICES];
	uint64_t offered_ns[VRAMD_MAX_DEVICES]; /* when it was last sent an OFFER */
	struct copy_ref *copies;   /* shared copies it maps */
	bool waits_copy;           /* a SHARE of its waits for a fill */
	bool parked;             /* an ALLOC of its waits for reclaim */
	bool admin;              /* root or in the admin group */
	bool restored;           /* no connection: grants from the fd store, or kept after a
				    disconnect (detached), until pid re-registers or dies */
	bool via_admin;          /* connected on the admin socket */
	uint64_t evict_deadline_ns; /* evicted: disconnect if reclaimable memory remains by then */
	uint64_t hello_deadline_ns; /* disconnect if no HELLO by then */
	struct reclaim_ask asks[ASKS_MAX];
	uint32_t nasks;
	struct txmsg txq[TXQ_MAX];
	uint32_t ntx;
	struct client *next;
};

struct broker {
	struct broker_config cfg;
	int epfd;
	int listen_fd;
	bool own_listener;        /* we bound it (and unlink it at exit) */
	int admin_fd;             /* admin socket, -1: none */
	struct ev ev_admin;
	gid_t admin_gid;          /* (gid_t)-1: root only */
	struct quota_store quotas;
	bool fdstore;             /* grant fds go to systemd's fd store */
	int sigfd;
	int timerfd;
	struct ev ev_listen, ev_sig, ev_timer;
	struct pool *pools[VRAMD_MAX_DEVICES];
	uint32_t npools;
	char note[128];
	struct client *clients;   /* newest first */
	uint32_t nclients;
	uint32_t next_client_id;
	uint64_t next_grant_id;
	uint64_t next_reclaim_id;
	struct pending *pending;  /* parked ALLOCs, oldest first */
	uint64_t ngrants;
	uint64_t protocol_errors;
	uint64_t start_ns;
	uint64_t watchdog_usec;
	bool stop;
	bool shutting_down;       /* broker_free: grants are not revoked */
	/* shared copies (cache.h) */
	struct copy *copies;
	uint64_t next_copy_id;
	int cache_evfd;           /* fill threads wake the loop */
	struct ev ev_cache;
	uint64_t cache_max[VRAMD_MAX_DEVICES];
	uint64_t cache_bytes[VRAMD_MAX_DEVICES];
	uint64_t cache_inuse[VRAMD_MAX_DEVICES]; /* of cache_bytes, in copies someone maps */
	uint64_t cache_hits[VRAMD_MAX_DEVICES], cache_fills[VRAMD_MAX_DEVICES], cache_evictions[VRAMD_MAX_DEVICES];
	void *rxbuf;
};

/* The name quotas see for c: a restored placeholder's is its holder's. */
static inline const char *client_quota_name(const struct client *c)
{
	return c->restored ? c->owner_name : c->name;
}

#define CLIENT_FMT "client %u (%s, pid %d, uid %u)"
#define CLIENT_ARGS(c) (c)->id, (c)->name[0] ? (c)->name : "-", (int)(c)->pid, (unsigned)(c)->uid

#endif
