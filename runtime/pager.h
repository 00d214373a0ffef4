/* SPDX-License-Identifier: MIT */
/*
 * libvram internals: the pager's state, shared by pager.c (window, copy
 * thread, acquire/release, create/free) and pager-reclaim.c (giving memory
 * back, taking it again: RECLAIM, OFFER, DEMAND, the mover thread).
 */
#ifndef VRAM_RUNTIME_PAGER_H
#define VRAM_RUNTIME_PAGER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/internal.h"
#include "runtime/load.h"
#include "uapi/vramd.h"

#define SLOT_ALIGN 256u   /* tensors in a slot start on this boundary */
#define MAX_SLOTS 256u
/* A window with paged layers never has fewer slots that fit its largest
 * group: one acquired, one being filled.  Reclaim keeps them. */
#define PAGER_MIN_SLOTS 2u
/* Slot sizes are rounded to this (the window of a model whose resident
 * layers became paged is cut from their chunks in such pieces). */
#define SLOT_ROUND (2ull << 20)

enum slot_state { SLOT_EMPTY, SLOT_QUEUED, SLOT_COPYING, SLOT_READY };

/* A piece of window memory on a compute device.  Slots cut from one chunk
 * that reclaim took from the model share its grant (off, size apart). */
struct slot {
	vram_grant *grant;       /* NULL: no memory (reclaimed or never had) */
	uint64_t off, size;      /* the slot's bytes in grant */
	uint32_t dev;            /* compute device */
	int32_t layer;           /* group leader it holds, -1: none */
	enum slot_state state;
	uint32_t pins;           /* acquires of its layers outstanding */
	uint64_t last_use;
	bool prefetched;         /* filled ahead of use, not yet acquired */
	bool busy;               /* its memory is being given or taken outside mu */
	bool cancel;             /* reclaim wants it: the copy into it stops (the
				    copy thread reads it without mu) */
};

/* A chunk of the load (one of l->grants, whole layers of one component). */
struct pchunk {
	uint32_t compute;        /* its layers' compute device */
	uint32_t readers;        /* copies reading from it now (outside mu) */
	bool planned_resident;   /* the plan put its layers on their compute device */
	uint64_t size;           /* its layout's bytes (set when dropped) */
	bool rehome;             /* dropped from its compute device: worth copying
				    to the donor from the file when it has room */
	bool moving;             /* the mover is copying it (outside mu) */
};

struct player {
	uint32_t first, ntensors;
	uint64_t nbytes;
	uint32_t compute;        /* broker device of the component's compute device */
	uint32_t chunk;          /* index into l->grants, UINT32_MAX: no tensors */
	bool split;              /* the plan split it between devices: its tensors
				    are in more than one chunk (always paged) */
	bool paged;              /* not on its compute device now */
	bool planned_resident;   /* the plan's home is the compute device */
	int32_t slot;            /* slot holding it, -1 */
	uint32_t pins;           /* for resident layers */
	uint64_t last_use;
	uint64_t packed;         /* bytes of this layer in a slot, tensors SLOT_ALIGN-aligned */
	bool acquired_this_pass;
	/* Paging unit: consecutive donor layers that fit in one slot together
	 * are paged as one group, identified by its first layer (the leader);
	 * the leader's slot field is the group's.  Set on the leader: */
	uint32_t leader;         /* this layer's group leader (itself if alone) */
	uint32_t gcount;         /* layers in the group (leader only) */
	uint64_t gpacked;        /* bytes of the group in a slot (leader only) */
	uint64_t gbytes;         /* tensor bytes of the group (leader only) */
};

struct cuda_copier;
struct cuda_pin;
struct cuda_dev;

/* A stream-ordered release (vram_pager_release_on_stream): an event
 * recorded on the caller's stream after the kernels that read a slot (or a
 * resident chunk) on a CUDA device; the memory is not reused, moved or
 * given back until it has completed.  By slot index (a slot re-cut from
 * another grant keeps its fence: only idle slots, whose fence has
 * completed, are re-cut) and by chunk. */
struct pfence {
	void *ev;                /* CUevent of dev's primary context, NULL: none yet */
	uint32_t dev;            /* broker device the event is of */
	void *stream;            /* the stream it was last recorded on */
	uint32_t waiters;        /* threads in cuEventSynchronize on it (outside mu) */
	bool pending;            /* recorded, not seen complete */
};

