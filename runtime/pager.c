/* SPDX-License-Identifier: MIT */
/*
 * The pager: layers homed on a donor device are served through a window on
 * their component's compute device.
 *
 * The window is a set of slots, each big enough for the largest donor
 * layer.  Consecutive small donor layers of one chunk that fit in one slot
 * together are paged as one group, so that a window of a few slots still
 * lets the copier run far ahead through a stretch of small layers (whose
 * compute is short) towards a large one (whose copy is long).  acquire(L)
 * pins L's slot (copying L in if it is not there) and queues copies of the
 * next layers along the current order; a copy thread fills slots (memcpy
 * from donor memory, or pread from the checkpoint for layers dropped by
 * reclaim).  The order is the file's layer order until the first complete
 * pass, then the order that pass observed.
 *
 * Giving memory back and taking it again (RECLAIM, OFFER, DEMAND, the
 * mover thread) is pager-reclaim.c.
 *
 * Locking: one mutex guards the pager's state; it is never held across
 * broker I/O (vram_alloc/vram_free) nor across a copy.  A copy reads a
 * chunk outside the mutex while the chunk's readers count says so; nothing
 * moves or frees a chunk with readers.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
#include "runtime/dtype.h"
#include "runtime/model.h"
#include "runtime/pager.h"
#include "kernels/kernels.h"

/* How long acquire keeps asking for a window slot the broker refuses with
 * -ENOMEM (another client's request parked first) before failing. */
#define GROW_RETRY_NS (5ull * 1000000000ull)
/* How long making the window keeps asking (the RECLAIM handler is not
 * installed yet: well under the broker's default reclaim deadline). */
#define WINDOW_RETRY_NS (1000000000ull)
/* A copy into a slot looks between pieces of this size whether reclaim
 * called it off. */
#define COPY_PIECE (4ull << 20)

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

static uint8_t *slot_host(const struct slot *s)
{
	uint8_t *h = vram_grant_host_ptr(s->grant);
	return h ? h + s->off : NULL;
}

static uint64_t slot_dptr(const struct slot *s)
{
	uint64_t d = vram_grant_device_ptr(s->grant);
	return d ? d + s->off : 0;
}

/* ---- the copy thread ------------------------------------------------- */

int pager_read_loaded(const struct vram_pager *p, uint32_t t, uint64_t off, uint64_t len, uint8_t *dst,
		      uint8_t **raw, uint64_t *raw_size)
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
		if (*raw_size < flen) {
			uint8_t *n = realloc(*raw, flen);
			if (!n)
				return rt_error(-ENOMEM, "out of memory reading back tensor \"%s\"", mt->name);
			*raw = n;
			*raw_size = flen;
		}
		buf = *raw;
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

/* Whether reclaim called the copy into s off (read without mu). */
static bool cancelled(const struct slot *s)
{
	return __atomic_load_n(&s->cancel, __ATOMIC_RELAXED);
}

/* The tensors [first, end) of the group led by layer. */
static void group_tensors(const struct vram_pager *p, uint32_t layer, uint32_t *ret_first, uint32_t *ret_end)
{
	const struct player *L = &p->layers[layer], *last = &p->layers[layer + L->gcount - 1];
	*ret_first = L->first;
	*ret_end = last->first + last->ntensors;
}

/* Fills a slot on a CUDA device: async copies on the device's copy stream
 * from pinned donor memory (host), device to device (donor GPU), or via a
 * bounce buffer from the file (dropped layers); waits for them. */
