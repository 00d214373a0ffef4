/* SPDX-License-Identifier: MIT */
/*
 * The pager: layers homed on a donor device are served through a window on
 * their component's compute device.
 *
 * The window is a set of slots, each a reclaimable grant big enough for the
 * largest donor layer.  Consecutive small donor layers that fit in one slot
 * together are paged as one group, so that a window of a few slots still
 * lets the copier run far ahead through a stretch of small layers (whose
 * compute is short) towards a large one (whose copy is long).  acquire(L) pins L's slot (copying L in if it is not
 * there) and queues copies of the next prefetch_depth donor layers along
 * the current order; a copy thread fills slots (memcpy from donor memory,
 * or pread from the checkpoint for layers dropped by reclaim).  The order is
 * the file's layer order until the first complete pass, then the order that
 * pass observed.
 *
 * Reclaim gives back window slots first (least recently used, never one in
 * use or being filled), then chunks of resident layers: copied to the donor
 * when it has room, else dropped (the checkpoint file is the donor of last
 * resort).  The model keeps working; those layers are paged from then on.
 *
 * Locking: one mutex guards the pager's state; it is never held across
 * broker I/O (vram_alloc/vram_free) nor across a copy.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
#include "runtime/dtype.h"
#include "runtime/load.h"
#include "runtime/model.h"
#include "kernels/kernels.h"

/* How long acquire keeps asking for a window slot the broker refuses with
 * -ENOMEM (another client's request parked first) before failing. */
#define GROW_RETRY_NS (5ull * 1000000000ull)
#define SLOT_ALIGN 256u   /* tensors in a slot start on this boundary */
#define MAX_SLOTS 256u

enum slot_state { SLOT_EMPTY, SLOT_QUEUED, SLOT_COPYING, SLOT_READY };

struct slot {
	vram_grant *grant;       /* NULL: no memory (reclaimed or never had) */
	uint32_t dev;            /* compute device */
	int32_t layer;           /* -1: none */
	enum slot_state state;
	uint32_t pins;           /* acquires of its layer outstanding */
	uint64_t last_use;
	bool prefetched;         /* filled ahead of use, not yet acquired */
	bool doomed;             /* reclaim is taking it */
};

