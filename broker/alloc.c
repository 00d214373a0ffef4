/* SPDX-License-Identifier: MIT */
/* Layer 3: ALLOC, FREE, REGISTER, parking and RECLAIM (alloc.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/alloc.h"
#include "broker/cache.h"
#include "broker/conn.h"
#include "broker/fair.h"
#include "broker/grant.h"
#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"

static void serve_parked(struct broker *b);
static void offer_room(struct broker *b, struct pool *p);

/* ======================================================================
 * Granting
 * ====================================================================== */

/* Creates the grant and answers.  Room and limits were checked. */
static void do_grant(struct broker *b, struct client *c, const struct vramd_alloc *m, uint64_t size)
{
	struct pool *p = b->pools[m->device];
	const char *why = "";
	char s1[32];
	int fd = -1;
	void *handle = NULL;
	int r = p->ops->grant(p, size, &fd, &handle, &why);
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s: %s", p->name, why);
		return;
	}
	struct grant *g = grant_add(b, c, p, size, m->flags, handle);
	if (!g) {
		p->ops->release(p, handle, size);
		close(fd);
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	grant_identify(g, fd);
	fdstore_put(b, g, fd);
	send_alloc_reply(b, c, m->hdr.seq, g, fd);
	close(fd);
	/* If the client is gone the grant goes with it when it is dropped. */
	broker_log(2, CLIENT_FMT ": grant %llu: %s on %s%s", CLIENT_ARGS(c), (unsigned long long)g->id,
		   size_format(size, s1, sizeof(s1)), p->name,
		   (g->flags & VRAMD_ALLOC_RECLAIMABLE) ? " (reclaimable)" : "");
}

void handle_free(struct broker *b, struct client *c, const struct vramd_free *m)
{
	for (struct grant *g = c->grants; g; g = g->next) {
		if (g->id != m->grant_id)
			continue;
		grant_unlink(g);
		broker_log(2, CLIENT_FMT ": freed grant %llu", CLIENT_ARGS(c), (unsigned long long)g->id);
		grant_release(b, g);
		send_ok(b, c, &m->hdr);
		alloc_retry(b);
		return;
	}
	send_error(b, c, &m->hdr, -ENOENT, "no grant %llu held by this client", (unsigned long long)m->grant_id);
}

/* ======================================================================
 * REGISTER: memory of an earlier broker's grant comes back
 * ====================================================================== */

/* The memory is accounted already: the fd store brought it back (it
 * changes hands from the placeholder client, counted once), or it is
 * someone's live grant (refused: one memfd, or one CUDA export, is never
 * counted twice). */
static void register_known(struct broker *b, struct client *c, const struct vramd_register *m, struct pool *p,
			   struct grant *og, struct client *x)
{
	if (!x->restored || og->pool != p || og->size != m->size) {
		send_error(b, c, &m->hdr, -EEXIST, "REGISTER: that memory is accounted already");
		return;
	}
	grant_move(og, c);
	/* The fd store's fd: a memfd's is not needed any more; a CUDA
	 * export's is the grant's identity from now on. */
	if (og->fd >= 0 && !p->ops->fd_identity) {
		close(og->fd);
		og->fd = -1;
	}
	if (!x->ngrants)
		x->dead = true;
	send_alloc_reply(b, c, m->hdr.seq, og, -1);
}

/* New to this broker: the same limits as an ALLOC.  The size is the
 * client's word backed only by a sealed (possibly sparse) memfd, so it must
 * never take the pool, a quota or the per-client ceiling past their
 * bounds.  handle is the backend's, released here on failure. */