static int fill_slot_cuda(struct vram_pager *p, struct slot *s, uint32_t layer)
{
	uint32_t first_t, last_t;
	uint64_t dbase = slot_dptr(s);
	int r;
	if (!dbase)
		return -ENOTSUP;
	group_tensors(p, layer, &first_t, &last_t);
	if (!p->cuda_copier[s->dev] && (r = cuda_copier_new(p->c, s->dev, 1, &p->cuda_copier[s->dev])) < 0)
		return r;
	struct cuda_copier *cp = p->cuda_copier[s->dev];
	for (uint32_t t = first_t; t < last_t; t++) {
		uint64_t nb = vram_loaded_tensor_nbytes(p->l, t);
		if (!nb)
			continue;
		if (cancelled(s))
			return (r = cuda_copier_wait(cp, 0)) < 0 ? r : -ECANCELED;
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
				if ((r = pager_read_loaded(p, t, done, k, p->bounce, &p->raw, &p->raw_size)) < 0 ||
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

/* Counts a reader in (add) or out of the chunk of each tensor of the
 * group led by layer (once per tensor: a group, or a split layer, may
 * read more than one chunk).  mu held. */
static void group_readers(struct vram_pager *p, uint32_t layer, bool add)
{
	uint32_t first_t, end_t;
	group_tensors(p, layer, &first_t, &end_t);
	for (uint32_t t = first_t; t < end_t; t++) {
		struct pchunk *ch = &p->chunks[p->l->tensors[t].grant];
		if (add)
			ch->readers++;
		else
			ch->readers--;
	}
}

bool pager_slot_reads_dev(const struct vram_pager *p, uint32_t layer, uint32_t dev)
{
	uint32_t first_t, end_t;
	group_tensors(p, layer, &first_t, &end_t);
	for (uint32_t t = first_t; t < end_t; t++) {
		const struct loaded_grant *lg = &p->l->grants[p->l->tensors[t].grant];
		if (lg->grant && lg->device == dev)
			return true;
	}
	return false;
}

/* Fills slot s with the group led by layer (its layers are consecutive,
 * so are their tensors; the readers counts of their chunks keep those
 * where they are meanwhile).  -ECANCELED when reclaim wants the slot or
 * the chunk: it looks between pieces of COPY_PIECE bytes. */
static int fill_slot(struct vram_pager *p, struct slot *s, uint32_t layer)
{
	uint32_t first_t, last_t;
	uint8_t *dst = slot_host(s);
	if (!dst)
		return fill_slot_cuda(p, s, layer);
	group_tensors(p, layer, &first_t, &last_t);
	for (uint32_t t = first_t; t < last_t; t++) {
		uint64_t nb = vram_loaded_tensor_nbytes(p->l, t);
		if (!nb)
			continue;
		if (cancelled(s))
			return -ECANCELED;
		const uint8_t *src = vram_loaded_tensor_host_ptr(p->l, t);
		if (src) {
			for (uint64_t done = 0; done < nb; done += COPY_PIECE) {
				if (done && cancelled(s))
					return -ECANCELED;
				memcpy(dst + p->toff[t] + done, src + done, MIN(COPY_PIECE, nb - done));
			}
			continue;
		}
		/* dropped by reclaim: the file is the donor */
		int r = pager_read_loaded(p, t, 0, nb, dst + p->toff[t], &p->raw, &p->raw_size);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Takes the next queued slot off the ring; -1 when the ring is empty. */
static int dequeue(struct vram_pager *p)
{
	while (p->qlen) {
		uint32_t si = p->queue[p->qhead];
		p->qhead = (p->qhead + 1) % MAX_SLOTS;
		p->qlen--;
		struct slot *s = &p->slots[si];
		if (s->state == SLOT_QUEUED && s->layer >= 0 && s->grant)
			return (int)si;
	}
	return -1;
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
		int si = dequeue(p);
		if (si < 0)
			continue;
		struct slot *s = &p->slots[si];
		s->state = SLOT_COPYING;
		uint32_t layer = (uint32_t)s->layer;
		group_readers(p, layer, true);
		pthread_mutex_unlock(&p->mu);
		uint64_t t0 = now_ns();
		rt_error_clear(); /* what fill_slot says is its own */
		int r = fill_slot(p, s, layer);
		uint64_t dt = now_ns() - t0;
		pthread_mutex_lock(&p->mu);
		group_readers(p, layer, false);
		p->st.copy_ns += dt;
		if ((r == -ECANCELED || s->cancel) && s->pins) {
			/* an acquire came to wait for it meanwhile: fill it
			 * after all (reclaim leaves acquired slots alone) */
			s->cancel = false;
			s->state = SLOT_QUEUED;
			p->queue[(p->qhead + p->qlen++) % MAX_SLOTS] = (uint32_t)si;
		} else if (r == -ECANCELED || s->cancel) {
			/* reclaim wants the slot or what it reads: not a failure */
			s->cancel = false;
			pager_evict(p, s);
		} else if (r < 0) {
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
 * recently used evictable one (never one whose stream-ordered release is
 * pending).  -1 if none.  Caller holds mu. */
static int pick_slot(struct vram_pager *p, uint32_t dev, uint64_t need, int32_t from_pos, bool for_prefetch)
{
	int best = -1;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev || s->busy || s->size < need)
			continue;
		if (s->layer < 0 && !pager_fence_pending(p, &p->slot_fence[i]))
			return (int)i;
	}
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev || s->busy || s->pins || s->state == SLOT_COPYING ||
		    s->state == SLOT_QUEUED || s->size < need)
			continue;
		/* released on a stream whose kernels may still read it */
		if (pager_fence_pending(p, &p->slot_fence[i]))
			continue;
		if (for_prefetch && from_pos >= 0 && wanted_soon(p, (uint32_t)s->layer, (uint32_t)from_pos))
			continue;
		if (best < 0 || s->last_use < p->slots[best].last_use)
			best = (int)i;
	}
	return best;
}

void pager_evict(struct vram_pager *p, struct slot *s)
{
	if (s->layer >= 0) {
		p->layers[s->layer].slot = -1;
		s->layer = -1;
	}
	s->prefetched = false;
	s->state = SLOT_EMPTY;
}

void pager_unqueue(struct vram_pager *p, uint32_t si)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < p->qlen; i++) {
		uint32_t e = p->queue[(p->qhead + i) % MAX_SLOTS];
		if (e != si)
			p->queue[(p->qhead + n++) % MAX_SLOTS] = e;
	}
	p->qlen = n;
	pager_evict(p, &p->slots[si]);
}

static void enqueue(struct vram_pager *p, uint32_t si, uint32_t layer, bool prefetch)
{
	struct slot *s = &p->slots[si];
	pager_evict(p, s);
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
		struct slot *s = &p->slots[i];
		if (s->grant && s->dev == dev)
			have++;
		else if (!s->grant && idx < 0 && !s->busy)
			idx = (int)i;
	}
	if (have >= p->target_slots[dev])
		return -ENOSPC;
	if (idx < 0 && p->nslots < MAX_SLOTS)
		idx = (int)p->nslots++;
	if (idx < 0)
		return -ENOSPC;
	struct slot *s = &p->slots[idx];
	*s = (struct slot){ .dev = dev, .layer = -1, .busy = true }; /* reserved while we allocate */
	uint64_t size = p->slot_size[dev];
	pthread_mutex_unlock(&p->mu);
	vram_grant *g = NULL;
	int r = vram_alloc(p->c, dev, size, VRAM_ALLOC_RECLAIMABLE, &g);
	if (r == 0)
		prefault(g);
	pthread_mutex_lock(&p->mu);
	s->busy = false;
	if (r < 0)
		return r;
	s->grant = g;
	s->off = 0;
	s->size = vram_grant_size(g);
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

uint64_t pager_largest_paged(const struct vram_pager *p, uint32_t dev)
{
	uint64_t m = 0;
	for (uint32_t li = 0; li < p->nlayers; li++)
		if (p->layers[li].paged && p->layers[li].compute == dev && p->layers[li].leader == li)
			m = MAX(m, p->layers[li].gpacked);
	return m;
}

uint32_t pager_slots_fitting(const struct vram_pager *p, uint32_t dev, uint64_t need)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < p->nslots; i++)
		if (p->slots[i].dev == dev && p->slots[i].grant && p->slots[i].size >= need)
			n++;
	return n;
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

