/* SPDX-License-Identifier: MIT */
/*
 * Layer 2b, the fair share of a device (docs/admin.md, "Sharing a GPU").
 * When the clients of a device together want more than it has, each gets:
 *
 *   base  = what it cannot give back (its non-reclaimable grants), and at
 *           least its quota floor (a bucket's floor split evenly among the
 *           bucket's clients) and the minimum it declared (DEMAND: e.g. a
 *           pager's window for its largest layer), capped by its want;
 *   share = base, raised to a common level L, capped by what it wants
 *           (DEMAND, else what it holds) and its ceiling, with L the level
 *           at which the shares fill the device.
 *
 * That is max-min fairness over the device above the floors: the clients
 * that want little get what they want, the rest split what is left evenly.
 * Free memory is handed out first come, first served; the share decides
 * only who is asked to give memory back (RECLAIM), and how much: a client
 * that asks for more than free memory gets it from the clients above
 * their share, never past its own share.  Restored and detached holders
 * keep what they hold.
 */
#ifndef VRAMD_BROKER_FAIR_H
#define VRAMD_BROKER_FAIR_H

#include <stdint.h>

#include "broker/internal.h"

/* Recomputes every client's share of pool p (client.share_dev).  req, when
 * not NULL, is counted as wanting at least extra bytes more than it holds
 * (an ALLOC being decided). */
void fair_update(struct broker *b, struct pool *p, const struct client *req, uint64_t extra);

/* The level-filling itself, for n clients on capacity bytes: share[i] =
 * min(cap[i], max(base[i], L)) with L as high as the capacity allows (when
 * the bases alone exceed it, share = base).  cap[i] >= base[i]. */
void fair_fill(const uint64_t *base, const uint64_t *cap, uint64_t *share, uint32_t n, uint64_t capacity);

#endif