static void register_new(struct broker *b, struct client *c, const struct vramd_register *m, struct pool *p,
			 void *handle, int fd)
{
	char why[256], s1[32], s2[32];
	int r = limits_allow(b, c, p, m->size, "registered", why, sizeof(why));
	if (r == 0 && m->size > pool_room(p) + pool_adopt_growth(p, m->size)) {
		snprintf(why, sizeof(why), "%s: %s registered, %s free", p->name, size_format(m->size, s1, sizeof(s1)),
			 size_format(pool_room(p), s2, sizeof(s2)));
		r = -ENOMEM;
	}
	if (r < 0) {
		p->ops->release(p, handle, m->size);
		send_error(b, c, &m->hdr, r, "REGISTER: %s", why);
		return;
	}
	uint64_t grow = pool_adopt_growth(p, m->size);
	struct grant *g = grant_add(b, c, p, m->size, m->flags, handle);
	if (!g) {
		p->ops->release(p, handle, m->size);
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	p->total += grow;
	grant_identify(g, fd);
	fdstore_put(b, g, fd);
	send_alloc_reply(b, c, m->hdr.seq, g, -1);
	broker_log(2, CLIENT_FMT ": re-registered %s on %s as grant %llu", CLIENT_ARGS(c),
		   size_format(m->size, s1, sizeof(s1)), p->name, (unsigned long long)g->id);
}

void handle_register(struct broker *b, struct client *c, const struct vramd_register *m, int fd)
{
	const char *why = "";
	struct pool *p = pool_by_uuid(b, m->uuid);
	if (!p) {
		send_error(b, c, &m->hdr, -ENODEV, "REGISTER: no device with that UUID");
		return;
	}
	if (m->what == VRAMD_REGISTER_COPY) {
		cache_register(b, c, m, p, fd);
		return;
	}
	if (!m->size || m->size % p->granularity) {
		send_error(b, c, &m->hdr, -EINVAL, "REGISTER: size %llu is not a grant size of %s",
			   (unsigned long long)m->size, p->name);
		return;
	}
	if (c->ngrants >= b->cfg.max_grants) {
		send_error(b, c, &m->hdr, -EDQUOT, "grant limit: this client holds %u grants (max %u)", c->ngrants,
			   b->cfg.max_grants);
		return;
	}
	if (!p->ops->adopt) {
		send_error(b, c, &m->hdr, -EOPNOTSUPP, "%s: grants cannot be re-registered after a restart", p->name);
		return;
	}
	void *handle = NULL;
	int r = p->ops->adopt(p, fd, m->size, &handle, &why);
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "REGISTER on %s: %s", p->name, why);
		return;
	}
	struct client *x = NULL;
	struct grant *og = grant_by_fd(b, p, fd, &x);
	if (og) {
		p->ops->release(p, handle, m->size);
		register_known(b, c, m, p, og, x);
		return;
	}
	register_new(b, c, m, p, handle, fd);
}

/* ======================================================================
 * Parking: ALLOCs that wait for other clients to reclaim
 * ====================================================================== */


/* Bytes of the ALLOCs parked on pool p. */
static uint64_t pool_parked(const struct broker *b, const struct pool *p)
{
	uint64_t n = 0;
	for (const struct pending *pd = b->pending; pd; pd = pd->next)
		if (pd->req.device == p->index)
			n += pd->size;
	return n;
}

static void unpark(struct broker *b, struct client *c)
{
	c->parked = false;
	if (!c->dead)
		conn_update_events(b, c);
}

static void pending_remove(struct broker *b, struct pending *pd)
{
	for (struct pending **pp = &b->pending; *pp; pp = &(*pp)->next)
		if (*pp == pd) {
			*pp = pd->next;
			break;
		}
	free(pd);
}

static struct pending *pending_find(struct broker *b, uint64_t id)
{
	for (struct pending *pd = b->pending; pd; pd = pd->next)
		if (pd->id == id)
			return pd;
	return NULL;
}

void alloc_retry(struct broker *b)
{
	serve_parked(b);
	uint32_t parked = 0;
	for (const struct pending *pd = b->pending; pd; pd = pd->next)
		parked |= 1u << pd->req.device;
	for (uint32_t d = 0; d < b->npools; d++)
		if (!(parked & (1u << d)))
			offer_room(b, b->pools[d]);
}

/* Completes the parked ALLOCs that now fit, in arrival order (a later small
 * request does not overtake an earlier large one on the same device). */
static void serve_parked(struct broker *b)
{
	uint32_t blocked = 0; /* bit per pool with an earlier request still waiting */
	for (struct pending *pd = b->pending, *next; pd; pd = next) {
		next = pd->next;
		struct pool *p = b->pools[pd->req.device];
		if (blocked & (1u << p->index))
			continue;
		if (pd->size > pool_room(p)) {
			blocked |= 1u << p->index;
			continue;
		}
		struct client *c = pd->c;
		char why[256];
		if (quota_allows(b, c, p, pd->size, why, sizeof(why)) < 0) {
			/* another client of its bucket got there first */
			send_error(b, c, &pd->req.hdr, -EDQUOT, "%s", why);
			pending_remove(b, pd);
			unpark(b, c);
			continue;
		}
		broker_log(2, CLIENT_FMT ": parked ALLOC satisfied after reclaim", CLIENT_ARGS(c));
		do_grant(b, c, &pd->req, pd->size);
		pending_remove(b, pd);
		unpark(b, c);
	}
}