static void timed_wait(struct vram_pager *p, uint64_t ns)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ns += (uint64_t)ts.tv_nsec;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	pthread_cond_timedwait(&p->cv, &p->mu, &ts);
}

/* Waits for slot s, pinned for layer's group g, to be filled.  0, or the
 * failed copy's error (the pin dropped, the message set).  mu held. */
static int wait_filled(struct vram_pager *p, struct slot *s, uint32_t g, uint32_t layer, bool *waited)
{
	while (s->state != SLOT_READY && s->layer == (int32_t)g) {
		pthread_cond_wait(&p->cv, &p->mu);
		*waited = true;
	}
	if (s->layer == (int32_t)g && s->state == SLOT_READY)
		return 0;
	s->pins--;
	int err = p->copy_err ? p->copy_err : -EIO;
	return rt_error(err, "paging layer %u in failed: %s", layer, p->copy_msg[0] ? p->copy_msg : strerror(-err));
}

/* The fence of the least recently used slot on dev holding need bytes
 * that only a pending stream-ordered release keeps from being reused;
 * NULL if none.  mu held. */
static struct pfence *oldest_fence(struct vram_pager *p, uint32_t dev, uint64_t need)
{
	int best = -1;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev || s->busy || s->pins || s->state == SLOT_COPYING ||
		    s->state == SLOT_QUEUED || s->size < need || !pager_fence_pending(p, &p->slot_fence[i]))
			continue;
		if (best < 0 || s->last_use < p->slots[best].last_use)
			best = (int)i;
	}
	return best < 0 ? NULL : &p->slot_fence[best];
}