struct vram_pager {
	vram_loaded *l;
	vram_client *c;
	const struct vram_model *m; /* dropped layers are read through m->fd */
	uint32_t nlayers;
	struct player *layers;
	struct pchunk *chunks;   /* l->ngrants entries */
	uint64_t *toff;          /* tensor offset within its layer's slot */
	uint32_t depth;
	uint64_t slot_size[VRAMD_MAX_DEVICES];
	uint32_t target_slots[VRAMD_MAX_DEVICES];
	struct slot slots[MAX_SLOTS];
	uint32_t nslots;
	uint32_t *order;         /* nlayers entries */
	uint32_t *pos;           /* layer -> position in order */
	uint32_t *seen;          /* this pass's acquires, in order */
	uint32_t nseen;
	bool learned;
	uint32_t held;           /* acquires outstanding (at most PAGER_MAX_HELD) */
	uint64_t clock;
	struct vram_pager_stats st;
	/* CUDA windows: a copier per device (async H2D / D2D on its own
	 * stream), donor host memory page-locked, a bounce buffer for layers
	 * read back from the file.  Used by the copy thread only. */
	struct cuda_copier *cuda_copier[VRAMD_MAX_DEVICES];
	struct cuda_pin *pins[64];
	vram_grant *pin_grant[64];    /* the host grant each pin holds */
	uint32_t npins;               /* pins and pin_grant under mu after create */
	int pin_dev;                  /* CUDA device the pins are for, -1: none */
	uint8_t *bounce;
	uint64_t bounce_size;
	uint8_t *raw;            /* file bytes of a converted tensor, before conversion */
	uint64_t raw_size;
	/* Stream-ordered releases (pager-fence.c): a fence per slot and per
	 * chunk, and the CUDA devices their events are of (a reference each). */
	struct pfence slot_fence[MAX_SLOTS];
	struct pfence *chunk_fence;   /* l->ngrants entries */
	struct cuda_dev *fence_dev[VRAMD_MAX_DEVICES];
	/* The last failed copy (under mu), for the acquire that waited on it. */
	int copy_err;
	char copy_msg[512];

	/* Reclaim and offers (pager-reclaim.c). */
	uint64_t gen[VRAMD_MAX_DEVICES];   /* reclaims begun per device */
	uint64_t offer[VRAMD_MAX_DEVICES]; /* bytes offered, not yet taken */
	uint32_t nudges[VRAMD_MAX_DEVICES]; /* reminders left since the last offer */
	uint64_t want[VRAMD_MAX_DEVICES];  /* the DEMAND said, per device */
	uint64_t min[VRAMD_MAX_DEVICES];
	bool demanded;           /* withdraw the demands at free */
	bool handlers;           /* the broker's handlers are this pager's */
	/* The mover's own scratch: a bounce buffer (CUDA promotions from the
	 * file) and the file bytes of converted tensors. */
	uint8_t *mover_buf;
	uint8_t *mover_raw;
	uint64_t mover_raw_size;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_cond_t mover_cv; /* the mover's: work may be there (mover_kick) */
	bool mover_kick;
	pthread_t copier;
	bool copier_started;
	pthread_t dispatcher;
	bool dispatcher_started;
	pthread_t mover;
	bool mover_started;
	bool stop;
	uint32_t *queue;         /* slots to fill, FIFO ring */
	uint32_t qhead, qlen;
};

/* ---- pager.c ------------------------------------------------------------ */

/* Bytes [off, off + len) of tensor t as loaded, read from the checkpoint
 * into host memory dst (converted again as the load converted it); raw
 * is scratch for the file bytes of a converted tensor.  0 or -errno with
 * the message set (-ESTALE when the file changed since it was opened). */
int pager_read_loaded(const struct vram_pager *p, uint32_t t, uint64_t off, uint64_t len, uint8_t *dst,
		      uint8_t **raw, uint64_t *raw_size);
/* Empties slot s (its layer is no longer in it).  mu held. */
void pager_evict(struct vram_pager *p, struct slot *s);
/* Takes slot si's copy off the queue (it is not filled after all).  mu
 * held. */
void pager_unqueue(struct vram_pager *p, uint32_t si);
/* Page-locks host grant g for DMA by the CUDA windows (best effort), and
 * undoes it.  Called without mu. */