static void pending_fail(struct broker *b, struct pending *pd, const char *why)
{
	struct pool *p = b->pools[pd->req.device];
	char s1[32], s2[32];
	struct client *c = pd->c;
	send_error(b, c, &pd->req.hdr, -ENOMEM, "%s: %s asked, %s free; %s", p->name,
		   size_format(pd->size, s1, sizeof(s1)), size_format(pool_room(p), s2, sizeof(s2)), why);
	pending_remove(b, pd);
	unpark(b, c);
}

/* Only the first parked request on each device can be judged: one behind
 * it waits for that one's outcome (it may well fit after it), so after a
 * failure the rest is looked at again. */
void alloc_settle(struct broker *b, const char *why)
{
	for (bool again = true; again;) {
		again = false;
		alloc_retry(b);
		uint32_t seen = 0; /* bit per pool with an earlier request */
		for (struct pending *pd = b->pending; pd; pd = pd->next) {
			uint32_t bit = 1u << b->pools[pd->req.device]->index;
			if (!(seen & bit) && pd->waiting == 0) {
				pending_fail(b, pd, why);
				again = true;
				break;
			}
			seen |= bit;
		}
	}
}

void alloc_client_gone(struct broker *b, struct client *c)
{
	for (struct pending *pd = b->pending, *nx; pd; pd = nx) {
		nx = pd->next;
		if (pd->c == c)
			pending_remove(b, pd);
	}
	for (uint32_t i = 0; i < c->nasks; i++) {
		struct pending *pd = pending_find(b, c->asks[i].pending_id);
		if (pd)
			pd->waiting--;
	}
	c->nasks = 0;
}

struct reclaim_cand {
	struct client *x;
	uint64_t room;
};

static int cmp_room_desc(const void *a, const void *b)
{
	const struct reclaim_cand *x = a, *y = b;
	return x->room > y->room ? -1 : x->room < y->room;
}

/* true if x was asked for pd already. */
static bool was_asked(const struct pending *pd, const struct client *x)
{
	for (uint32_t i = 0; i < pd->nasked; i++)
		if (pd->asked_ids[i] == x->id)
			return true;
	return false;
}

/* Half the largest reclaimable grant x holds on p, and a byte: an ask of
 * that much is answered with any one grant of x's there (the pager frees a
 * grant past what is asked when it is less than twice what is missing). */
static uint64_t half_grant(const struct client *x, const struct pool *p)
{
	uint64_t m = largest_reclaimable(x, p);
	return m ? m / 2 + 1 : 0;
}

/* The other clients above their fair share on p that can give memory back
 * for pd, and how much each: what they hold above it (fair_update first),
 * or when pd->whole, at least half their largest reclaimable grant there
 * (whole grants: their excesses may each be less than any grant of
 * theirs), within what they may be asked for (reclaimable, above their
 * floor); not those asked for pd already.  Largest excess first: fewest
 * clients disturbed.  Returns how many, their sum in *ret_total. */
static int reclaim_candidates(struct broker *b, const struct pending *pd, const struct pool *p,
			      struct reclaim_cand *cand, uint64_t *ret_total)
{
	uint32_t n = 0, d = p->index;
	*ret_total = 0;
	for (struct client *x = b->clients; x; x = x->next) {
		/* restored placeholders have no connection to ask */
		if (x == pd->c || x->dead || x->restored || x->nasks == ASKS_MAX || was_asked(pd, x))
			continue;
		uint64_t excess = x->held_dev[d] > x->share_dev[d] ? x->held_dev[d] - x->share_dev[d] : 0;
		uint64_t xroom = MIN(excess, reclaim_room(b, x, p));
		if (xroom) {
			cand[n++] = (struct reclaim_cand){ x, xroom };
			*ret_total += pd->whole ? MIN(MAX(excess, half_grant(x, p)), reclaim_room(b, x, p)) : xroom;
		}
	}
	qsort(cand, n, sizeof(*cand), cmp_room_desc);
	return (int)n;
}