/* No slot for layer's group: grows the window back (after reclaim), or
 * waits for the GPU to finish with a slot released on a stream, or for
 * another thread to release one, or for a while when the broker
 * refuses for the moment (another client's larger request is parked on the
 * device, and the RECLAIM that makes room may not have reached this pager
 * yet).  0 to try again, or the error to fail with (message set).  mu
 * held. */
static int no_slot(struct vram_pager *p, uint32_t layer, uint64_t *grow_until, bool *waited)
{
	struct player *L = &p->layers[layer];
	int r = grow_slot(p, L->compute);
	if (r == 0)
		return 0;
	struct pfence *f = oldest_fence(p, L->compute, p->layers[L->leader].gpacked);
	if (f) {
		/* only slots released on a stream are left: the GPU frees one */
		pager_fence_wait(p, f);
		*waited = true;
		return 0;
	}
	bool busy_elsewhere = false;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (s->dev == L->compute && (s->busy || (s->grant && (s->pins || s->state == SLOT_COPYING ||
								      s->state == SLOT_QUEUED))))
			busy_elsewhere = true;
	}
	if (!busy_elsewhere && r == -ENOMEM) {
		uint64_t now = now_ns();
		if (!*grow_until)
			*grow_until = now + GROW_RETRY_NS;
		if (now < *grow_until) {
			timed_wait(p, 20000000ull);
			*waited = true;
			return 0;
		}
	}
	if (!busy_elsewhere)
		return rt_error(r == -ENOSPC ? -ENOSPC : r, "no window slot for layer %u on device %u: %s", layer,
				L->compute, r == -ENOSPC ? "every slot is in use" : vram_last_error());
	pthread_cond_wait(&p->cv, &p->mu);
	*waited = true;
	return 0;
}

/* A paged layer: its group into a slot, pinned.  mu held. */
static int acquire_paged(struct vram_pager *p, uint32_t layer, bool *waited)
{
	struct player *L = &p->layers[layer];
	bool counted = false;
	uint64_t grow_until = 0;
	/* The paging unit is the layer's group, led by G. */
	uint32_t g = L->leader;
	struct player *G = &p->layers[g];
	G->last_use = p->clock;
	for (;;) {
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
			return wait_filled(p, s, g, layer, waited);
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
		int r = no_slot(p, layer, &grow_until, waited);
		if (r < 0)
			return r;
		/* the layer may have been promoted meanwhile (mu was dropped) */
		if (!L->paged)
			return 1;
	}
}

int vram_pager_acquire(vram_pager *p, uint32_t layer)
{
	if (layer >= p->nlayers)
		return rt_error(-EINVAL, "no layer %u (the model has %u)", layer, p->nlayers);
	pthread_mutex_lock(&p->mu);
	if (p->held >= VRAM_PAGER_MAX_ACQUIRED) {
		pthread_mutex_unlock(&p->mu);
		return rt_error(-EBUSY, "layer %u: %u acquires are outstanding already (at most %u)", layer, p->held,
				VRAM_PAGER_MAX_ACQUIRED);
	}
	struct player *L = &p->layers[layer];
	if (L->acquired_this_pass)
		end_pass(p);
	L->acquired_this_pass = true;
	if (p->nseen < p->nlayers)
		p->seen[p->nseen++] = layer;
	p->st.acquires++;
	uint64_t t0 = now_ns();
	bool waited = false;
	L->last_use = ++p->clock;
	int r = L->paged ? acquire_paged(p, layer, &waited) : 1;
	if (r > 0) {
		/* resident (from the start, or promoted while we waited) */
		L->pins++;
		p->st.hits++;
		prefetch_after(p, layer);
		r = 0;
	}
	if (r == 0)
		p->held++;
	if (waited)
		p->st.stall_ns += now_ns() - t0;
	pthread_mutex_unlock(&p->mu);
	return r;
}

