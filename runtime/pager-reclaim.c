/* SPDX-License-Identifier: MIT */
/*
 * The pager's side of sharing a device (docs/paging.md, "Reclaim").
 *
 * RECLAIM is answered at once, whatever the model is doing: idle window
 * slots go first (two that fit the largest group stay), then chunks of the
 * model, least recently used first, except the ones holding a layer
 * acquired at that moment (at most VRAM_PAGER_MAX_ACQUIRED) or being read
 * by a copy (one group at a time: that one is waited for).  Nothing is
 * copied before answering: a resident chunk is dropped (its layers are
 * read from the file from then on), its memory cut into window slots when
 * the window lacks them, else freed.  The mover thread then copies the
 * dropped layers to the donor from the file, when the donor has room.
 *
 * OFFER (memory free and this client below its fair share) is answered by
 * the mover too: chunks the plan made resident come back to their compute
 * device, within the bytes offered, and the window goes once nothing on
 * the device is paged.  DEMAND tells the broker what the pager wants.
 *
 * Every change here is made under the pager's mutex, before it is dropped
 * for broker I/O or a copy, so that reclaims may run side by side (on the
 * dispatch thread, inside any libvram call that reads the socket, and from
 * vram_pager_reclaim); a move the mover makes outside the mutex is marked
 * (chunk moving) and undone when a reclaim of its device began meanwhile.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
#include "runtime/pager.h"

#define MOVER_BOUNCE (8u << 20)
/* A chunk is moved back only when nothing of it is acquired or read at
 * the moment of the switch; waited for this long at most. */
#define SWAP_WAIT_NS (1000ull * 1000000ull)
/* A RECLAIM waits for a copy in flight at most this long (and a quarter
 * of the broker's deadline). */
#define COPY_WAIT_NS (200ull * 1000000ull)
/* After an offer, the broker is reminded of the demand this many times,
 * NUDGE_NS apart, while chunks wait to come back (nudge()). */
#define NUDGES 5u
#define NUDGE_NS (1100ull * 1000000ull)

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

static void timed_wait_on(struct vram_pager *p, pthread_cond_t *cv, uint64_t ns)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ns += (uint64_t)ts.tv_nsec;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	pthread_cond_timedwait(cv, &p->mu, &ts);
}

static void timed_wait(struct vram_pager *p, uint64_t ns)
{
	timed_wait_on(p, &p->cv, ns);
}

bool pager_in_chunk(const struct vram_pager *p, uint32_t li, uint32_t gi)
{
	const struct player *L = &p->layers[li];
	if (L->chunk == gi)
		return true;
	for (uint32_t t = L->first; L->split && t < L->first + L->ntensors; t++)
		if (p->l->tensors[t].grant == gi)
			return true;
	return false;
}

static bool in_chunk(const struct vram_pager *p, uint32_t li, uint32_t gi)
{
	return pager_in_chunk(p, li, gi);
}

/* Whether tensor t is in chunk gi (a split layer's tensors are not all in
 * one). */
static bool tensor_in_chunk(const struct vram_pager *p, uint32_t t, uint32_t gi)
{
	return p->l->tensors[t].grant == gi;
}

bool pager_chunk_carvable(const struct vram_pager *p, uint32_t gi)
{
	const vram_grant *g = p->l->grants[gi].grant;
	return g && !g->shared;
}

/* ---- slots -------------------------------------------------------------- */

/* Whether slot si can be given back: not acquired, copied into, or read
 * by kernels queued before a stream-ordered release.  mu held. */
static bool slot_idle(struct vram_pager *p, uint32_t si)
{
	const struct slot *s = &p->slots[si];
	return s->grant && !s->pins && !s->busy && s->state != SLOT_COPYING &&
	       !pager_fence_pending(p, &p->slot_fence[si]);
}

/* Frees the grant under slot si and every other slot cut from it (all
 * idle: the caller checked; a queued copy is called off).  mu held,
 * dropped around the FREE.  Returns the bytes freed. */
static uint64_t free_slot_grant(struct vram_pager *p, uint32_t si)
{
	vram_grant *g = p->slots[si].grant;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (s->grant != g)
			continue;
		if (s->state == SLOT_QUEUED)
			pager_unqueue(p, i);
		pager_evict(p, s);
		s->grant = NULL;
		s->off = s->size = 0;
	}
	uint64_t size = vram_grant_size(g);
	pager_kick_mover(p); /* the demand changed */
	pthread_mutex_unlock(&p->mu);
	pager_unpin_grant(p, g); /* a slot cut from a host chunk may be pinned */
	vram_free(p->c, g);
	pthread_mutex_lock(&p->mu);
	return size;
}

/* What the slots cut from slot i's grant say together: all idle, one
 * being copied, how many fit need bytes, the latest use.  false unless i
 * is the grant's first slot (so that each grant is looked at once).  mu
 * held. */
struct grant_view {
	bool idle, copying;
	uint32_t fit;
	uint64_t use;
};