struct player {
	uint32_t first, ntensors;
	uint64_t nbytes;
	uint32_t compute;        /* broker device of the component's compute device */
	bool paged;              /* home is not the compute device */
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

struct vram_pager {
	vram_loaded *l;
	vram_client *c;
	const struct vram_model *m; /* dropped layers are read through m->fd */
	uint32_t nlayers;
	struct player *layers;
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
	bool demoting;           /* a chunk is being moved; acquires wait */
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
	/* The last failed copy (under mu), for the acquire that waited on it. */
	int copy_err;
	char copy_msg[512];

	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t copier;
	bool copier_started;
	pthread_t dispatcher;
	bool dispatcher_started;
	bool stop;
	uint32_t *queue;         /* slots to fill, FIFO ring */
	uint32_t qhead, qlen;
};

void vram_pager_options_init(struct vram_pager_options *o)
{
	memset(o, 0, sizeof(*o));
	o->struct_size = sizeof(*o);
	o->prefetch_depth = 2;
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

/* Faults a host-mappable slot in up front, so that first-touch page faults
 * (which a GPU does not have) do not land in the first passes. */
static void prefault(vram_grant *g)
{
	void *h = vram_grant_host_ptr(g);
	if (!h)
		return;
#ifdef MADV_POPULATE_WRITE
	if (madvise(h, vram_grant_size(g), MADV_POPULATE_WRITE) == 0)
		return;
#endif
	memset(h, 0, vram_grant_size(g));
}

/* ---- the copy thread ------------------------------------------------- */

/* Bytes [off, off + len) of tensor t as loaded, read from the file (the
 * donor of last resort) into host memory dst: as they are, or, for a
 * tensor converted while loading, its file elements converted again (the
 * same C reference conversion, so the same bytes).  off and len whole
 * elements of the loaded dtype.  The file is read through the fd the model
 * was parsed from (a file renamed over the path is not read) and must not
 * have changed in place since.  0 or -errno with the message set
 * (-ESTALE when it changed). */
static int read_loaded(struct vram_pager *p, uint32_t t, uint64_t off, uint64_t len, uint8_t *dst)
{
	const struct model_tensor *mt = &p->m->tensors[t];
	uint32_t ldt = p->l->tensors[t].dtype;
	uint64_t sb = dtype_size(mt->dtype), db = dtype_size(ldt);
	uint64_t base = p->m->data_offset + mt->begin;
	uint8_t *buf = dst;
	uint64_t foff = base + off, flen = len;
	if (ldt != mt->dtype) {
		flen = len / db * sb;
		foff = base + off / db * sb;
		if (p->raw_size < flen) {
			uint8_t *n = realloc(p->raw, flen);
			if (!n)
				return rt_error(-ENOMEM, "out of memory reading back tensor \"%s\"", mt->name);
			p->raw = n;
			p->raw_size = flen;
		}
		buf = p->raw;
	}
	uint64_t done = 0;
	while (done < flen) {
		ssize_t n = pread(p->m->fd, buf + done, flen - done, (off_t)(foff + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return rt_error(-errno, "%s: reading back tensor \"%s\": %s", p->m->path, mt->name,
					strerror(errno));
		if (n == 0)
			break;
		done += (uint64_t)n;
	}
	/* After the read: a change before or during it shows in size or mtime. */
	int r = model_check_unchanged(p->m);
	if (r < 0)
		return r;
	if (done < flen)
		return rt_error(-EIO, "%s: reading back tensor \"%s\": end of file at offset %llu", p->m->path,
				mt->name, (unsigned long long)(foff + done));
	if (ldt == mt->dtype)
		return 0;
	r = vk_cast(buf, mt->dtype, dst, ldt, len / db);
	return r < 0 ? rt_error(r, "converting tensor \"%s\" read back from %s", mt->name, p->m->path) : 0;
}

/* Fills a slot on a CUDA device: async copies on the device's copy stream
 * from pinned donor memory (host), device to device (donor GPU), or via a
 * bounce buffer from the file (dropped layers); waits for them. */
static int fill_slot_cuda(struct vram_pager *p, struct slot *s, uint32_t layer)
{
	struct player *L = &p->layers[layer];
	uint32_t first_t = L->first, last_t = p->layers[layer + L->gcount - 1].first +
					      p->layers[layer + L->gcount - 1].ntensors;
	uint64_t dbase = vram_grant_device_ptr(s->grant);
	int r;
	if (!dbase)
		return -ENOTSUP;
	if (!p->cuda_copier[s->dev] && (r = cuda_copier_new(p->c, s->dev, 1, &p->cuda_copier[s->dev])) < 0)
		return r;
	struct cuda_copier *cp = p->cuda_copier[s->dev];
	for (uint32_t t = first_t; t < last_t; t++) {
		uint64_t nb = vram_loaded_tensor_nbytes(p->l, t);
		if (!nb)
			continue;
		const uint8_t *src = vram_loaded_tensor_host_ptr(p->l, t);
		uint64_t dsrc = vram_loaded_tensor_device_ptr(p->l, t);
		if (src)
			r = cuda_copier_copy(cp, dbase + p->toff[t], src, nb, 0);
		else if (dsrc)
			r = cuda_copier_dtod(cp, dbase + p->toff[t], dsrc, nb, 0);
		else {
			/* dropped: through the bounce buffer, a piece at a time
			 * (whole elements: 8 MiB is a multiple of any) */
			if (!p->bounce) {
				p->bounce_size = 8u << 20;
				p->bounce = malloc(p->bounce_size);
				if (!p->bounce)
					return -ENOMEM;
			}
			for (uint64_t done = 0; done < nb;) {
				uint64_t k = MIN(p->bounce_size, nb - done);
				if ((r = read_loaded(p, t, done, k, p->bounce)) < 0 ||
				    (r = cuda_copier_copy(cp, dbase + p->toff[t] + done, p->bounce, k, 0)) < 0 ||
				    (r = cuda_copier_wait(cp, 0)) < 0)
					return r;
				done += k;
			}
			r = 0;
		}
		if (r < 0)
			return r;
	}
	return cuda_copier_wait(cp, 0);
}

/* Fills slot s with the group led by layer (its layers are consecutive,
 * so are their tensors). */
static int fill_slot(struct vram_pager *p, struct slot *s, uint32_t layer)
{
	struct player *L = &p->layers[layer];
	uint32_t first_t = L->first, last_t = p->layers[layer + L->gcount - 1].first +
					      p->layers[layer + L->gcount - 1].ntensors;
	uint8_t *dst = vram_grant_host_ptr(s->grant);
	if (!dst)
		return fill_slot_cuda(p, s, layer);
	for (uint32_t t = first_t; t < last_t; t++) {
		uint64_t nb = vram_loaded_tensor_nbytes(p->l, t);
		if (!nb)
			continue;
		const uint8_t *src = vram_loaded_tensor_host_ptr(p->l, t);
		if (src) {
			memcpy(dst + p->toff[t], src, nb);
			continue;
		}
		/* dropped by reclaim: the file is the donor */
		int r = read_loaded(p, t, 0, nb, dst + p->toff[t]);
		if (r < 0)
			return r;
	}
	return 0;
}

static void *copier_main(void *arg)
{
	struct vram_pager *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && !p->qlen)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stop)
			break;
		uint32_t si = p->queue[p->qhead];
		p->qhead = (p->qhead + 1) % MAX_SLOTS;
		p->qlen--;
		struct slot *s = &p->slots[si];
		if (s->state != SLOT_QUEUED || s->layer < 0)
			continue;
		s->state = SLOT_COPYING;
		uint32_t layer = (uint32_t)s->layer;
		pthread_mutex_unlock(&p->mu);
		uint64_t t0 = now_ns();
		rt_error_clear(); /* what fill_slot says is its own */
		int r = fill_slot(p, s, layer);
		uint64_t dt = now_ns() - t0;
		pthread_mutex_lock(&p->mu);
		p->st.copy_ns += dt;
		if (r < 0) {
			/* Leave it empty: acquire sees it and fails with this. */
			p->copy_err = r;
			snprintf(p->copy_msg, sizeof(p->copy_msg), "%s", vram_last_error());
			p->layers[layer].slot = -1;
			s->layer = -1;
			s->state = SLOT_EMPTY;
		} else {
			p->st.bytes_paged += p->layers[layer].gbytes;
			s->state = SLOT_READY;
		}
		pthread_cond_broadcast(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* ---- slots -------------------------------------------------------------- */

/* How far prefetch looks ahead on dev: at least the prefetch depth, and as
 * many layers as the window has slots besides the one in use.  Depth in
 * layers alone cannot hide a large layer that follows small ones (their
 * compute is shorter than its copy); filling the window can. */
static uint32_t lookahead(struct vram_pager *p, uint32_t dev)
{
	uint32_t n = 0, pinned = 0;
	for (uint32_t i = 0; i < p->nslots; i++)
		if (p->slots[i].dev == dev && p->slots[i].grant) {
			n++;
			pinned += p->slots[i].pins > 0;
		}
	/* slots in use by acquired layers are not there to prefetch into */
	return MAX(p->depth, n > pinned ? n - pinned : 0);
}

/* Layers the next prefetch wants kept: the next lookahead donor layers
 * after position from. */
static bool wanted_soon(struct vram_pager *p, uint32_t layer, uint32_t from_pos)
{
	uint32_t k = 0, depth = lookahead(p, p->layers[layer].compute), last = UINT32_MAX;
	uint32_t cur = p->layers[p->order[from_pos % p->nlayers]].leader;
	for (uint32_t i = 1; i <= p->nlayers && k < depth; i++) {
		uint32_t li = p->order[(from_pos + i) % p->nlayers];
		if (!p->layers[li].paged)
			continue;
		uint32_t g = p->layers[li].leader;
		if (g == cur || g == last)
			continue;
		if (g == layer)
			return true;
		last = g;
		k++;
	}
	return false;
}

/* A slot on dev for layer: an empty one with memory, else the least
 * recently used evictable one.  -1 if none.  Caller holds mu. */
static int pick_slot(struct vram_pager *p, uint32_t dev, uint64_t need, int32_t from_pos, bool for_prefetch)
{
	int best = -1;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev || s->doomed || vram_grant_size(s->grant) < need)
			continue;
		if (s->layer < 0)
			return (int)i;
	}
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev || s->doomed || s->pins || s->state == SLOT_COPYING ||
		    s->state == SLOT_QUEUED || vram_grant_size(s->grant) < need)
			continue;
		if (for_prefetch && from_pos >= 0 && wanted_soon(p, (uint32_t)s->layer, (uint32_t)from_pos))
			continue;
		if (best < 0 || s->last_use < p->slots[best].last_use)
			best = (int)i;
	}
	return best;
}