/* Whether grant g is CUDA device memory (what kernels on a stream read),
 * not host-mappable memory (simulated GPUs, cpu). */
static bool cuda_memory(const vram_grant *g)
{
	return g && !vram_grant_host_ptr(g) && vram_grant_device_ptr(g);
}

/* The fence a stream-ordered release of acquired layer L records, and its
 * device: its slot's, or its resident chunk's; NULL when the memory is not
 * CUDA memory (nothing is queued on a stream against it).  mu held. */
static struct pfence *release_fence(struct vram_pager *p, const struct player *L, uint32_t *ret_dev)
{
	if (L->pins) {
		if (L->chunk == UINT32_MAX || !cuda_memory(p->l->grants[L->chunk].grant))
			return NULL;
		*ret_dev = p->l->grants[L->chunk].device;
		return &p->chunk_fence[L->chunk];
	}
	int32_t si = p->layers[L->leader].slot;
	if (!cuda_memory(p->slots[si].grant))
		return NULL;
	*ret_dev = p->slots[si].dev;
	return &p->slot_fence[si];
}

/* Releases layer; with on_stream, after recording the fence that keeps its
 * memory until what is queued on stream has run.  mu held. */
static int release_layer(struct vram_pager *p, uint32_t layer, bool on_stream, void *stream)
{
	struct player *L = &p->layers[layer];
	int32_t si = p->layers[L->leader].slot;
	/* A resident layer's pins are its own; a paged one's are its slot's
	 * (neither kind changes while acquired: reclaim and promotion leave
	 * acquired layers alone). */
	if (!L->pins && !(L->paged && si >= 0 && p->slots[si].pins))
		return rt_error(-EINVAL, "layer %u is not acquired", layer);
	uint32_t dev = 0;
	struct pfence *f = on_stream ? release_fence(p, L, &dev) : NULL;
	if (f) {
		int r = pager_fence_record(p, f, dev, stream);
		if (r < 0)
			return rt_error(r, "layer %u (still acquired): %s", layer, vram_last_error());
	}
	if (L->pins)
		L->pins--;
	else
		p->slots[si].pins--;
	if (p->held)
		p->held--;
	return 0;
}

int vram_pager_release(vram_pager *p, uint32_t layer)
{
	if (!p)
		return rt_error(-EINVAL, "vram_pager_release: NULL pager");
	if (layer >= p->nlayers)
		return rt_error(-EINVAL, "no layer %u", layer);
	pthread_mutex_lock(&p->mu);
	int r = release_layer(p, layer, false, NULL);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return r;
}

int vram_pager_release_on_stream(vram_pager *p, uint32_t layer, void *cuda_stream)
{
	if (!p)
		return rt_error(-EINVAL, "vram_pager_release_on_stream: NULL pager");
	if (layer >= p->nlayers)
		return rt_error(-EINVAL, "no layer %u (the model has %u)", layer, p->nlayers);
	pthread_mutex_lock(&p->mu);
	rt_error_clear();
	int r = release_layer(p, layer, true, cuda_stream);
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
	if (L->pins)
		return true;
	if (!L->paged)
		return false;
	int32_t si = p->layers[L->leader].slot;
	return si >= 0 && p->slots[si].pins > 0 && p->slots[si].state == SLOT_READY;
}