static bool grant_view(struct vram_pager *p, uint32_t i, uint64_t need, struct grant_view *v)
{
	const struct slot *s = &p->slots[i];
	*v = (struct grant_view){ .idle = true };
	for (uint32_t j = 0; j < p->nslots; j++) {
		const struct slot *o = &p->slots[j];
		if (o->grant != s->grant)
			continue;
		if (j < i)
			return false;
		v->idle = v->idle && slot_idle(p, j);
		v->copying = v->copying || o->state == SLOT_COPYING;
		v->fit += o->size >= need;
		v->use = MAX(v->use, o->last_use);
	}
	return true;
}

/* The least recently used slot grant on dev of at most room bytes whose
 * slots are all idle and whose going leaves keep slots that hold need
 * bytes, or none of whose slots holds need bytes (cut when the largest
 * layer paged was smaller: keeping it does not make the window work);
 * -1 if none.  *ret_copying is set when one was passed over for a
 * copy in flight. */
static int pick_slot_grant(struct vram_pager *p, uint32_t dev, uint64_t need, uint32_t keep, uint64_t room,
			   bool *ret_copying)
{
	uint32_t fitting = pager_slots_fitting(p, dev, need);
	uint64_t best_use = UINT64_MAX;
	int best = -1;
	for (uint32_t i = 0; i < p->nslots; i++) {
		const struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev)
			continue;
		struct grant_view v;
		if (!grant_view(p, i, need, &v))
			continue; /* a grant is looked at once */
		if (!v.idle) {
			*ret_copying = *ret_copying || v.copying;
			continue;
		}
		if ((v.fit && fitting - v.fit < keep) || vram_grant_size(s->grant) > room)
			continue;
		if (v.use < best_use) {
			best = (int)i;
			best_use = v.use;
		}
	}
	return best;
}

/* Cuts grant g (a chunk reclaim took) into slots of size bytes on dev.
 * Returns how many (0: no room in the slot table; g is still the
 * caller's). */
static uint32_t carve(struct vram_pager *p, vram_grant *g, uint32_t dev, uint64_t size)
{
	uint32_t n = 0, k = (uint32_t)MIN(vram_grant_size(g) / size, (uint64_t)MAX_SLOTS);
	for (uint32_t i = 0; i < p->nslots && n < k; i++) {
		struct slot *s = &p->slots[i];
		if (s->grant || s->busy)
			continue;
		*s = (struct slot){ .grant = g, .off = n * size, .size = size, .dev = dev, .layer = -1 };
		n++;
	}
	while (n < k && p->nslots < MAX_SLOTS) {
		p->slots[p->nslots++] = (struct slot){ .grant = g, .off = n * size, .size = size, .dev = dev, .layer = -1 };
		n++;
	}
	return n;
}

/* ---- chunks ------------------------------------------------------------- */

/* The donor for chunk gi's layers: the device holding other chunks of its
 * component off its compute device, else the cpu pool; -1 if none. */
static int donor_of(struct vram_pager *p, uint32_t gi)
{
	uint32_t comp = p->l->grants[gi].component, compute = p->chunks[gi].compute;
	for (uint32_t i = 0; i < p->l->ngrants; i++) {
		const struct loaded_grant *lg = &p->l->grants[i];
		if (i != gi && lg->grant && lg->component == comp && lg->device != compute)
			return (int)lg->device;
	}
	int cpu = vram_device_find(p->c, "cpu");
	rt_error_clear();
	return cpu >= 0 && (uint32_t)cpu != compute ? cpu : -1;
}

/* Whether something of chunk gi is acquired now: a resident layer, or the
 * slot of a paged layer's group; or kernels queued before a stream-ordered
 * release of one of its resident layers may still read it.  mu held. */
static bool chunk_acquired(struct vram_pager *p, uint32_t gi)
{
	if (pager_fence_pending(p, &p->chunk_fence[gi]))
		return true;
	for (uint32_t li = 0; li < p->nlayers; li++) {
		const struct player *L = &p->layers[li];
		if (!in_chunk(p, li, gi))
			continue;
		if (L->pins)
			return true;
		int32_t si = p->layers[L->leader].slot;
		if (L->paged && si >= 0 && p->slots[si].pins)
			return true;
	}
	return false;
}

/* Whether dropping resident chunk gi would cut it into window slots
 * rather than free it (drop_chunk's rule).  mu held. */
static bool would_carve(const struct vram_pager *p, uint32_t gi)
{
	uint32_t dev = p->l->grants[gi].device;
	uint64_t need = pager_largest_paged(p, dev);
	bool resident = false;
	for (uint32_t li = 0; li < p->nlayers; li++) {
		const struct player *L = &p->layers[li];
		if (in_chunk(p, li, gi) && !L->paged) {
			resident = true;
			need = MAX(need, L->leader == li ? L->gpacked : L->packed);
		}
	}
	return resident && pager_chunk_carvable(p, gi) && pager_slots_fitting(p, dev, need) < PAGER_MIN_SLOTS &&
	       vram_grant_size(p->l->grants[gi].grant) >= align_up(need, SLOT_ROUND);
}

/* Something reclaim can give back now: a slot grant (all its slots idle,
 * the window keeping PAGER_MIN_SLOTS that fit) or a chunk (none of its
 * resident layers acquired, no copy reading it, not being moved), and the
 * bytes it frees (0: a chunk that becomes window slots). */