static void evict(struct vram_pager *p, struct slot *s)
{
	if (s->layer >= 0) {
		p->layers[s->layer].slot = -1;
		s->layer = -1;
	}
	s->prefetched = false;
	s->state = SLOT_EMPTY;
}

static void enqueue(struct vram_pager *p, uint32_t si, uint32_t layer, bool prefetch)
{
	struct slot *s = &p->slots[si];
	evict(p, s);
	s->layer = (int32_t)layer;
	s->state = SLOT_QUEUED;
	s->prefetched = prefetch;
	s->last_use = ++p->clock;
	p->layers[layer].slot = (int32_t)si;
	p->queue[(p->qhead + p->qlen) % MAX_SLOTS] = si;
	p->qlen++;
	if (prefetch)
		p->st.prefetches++;
	pthread_cond_broadcast(&p->cv);
}

/* Gives a slot without memory on dev its grant again (outside mu).  0 or
 * -errno. */
static int grow_slot(struct vram_pager *p, uint32_t dev)
{
	int idx = -1;
	uint32_t have = 0;
	for (uint32_t i = 0; i < p->nslots; i++) {
		if (p->slots[i].dev != dev)
			continue;
		if (p->slots[i].grant)
			have++;
		else if (idx < 0 && !p->slots[i].doomed)
			idx = (int)i;
	}
	if (idx < 0 && p->nslots < MAX_SLOTS && have < p->target_slots[dev]) {
		idx = (int)p->nslots++;
		p->slots[idx] = (struct slot){ .dev = dev, .layer = -1 };
	}
	if (idx < 0 || have >= p->target_slots[dev])
		return -ENOSPC;
	p->slots[idx].doomed = true; /* reserved while we allocate */
	pthread_mutex_unlock(&p->mu);
	vram_grant *g = NULL;
	int r = vram_alloc(p->c, dev, p->slot_size[dev], VRAM_ALLOC_RECLAIMABLE, &g);
	if (r == 0)
		prefault(g);
	pthread_mutex_lock(&p->mu);
	p->slots[idx].doomed = false;
	if (r < 0)
		return r;
	p->slots[idx].grant = g;
	p->slots[idx].layer = -1;
	p->slots[idx].state = SLOT_EMPTY;
	return 0;
}

static void prefetch_after(struct vram_pager *p, uint32_t layer)
{
	uint32_t from = p->pos[layer], k = 0, depth = lookahead(p, p->layers[layer].compute);
	uint32_t cur = p->layers[layer].leader, last = UINT32_MAX;
	for (uint32_t i = 1; i <= p->nlayers && k < depth; i++) {
		uint32_t li = p->order[(from + i) % p->nlayers];
		if (!p->layers[li].paged)
			continue;
		uint32_t g = p->layers[li].leader;
		if (g == cur || g == last)
			continue; /* a group counts once */
		last = g;
		k++;
		struct player *G = &p->layers[g];
		if (G->slot >= 0)
			continue;
		int si = pick_slot(p, G->compute, G->gpacked, (int32_t)from, true);
		if (si < 0)
			break;
		enqueue(p, (uint32_t)si, g, true);
	}
}

/* ---- passes and order ------------------------------------------------- */

static void end_pass(struct vram_pager *p)
{
	if (!p->nseen)
		return;
	p->st.passes++;
	if (!p->learned) {
		/* The observed order first, then layers not seen, in file order. */
		bool *in = calloc(p->nlayers, sizeof(bool));
		if (in) {
			uint32_t n = 0;
			for (uint32_t i = 0; i < p->nseen; i++)
				if (!in[p->seen[i]]) {
					in[p->seen[i]] = true;
					p->order[n++] = p->seen[i];
				}
			for (uint32_t i = 0; i < p->nlayers; i++)
				if (!in[i])
					p->order[n++] = i;
			for (uint32_t i = 0; i < p->nlayers; i++)
				p->pos[p->order[i]] = i;
			p->learned = true;
			p->st.order_learned = 1;
			free(in);
		}
	}
	for (uint32_t i = 0; i < p->nseen; i++)
		p->layers[p->seen[i]].acquired_this_pass = false;
	p->nseen = 0;
}

