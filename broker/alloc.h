/* SPDX-License-Identifier: MIT */
/*
 * Layer 3, memory requests: ALLOC, FREE and REGISTER; an ALLOC that does
 * not fit is parked while other clients are asked to RECLAIM, and served,
 * or failed, in arrival order per device; deadlines.
 */
#ifndef VRAMD_BROKER_ALLOC_H
#define VRAMD_BROKER_ALLOC_H

#include <stdint.h>

#include "broker/internal.h"

void handle_alloc(struct broker *b, struct client *c, const struct vramd_alloc *m);
void handle_free(struct broker *b, struct client *c, const struct vramd_free *m);
/* fd: the memory being registered (stays the caller's). */
void handle_register(struct broker *b, struct client *c, const struct vramd_register *m, int fd);
void handle_reclaim_done(struct broker *b, struct client *c, const struct vramd_reclaim_done *m);
void handle_demand(struct broker *b, struct client *c, const struct vramd_demand *m);


/* Serves the parked ALLOCs that fit now (after a FREE, a quota change, a
 * drop), in arrival order per device; then offers what is free on a device
 * where nothing is parked to the clients below their fair share that want
 * more (OFFER). */
void alloc_retry(struct broker *b);

/* Forgets what c had parked and what it owed (the requests waiting for its
 * RECLAIMs stop waiting).  Before c's grants are released. */
void alloc_client_gone(struct broker *b, struct client *c);

/* Serves what fits and fails the parked requests nobody reclaims for any
 * more, with why. */
void alloc_settle(struct broker *b, const char *why);

/* Expires parked requests, unanswered RECLAIMs and evictions.  Returns the
 * time to the next deadline in ms, -1 if none. */
int alloc_expire(struct broker *b);

#endif