struct piece {
	int slot, chunk;         /* one of them, the other -1 */
	uint64_t size, use;
};

/* Its class for want bytes with room bytes allowed: 0 fits in want, 1
 * frees nothing (a chunk turned window: the way to the others when there
 * is no window), 2 frees more than want but within room, or past room but
 * less than twice want (memory goes in whole grants: freeing it leaves the
 * client nearer the ask than freeing nothing), 3 none. */
static int piece_class(const struct piece *x, uint64_t want, uint64_t room)
{
	if (x->size > room && x->size / 2 >= want)
		return 3;
	if (!x->size)
		return 1;
	return x->size <= want ? 0 : 2;
}

/* Whether x is a better pick than y: the lower class; in class 0 the
 * larger (fewest pieces, nearest the ask), a slot before a chunk (a slot
 * is prefetch room, a chunk resident layers); in class 2 the smaller (the
 * least past the ask); then the least recently used. */
static bool better_piece(const struct piece *x, const struct piece *y, uint64_t want, uint64_t room)
{
	int cx = piece_class(x, want, room), cy = piece_class(y, want, room);
	if (cx != cy)
		return cx < cy;
	if (cx == 0 && x->size != y->size)
		return x->size > y->size;
	if (cx == 0 && (x->slot >= 0) != (y->slot >= 0))
		return x->slot >= 0;
	if (cx == 2 && x->size != y->size)
		return x->size < y->size;
	return x->use < y->use;
}

/* The idle slot grants of dev as pieces, into best: those whose going
 * leaves PAGER_MIN_SLOTS that fit the largest layer paged there, and
 * those with no slot that fits it (a window whose slots were cut for
 * smaller layers has fewer than that: they went back only with a fitting
 * one to spare, never, and an idle client kept a window of six slots, two
 * quarters of a shared device, answering every RECLAIM with 0 B).  mu
 * held. */
static void slot_pieces(struct vram_pager *p, uint32_t dev, uint64_t want, uint64_t room, struct piece *best,
			bool *ret_copying)
{
	uint64_t need = pager_largest_paged(p, dev);
	uint32_t keep = need ? PAGER_MIN_SLOTS : 0, fitting = pager_slots_fitting(p, dev, need);
	for (uint32_t i = 0; i < p->nslots; i++) {
		const struct slot *s = &p->slots[i];
		if (!s->grant || s->dev != dev)
			continue;
		struct grant_view v;
		if (!grant_view(p, i, need, &v))
			continue; /* a grant is looked at once */
		*ret_copying = *ret_copying || (!v.idle && v.copying);
		struct piece x = { (int)i, -1, vram_grant_size(s->grant), v.use };
		if (v.idle && (!v.fit || fitting - v.fit >= keep) && better_piece(&x, best, want, room))
			*best = x;
	}
}

/* The chunks of dev that can go now as pieces, into best.  mu held. */
static void chunk_pieces(struct vram_pager *p, uint32_t dev, uint64_t want, uint64_t room, struct piece *best,
			 bool *ret_copying)
{
	for (uint32_t gi = 0; gi < p->l->ngrants; gi++) {
		const struct loaded_grant *lg = &p->l->grants[gi];
		const struct pchunk *ch = &p->chunks[gi];
		if (!lg->grant || lg->device != dev || ch->moving)
			continue;
		if (ch->readers) {
			*ret_copying = true;
			continue;
		}
		uint64_t use = 0;
		bool busy = pager_fence_pending(p, &p->chunk_fence[gi]);
		for (uint32_t li = 0; li < p->nlayers; li++)
			if (in_chunk(p, li, gi)) {
				busy = busy || p->layers[li].pins;
				use = MAX(use, p->layers[li].last_use);
			}
		struct piece x = { -1, (int)gi, would_carve(p, gi) ? 0 : vram_grant_size(lg->grant), use };
		if (!busy && better_piece(&x, best, want, room))
			*best = x;
	}
}

/* Drops chunk gi (nothing of it acquired or read: the caller checked):
 * its layers are paged from then on, read from the file until the mover
 * has copied them to the donor.  A resident chunk's memory becomes window
 * slots when the window on its device has fewer than PAGER_MIN_SLOTS that
 * fit the layers paged now (the pager never has to allocate on a device it
 * is giving memory back on: that allocation would wait behind the very
 * request the reclaim serves); otherwise it is freed.  mu held, dropped
 * around the FREE.  Returns the bytes freed. */