int vram_pager_end_pass(vram_pager *p)
{
	pthread_mutex_lock(&p->mu);
	end_pass(p);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

/* ---- acquire / release -------------------------------------------------- */

int vram_pager_acquire(vram_pager *p, uint32_t layer)
{
	if (layer >= p->nlayers)
		return rt_error(-EINVAL, "no layer %u (the model has %u)", layer, p->nlayers);
	pthread_mutex_lock(&p->mu);
	struct player *L = &p->layers[layer];
	if (L->acquired_this_pass)
		end_pass(p);
	L->acquired_this_pass = true;
	if (p->nseen < p->nlayers)
		p->seen[p->nseen++] = layer;
	p->st.acquires++;
	uint64_t t0 = now_ns();
	bool waited = false;
	while (p->demoting) {
		pthread_cond_wait(&p->cv, &p->mu);
		waited = true;
	}
	L->last_use = ++p->clock;
	if (!L->paged) {
		L->pins++;
		p->st.hits++;
		prefetch_after(p, layer);
		if (waited)
			p->st.stall_ns += now_ns() - t0;
		pthread_mutex_unlock(&p->mu);
		return 0;
	}
	bool counted = false;
	uint64_t grow_until = 0;
	/* The paging unit is the layer's group, led by G. */
	uint32_t g = L->leader;
	struct player *G = &p->layers[g];
	G->last_use = p->clock;
	for (;;) {
		/* a demotion drops mu while it moves a chunk: nothing may be
		 * queued from (or slots grown beside) it meanwhile */
		while (p->demoting) {
			pthread_cond_wait(&p->cv, &p->mu);
			waited = true;
		}
		if (G->slot >= 0) {
			struct slot *s = &p->slots[G->slot];
			if (!counted) {
				if (s->state == SLOT_READY)
					p->st.hits++;
				else
					p->st.late++;
				if (s->prefetched)
					p->st.prefetch_used++;
				counted = true;
			}
			s->prefetched = false;
			s->pins++;
			s->last_use = p->clock;
			prefetch_after(p, layer);
			while (s->state != SLOT_READY && s->layer == (int32_t)g) {
				pthread_cond_wait(&p->cv, &p->mu);
				waited = true;
			}
			if (s->layer == (int32_t)g && s->state == SLOT_READY)
				break;
			/* the copy failed */
			s->pins--;
			if (waited)
				p->st.stall_ns += now_ns() - t0;
			int err = p->copy_err ? p->copy_err : -EIO;
			rt_error(err, "paging layer %u in failed: %s", layer,
				 p->copy_msg[0] ? p->copy_msg : strerror(-err));
			pthread_mutex_unlock(&p->mu);
			return err;
		}
		int si = pick_slot(p, L->compute, G->gpacked, -1, false);
		if (si >= 0) {
			if (!counted) {
				p->st.misses++;
				counted = true;
			}
			enqueue(p, (uint32_t)si, g, false);
			continue;
		}
		/* No slot: grow the window back (after reclaim) or wait for a
		 * slot to be released by another thread. */
		int r = grow_slot(p, L->compute);
		if (r == 0)
			continue;
		bool any_pinned_elsewhere = false;
		for (uint32_t i = 0; i < p->nslots; i++)
			if (p->slots[i].dev == L->compute && p->slots[i].grant &&
			    (p->slots[i].pins || p->slots[i].state == SLOT_COPYING || p->slots[i].state == SLOT_QUEUED))
				any_pinned_elsewhere = true;
		/* The broker may refuse for the moment: another client's larger
		 * request parked on the device goes first, and the RECLAIM that
		 * makes room for it (and then for this slot) may not have reached
		 * this pager yet.  Try again for a while before giving up. */
		if (!any_pinned_elsewhere && r == -ENOMEM) {
			uint64_t now = now_ns();
			if (!grow_until)
				grow_until = now + GROW_RETRY_NS;
			if (now < grow_until) {
				struct timespec ts;
				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_nsec += 20000000;
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000;
				}
				pthread_cond_timedwait(&p->cv, &p->mu, &ts);
				waited = true;
				continue;
			}
		}
		if (!any_pinned_elsewhere) {
			pthread_mutex_unlock(&p->mu);
			return rt_error(r == -ENOSPC ? -ENOSPC : r,
					"no window slot for layer %u on device %u: %s", layer, L->compute,
					r == -ENOSPC ? "every slot is in use" : vram_last_error());
		}
		pthread_cond_wait(&p->cv, &p->mu);
		waited = true;
	}
	if (waited)
		p->st.stall_ns += now_ns() - t0;
	pthread_mutex_unlock(&p->mu);
	return 0;
}

int vram_pager_release(vram_pager *p, uint32_t layer)
{
	if (layer >= p->nlayers)
		return rt_error(-EINVAL, "no layer %u", layer);
	pthread_mutex_lock(&p->mu);
	struct player *L = &p->layers[layer];
	int r = 0;
	if (!L->paged) {
		if (L->pins)
			L->pins--;
		else
			r = rt_error(-EINVAL, "layer %u is not acquired", layer);
	} else if (p->layers[L->leader].slot >= 0 && p->slots[p->layers[L->leader].slot].pins) {
		p->slots[p->layers[L->leader].slot].pins--;
	} else {
		r = rt_error(-EINVAL, "layer %u is not acquired", layer);
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return r;
}

static bool tensor_acquired(const vram_pager *p, uint32_t tensor, const struct player **ret_layer)
{
	struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
	if (vram_model_tensor(p->l->model, tensor, &ti) < 0)
		return false;
	const struct player *L = &p->layers[ti.layer];
	*ret_layer = L;
	if (!L->paged)
		return L->pins > 0;
	int32_t si = p->layers[L->leader].slot;
	return si >= 0 && p->slots[si].pins > 0 && p->slots[si].state == SLOT_READY;
}

void *vram_pager_tensor_host_ptr(const vram_pager *p, uint32_t tensor)
{
	const struct player *L;
	if (tensor >= p->l->ntensors || !tensor_acquired(p, tensor, &L))
		return NULL;
	if (!L->paged)
		return vram_loaded_tensor_host_ptr(p->l, tensor);
	uint8_t *h = vram_grant_host_ptr(p->slots[p->layers[L->leader].slot].grant);
	return h ? h + p->toff[tensor] : NULL;
}

uint64_t vram_pager_tensor_device_ptr(const vram_pager *p, uint32_t tensor)
{
	const struct player *L;
	if (tensor >= p->l->ntensors || !tensor_acquired(p, tensor, &L))
		return 0;
	if (!L->paged)
		return vram_loaded_tensor_device_ptr(p->l, tensor);
	uint64_t d = vram_grant_device_ptr(p->slots[p->layers[L->leader].slot].grant);
	return d ? d + p->toff[tensor] : 0;
}

/* ---- reclaim ------------------------------------------------------------ */

/* The donor for a component's demoted layers: the device holding its other
 * paged layers, else the cpu pool; -1 if none. */
static int donor_of(struct vram_pager *p, uint32_t comp, uint32_t not_dev)
{
	for (uint32_t li = 0; li < p->nlayers; li++) {
		struct player *L = &p->layers[li];
		if (!L->paged || !L->ntensors)
			continue;
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(p->l->model, L->first, &ti);
		struct loaded_grant *lg = &p->l->grants[p->l->tensors[L->first].grant];
		if (ti.component == comp && lg->grant && lg->device != not_dev)
			return (int)lg->device;
	}
	int cpu = vram_device_find(p->c, "cpu");
	return cpu >= 0 && (uint32_t)cpu != not_dev ? cpu : -1;
}

static uint64_t largest_paged(struct vram_pager *p, uint32_t dev);

/* Slots with memory on dev at least need bytes large. */
static uint32_t slots_fitting(struct vram_pager *p, uint32_t dev, uint64_t need)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < p->nslots; i++)
		if (p->slots[i].dev == dev && p->slots[i].grant && vram_grant_size(p->slots[i].grant) >= need)
			n++;
	return n;
}

