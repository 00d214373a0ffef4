/* SPDX-License-Identifier: MIT */
/* Layer 2b: the fair share of a device (fair.h). */
#include <stdlib.h>
#include <string.h>

#include "broker/fair.h"
#include "broker/grant.h"
#include "common/cleanup.h"

/* Sum of min(cap, max(base, level)): what the shares take at level. */
static uint64_t filled(const uint64_t *base, const uint64_t *cap, uint32_t n, uint64_t level)
{
	uint64_t sum = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t s = MIN(cap[i], MAX(base[i], level));
		sum = sum + s < sum ? UINT64_MAX : sum + s;
	}
	return sum;
}

void fair_fill(const uint64_t *base, const uint64_t *cap, uint64_t *share, uint32_t n, uint64_t capacity)
{
	uint64_t lo = 0, hi = 0;
	for (uint32_t i = 0; i < n; i++)
		hi = MAX(hi, cap[i]);
	if (filled(base, cap, n, 0) >= capacity) {
		lo = 0; /* the bases alone fill it */
	} else if (filled(base, cap, n, hi) <= capacity) {
		lo = hi; /* everyone gets what they want */
	} else {
		/* the highest level whose shares still fit */
		while (lo < hi) {
			uint64_t mid = lo + (hi - lo + 1) / 2;
			if (filled(base, cap, n, mid) <= capacity)
				lo = mid;
			else
				hi = mid - 1;
		}
	}
	for (uint32_t i = 0; i < n; i++)
		share[i] = MIN(cap[i], MAX(base[i], lo));
}

void fair_update(struct broker *b, struct pool *p, const struct client *req, uint64_t extra)
{
	uint32_t d = p->index, n = 0;
	for (struct client *x = b->clients; x; x = x->next)
		n++;
	_cleanup_free_ uint64_t *v = calloc(3 * (size_t)n + 1, sizeof(*v));
	if (!v)
		return; /* shares stay as they were */
	uint64_t *base = v, *cap = v + n, *share = v + 2 * n;
	uint32_t i = 0;
	for (struct client *x = b->clients; x; x = x->next, i++) {
		uint64_t held = x->held_dev[d];
		uint64_t fixed = held - x->reclaimable_dev[d];
		uint64_t want = MAX(held, x->want_dev[d]);
		if (x == req)
			want = MAX(want, held + extra);
		for (const struct pending *pd = b->pending; pd; pd = pd->next)
			if (pd->c == x && pd->req.device == d)
				want = MAX(want, held + pd->size);
		if (x->restored || x->dead) {
			base[i] = cap[i] = held; /* nobody to ask */
			continue;
		}
		uint64_t floor, ceiling;
		quota_bounds(b, x, p, &floor, &ceiling);
		cap[i] = MAX(fixed, MIN(want, ceiling));
		base[i] = MIN(cap[i], MAX(fixed, MAX(floor, x->min_dev[d])));
	}
	/* copies someone maps are nobody's to give back; unused ones will
	 * be evicted before anyone is asked to reclaim */
	uint64_t cap_dev = p->total > b->cache_inuse[d] ? p->total - b->cache_inuse[d] : 0;
	fair_fill(base, cap, share, n, cap_dev);
	i = 0;
	for (struct client *x = b->clients; x; x = x->next, i++)
		x->share_dev[d] = share[i];
}