/* What pd lacks on its device once the requests parked before it have what
 * is free (they were asked for their own shortfalls). */
static uint64_t pending_shortfall(struct broker *b, const struct pending *pd)
{
	struct pool *p = b->pools[pd->req.device];
	uint64_t room = pool_room(p), before = 0;
	for (const struct pending *q = b->pending; q && q != pd; q = q->next)
		if (q->req.device == pd->req.device)
			before += q->size;
	uint64_t avail = room > before ? room - before : 0;
	return pd->size > avail ? pd->size - avail : 0;
}

/* Sends RECLAIMs for pd's shortfall to the clients above their share, each
 * for at most its excess; when pd->whole, each for at least half its
 * largest reclaimable grant (within its floor).  Returns false when they
 * cannot give enough (nobody is asked then). */
static bool ask_for(struct broker *b, struct pending *pd, uint64_t shortfall)
{
	struct pool *p = b->pools[pd->req.device];
	uint64_t others;
	_cleanup_free_ struct reclaim_cand *cand = calloc(b->nclients + 1, sizeof(*cand));
	if (!cand)
		return false;
	fair_update(b, p, pd->c, pd->size);
	int ncand = reclaim_candidates(b, pd, p, cand, &others);
	if (others < shortfall)
		return false;
	uint64_t left = shortfall;
	for (int i = 0; i < ncand && left && pd->nasked < ASKED_MAX; i++) {
		struct client *x = cand[i].x;
		uint64_t ask = MIN(left, cand[i].room);
		if (pd->whole)
			ask = MIN(MAX(ask, half_grant(x, p)), reclaim_room(b, x, p));
		if (send_reclaim(b, x, p->index, ask, pd->id, pd->deadline_ns) < 0)
			continue;
		char s1[32];
		broker_log(1, CLIENT_FMT ": RECLAIM %s on %s for client %u%s", CLIENT_ARGS(x),
			   size_format(ask, s1, sizeof(s1)), p->name, pd->c->id, pd->whole ? " (whole grants)" : "");
		x->reclaim_asked += ask;
		pd->asked_ids[pd->nasked++] = x->id;
		pd->waiting++;
		pd->asked += ask;
		left -= MIN(left, ask);
	}
	return pd->waiting > 0;
}

/* ask_for, and when the excesses asked for cannot give enough (or gave too
 * little: every client asked has answered), once more for whole grants,
 * asking again those asked already: a newcomer gets its window although
 * each holder's excess is less than any grant it could give.  A holder
 * ends below its share by less than one of its grants. */
static bool ask_for_whole(struct broker *b, struct pending *pd, uint64_t shortfall)
{
	if (ask_for(b, pd, shortfall))
		return true;
	if (pd->whole)
		return false;
	pd->whole = true;
	pd->nasked = 0; /* nobody's answer is awaited: they may be asked again */
	return ask_for(b, pd, shortfall);
}

/* An ALLOC that does not fit: unless it would take c past its fair share,
 * parks it and asks the clients above theirs for the shortfall.  0 (parked),
 * or -ENOMEM with why set. */
static int start_reclaim(struct broker *b, struct client *c, const struct vramd_alloc *m, uint64_t size, char *why,
			 size_t len)
{
	struct pool *p = b->pools[m->device];
	char s1[32], s2[32], s3[32], s4[32], s5[32];
	fair_update(b, p, c, size);
	uint64_t held = c->held_dev[p->index], share = c->share_dev[p->index];
	if (held + size > share) {
		snprintf(why, len, "%s: %s asked, %s free of %s; this client holds %s there and its fair share is %s",
			 p->name, size_format(size, s1, sizeof(s1)), size_format(pool_room(p), s2, sizeof(s2)),
			 size_format(p->total, s5, sizeof(s5)), size_format(held, s3, sizeof(s3)),
			 size_format(share, s4, sizeof(s4)));
		return -ENOMEM;
	}
	struct pending *pd = calloc(1, sizeof(*pd));
	if (!pd)
		return -ENOMEM;
	pd->id = ++b->next_reclaim_id;
	pd->c = c;
	pd->req = *m;
	pd->size = size;
	pd->deadline_ns = now_ns() + b->cfg.reclaim_deadline_ms * 1000000ull;
	/* Appended: FIFO order. */
	struct pending **pp = &b->pending;
	while (*pp)
		pp = &(*pp)->next;
	*pp = pd;
	if (!ask_for_whole(b, pd, pending_shortfall(b, pd))) {
		snprintf(why, len, "%s: %s asked, %s free of %s, and the clients above their fair share can give back "
			 "less", p->name, size_format(size, s1, sizeof(s1)), size_format(pool_room(p), s2, sizeof(s2)),
			 size_format(p->total, s3, sizeof(s3)));
		*pp = NULL;
		free(pd);
		return -ENOMEM;
	}
	c->parked = true;
	conn_update_events(b, c);
	return 0;
}

