/* SPDX-License-Identifier: MIT */
/* What every pool shares, whatever its backend. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "broker/config.h"
#include "broker/pool.h"
#include "common/cleanup.h"
#include "common/util.h"

struct pool *pool_alloc(uint32_t backend, const char *name, uint64_t capacity, uint64_t granularity,
			const struct pool_ops *ops, void *priv)
{
	struct pool *p = calloc(1, sizeof(*p));
	if (!p) {
		errno = ENOMEM;
		return NULL;
	}
	p->backend = backend;
	p->total = capacity;
	p->granularity = granularity;
	p->numa_node = -1;
	p->ordinal = -1;
	p->ops = ops;
	p->priv = priv;
	str_copy(p->name, name, sizeof(p->name));
	return p;
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	if (p->ops && p->ops->destroy)
		p->ops->destroy(p);
	free(p);
}

void pool_uuid_from_string(uint8_t uuid[16], const char *s)
{
	XXH128_hash_t h = XXH3_128bits(s, strlen(s));
	memcpy(uuid, &h.low64, 8);
	memcpy(uuid + 8, &h.high64, 8);
	uuid[6] = (uuid[6] & 0x0f) | 0x80; /* RFC 9562 version 8: custom */
	uuid[8] = (uuid[8] & 0x3f) | 0x80;
}

void pool_describe(const struct pool *p, struct vramd_device *d)
{
	memset(d, 0, sizeof(*d));
	d->index = p->index;
	d->backend = p->backend;
	d->flags = p->flags;
	d->numa_node = p->numa_node;
	d->ordinal = p->ordinal;
	d->total = p->total;
	d->used = p->used;
	d->granularity = p->granularity;
	d->reclaimable = p->reclaimable;
	memcpy(d->uuid, p->uuid, 16);
	str_copy(d->name, p->name, sizeof(d->name));
	str_copy(d->label, p->label, sizeof(d->label));
	if (p->ops->describe)
		p->ops->describe(p, d);
}

void pool_configure(struct pool *p, const struct broker_config *cfg)
{
	if (!p->ops->configure)
		return;
	uint64_t target = MIN(broker_amount_of(&cfg->ready_reserve, p->total), p->total);
	struct pool_ready_settings s = {
		.target = p->granularity ? target - target % p->granularity : target,
		.rate = cfg->ready_refill_rate,
		.min_free_bytes = cfg->ready_min_free.bytes,
		.min_free_bp = cfg->ready_min_free.bp,
		.min_free_share = cfg->ready_min_free.share,
	};
	p->ops->configure(p, &s);
}

uint64_t pool_room(const struct pool *p)
{
	return p->used < p->total ? p->total - p->used : 0;
}

uint64_t pool_adopt_growth(const struct pool *p, uint64_t size)
{
	return p->total_max > p->total ? MIN(size, p->total_max - p->total) : 0;
}
