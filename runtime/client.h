/* SPDX-License-Identifier: MIT */
/* libvram internals: the broker connection and grants. */
#ifndef VRAM_RUNTIME_CLIENT_H
#define VRAM_RUNTIME_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/internal.h"
#include "uapi/vramd.h"

struct vram_grant {
	uint64_t id;
	uint64_t size;
	uint32_t device;
	uint32_t flags;
	uint32_t backend;
	void    *host;           /* mapping of a host-mappable grant */
	uint64_t dptr;           /* CUDA device address */
	void    *cuda;           /* runtime/cuda.c state */
	int      fd;             /* memfd or CUDA export, kept to re-register after a
				  * broker restart, or -1 */
	bool     shared;         /* a broker-owned read-only copy (id is the copy's): mapped
				  * read-only, given back with UNSHARE */
	bool     freeing;        /* vram_free under way: a reconnect re-registers it only
				  * if its fd is still open */
	struct vram_grant *next, *prev;
};

#define CLIENT_MAX_PENDING 16

struct vram_client {
	int fd;
	char *socket;
	uint32_t id;
	char note[128];
	uint32_t ndev;
	struct vram_device_info dev[VRAMD_MAX_DEVICES];
	uint64_t seq;
	pthread_mutex_t lock;    /* one request at a time on the socket */
	struct vram_grant *grants;
	vram_reclaim_fn reclaim_fn;
	void *reclaim_user;
	struct vramd_reclaim pending[CLIENT_MAX_PENDING]; /* unsolicited, unhandled */
	uint64_t pending_ns[CLIENT_MAX_PENDING];          /* when each came (now_ns) */
	uint32_t npending;
	vram_offer_fn offer_fn;
	void *offer_user;
	uint64_t offered[VRAMD_MAX_DEVICES]; /* the latest OFFER per device, unhandled (0: none) */
	void *rxbuf;
	char *name;
	uint32_t reconnects;     /* times the connection was re-established */
	/* The last DEMAND per device (vram_demand), said again to a broker
	 * that restarted: want 0 means none. */
	uint64_t demand_want[VRAMD_MAX_DEVICES];
	uint64_t demand_min[VRAMD_MAX_DEVICES];
	bool handling;           /* a RECLAIM handler is running (run_pending) */
	uint32_t loading;        /* reclaimable loads streaming (client_watch): RECLAIMs
				    without a handler are answered at once */
	/* while a SHARE waits for its copy: where its progress goes */
	vram_progress_fn share_progress;
	void *share_user;
	/* vram_device_prepare: per device, handles held until vram_close */
	struct cuda_dev *prepared[VRAMD_MAX_DEVICES];
	struct cuda_kernels *prepared_k[VRAMD_MAX_DEVICES];
};

/* Asks the broker for a shared read-only copy of nruns runs of the file
 * file_fd on device (SHARE), waiting while another request fills it
 * (progress(user, done, total) on the way, may be NULL), and maps it
 * read-only.  *ret_how: VRAMD_SHARE_HIT, _FILLED or _WAITED.  0, or the
 * broker's error (-EOPNOTSUPP: no copies there, -ENOSPC: the cache budget
 * is full, -ENOMEM, -EDQUOT: the caller should load privately) / -errno. */
int client_share(struct vram_client *c, uint32_t device, const struct vramd_share_run *runs, uint32_t nruns,
		 int file_fd, vram_progress_fn progress, void *user, struct vram_grant **ret, uint32_t *ret_how);

/* Waits up to ms for a message from the broker and handles it
 * (vram_dispatch); with none, answers the RECLAIMs that waited half their
 * deadline for a handler.  With the connection gone: reconnect tries
 * again (vram_dispatch's backoff), else it sleeps ms. */
int client_dispatch_wait(struct vram_client *c, int ms, bool reconnect);

/* While a long call runs in this thread (a reclaimable load streaming, a
 * pager being made), a thread that reads what the broker sends, so that a
 * RECLAIM reaches the handler, or is answered "0 freed" at half its
 * deadline, instead of sitting unread past it ("ignored" by the broker,
 * which then fails the asker).  Best effort: without a thread, nothing
 * changes.  Not while this thread waits for a reply (the socket's lock
 * is held then; recv_reply queues what comes meanwhile). */
struct client_watch {
	struct vram_client *c;
	pthread_t thread;
	bool started;
	bool loading;            /* a load: no handler is coming before it ends,
				    so "0 freed" at once, not at half the deadline */
	_Atomic bool stop;
};
void client_watch_start(struct client_watch *w, struct vram_client *c, bool loading);
void client_watch_stop(struct client_watch *w);

/* runtime/cuda-kernels.c: drops what vram_device_prepare holds. */
void client_prepared_release(struct vram_client *c);

/* runtime/cuda.c: maps an exported CUDA allocation (fd, size) of device
 * dev into this process; sets g->dptr and g->cuda.  Closes nothing: the fd
 * stays importable (vram_alloc keeps it in g->fd for REGISTER). */
int cuda_grant_import(struct vram_client *c, struct vram_grant *g, int fd);
/* Unmaps and releases what cuda_grant_import set up. */
void cuda_grant_unimport(struct vram_grant *g);

#endif