static uint64_t drop_chunk(struct vram_pager *p, uint32_t gi, bool may_carve)
{
	struct loaded_grant *lg = &p->l->grants[gi];
	struct pchunk *ch = &p->chunks[gi];
	vram_grant *old = lg->grant;
	uint32_t dev = lg->device, n = 0;
	uint64_t size = vram_grant_size(old);
	bool resident = false, carvable = pager_chunk_carvable(p, gi);
	for (uint32_t li = 0; li < p->nlayers; li++) {
		struct player *L = &p->layers[li];
		if (!in_chunk(p, li, gi))
			continue;
		n++;
		if (!L->paged) {
			resident = true;
			L->paged = true;
			L->slot = -1;
		}
	}
	lg->grant = NULL;
	lg->device = UINT32_MAX;
	ch->size = size;
	ch->rehome = resident && donor_of(p, gi) >= 0;
	p->st.dropped += n;
	pager_kick_mover(p); /* to the donor; the demand changed */
	if (resident) {
		uint64_t need = pager_largest_paged(p, dev), cut = align_up(need, SLOT_ROUND);
		p->slot_size[dev] = MAX(p->slot_size[dev], cut);
		p->target_slots[dev] = MAX(p->target_slots[dev], PAGER_MIN_SLOTS);
		if (may_carve && carvable && pager_slots_fitting(p, dev, need) < PAGER_MIN_SLOTS && size >= cut &&
		    carve(p, old, dev, cut))
			return 0;
	}
	pthread_mutex_unlock(&p->mu);
	pager_unpin_grant(p, old); /* never unmap memory the driver has pinned */
	vram_free(p->c, old);
	pthread_mutex_lock(&p->mu);
	return size;
}

/* The largest layer of chunk gi, in slot bytes. */
static uint64_t chunk_largest(const struct vram_pager *p, uint32_t gi)
{
	uint64_t m = 0;
	for (uint32_t li = 0; li < p->nlayers; li++)
		if (in_chunk(p, li, gi))
			m = MAX(m, p->layers[li].leader == li ? p->layers[li].gpacked : p->layers[li].packed);
	return m;
}

void pager_window_from_chunks(struct vram_pager *p, uint32_t dev)
{
	for (;;) {
		uint64_t need = pager_largest_paged(p, dev);
		if (pager_slots_fitting(p, dev, need) >= PAGER_MIN_SLOTS)
			return;
		/* the largest resident chunk there that holds a slot once its
		 * own layers are paged too (a smaller one would be dropped for
		 * nothing) */
		int best = -1;
		for (uint32_t gi = 0; gi < p->l->ngrants; gi++) {
			const struct loaded_grant *lg = &p->l->grants[gi];
			if (!lg->grant || lg->device != dev || p->chunks[gi].readers || chunk_acquired(p, gi) ||
			    !pager_chunk_carvable(p, gi))
				continue;
			uint64_t cut = align_up(MAX(need, chunk_largest(p, gi)), SLOT_ROUND);
			if (vram_grant_size(lg->grant) >= cut &&
			    (best < 0 || vram_grant_size(lg->grant) > vram_grant_size(p->l->grants[best].grant)))
				best = (int)gi;
		}
		if (best < 0)
			return;
		drop_chunk(p, (uint32_t)best, true);
	}
}

uint64_t pager_window_room(struct vram_pager *p, uint32_t dev, uint64_t bytes)
{
	uint64_t freed = 0;
	while (freed < bytes) {
		int best = -1;
		for (uint32_t gi = 0; gi < p->l->ngrants; gi++) {
			const struct loaded_grant *lg = &p->l->grants[gi];
			if (lg->grant && lg->device == dev && !p->chunks[gi].readers && !chunk_acquired(p, gi) &&
			    (best < 0 || vram_grant_size(lg->grant) > vram_grant_size(p->l->grants[best].grant)))
				best = (int)gi;
		}
		if (best < 0)
			break;
		freed += drop_chunk(p, (uint32_t)best, false);
	}
	return freed;
}

/* ---- reclaim ------------------------------------------------------------ */

/* One round over what is idle on dev now, adding to *freed until it
 * reaches bytes, never past cap (memory goes in whole grants: what is
 * freed past the ask is the client's loss).  *ret_copying: something was
 * passed over only for a copy in flight (worth waiting for).  mu held. */
static void reclaim_round(struct vram_pager *p, uint32_t dev, uint64_t bytes, uint64_t cap, uint64_t *freed,
			  bool *ret_copying)
{
	while (*freed < bytes) {
		uint64_t want = bytes - *freed, room = cap > *freed ? cap - *freed : 0;
		struct piece best = { -1, -1, UINT64_MAX, UINT64_MAX };
		slot_pieces(p, dev, want, room, &best, ret_copying);
		chunk_pieces(p, dev, want, room, &best, ret_copying);
		if ((best.slot < 0 && best.chunk < 0) || piece_class(&best, want, room) == 3)
			break;
		*freed += best.slot >= 0 ? free_slot_grant(p, (uint32_t)best.slot)
					 : drop_chunk(p, (uint32_t)best.chunk, true);
	}
}

/* Calls off the copies in flight that keep memory of dev busy (into a
 * slot there, or reading a chunk there), except those an acquire waits
 * for.  The copy thread stops within COPY_PIECE bytes.  mu held. */
static void cancel_copies(struct vram_pager *p, uint32_t dev)
{
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];
		if (s->state != SLOT_COPYING || s->pins || s->layer < 0)
			continue;
		if (s->dev == dev || pager_slot_reads_dev(p, (uint32_t)s->layer, dev))
			__atomic_store_n(&s->cancel, true, __ATOMIC_RELAXED);
	}
}