void *vram_pager_tensor_host_ptr(const vram_pager *p, uint32_t tensor)
{
	const struct player *L;
	if (tensor >= p->l->ntensors || !tensor_acquired(p, tensor, &L))
		return NULL;
	if (L->pins)
		return vram_loaded_tensor_host_ptr(p->l, tensor);
	uint8_t *h = slot_host(&p->slots[p->layers[L->leader].slot]);
	return h ? h + p->toff[tensor] : NULL;
}

uint64_t vram_pager_tensor_device_ptr(const vram_pager *p, uint32_t tensor)
{
	const struct player *L;
	if (tensor >= p->l->ntensors || !tensor_acquired(p, tensor, &L))
		return 0;
	if (L->pins)
		return vram_loaded_tensor_device_ptr(p->l, tensor);
	uint64_t d = slot_dptr(&p->slots[p->layers[L->leader].slot]);
	return d ? d + p->toff[tensor] : 0;
}

/* ---- pinning donor memory (CUDA windows) -------------------------------- */

void pager_pin_grant(struct vram_pager *p, vram_grant *g)
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

void pager_unpin_grant(struct vram_pager *p, vram_grant *g)
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
	pthread_cond_broadcast(&p->mover_cv);
	pthread_mutex_unlock(&p->mu);
	if (p->copier_started)
		pthread_join(p->copier, NULL);
	if (p->dispatcher_started)
		pthread_join(p->dispatcher, NULL);
	if (p->mover_started)
		pthread_join(p->mover, NULL);
	if (p->handlers) {
		vram_set_reclaim_handler(p->c, NULL, NULL);
		vram_set_offer_handler(p->c, NULL, NULL);
	}
	if (p->demanded)
		pager_withdraw_demand(p);
	/* the GPU done with every slot and chunk released on a stream */
	pager_fences_free(p);
	/* unpinned before anything is freed: pinned memory is never unmapped */
	for (uint32_t i = 0; i < p->npins; i++)
		cuda_unpin(p->pins[i]);
	pager_free_slots(p);
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++)
		cuda_copier_free(p->cuda_copier[d]);
	free(p->bounce);
	free(p->raw);
	free(p->mover_buf);
	free(p->mover_raw);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	pthread_cond_destroy(&p->mover_cv);
	free(p->layers);
	free(p->chunks);
	free(p->chunk_fence);
	free(p->toff);
	free(p->order);
	free(p->pos);
	free(p->seen);
	free(p->queue);
	__atomic_sub_fetch(&p->l->pagers, 1, __ATOMIC_ACQ_REL);
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
	__atomic_add_fetch(&l->pagers, 1, __ATOMIC_ACQ_REL); /* until vram_pager_free */
	p->c = l->client;
	p->m = l->model;
	p->pin_dev = -1;
	p->depth = o->prefetch_depth ? o->prefetch_depth : 2;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->mover_cv, NULL);
	p->st.struct_size = sizeof(p->st);
	p->nlayers = l->model->nlayers;
	size_t nl = (size_t)p->nlayers + 1;
	p->layers = calloc(nl, sizeof(*p->layers));
	p->chunks = calloc((size_t)l->ngrants + 1, sizeof(*p->chunks));
	p->chunk_fence = calloc((size_t)l->ngrants + 1, sizeof(*p->chunk_fence));
	p->toff = calloc((size_t)l->ntensors + 1, sizeof(*p->toff));
	p->order = calloc(nl, sizeof(*p->order));
	p->pos = calloc(nl, sizeof(*p->pos));
	p->seen = calloc(nl, sizeof(*p->seen));
	p->queue = calloc(MAX_SLOTS, sizeof(*p->queue));
	if (!p->layers || !p->chunks || !p->chunk_fence || !p->toff || !p->order || !p->pos || !p->seen || !p->queue) {
		vram_pager_free(p);
		return NULL;
	}
	return p;
}

/* Broker device of each component's compute device (-1: none), and of the
 * plan's device of layer li. */
static void plan_devices(struct vram_pager *p, const vram_plan *plan, int *cdev)
{
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		int pd = vram_plan_compute_device(plan, k);
		cdev[k] = pd < 0 ? -1 : vram_device_find(p->c, vram_plan_device_name(plan, (uint32_t)pd));
	}
	rt_error_clear();
}