/* Moves chunk gi to the donor if it holds resident layers and the donor has
 * room; otherwise drops it (its layers are read from the file from then
 * on).  When the window on the chunk's device has fewer than two slots
 * that fit the paged layers, the chunk's own memory becomes a slot instead
 * of being freed: the pager never has to allocate on a device it is giving
 * memory back on (that allocation would queue behind the very request the
 * reclaim serves).  Called with mu held and p->demoting set; drops mu
 * around broker I/O and the copy.  Returns the bytes freed on the chunk's
 * device. */
/* Page-locks host grant g for DMA by the CUDA windows (best effort). */
static void pin_grant(struct vram_pager *p, vram_grant *g)
{
	void *h = vram_grant_host_ptr(g);
	struct cuda_pin *pin;
	if (p->pin_dev < 0 || !h || cuda_pin(p->c, (uint32_t)p->pin_dev, h, vram_grant_size(g), 0, &pin) < 0) {
		rt_error_clear();
		return;
	}
	pthread_mutex_lock(&p->mu);
	if (p->npins < 64) {
		p->pin_grant[p->npins] = g;
		p->pins[p->npins++] = pin;
		pin = NULL;
	}
	pthread_mutex_unlock(&p->mu);
	cuda_unpin(pin);
}

/* Undoes pin_grant(g), if it pinned g.  Called without mu. */
static void unpin_grant(struct vram_pager *p, vram_grant *g)
{
	struct cuda_pin *pin = NULL;
	pthread_mutex_lock(&p->mu);
	for (uint32_t i = 0; i < p->npins; i++)
		if (p->pin_grant[i] == g) {
			pin = p->pins[i];
			p->pins[i] = p->pins[--p->npins];
			p->pin_grant[i] = p->pin_grant[p->npins];
			break;
		}
	pthread_mutex_unlock(&p->mu);
	cuda_unpin(pin);
}

static uint64_t demote_chunk(struct vram_pager *p, uint32_t gi, bool resident)
{
	struct loaded_grant *lg = &p->l->grants[gi];
	vram_grant *old = lg->grant;
	uint64_t size = vram_grant_size(old);
	int donor = resident ? donor_of(p, lg->component, lg->device) : -1;
	pthread_mutex_unlock(&p->mu);
	vram_grant *ng = NULL;
	bool moved = false;
	if (donor >= 0 && vram_alloc(p->c, (uint32_t)donor, size, VRAM_ALLOC_RECLAIMABLE, &ng) == 0) {
		void *src = vram_grant_host_ptr(old), *dst = vram_grant_host_ptr(ng);
		struct cuda_copier *cp = NULL;
		if (src && dst) {
			memcpy(dst, src, size);
			moved = true;
		} else if (!src && dst && vram_grant_device_ptr(old) &&
			   cuda_copier_new(p->c, lg->device, 1, &cp) == 0) {
			/* a resident chunk on a GPU: down to the host donor */
			moved = cuda_copier_dtoh(cp, dst, vram_grant_device_ptr(old), size, 0) == 0 &&
				cuda_copier_wait(cp, 0) == 0;
			cuda_copier_free(cp);
			if (!moved) {
				vram_free(p->c, ng);
				ng = NULL;
			}
		} else {
			vram_free(p->c, ng);
			ng = NULL;
		}
	}
	if (moved)
		pin_grant(p, ng);
	pthread_mutex_lock(&p->mu);
	lg->grant = moved ? ng : NULL;
	lg->device = moved ? (uint32_t)donor : UINT32_MAX;
	uint32_t nl = 0;
	for (uint32_t li = 0; li < p->nlayers; li++) {
		struct player *L = &p->layers[li];
		if (!L->ntensors || p->l->tensors[L->first].grant != gi)
			continue;
		L->paged = true; /* resident layers are paged from now on */
		if (!resident)
			continue;
		/* a group of its own (its tensor offsets are layer-relative) */
		L->slot = -1;
		L->leader = li;
		L->gcount = 1;
		L->gpacked = L->packed;
		L->gbytes = L->nbytes;
		nl++;
	}
	if (!resident) {
		uint32_t n2 = 0;
		for (uint32_t li = 0; li < p->nlayers; li++)
			if (p->layers[li].ntensors && p->l->tensors[p->layers[li].first].grant == gi)
				n2++;
		p->st.dropped += n2;
	} else if (moved) {
		p->st.demoted += nl;
	} else {
		p->st.dropped += nl;
	}
	uint32_t dev = vram_grant_device(old);
	uint64_t need = align_up(largest_paged(p, dev), 2u << 20);
	if (need && size >= need && slots_fitting(p, dev, need) < 2 && p->nslots < MAX_SLOTS) {
		struct slot *s = &p->slots[p->nslots++];
		*s = (struct slot){ .grant = old, .dev = dev, .layer = -1, .state = SLOT_EMPTY };
		return 0;
	}
	pthread_mutex_unlock(&p->mu);
	unpin_grant(p, old);    /* never unmap memory the driver has pinned */
	vram_free(p->c, old);
	pthread_mutex_lock(&p->mu);
	return size;
}