uint64_t pager_reclaim(struct vram_pager *p, uint32_t dev, uint64_t bytes, uint64_t cap, uint64_t wait_ns)
{
	uint64_t freed = 0, t0 = now_ns();
	if (dev >= VRAMD_MAX_DEVICES)
		return 0;
	pthread_mutex_lock(&p->mu);
	p->gen[dev]++; /* moves onto dev under way are undone */
	p->offer[dev] = 0;
	for (;;) {
		bool copying = false;
		reclaim_round(p, dev, bytes, cap, &freed, &copying);
		uint64_t t = now_ns();
		if (freed >= bytes || !copying || t >= t0 + wait_ns || p->stop)
			break;
		cancel_copies(p, dev);
		timed_wait(p, MIN(t0 + wait_ns - t, 5000000ull)); /* a finished copy broadcasts */
	}
	uint64_t dt = now_ns() - t0;
	p->st.reclaims++;
	p->st.reclaim_ns += dt;
	p->st.reclaim_ns_max = MAX(p->st.reclaim_ns_max, dt);
	p->st.reclaimed_bytes += freed;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return freed;
}

uint64_t vram_pager_reclaim(vram_pager *p, uint32_t dev, uint64_t bytes)
{
	return pager_reclaim(p, dev, bytes, UINT64_MAX, COPY_WAIT_NS);
}

/* RECLAIM: what was asked, in whole grants, the least beyond it: past
 * the ask only by a grant that leaves the client nearer the ask than
 * without it (less than twice what is still missing).  The broker asks
 * only clients above their fair share, for at most the excess, or, when
 * such asks freed too little, for half a grant of theirs (broker/alloc.c):
 * a client ends below its share by less than one of its grants.  When no
 * grant fits that, less than asked: the broker then asks the others. */
uint64_t pager_on_reclaim(void *user, uint32_t device, uint64_t bytes, uint64_t deadline_ms)
{
	struct vram_pager *p = user;
	uint64_t wait = MIN(deadline_ms * 1000000ull / 4, COPY_WAIT_NS);
	return pager_reclaim(p, device, bytes, bytes, wait);
}

/* ---- offers and demand -------------------------------------------------- */

void pager_on_offer(void *user, uint32_t device, uint64_t bytes)
{
	struct vram_pager *p = user;
	if (device >= VRAMD_MAX_DEVICES)
		return;
	pthread_mutex_lock(&p->mu);
	p->offer[device] = bytes;
	p->nudges[device] = NUDGES;
	p->st.offers++;
	pager_kick_mover(p);
	pthread_mutex_unlock(&p->mu);
}

/* Bytes chunk gi takes on a GPU-style layout (each tensor on its own,
 * SLOT_ALIGN-aligned), and, when off is given, each of its tensors' offset
 * there (in tensor order). */
static uint64_t device_layout(const struct vram_pager *p, uint32_t gi, uint64_t *off)
{
	uint64_t cursor = 0;
	uint32_t k = 0;
	for (uint32_t li = 0; li < p->nlayers; li++) {
		const struct player *L = &p->layers[li];
		if (!in_chunk(p, li, gi))
			continue;
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++) {
			if (!tensor_in_chunk(p, t, gi))
				continue;
			cursor = align_up(cursor, SLOT_ALIGN);
			if (off)
				off[k] = cursor;
			k++;
			cursor += vram_loaded_tensor_nbytes(p->l, t);
		}
	}
	return cursor ? cursor : SLOT_ALIGN;
}

/* What the pager wants on each device now (DEMAND): every chunk the plan
 * made resident there (at its size there), and, while layers are paged
 * onto it, the window it holds (at least the minimum); the least it can
 * work with: PAGER_MIN_SLOTS slots for its largest layer there.  mu held. */
static void demand_compute(const struct vram_pager *p, uint64_t *want, uint64_t *min)
{
	uint64_t largest[VRAMD_MAX_DEVICES] = { 0 }, window[VRAMD_MAX_DEVICES] = { 0 };

	memset(want, 0, VRAMD_MAX_DEVICES * sizeof(*want));
	for (uint32_t gi = 0; gi < p->l->ngrants; gi++) {
		const struct loaded_grant *lg = &p->l->grants[gi];
		const struct pchunk *ch = &p->chunks[gi];
		if (!ch->planned_resident || ch->compute >= VRAMD_MAX_DEVICES)
			continue;
		want[ch->compute] += lg->grant && lg->device == ch->compute ? vram_grant_size(lg->grant)
									     : device_layout(p, gi, NULL);
	}
	for (uint32_t li = 0; li < p->nlayers; li++) {
		const struct player *L = &p->layers[li];
		if (L->nbytes && L->compute < VRAMD_MAX_DEVICES)
			largest[L->compute] = MAX(largest[L->compute], L->leader == li ? L->gpacked : L->packed);
	}
	for (uint32_t i = 0; i < p->nslots; i++) {
		const struct slot *s = &p->slots[i];
		bool first = s->grant != NULL;
		for (uint32_t j = 0; first && j < i; j++)
			first = p->slots[j].grant != s->grant;
		if (first)
			window[s->dev] += vram_grant_size(s->grant);
	}
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		uint64_t least = (uint64_t)PAGER_MIN_SLOTS * align_up(largest[d], SLOT_ROUND);
		if (pager_largest_paged(p, d))
			want[d] += MAX(window[d], least);
		min[d] = MIN(least, want[d]);
	}
}

