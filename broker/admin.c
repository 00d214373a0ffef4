/* SPDX-License-Identifier: MIT */
/* Layer 4: HELLO, STATUS and the admin operations (admin.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/admin.h"
#include "broker/alloc.h"
#include "broker/conn.h"
#include "broker/fair.h"
#include "broker/grant.h"
#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"

/* ======================================================================
 * HELLO / STATUS
 * ====================================================================== */

/* Device i as the wire shows it: the pool's figures and the broker's
 * shared copies there. */
static void describe(const struct broker *b, uint32_t i, struct vramd_device *d)
{
	pool_describe(b->pools[i], d);
	d->cache = b->cache_bytes[i];
	d->cache_max = b->cache_max[i];
	d->cache_hits = b->cache_hits[i];
	d->cache_fills = b->cache_fills[i];
	d->cache_evictions = b->cache_evictions[i];
}

void handle_hello(struct broker *b, struct client *c, const struct vramd_hello *m)
{
	if (!text_printable(m->name)) {
		send_error(b, c, &m->hdr, -EINVAL, "client name has control characters");
		return;
	}
	str_copy(c->name, m->name[0] ? m->name : "-", sizeof(c->name));
	c->hello = true;

	size_t len = sizeof(struct vramd_hello_reply) + b->npools * sizeof(struct vramd_device);
	_cleanup_free_ struct vramd_hello_reply *rep = calloc(1, len);
	if (!rep) {
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	proto_hdr_init(&rep->hdr, VRAMD_HELLO_REPLY, (uint32_t)len, m->hdr.seq);
	rep->client_id = c->id;
	rep->ndevices = b->npools;
	rep->max_alloc = b->cfg.client_max;
	str_copy(rep->note, b->note, sizeof(rep->note));
	struct vramd_device *d = (void *)(rep + 1);
	for (uint32_t i = 0; i < b->npools; i++)
		describe(b, i, &d[i]);
	broker_log(1, CLIENT_FMT ": hello", CLIENT_ARGS(c));
	client_send(b, c, rep, len, -1);
}

/* Whether c may see x in STATUS: admins see every client, others the
 * clients of their own uid; a connection that has not said HELLO is not a
 * client yet. */
static bool visible_to(const struct client *c, const struct client *x)
{
	return x->hello && (c->admin || x->uid == c->uid);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The p50 and p99 of x's recorded RECLAIM answer times. */
static void latency_percentiles(const struct client *x, uint32_t *ret_p50, uint32_t *ret_p99)
{
	uint32_t n = MIN(x->nlat, LAT_RING), v[LAT_RING];
	*ret_p50 = *ret_p99 = 0;
	if (!n)
		return;
	memcpy(v, x->lat_us, n * sizeof(v[0]));
	qsort(v, n, sizeof(v[0]), cmp_u32);
	*ret_p50 = v[(n - 1) / 2];
	*ret_p99 = v[(n * 99 + 99) / 100 - 1];
}

static void client_info(const struct client *c, const struct client *x, struct vramd_client_info *o)
{
	o->id = x->id;
	o->pid = x->pid;
	o->uid = x->uid;
	o->gid = x->gid;
	o->ngrants = x->ngrants;
	o->flags = (x == c ? VRAMD_CLIENT_SELF : 0) | (x->reclaim_late ? VRAMD_CLIENT_RECLAIM_LATE : 0) |
		   (x->restored ? VRAMD_CLIENT_RESTORED : 0);
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		o->want_dev[d] = MAX(x->want_dev[d], x->held_dev[d]);
		o->share_dev[d] = x->share_dev[d];
		o->shared_dev[d] = client_shared(x, d, false);
	}
	latency_percentiles(x, &o->reclaim_p50_us, &o->reclaim_p99_us);
	o->reclaim_asked = x->reclaim_asked;
	o->reclaim_freed = x->reclaim_freed;
	o->held = x->held;
	o->reclaimable = x->reclaimable;
	memcpy(o->held_dev, x->held_dev, sizeof(o->held_dev));
	o->reclaims_answered = x->reclaims_answered;
	o->reclaims_missed = x->reclaims_missed;
	str_copy(o->name, x->name, sizeof(o->name));
}

void handle_status(struct broker *b, struct client *c, const struct vramd_status *m)
{
	size_t fixed = sizeof(struct vramd_status_reply) + b->npools * sizeof(struct vramd_device);
	size_t room = (VRAMD_MSG_MAX - fixed) / sizeof(struct vramd_client_info);
	uint32_t first = m->first_client;
	uint32_t visible = 0;
	for (struct client *x = b->clients; x; x = x->next)
		visible += visible_to(c, x);
	uint32_t n = first < visible ? visible - first : 0;
	if (n > room)
		n = (uint32_t)room;
	size_t len = fixed + n * sizeof(struct vramd_client_info);
	_cleanup_free_ struct vramd_status_reply *rep = calloc(1, len);
	if (!rep) {
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	proto_hdr_init(&rep->hdr, VRAMD_STATUS_REPLY, (uint32_t)len, m->hdr.seq);
	rep->ndevices = b->npools;
	rep->nclients = n;
	rep->clients_total = visible;
	rep->first_client = first;
	rep->grants = b->ngrants;
	rep->protocol_errors = b->protocol_errors;
	rep->uptime_ms = (now_ns() - b->start_ns) / 1000000;
	rep->broker_pid = (uint32_t)getpid();
	str_copy(rep->note, b->note, sizeof(rep->note));
	struct vramd_device *d = (void *)(rep + 1);
	for (uint32_t i = 0; i < b->npools; i++) {
		describe(b, i, &d[i]);
		fair_update(b, b->pools[i], NULL, 0);
	}
	struct vramd_client_info *ci = (void *)(d + b->npools);
	/* The list is newest first; clients are reported oldest first: the
	 * k-th visible client of the list has index visible - 1 - k. */
	uint32_t k = 0;
	for (struct client *x = b->clients; x; x = x->next) {
		if (!visible_to(c, x))
			continue;
		uint32_t idx = visible - 1 - k++;
		if (idx >= first && idx < first + n)
			client_info(c, x, &ci[idx - first]);
	}
	client_send(b, c, rep, len, -1);
}

/* ======================================================================
 * Quotas
 * ====================================================================== */

void handle_quota_set(struct broker *b, struct client *c, const struct vramd_quota_set *m)
{
	char err[QUOTA_ERR_MAX];
	struct quota_subject subj;
	int r = quota_subject_parse(m->subject, &subj, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	struct quota_update u = {
		.set_floor = m->flags & VRAMD_QUOTA_SET_FLOOR, .floor = m->floor,
		.set_ceiling = m->flags & VRAMD_QUOTA_SET_CEILING, .ceiling = m->ceiling,
	};
	struct pool *p = pool_by_name(b, m->device);
	uint64_t cap = p ? p->total : QUOTA_CAPACITY_UNKNOWN;
	if (b->cfg.state_dir)
		r = quota_set_persist(&b->quotas, b->cfg.state_dir, &subj, m->device, &u, cap, err, sizeof(err));
	else
		r = quota_store_set(&b->quotas, &subj, m->device, &u, cap, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	char st[128];
	broker_log(1, CLIENT_FMT ": quota %s on %s set", CLIENT_ARGS(c), quota_subject_format(&subj, st, sizeof(st)),
		   m->device);
	send_ok(b, c, &m->hdr);
}

void handle_quota_rm(struct broker *b, struct client *c, const struct vramd_quota_rm *m)
{
	char err[QUOTA_ERR_MAX];
	struct quota_subject subj;
	int r = quota_subject_parse(m->subject, &subj, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	const char *dev = m->device[0] ? m->device : NULL;
	if (b->cfg.state_dir)
		r = quota_remove_persist(&b->quotas, b->cfg.state_dir, &subj, dev, err, sizeof(err));
	else
		r = quota_store_remove(&b->quotas, &subj, dev, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	send_ok(b, c, &m->hdr);
	alloc_retry(b);
}

void handle_quota_list(struct broker *b, struct client *c, const struct vramd_hdr *m)
{
	_cleanup_free_ char *json = NULL;
	if (quota_store_to_json(&b->quotas, &json) < 0) {
		send_error(b, c, m, -ENOMEM, "broker out of memory");
		return;
	}
	send_text(b, c, m, json, strlen(json));
}

/* ======================================================================
 * EVICT, RELOAD
 * ====================================================================== */

void handle_evict(struct broker *b, struct client *c, const struct vramd_evict *m)
{
	struct client *x = b->clients;
	while (x && x->id != m->client_id)
		x = x->next;
	if (!x || x->dead) {
		send_error(b, c, &m->hdr, -ESRCH, "no client %u", m->client_id);
		return;
	}
	if (x->restored) {
		send_error(b, c, &m->hdr, -EINVAL, "client %u holds grants restored from the fd store for pid %d: "
			   "they go when that process exits or takes them back", m->client_id, (int)x->pid);
		return;
	}
	uint64_t deadline = now_ns() + b->cfg.reclaim_deadline_ms * 1000000ull;
	for (uint32_t d = 0; d < b->npools; d++)
		if (x->reclaimable_dev[d])
			send_reclaim(b, x, d, x->reclaimable_dev[d], 0, deadline);
	x->evict_deadline_ns = deadline;
	broker_log(1, CLIENT_FMT ": evicted by client %u: asked to release its reclaimable memory", CLIENT_ARGS(x),
		   c->id);
	send_ok(b, c, &m->hdr);
}

int admin_reload(struct broker *b, char *err, size_t errlen)
{
	struct broker_config cfg = b->cfg;
	struct quota_store q;
	int r;
	quota_store_init(&q);
	if (b->cfg.config_path && (r = broker_config_reload(&b->cfg, &cfg, err, errlen)) < 0) {
		size_t n = strlen(err);
		snprintf(err + n, errlen - n, "; nothing changed");
		return r;
	}
	if (b->cfg.state_dir && (r = quota_store_load(&q, b->cfg.state_dir, err, errlen)) < 0)
		return r;
	if (b->cfg.config_path) {
		b->cfg.client_max = cfg.client_max;
		b->cfg.max_clients = cfg.max_clients;
		b->cfg.max_clients_per_uid = cfg.max_clients_per_uid;
		b->cfg.hello_timeout_ms = cfg.hello_timeout_ms;
		b->cfg.max_grants = cfg.max_grants;
		b->cfg.reclaim_deadline_ms = cfg.reclaim_deadline_ms;
		b->cfg.ready_reserve = cfg.ready_reserve;
		b->cfg.ready_refill_rate = cfg.ready_refill_rate;
		b->cfg.ready_min_free = cfg.ready_min_free;
		broker_log_level = cfg.verbose ? 2 : 1;
	}
	for (uint32_t d = 0; d < b->npools; d++)
		pool_configure(b->pools[d], &b->cfg); /* also sees THP turned on since */
	if (b->cfg.state_dir) {
		quota_store_clear(&b->quotas);
		b->quotas = q;
	}
	broker_log(1, "reloaded%s%s", b->cfg.config_path ? " " : "", b->cfg.config_path ? b->cfg.config_path : "");
	alloc_retry(b);
	return 0;
}

void handle_reload(struct broker *b, struct client *c, const struct vramd_hdr *m)
{
	char err[QUOTA_ERR_MAX];
	int r = admin_reload(b, err, sizeof(err));
	if (r < 0)
		send_error(b, c, m, r, "%s", err);
	else
		send_ok(b, c, m);
}