static int planned_tensor_device(struct vram_pager *p, const vram_plan *plan, uint32_t t)
{
	int pd = vram_plan_tensor_device(plan, t);
	int d = pd < 0 ? -1 : vram_device_find(p->c, vram_plan_device_name(plan, (uint32_t)pd));
	rt_error_clear();
	return d;
}

static int planned_device(struct vram_pager *p, const vram_plan *plan, uint32_t li)
{
	int pd = vram_plan_layer_device(plan, li);
	int d = pd < 0 ? -1 : vram_device_find(p->c, vram_plan_device_name(plan, (uint32_t)pd));
	rt_error_clear();
	return d;
}

/* Each layer as loaded: its tensors' offsets packed in a slot, where it is
 * (its chunk: that of its first tensor; a layer the plan split between
 * devices has a part in a chunk of each), whether the plan made it
 * resident, and whether it is paged (some of it is not on its component's
 * compute device: a donor layer, a split one, or one the load had to place
 * on the donor); ret_largest[d] the largest paged layer on device d.  Each
 * chunk: its compute device and planned residence. */
static void pager_layers(struct vram_pager *p, const vram_plan *plan, uint64_t *ret_largest)
{
	vram_loaded *l = p->l;
	int cdev[VRAM_COMP_COUNT];

	plan_devices(p, plan, cdev);
	for (uint32_t li = 0; li < p->nlayers; li++) {
		const struct model_layer *ml = &p->m->layers[li];
		struct player *L = &p->layers[li];
		L->first = ml->first;
		L->ntensors = ml->count;
		L->nbytes = 0;  /* as loaded (conversion may have changed it) */
		L->slot = -1;
		L->chunk = L->ntensors ? l->tensors[L->first].grant : UINT32_MAX;
		L->split = false;
		p->order[li] = li;
		p->pos[li] = li;
		uint64_t packed = 0;
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++) {
			uint64_t nb = vram_loaded_tensor_nbytes(l, t);
			L->split = L->split || l->tensors[t].grant != L->chunk;
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
			L->planned_resident = true;
		} else {
			L->paged = true;
			L->compute = (uint32_t)compute;
			L->planned_resident = planned_device(p, plan, li) == compute;
			ret_largest[compute] = MAX(ret_largest[compute], packed);
		}
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++) {
			struct pchunk *ch = &p->chunks[l->tensors[t].grant];
			ch->compute = L->compute;
			ch->planned_resident = L->split ? planned_tensor_device(p, plan, t) == (int)L->compute
							: L->planned_resident;
		}
	}
	rt_error_clear();
}

/* Groups: consecutive donor layers of one chunk that fit in a slot (the
 * largest donor layer's size) together.  One chunk, so that the chunk a
 * group is read from is one, and a chunk moved back to its compute device
 * takes whole groups. */
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
			if (G->compute == L->compute && G->chunk == L->chunk && (uint32_t)g + G->gcount == (uint32_t)li &&
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

/* Allocates want slots of slot_size[d] on d; stops at the first failure.
 * Returns the error (0: all there). */
static int window_alloc(struct vram_pager *p, uint32_t d, uint32_t want)
{
	for (uint32_t i = 0; i < want && p->nslots < MAX_SLOTS; i++) {
		struct slot *s = &p->slots[p->nslots];
		*s = (struct slot){ .dev = d, .layer = -1 };
		int r = vram_alloc(p->c, d, p->slot_size[d], VRAM_ALLOC_RECLAIMABLE, &s->grant);
		if (r < 0)
			return r;
		s->size = vram_grant_size(s->grant);
		prefault(s->grant);
		p->nslots++;
	}
	return 0;
}

/* The window on d when the device refused its grants (r: this client is
 * at its fair share there, or a ceiling): cut from the model's resident
 * chunks there, else allocated in room those chunks leave (their layers
 * are paged from then on, as after a RECLAIM), until need slots hold the
 * largest layer.  The room can go to another client's request parked
 * first, so this is tried again for WINDOW_RETRY_NS.  0, or r with the last
 * allocation's message. */
static int window_fallback(struct vram_pager *p, uint32_t d, uint32_t need, uint64_t largest, int r)
{
	uint64_t until = now_ns() + WINDOW_RETRY_NS;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		pager_window_from_chunks(p, d);
		uint32_t have = pager_slots_fitting(p, d, largest);
		if (have < need)
			pager_window_room(p, d, (uint64_t)(need - have) * p->slot_size[d]);
		pthread_mutex_unlock(&p->mu);
		int ra = have < need ? window_alloc(p, d, need - have) : 0;
		if (ra == 0) {
			rt_error_clear();
			return 0;
		}
		if ((ra != -ENOMEM && ra != -EDQUOT) || now_ns() >= until)
			return rt_error(ra == -ENOMEM || ra == -EDQUOT ? r : ra, "%s", vram_last_error());
		struct timespec ts = { 0, 20000000L };
		nanosleep(&ts, NULL);
	}
}