void pager_declare_demand(struct vram_pager *p)
{
	uint64_t want[VRAMD_MAX_DEVICES], min[VRAMD_MAX_DEVICES];
	bool changed[VRAMD_MAX_DEVICES] = { false }, any = false;

	pthread_mutex_lock(&p->mu);
	demand_compute(p, want, min);
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		changed[d] = want[d] != p->want[d] || min[d] != p->min[d];
		any = any || changed[d];
		p->want[d] = want[d];
		p->min[d] = min[d];
	}
	pthread_mutex_unlock(&p->mu);
	for (uint32_t d = 0; any && d < VRAMD_MAX_DEVICES; d++)
		if (changed[d] && vram_demand(p->c, d, want[d], min[d]) == 0 && want[d])
			p->demanded = true;
	rt_error_clear(); /* best effort: a broker without DEMAND still works */
}

void pager_withdraw_demand(struct vram_pager *p)
{
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++)
		if (p->want[d])
			vram_demand(p->c, d, 0, 0);
	rt_error_clear();
}

/* Says the demand again when it changed (the window grew from a chunk or
 * went, a chunk moved): the mover's, when it has nothing else to do.  mu
 * held, dropped around the DEMANDs. */
static bool demand_refresh(struct vram_pager *p)
{
	uint64_t want[VRAMD_MAX_DEVICES], min[VRAMD_MAX_DEVICES];
	if (!p->handlers)
		return false;
	demand_compute(p, want, min);
	if (!memcmp(want, p->want, sizeof(want)) && !memcmp(min, p->min, sizeof(min)))
		return false;
	pthread_mutex_unlock(&p->mu);
	pager_declare_demand(p);
	pthread_mutex_lock(&p->mu);
	return true;
}

/* ---- the mover ---------------------------------------------------------- */

/* Tensor t of chunk gi from where it is now (host memory, a donor GPU, or
 * the file) to dst + off on dev: host memory, or a CUDA device through cp
 * (made on first use).  Called without mu; the chunk is marked moving, so
 * where it is does not change meanwhile.  0 or -errno. */
static int copy_tensor(struct vram_pager *p, uint32_t t, vram_grant *dst, uint64_t off, struct cuda_copier **cp)
{
	uint64_t nb = vram_loaded_tensor_nbytes(p->l, t);
	const uint8_t *src = vram_loaded_tensor_host_ptr(p->l, t);
	uint8_t *h = vram_grant_host_ptr(dst);
	int r;
	if (!nb)
		return 0;
	if (h)
		return src ? (memcpy(h + off, src, nb), 0)
			   : pager_read_loaded(p, t, 0, nb, h + off, &p->mover_raw, &p->mover_raw_size);
	uint64_t d = vram_grant_device_ptr(dst);
	if (!d)
		return -ENOTSUP;
	if (!*cp && (r = cuda_copier_new(p->c, vram_grant_device(dst), 1, cp)) < 0)
		return r;
	if (src)
		return cuda_copier_copy(*cp, d + off, src, nb, 0);
	uint64_t dsrc = vram_loaded_tensor_device_ptr(p->l, t);
	if (dsrc)
		return cuda_copier_dtod(*cp, d + off, dsrc, nb, 0);
	if (!p->mover_buf && !(p->mover_buf = malloc(MOVER_BOUNCE)))
		return -ENOMEM;
	for (uint64_t done = 0; done < nb;) {
		uint64_t k = MIN((uint64_t)MOVER_BOUNCE, nb - done);
		if ((r = pager_read_loaded(p, t, done, k, p->mover_buf, &p->mover_raw, &p->mover_raw_size)) < 0 ||
		    (r = cuda_copier_copy(*cp, d + off + done, p->mover_buf, k, 0)) < 0 ||
		    (r = cuda_copier_wait(*cp, 0)) < 0)
			return r;
		done += k;
	}
	return 0;
}

/* Every tensor of chunk gi into dst, at off[k] for its k-th tensor (NULL:
 * at the offsets it has now).  Without mu.  0 or -errno. */
static int copy_chunk(struct vram_pager *p, uint32_t gi, vram_grant *dst, const uint64_t *off)
{
	struct cuda_copier *cp = NULL;
	uint32_t k = 0;
	int r = 0;
	for (uint32_t li = 0; li < p->nlayers && r == 0; li++) {
		const struct player *L = &p->layers[li];
		if (!in_chunk(p, li, gi))
			continue;
		for (uint32_t t = L->first; t < L->first + L->ntensors && r == 0; t++)
			if (tensor_in_chunk(p, t, gi))
				r = copy_tensor(p, t, dst, off ? off[k++] : p->l->tensors[t].offset, &cp);
	}
	if (cp) {
		if (r == 0)
			r = cuda_copier_wait(cp, 0);
		cuda_copier_free(cp);
	}
	return r;
}

/* Waits until chunk gi can switch memory (no copy reads it, and, for a
 * promotion, nothing of it is acquired), for SWAP_WAIT_NS at most; false
 * when it did not come, or a reclaim of dev began since gen0, or the
 * pager stops.  mu held. */