/* Records an answer time of x's (for the p50/p99 in STATUS). */
static void record_latency(struct client *x, uint64_t ns)
{
	uint64_t us = ns / 1000;
	x->lat_us[x->nlat++ % LAT_RING] = (uint32_t)MIN(us, UINT32_MAX);
}

void handle_reclaim_done(struct broker *b, struct client *c, const struct vramd_reclaim_done *m)
{
	for (uint32_t i = 0; i < c->nasks; i++) {
		if (c->asks[i].id != m->reclaim_id)
			continue;
		struct reclaim_ask ask = c->asks[i];
		c->asks[i] = c->asks[--c->nasks];
		c->reclaims_answered++;
		c->reclaim_freed += m->bytes_freed;
		record_latency(c, now_ns() - ask.sent_ns);
		char s1[32], s2[32];
		broker_log(2, CLIENT_FMT ": RECLAIM answered, %s freed of %s asked", CLIENT_ARGS(c),
			   size_format(m->bytes_freed, s1, sizeof(s1)), size_format(ask.bytes, s2, sizeof(s2)));
		struct pending *pd = pending_find(b, ask.pending_id);
		if (pd && --pd->waiting == 0) {
			/* Everyone asked has answered: what is still short is
			 * asked of the others above their share, now, rather
			 * than after the deadline. */
			uint64_t shortfall = pending_shortfall(b, pd);
			if (shortfall)
				ask_for_whole(b, pd, shortfall);
		}
		alloc_settle(b, "the clients asked to reclaim freed too little");
		return;
	}
	/* An answer after the deadline (or to nothing): nothing to do. */
}

void handle_alloc(struct broker *b, struct client *c, const struct vramd_alloc *m)
{
	char s1[32], s2[32], why[256];
	int overflow = 0;

	if (m->device >= b->npools) {
		send_error(b, c, &m->hdr, -ENODEV, "no device %u (the broker has %u)", m->device, b->npools);
		return;
	}
	struct pool *p = b->pools[m->device];
	if (m->size == 0) {
		send_error(b, c, &m->hdr, -EINVAL, "size 0");
		return;
	}
	uint64_t size = round_up_u64(m->size, p->granularity, &overflow);
	if (overflow) {
		send_error(b, c, &m->hdr, -EOVERFLOW, "size %llu overflows when rounded", (unsigned long long)m->size);
		return;
	}
	if (c->ngrants >= b->cfg.max_grants) {
		send_error(b, c, &m->hdr, -EDQUOT, "grant limit: this client holds %u grants (max %u)", c->ngrants,
			   b->cfg.max_grants);
		return;
	}
	if (limits_allow(b, c, p, size, "asked", why, sizeof(why)) < 0) {
		send_error(b, c, &m->hdr, -EDQUOT, "%s", why);
		return;
	}
	if (size > p->total) {
		send_error(b, c, &m->hdr, -ENOMEM, "%s: %s asked, more than the device's %s", p->name,
			   size_format(size, s1, sizeof(s1)), size_format(p->total, s2, sizeof(s2)));
		return;
	}
	/* Copies nobody uses go before anyone is asked to reclaim. */
	if (size > pool_room(p) && !pool_parked(b, p))
		cache_evict(b, p, size);
	/* Earlier parked requests on this device go first. */
	if (size > pool_room(p) || pool_parked(b, p)) {
		int r = start_reclaim(b, c, m, size, why, sizeof(why));
		if (r < 0)
			send_error(b, c, &m->hdr, r, "%s", why);
		return;
	}
	do_grant(b, c, m, size);
}