void pager_pin_grant(struct vram_pager *p, vram_grant *g);
void pager_unpin_grant(struct vram_pager *p, vram_grant *g);
/* The largest group paged onto dev, in slot bytes.  mu held. */
uint64_t pager_largest_paged(const struct vram_pager *p, uint32_t dev);
/* Slots with memory on dev that hold at least need bytes.  mu held. */
uint32_t pager_slots_fitting(const struct vram_pager *p, uint32_t dev, uint64_t need);

/* ---- pager-fence.c ------------------------------------------------------- */

/* Records fence f on stream (a CUstream of CUDA device dev's primary
 * context; NULL: its legacy default stream) after what is queued there.
 * A fence still pending from another stream is carried over (the stream
 * waits for it first), so that f completes after both.  0 or -errno with
 * the message set (f unchanged then).  mu held (dropped while another
 * thread waits on f's old event of another device). */
int pager_fence_record(struct vram_pager *p, struct pfence *f, uint32_t dev, void *stream);
/* Whether f is recorded and not complete yet (asks the driver, without
 * waiting; a fence whose event fails to answer counts as complete).  mu
 * held. */
bool pager_fence_pending(struct vram_pager *p, struct pfence *f);
/* Waits for f to complete (mu dropped meanwhile).  mu held. */
void pager_fence_wait(struct vram_pager *p, struct pfence *f);
/* Waits for every fence and frees their events and devices.  At free, no
 * thread running. */
void pager_fences_free(struct vram_pager *p);

/* ---- pager-reclaim.c ---------------------------------------------------- */

/* Gives back bytes on dev at once (pager-reclaim.c has the order), in
 * whole grants: no more than cap in all, except by a last grant smaller
 * than twice what is still missing; waits at most wait_ns for a copy in
 * flight.  Returns bytes freed. */
uint64_t pager_reclaim(struct vram_pager *p, uint32_t dev, uint64_t bytes, uint64_t cap, uint64_t wait_ns);
/* Wakes the mover: an offer came, a chunk was dropped, the window
 * changed.  mu held. */
void pager_kick_mover(struct vram_pager *p);
/* Makes the window on dev from the model's resident chunks there (as a
 * RECLAIM would: their layers are paged from then on), until it has
 * PAGER_MIN_SLOTS slots that fit its largest group or no chunk is left.
 * For a device that refused the window's own grants.  mu held. */
void pager_window_from_chunks(struct vram_pager *p, uint32_t dev);
/* Frees resident chunks on dev (the largest first; their layers are paged
 * from then on) until bytes are free for the window's own grants.
 * Returns the bytes freed.  mu held. */
uint64_t pager_window_room(struct vram_pager *p, uint32_t dev, uint64_t bytes);
/* Whether layer li has tensors in chunk gi (a split layer has some in
 * each of its chunks). */
bool pager_in_chunk(const struct vram_pager *p, uint32_t li, uint32_t gi);
/* Whether the copy filling the slot of the group led by layer reads a
 * chunk on dev.  mu held. */
bool pager_slot_reads_dev(const struct vram_pager *p, uint32_t layer, uint32_t dev);
/* Whether chunk gi's memory may become window slots: its own (not a
 * shared copy, which is the broker's and read-only) and mapped. */
bool pager_chunk_carvable(const struct vram_pager *p, uint32_t gi);
/* The broker's handlers (vram_set_reclaim_handler / _offer_handler). */
uint64_t pager_on_reclaim(void *user, uint32_t device, uint64_t bytes, uint64_t deadline_ms);
void pager_on_offer(void *user, uint32_t device, uint64_t bytes);
/* Tells the broker what the pager wants on each compute device (DEMAND:
 * every layer the plan made resident there, plus the window when some are
 * paged; at least a window for its largest layers).  Best effort. */
void pager_declare_demand(struct vram_pager *p);
/* Withdraws what pager_declare_demand said.  Best effort. */
void pager_withdraw_demand(struct vram_pager *p);
/* The threads: the one that answers the broker (dispatcher) and the one
 * that copies chunks to the donor and back (mover). */
void *pager_dispatcher_main(void *arg);
void *pager_mover_main(void *arg);
/* Frees the grants of the slots (each grant once; slots cut from one
 * chunk share it).  At free, no thread running. */
void pager_free_slots(struct vram_pager *p);

#endif