/* Windows: slot size = the largest donor layer; default slot count = two
 * layers plus the prefetch depth, else as many as window_bytes holds.  A
 * device that refuses the slots (this client is at its fair share there,
 * or a ceiling) gets its window from its resident chunks instead, as a
 * RECLAIM would (pager-reclaim.c).  0, -EINVAL for a window smaller than a
 * device's largest donor layer, or the allocation's error naming the
 * device. */
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
		int r = window_alloc(p, d, want);
		if (r == -ENOMEM || r == -EDQUOT)
			r = window_fallback(p, d, MIN(want, PAGER_MIN_SLOTS), largest[d], r);
		if (r < 0)
			return rt_error(r, "allocating the window on %s: %s", di.name, vram_last_error());
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
			pager_pin_grant(p, p->l->grants[gi].grant);
}

/* The copy thread and the mover; unless told not to, the demand, the
 * broker's handlers and the thread that answers the broker.  0 or
 * -EAGAIN. */
static int pager_start(struct vram_pager *p, const struct vram_pager_options *o)
{
	if (p->handlers)
		pager_declare_demand(p); /* again, with the window made */
	if (pthread_create(&p->copier, NULL, copier_main, p) != 0)
		return rt_error(-EAGAIN, "cannot start the copy thread");
	p->copier_started = true;
	if (pthread_create(&p->mover, NULL, pager_mover_main, p) != 0)
		return rt_error(-EAGAIN, "cannot start the mover thread");
	p->mover_started = true;
	if (!p->handlers)
		return 0;
	vram_set_offer_handler(p->c, pager_on_offer, p);
	vram_set_reclaim_handler(p->c, pager_on_reclaim, p);
	if (!(o->flags & VRAM_PAGER_NO_DISPATCH_THREAD)) {
		if (pthread_create(&p->dispatcher, NULL, pager_dispatcher_main, p) != 0)
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
	/* What it wants, said before the window is asked for: the broker's
	 * fair split counts it, so that the holders above their share are
	 * asked for the excess (a newcomer that only asks for its window is
	 * counted as wanting just that, and refused). */
	p->handlers = !(o->flags & VRAM_PAGER_NO_RECLAIM);
	/* until its own handler and thread take over: RECLAIMs for the load
	 * answered, not left unread while the window is made and pinned */
	struct client_watch watch = { 0 };
	if (p->handlers) {
		client_watch_start(&watch, p->c, false);
		pager_declare_demand(p);
	}
	if ((r = pager_windows(p, o, largest)) == 0) {
		pager_pin_donors(p, largest);
		r = pager_start(p, o);
	}
	client_watch_stop(&watch);
	if (r < 0) {
		vram_pager_free(p); /* keeps the message */
		return r;
	}
	*ret = p;
	return 0;
}

int vram_pager_stats(const vram_pager *p, struct vram_pager_stats *ret)
{
	vram_pager *mp = (vram_pager *)p;
	if (!p || !ret)
		return rt_error(-EINVAL, "vram_pager_stats: NULL argument");
	pthread_mutex_lock(&mp->mu);
	struct vram_pager_stats st = p->st;
	st.window_slots = 0;
	st.window_bytes = 0;
	for (uint32_t i = 0; i < p->nslots; i++)
		if (p->slots[i].grant) {
			st.window_slots++;
			st.window_bytes += p->slots[i].size;
		}
	pthread_mutex_unlock(&mp->mu);
	return rt_struct_out(ret, &st, sizeof(st), "vram_pager_stats");
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