static bool wait_swappable(struct vram_pager *p, uint32_t gi, uint32_t dev, uint64_t gen0, bool promotion)
{
	uint64_t until = now_ns() + SWAP_WAIT_NS;
	for (;;) {
		if (p->stop || p->gen[dev] != gen0)
			return false;
		if (!p->chunks[gi].readers && !(promotion && chunk_acquired(p, gi)))
			return true;
		uint64_t t = now_ns();
		if (t >= until)
			return false;
		timed_wait(p, MIN(until - t, 10000000ull));
	}
}

/* Frees g (a move undone, or the memory a move left).  mu held, dropped
 * around the FREE. */
static void release_grant(struct vram_pager *p, vram_grant *g)
{
	if (!g)
		return;
	pthread_mutex_unlock(&p->mu);
	pager_unpin_grant(p, g);
	vram_free(p->c, g);
	pthread_mutex_lock(&p->mu);
}

/* Chunk gi back on its compute device dev (an OFFER made room): a new
 * grant there, every tensor copied in from where it is, then, at a moment
 * when nothing of it is acquired or read, the switch: its layers are
 * resident again and what held them before is freed.  Undone when a
 * reclaim of dev began meanwhile.  mu held, dropped around the work. */
static void promote(struct vram_pager *p, uint32_t gi, uint32_t dev)
{
	struct loaded_grant *lg = &p->l->grants[gi];
	struct pchunk *ch = &p->chunks[gi];
	uint32_t nt = 0;
	for (uint32_t t = 0; t < p->l->ntensors; t++)
		nt += tensor_in_chunk(p, t, gi);
	_cleanup_free_ uint64_t *off = calloc((size_t)nt + 1, sizeof(*off));
	if (!off) {
		p->offer[dev] = 0;
		return;
	}
	uint64_t size = device_layout(p, gi, off), gen0 = p->gen[dev];
	p->offer[dev] -= MIN(p->offer[dev], size);
	ch->moving = true;
	pthread_mutex_unlock(&p->mu);
	vram_grant *ng = NULL;
	int r = vram_alloc(p->c, dev, size, VRAM_ALLOC_RECLAIMABLE, &ng);
	if (r == 0)
		r = copy_chunk(p, gi, ng, off);
	rt_error_clear(); /* the mover's failures are not the caller's */
	pthread_mutex_lock(&p->mu);
	if (r < 0 || !wait_swappable(p, gi, dev, gen0, true)) {
		ch->moving = false;
		p->offer[dev] = 0; /* until the broker offers again */
		release_grant(p, ng);
		return;
	}
	vram_grant *old = lg->grant;
	uint32_t k = 0, n = 0;
	for (uint32_t li = 0; li < p->nlayers; li++) {
		struct player *L = &p->layers[li];
		if (!in_chunk(p, li, gi))
			continue;
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++)
			if (tensor_in_chunk(p, t, gi))
				p->l->tensors[t].offset = off[k++];
		if (L->split)
			continue; /* its other part is still off the compute device */
		int32_t si = p->layers[L->leader].slot;
		if (si >= 0 && p->slots[si].state == SLOT_QUEUED)
			pager_unqueue(p, (uint32_t)si);
		else if (si >= 0)
			pager_evict(p, &p->slots[si]);
		L->paged = false;
		n++;
	}
	lg->grant = ng;
	lg->device = dev;
	ch->moving = false;
	ch->rehome = false;
	p->st.promoted += n;
	release_grant(p, old);
	pthread_cond_broadcast(&p->cv);
}

/* Dropped chunk gi copied to its donor from the file, when the donor has
 * room now (the mover never waits for memory: no ALLOC that would park).
 * mu held, dropped around the work. */
static void rehome(struct vram_pager *p, uint32_t gi)
{
	struct loaded_grant *lg = &p->l->grants[gi];
	struct pchunk *ch = &p->chunks[gi];
	int donor = donor_of(p, gi);
	ch->rehome = false; /* once: a failure leaves the layers in the file */
	if (donor < 0 || !(p->c->dev[donor].flags & VRAM_DEV_HOST_MAPPABLE))
		return;
	uint64_t size = ch->size, gen0 = p->gen[donor];
	ch->moving = true;
	pthread_mutex_unlock(&p->mu);
	vram_grant *ng = NULL;
	struct vram_device_info di = { .struct_size = sizeof(di) };
	int r = vram_refresh_devices(p->c);
	if (r == 0 && (r = vram_device_info(p->c, (uint32_t)donor, &di)) == 0 && di.total - MIN(di.used, di.total) < size)
		r = -ENOMEM;
	if (r == 0 && (r = vram_alloc(p->c, (uint32_t)donor, size, VRAM_ALLOC_RECLAIMABLE, &ng)) == 0)
		r = copy_chunk(p, gi, ng, NULL);
	if (r == 0)
		pager_pin_grant(p, ng);
	rt_error_clear();
	pthread_mutex_lock(&p->mu);
	if (r < 0 || !wait_swappable(p, gi, (uint32_t)donor, gen0, false)) {
		ch->moving = false;
		release_grant(p, ng);
		return;
	}
	lg->grant = ng;
	lg->device = (uint32_t)donor;
	ch->moving = false;
	for (uint32_t li = 0; li < p->nlayers; li++)
		p->st.demoted += in_chunk(p, li, gi);
	pthread_cond_broadcast(&p->cv);
}