static uint64_t largest_paged(struct vram_pager *p, uint32_t dev)
{
	uint64_t m = 0;
	for (uint32_t li = 0; li < p->nlayers; li++)
		if (p->layers[li].paged && p->layers[li].compute == dev)
			m = MAX(m, p->layers[li].gpacked);
	return m;
}


/* Frees the least recently used idle slot on dev; 0 if none. */
static uint64_t free_one_slot(struct vram_pager *p, uint32_t dev)
{
	int best = -1;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev || s->pins || s->doomed || s->state == SLOT_COPYING ||
		    s->state == SLOT_QUEUED)
			continue;
		if (best < 0 || s->last_use < p->slots[best].last_use)
			best = (int)i;
	}
	if (best < 0)
		return 0;
	struct slot *s = &p->slots[best];
	evict(p, s);
	vram_grant *g = s->grant;
	s->grant = NULL;
	uint64_t size = vram_grant_size(g);
	pthread_mutex_unlock(&p->mu);
	unpin_grant(p, g); /* a slot made of a demoted host chunk may be pinned */
	vram_free(p->c, g);
	pthread_mutex_lock(&p->mu);
	return size;
}

/* The least recently used chunk on dev that can go: resident layers none
 * of which is acquired, or paged layers none of which is being copied.
 * -1 if none. */
static int pick_chunk(struct vram_pager *p, uint32_t dev, bool *ret_resident)
{
	int best = -1;
	uint64_t best_use = UINT64_MAX;
	for (uint32_t gi = 0; gi < p->l->ngrants; gi++) {
		struct loaded_grant *lg = &p->l->grants[gi];
		if (!lg->grant || lg->device != dev)
			continue;
		uint64_t use = 0;
		bool busy = false, resident = false, any = false;
		for (uint32_t li = 0; li < p->nlayers; li++) {
			struct player *L = &p->layers[li];
			if (!L->ntensors || p->l->tensors[L->first].grant != gi)
				continue;
			any = true;
			resident = resident || !L->paged;
			busy = busy || L->pins;
			for (uint32_t si = 0; si < p->nslots; si++)
				if (p->slots[si].layer == (int32_t)L->leader &&
				    (p->slots[si].state == SLOT_COPYING || p->slots[si].state == SLOT_QUEUED))
					busy = true;
			use = MAX(use, L->last_use);
		}
		if (any && !busy && use < best_use) {
			best = (int)gi;
			best_use = use;
			*ret_resident = resident;
		}
	}
	return best;
}

/* One round of giving memory back on dev, adding to *freed until it
 * reaches bytes: what is idle now (busy slots and chunks are skipped).
 * Called with mu held and no demotion running. */
static void reclaim_round(struct vram_pager *p, uint32_t dev, uint64_t bytes, uint64_t *freed)
{
	/* 1. idle window slots beyond a working minimum of two */
	uint32_t nheld = slots_fitting(p, dev, 0);
	while (*freed < bytes && nheld > 2) {
		uint64_t f = free_one_slot(p, dev);
		if (!f)
			break;
		*freed += f;
		nheld--;
	}
	/* 2. chunks, least recently used first (the first ones may become
	 * window slots, see demote_chunk) */
	while (*freed < bytes) {
		bool resident = false;
		while (p->demoting) /* free_one_slot dropped mu: another reclaim may be moving one */
			pthread_cond_wait(&p->cv, &p->mu);
		int gi = pick_chunk(p, dev, &resident);
		if (gi < 0)
			break;
		p->demoting = true;
		*freed += demote_chunk(p, (uint32_t)gi, resident);
		p->demoting = false;
		pthread_cond_broadcast(&p->cv);
		/* Slots must fit every paged layer: size and count. */
		uint64_t need = align_up(largest_paged(p, dev), 2u << 20);
		if (need > p->slot_size[dev])
			p->slot_size[dev] = need;
		/* A window made of demoted chunks: two slots, never grown on a
		 * device that is being reclaimed from. */
		if (!p->target_slots[dev])
			p->target_slots[dev] = 2;
	}
	/* 3. the last slots, if still short */
	while (*freed < bytes) {
		uint64_t f = free_one_slot(p, dev);
		if (!f)
			break;
		*freed += f;
	}
}

/* Gives back up to bytes on dev; while short, waits up to wait_ns for
 * busy slots and chunks (a layer acquired, a copy running) to go idle and
 * tries again. */
static uint64_t reclaim(struct vram_pager *p, uint32_t dev, uint64_t bytes, uint64_t wait_ns)
{
	uint64_t freed = 0, until = now_ns() + wait_ns;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->demoting)
			pthread_cond_wait(&p->cv, &p->mu);
		reclaim_round(p, dev, bytes, &freed);
		uint64_t t = now_ns();
		if (freed >= bytes || t >= until)
			break;
		/* a release or a finished copy broadcasts cv */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t ns = MIN(until - t, 20000000ull) + (uint64_t)ts.tv_nsec;
		ts.tv_sec += (time_t)(ns / 1000000000ull);
		ts.tv_nsec = (long)(ns % 1000000000ull);
		pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	}
	p->st.reclaimed_bytes += freed;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return freed;
}

uint64_t vram_pager_reclaim(vram_pager *p, uint32_t dev, uint64_t bytes)
{
	return reclaim(p, dev, bytes, 0);
}

static uint64_t on_reclaim(void *user, uint32_t device, uint64_t bytes, uint64_t deadline_ms)
{
	struct vram_pager *p = user;
	/* On the dispatch thread, wait for busy memory to go idle for up to
	 * half the broker's deadline (the answer must still arrive in time).
	 * Elsewhere (inside a call of the thread that would release it) not at
	 * all: that wait could only end at its timeout. */
	bool dispatcher = p->dispatcher_started && pthread_equal(pthread_self(), p->dispatcher);
	uint64_t wait_ns = dispatcher ? MIN(deadline_ms, 10000ull) / 2 * 1000000ull : 0;
	return reclaim(p, device, bytes, wait_ns);
}