/* ======================================================================
 * Demand and offers (fair shares)
 * ====================================================================== */

void handle_demand(struct broker *b, struct client *c, const struct vramd_demand *m)
{
	if (m->device >= b->npools) {
		send_error(b, c, &m->hdr, -ENODEV, "no device %u (the broker has %u)", m->device, b->npools);
		return;
	}
	struct pool *p = b->pools[m->device];
	c->want_dev[p->index] = m->want;
	c->min_dev[p->index] = m->min;
	char s1[32], s2[32];
	broker_log(2, CLIENT_FMT ": wants %s on %s, at least %s", CLIENT_ARGS(c), size_format(m->want, s1, sizeof(s1)),
		   p->name, size_format(m->min, s2, sizeof(s2)));
	send_ok(b, c, &m->hdr);
	alloc_retry(b);
}

/* Memory free on p with nothing parked there: offered to the clients below
 * their fair share that want more, at most once a second each. */
static void offer_room(struct broker *b, struct pool *p)
{
	uint32_t d = p->index;
	uint64_t room = pool_room(p), now = now_ns();
	if (!room)
		return;
	fair_update(b, p, NULL, 0);
	for (struct client *x = b->clients; x && room; x = x->next) {
		uint64_t held = x->held_dev[d], want = x->want_dev[d], share = x->share_dev[d];
		if (x->dead || x->restored || !x->hello || want <= held || share <= held ||
		    now - x->offered_ns[d] < 1000000000ull)
			continue;
		struct vramd_offer o;
		memset(&o, 0, sizeof(o));
		proto_hdr_init(&o.hdr, VRAMD_OFFER, sizeof(o), 0);
		o.device = d;
		o.bytes = MIN(room, MIN(share, want) - held);
		if (client_send(b, x, &o, sizeof(o), -1) == 0) {
			x->offered_ns[d] = now;
			room -= o.bytes;
		}
	}
}

/* ======================================================================
 * Deadlines
 * ====================================================================== */

/* Unanswered RECLAIMs past their deadline; the earliest other deadline
 * lowers *next. */
static void expire_asks(struct broker *b, uint64_t now, uint64_t *next)
{
	for (struct client *x = b->clients; x; x = x->next) {
		for (uint32_t i = 0; i < x->nasks;) {
			if (x->asks[i].deadline_ns <= now) {
				char s1[32];
				x->reclaims_missed++;
				x->reclaim_late = true;
				broker_log(1, CLIENT_FMT ": ignored RECLAIM of %s on %s past its deadline; its memory is not taken by force",
					   CLIENT_ARGS(x), size_format(x->asks[i].bytes, s1, sizeof(s1)),
					   b->pools[x->asks[i].pool]->name);
				x->asks[i] = x->asks[--x->nasks];
				continue;
			}
			*next = MIN(*next, x->asks[i].deadline_ns);
			i++;
		}
	}
}

/* Evicted clients that kept reclaimable memory past the deadline. */
static void expire_evictions(struct broker *b, uint64_t now, uint64_t *next)
{
	for (struct client *x = b->clients; x; x = x->next) {
		if (!x->evict_deadline_ns)
			continue;
		if (x->evict_deadline_ns > now) {
			*next = MIN(*next, x->evict_deadline_ns);
			continue;
		}
		x->evict_deadline_ns = 0;
		if (x->reclaimable) {
			broker_log(1, CLIENT_FMT ": evicted: it kept reclaimable memory past the deadline; disconnecting",
				   CLIENT_ARGS(x));
			x->dead = true;
		}
	}
}

int alloc_expire(struct broker *b)
{
	uint64_t now = now_ns(), next = UINT64_MAX;
	expire_asks(b, now, &next);
	expire_evictions(b, now, &next);
	bool expired = false;
	for (struct pending *pd = b->pending, *n; pd; pd = n) {
		n = pd->next;
		if (pd->deadline_ns <= now) {
			pending_fail(b, pd, "reclaim from other clients did not free enough before the deadline");
			expired = true;
		} else {
			next = MIN(next, pd->deadline_ns);
		}
	}
	if (expired) /* the ones behind may fit now, or be done waiting */
		alloc_settle(b, "the clients asked to reclaim freed too little");
	if (next == UINT64_MAX)
		return -1;
	return (int)((next - now) / 1000000 + 1);
}