/* A chunk to bring back to dev within what was offered: planned resident
 * there, not there now, the most recently used first.  -1 if none. */
static int pick_promotion(struct vram_pager *p, uint32_t dev)
{
	int best = -1;
	uint64_t best_use = 0;
	for (uint32_t gi = 0; gi < p->l->ngrants; gi++) {
		const struct loaded_grant *lg = &p->l->grants[gi];
		const struct pchunk *ch = &p->chunks[gi];
		if (!ch->planned_resident || ch->compute != dev || ch->moving || (lg->grant && lg->device == dev))
			continue;
		if (device_layout(p, gi, NULL) > p->offer[dev])
			continue;
		uint64_t use = 0;
		bool any = false;
		for (uint32_t li = 0; li < p->nlayers; li++)
			if (in_chunk(p, li, gi)) {
				any = true;
				use = MAX(use, p->layers[li].last_use);
			}
		if (any && (best < 0 || use > best_use)) {
			best = (int)gi;
			best_use = use;
		}
	}
	return best;
}

/* One piece of the mover's work: a promotion within an offer, a dropped
 * chunk to its donor, a window slot nothing paged needs any more, or the
 * demand said again.  false when there was none.  mu held. */
static bool mover_step(struct vram_pager *p)
{
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		if (!p->offer[d])
			continue;
		int gi = pick_promotion(p, d);
		if (gi >= 0) {
			promote(p, (uint32_t)gi, d);
			return true;
		}
		p->offer[d] = 0;
	}
	for (uint32_t gi = 0; gi < p->l->ngrants; gi++)
		if (p->chunks[gi].rehome && !p->chunks[gi].moving && !p->l->grants[gi].grant) {
			rehome(p, gi);
			return true;
		}
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		bool copying = false;
		if (!p->target_slots[d] || pager_largest_paged(p, d))
			continue;
		int si = pick_slot_grant(p, d, 0, 0, UINT64_MAX, &copying);
		if (si >= 0) {
			free_slot_grant(p, (uint32_t)si);
			return true;
		}
	}
	return demand_refresh(p);
}

void pager_kick_mover(struct vram_pager *p)
{
	p->mover_kick = true;
	pthread_cond_signal(&p->mover_cv);
}

/* A device where chunks wait to come back since an offer, and the broker
 * may be reminded (nudges left); -1 if none.  mu held. */
static int nudge_due(struct vram_pager *p)
{
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		if (!p->nudges[d])
			continue;
		uint64_t offer = p->offer[d];
		p->offer[d] = UINT64_MAX; /* any size: is there a chunk at all? */
		int gi = pick_promotion(p, d);
		p->offer[d] = offer;
		if (gi >= 0)
			return (int)d;
		p->nudges[d] = 0;
	}
	return -1;
}

/* The broker offers free memory when something frees some, to each
 * client at most once a second: after an offer that brought back part of
 * the model, the rest would wait for the next such event.  Saying the
 * demand again (unchanged) is one: the broker looks at free memory again
 * and offers what there is.  Waits NUDGE_NS first (a kick ends the wait:
 * the mover has work).  mu held, dropped around the DEMAND. */
static void nudge(struct vram_pager *p, uint32_t d)
{
	p->mover_kick = false;
	timed_wait_on(p, &p->mover_cv, NUDGE_NS);
	if (p->stop || p->mover_kick || !p->nudges[d])
		return;
	p->nudges[d]--;
	uint64_t want = p->want[d], min = p->min[d];
	pthread_mutex_unlock(&p->mu);
	if (want)
		vram_demand(p->c, d, want, min);
	rt_error_clear();
	pthread_mutex_lock(&p->mu);
}

void *pager_mover_main(void *arg)
{
	struct vram_pager *p = arg;
	pthread_mutex_lock(&p->mu);
	while (!p->stop) {
		if (mover_step(p))
			continue;
		int d = nudge_due(p);
		if (d >= 0) {
			nudge(p, (uint32_t)d);
			continue;
		}
		while (!p->stop && !p->mover_kick)
			pthread_cond_wait(&p->mover_cv, &p->mu);
		p->mover_kick = false;
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* ---- the dispatch thread ------------------------------------------------ */

void *pager_dispatcher_main(void *arg)
{
	struct vram_pager *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		bool stop = p->stop;
		pthread_mutex_unlock(&p->mu);
		if (stop)
			break;
		client_dispatch_wait(p->c, 50, true);
	}
	return NULL;
}

void pager_free_slots(struct vram_pager *p)
{
	for (uint32_t i = 0; i < p->nslots; i++) {
		vram_grant *g = p->slots[i].grant;
		if (!g)
			continue;
		for (uint32_t j = i; j < p->nslots; j++)
			if (p->slots[j].grant == g)
				p->slots[j].grant = NULL;
		vram_free(p->c, g);
	}
}