static void *dispatcher_main(void *arg)
{
	struct vram_pager *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		bool stop = p->stop;
		pthread_mutex_unlock(&p->mu);
		if (stop)
			break;
		struct pollfd pf = { .fd = vram_client_fd(p->c), .events = POLLIN };
		if (poll(&pf, 1, 50) > 0) {
			if (pf.revents & (POLLHUP | POLLERR))
				break;
			vram_dispatch(p->c);
		}
	}
	return NULL;
}

/* ---- create / free ------------------------------------------------------- */

void vram_pager_free(vram_pager *p)
{
	struct rt_saved_error e;
	if (!p)
		return;
	rt_error_save(&e);
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	if (p->copier_started)
		pthread_join(p->copier, NULL);
	if (p->dispatcher_started)
		pthread_join(p->dispatcher, NULL);
	if (p->c)
		vram_set_reclaim_handler(p->c, NULL, NULL);
	/* unpinned before anything is freed: pinned memory is never unmapped */
	for (uint32_t i = 0; i < p->npins; i++)
		cuda_unpin(p->pins[i]);
	for (uint32_t i = 0; i < p->nslots; i++)
		if (p->slots[i].grant)
			vram_free(p->c, p->slots[i].grant);
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++)
		cuda_copier_free(p->cuda_copier[d]);
	free(p->bounce);
	free(p->raw);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->layers);
	free(p->toff);
	free(p->order);
	free(p->pos);
	free(p->seen);
	free(p->queue);
	free(p);
	rt_error_restore(&e);
}

/* The pager's state and arrays for loaded model l; NULL when out of memory
 * (nothing left allocated). */
static struct vram_pager *pager_alloc(vram_loaded *l, const struct vram_pager_options *o)
{
	struct vram_pager *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->l = l;
	p->c = l->client;
	p->m = l->model;
	p->pin_dev = -1;
	p->depth = o->prefetch_depth ? o->prefetch_depth : 2;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->st.struct_size = sizeof(p->st);
	p->nlayers = l->model->nlayers;
	size_t nl = (size_t)p->nlayers + 1;
	p->layers = calloc(nl, sizeof(*p->layers));
	p->toff = calloc((size_t)l->ntensors + 1, sizeof(*p->toff));
	p->order = calloc(nl, sizeof(*p->order));
	p->pos = calloc(nl, sizeof(*p->pos));
	p->seen = calloc(nl, sizeof(*p->seen));
	p->queue = calloc(MAX_SLOTS, sizeof(*p->queue));
	if (!p->layers || !p->toff || !p->order || !p->pos || !p->seen || !p->queue) {
		vram_pager_free(p);
		return NULL;
	}
	return p;
}

/* Each layer as loaded: its tensors' offsets packed in a slot, its home,
 * and whether it is paged (some of it is not on its component's compute
 * device); ret_largest[d] the largest donor layer paged onto device d. */
static void pager_layers(struct vram_pager *p, const vram_plan *plan, uint64_t *ret_largest)
{
	vram_loaded *l = p->l;
	int cdev[VRAM_COMP_COUNT];

	/* Compute device of each component, as a broker device index. */
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		int pd = vram_plan_compute_device(plan, k);
		cdev[k] = pd < 0 ? -1 : vram_device_find(p->c, vram_plan_device_name(plan, (uint32_t)pd));
	}
	for (uint32_t li = 0; li < p->nlayers; li++) {
		const struct model_layer *ml = &p->m->layers[li];
		struct player *L = &p->layers[li];
		L->first = ml->first;
		L->ntensors = ml->count;
		L->nbytes = 0;  /* as loaded (conversion may have changed it) */
		L->slot = -1;
		p->order[li] = li;
		p->pos[li] = li;
		uint64_t packed = 0;
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++) {
			uint64_t nb = vram_loaded_tensor_nbytes(l, t);
			packed = align_up(packed, SLOT_ALIGN);
			p->toff[t] = packed;
			packed += nb;
			L->nbytes += nb;
		}
		L->packed = packed;
		L->leader = li;
		L->gcount = 1;
		L->gpacked = packed;
		L->gbytes = L->nbytes;
		int compute = cdev[ml->component];
		/* A layer the plan split between devices (it places modules) is
		 * paged whole when any part is off the compute device. */
		int home = L->ntensors ? vram_loaded_tensor_device(l, L->first) : -1;
		for (uint32_t t = L->first; home == compute && t < L->first + L->ntensors; t++)
			home = vram_loaded_tensor_device(l, t);
		if (home < 0 || compute < 0 || home == compute || !L->nbytes) {
			L->paged = false;
			L->compute = home < 0 ? 0 : (uint32_t)home;
			continue;
		}
		L->paged = true;
		L->compute = (uint32_t)compute;
		ret_largest[compute] = MAX(ret_largest[compute], packed);
	}
}

/* Groups: consecutive donor layers of one compute device that fit in a
 * slot (the largest donor layer's size) together. */
static void pager_groups(struct vram_pager *p, const uint64_t *largest)
{
	for (int li = 0, g = -1; li < (int)p->nlayers; li++) {
		struct player *L = &p->layers[li];
		if (!L->paged) {
			g = -1;
			continue;
		}
		if (g >= 0) {
			struct player *G = &p->layers[g];
			uint64_t base = align_up(G->gpacked, SLOT_ALIGN);
			if (G->compute == L->compute && (uint32_t)g + G->gcount == (uint32_t)li &&
			    base + L->packed <= largest[L->compute]) {
				for (uint32_t t = L->first; t < L->first + L->ntensors; t++)
					p->toff[t] += base;
				L->leader = (uint32_t)g;
				G->gcount++;
				G->gpacked = base + L->packed;
				G->gbytes += L->nbytes;
				continue;
			}
		}
		g = li;
	}
}

/* Windows: slot size = the largest donor layer; default slot count = two
 * layers plus the prefetch depth, else as many as window_bytes holds.
 * 0, -EINVAL for a window smaller than a device's largest donor layer, or
 * the allocation's error naming the device. */
static int pager_windows(struct vram_pager *p, const struct vram_pager_options *o, const uint64_t *largest)
{
	char s1[32], s2[32];

	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		if (!largest[d])
			continue;
		struct vram_device_info di = { .struct_size = sizeof(di) };
		vram_device_info(p->c, d, &di);
		uint64_t gran = di.granularity ? di.granularity : 4096;
		p->slot_size[d] = align_up(largest[d], gran);
		uint32_t want = 2 + p->depth;
		if (o->window_bytes) {
			if (o->window_bytes < largest[d])
				return rt_error(-EINVAL, "window of %s on %s is smaller than its largest donor layer (%s)",
						size_format(o->window_bytes, s1, sizeof(s1)), di.name,
						size_format(largest[d], s2, sizeof(s2)));
			want = (uint32_t)MIN(o->window_bytes / p->slot_size[d], (uint64_t)MAX_SLOTS);
			if (want == 0) /* window >= layer but < its rounded slot */
				want = 1;
		}
		if (p->nslots + want > MAX_SLOTS)
			want = MAX_SLOTS - p->nslots;
		p->target_slots[d] = want;
		for (uint32_t i = 0; i < want; i++) {
			struct slot *s = &p->slots[p->nslots];
			s->dev = d;
			s->layer = -1;
			int r = vram_alloc(p->c, d, p->slot_size[d], VRAM_ALLOC_RECLAIMABLE, &s->grant);
			if (r < 0)
				return rt_error(r, "allocating the window on %s: %s", di.name, vram_last_error());
			prefault(s->grant);
			p->nslots++;
			p->st.window_bytes += p->slot_size[d];
		}
	}
	return 0;
}

/* CUDA windows copy from host donors: page-lock those grants so that the
 * copies are DMA (best effort: pageable copies still work). */
static void pager_pin_donors(struct vram_pager *p, const uint64_t *largest)
{
	int cuda_dev = -1;

	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		struct vram_device_info di = { .struct_size = sizeof(di) };
		if (largest[d] && vram_device_info(p->c, d, &di) == 0 && di.backend == VRAM_BACKEND_CUDA)
			cuda_dev = (int)d;
	}
	p->pin_dev = cuda_dev;
	for (uint32_t gi = 0; cuda_dev >= 0 && gi < p->l->ngrants; gi++)
		if (p->l->grants[gi].grant)
			pin_grant(p, p->l->grants[gi].grant);
}

/* The copy thread, the reclaim handler and (unless the caller dispatches)
 * the thread that answers the broker.  0 or -EAGAIN. */
static int pager_start(struct vram_pager *p, const struct vram_pager_options *o)
{
	if (pthread_create(&p->copier, NULL, copier_main, p) != 0)
		return rt_error(-EAGAIN, "cannot start the copy thread");
	p->copier_started = true;
	if (!(o->flags & VRAM_PAGER_NO_RECLAIM))
		vram_set_reclaim_handler(p->c, on_reclaim, p);
	if (!(o->flags & (VRAM_PAGER_NO_DISPATCH_THREAD | VRAM_PAGER_NO_RECLAIM))) {
		if (pthread_create(&p->dispatcher, NULL, dispatcher_main, p) != 0)
			return rt_error(-EAGAIN, "cannot start the reclaim thread");
		p->dispatcher_started = true;
	}
	return 0;
}

/* A pager over loaded model l placed by plan (vram.h): layers, groups,
 * window slots, pins, threads.  On failure nothing stays allocated (the
 * load is still the caller's) and *ret is untouched. */
int vram_pager_create(vram_loaded *l, const vram_plan *plan, const struct vram_pager_options *o,
		      vram_pager **ret)
{
	struct vram_pager_options defaults;
	uint64_t largest[VRAMD_MAX_DEVICES] = { 0 };
	int r;

	rt_error_clear();
	if (!l || !plan || !ret)
		return rt_error(-EINVAL, "vram_pager_create: NULL argument");
	if (!o) {
		vram_pager_options_init(&defaults);
		o = &defaults;
	}
	if (o->flags & ~(VRAM_PAGER_NO_DISPATCH_THREAD | VRAM_PAGER_NO_RECLAIM))
		return rt_error(-EINVAL, "unknown pager flags 0x%x", o->flags);
	if (o->prefetch_depth > 64)
		return rt_error(-EINVAL, "prefetch depth %u is more than 64", o->prefetch_depth);

	struct vram_pager *p = pager_alloc(l, o);
	if (!p)
		return rt_error(-ENOMEM, "out of memory");
	pager_layers(p, plan, largest);
	pager_groups(p, largest);
	if ((r = pager_windows(p, o, largest)) < 0) {
		vram_pager_free(p); /* keeps the message */
		return r;
	}
	pager_pin_donors(p, largest);
	if ((r = pager_start(p, o)) < 0) {
		vram_pager_free(p);
		return r;
	}
	*ret = p;
	return 0;
}

int vram_pager_stats(const vram_pager *p, struct vram_pager_stats *ret)
{
	vram_pager *mp = (vram_pager *)p;
	pthread_mutex_lock(&mp->mu);
	*ret = p->st;
	ret->window_slots = 0;
	ret->window_bytes = 0;
	for (uint32_t i = 0; i < p->nslots; i++)
		if (p->slots[i].grant) {
			ret->window_slots++;
			ret->window_bytes += vram_grant_size(p->slots[i].grant);
		}
	pthread_mutex_unlock(&mp->mu);
	return 0;
}

int vram_pager_order(const vram_pager *p, uint32_t i)
{
	if (i >= p->nlayers)
		return rt_error(-EINVAL, "no position %u", i);
	vram_pager *mp = (vram_pager *)p;
	pthread_mutex_lock(&mp->mu);
	int r = (int)p->order[i];
	pthread_mutex_unlock(&mp->mu);
	return r;
}
