/* SPDX-License-Identifier: MIT */
/*
 * Layer 2b, shared copies (docs/design.md, "Shared copies"): broker-owned,
 * read-only copies of a checkpoint's bytes on a device, one for every
 * client that asks for the same runs of the same file.
 *
 *  - Keyed by the file's identity as the broker sees it through the fd the
 *    client passes (fstat: device, inode, size, mtime, ctime), the device,
 *    and the runs (layout and conversion); never by a path or a name.
 *  - Filled by the broker itself, from that fd, in threads of its own
 *    (cache-fill.c): no client writes a byte of it, so no client can put
 *    bytes into what another maps.  A host copy (memfd) is then sealed
 *    against writing and handed out reopened read-only, so it is shared by
 *    every uid that can read the file.  A CUDA export cannot be made
 *    read-only (an importer picks its own access), so CUDA copies are
 *    shared only among the clients of one uid.
 *  - Single flight: a SHARE of a copy being filled waits for it (with
 *    SHARE_PROGRESS); a fill that fails (I/O error, the file changed,
 *    every waiter gone) leaves nothing behind and its waiters get the
 *    error.
 *  - Counted once in the device's use; refcounted by the clients that map
 *    it; kept after the last one leaves, within a budget per device
 *    (cache-max), and evicted least recently used first, before anyone is
 *    asked to reclaim.  A copy in use is never evicted.  A client's
 *    ceilings count the copies only it maps.
 *  - Kept in systemd's fd store with their keys in the state directory, so
 *    they survive a broker restart like grants.
 */
#ifndef VRAMD_BROKER_CACHE_H
#define VRAMD_BROKER_CACHE_H

#include <stdint.h>

#include "broker/internal.h"

/* The budgets (cfg.cache_max) and the fill threads' wake-up fd, which the
 * loop watches (EV_CACHE).  0 or -errno. */
int cache_init(struct broker *b);
/* Stops the fills and drops the books (at shutdown nothing is revoked:
 * clients keep what they map).  NULL-safe on a broker without a cache. */
void cache_free(struct broker *b);

/* fd: the checkpoint (stays the caller's). */
void handle_share(struct broker *b, struct client *c, const struct vramd_share *m, int fd);
void handle_unshare(struct broker *b, struct client *c, const struct vramd_unshare *m);
void handle_cache_list(struct broker *b, struct client *c, const struct vramd_hdr *m);
/* fd: the file whose copies go, or -1 (VRAMD_CACHE_DROP_ALL). */
void handle_cache_drop(struct broker *b, struct client *c, const struct vramd_cache_drop *m, int fd);
/* REGISTER of a copy c maps (after a restart); fd stays the caller's. */
void cache_register(struct broker *b, struct client *c, const struct vramd_register *m, struct pool *p, int fd);

/* The loop: fill threads reported progress or an end. */
void cache_event(struct broker *b);
/* c is going: its uses of copies end, its waits too (a fill nobody waits
 * for any more is abandoned). */
void cache_client_gone(struct broker *b, struct client *c);

/* Evicts unused copies on p, least recently used first, until p has room
 * for bytes (or none is left); returns the bytes freed. */
uint64_t cache_evict(struct broker *b, struct pool *p, uint64_t bytes);

/* Takes back a copy systemd's fd store kept (FDNAME=copy-...); the fd is
 * the broker's afterwards (closed when it cannot be). */
void cache_restore(struct broker *b, int fd, const char *name);

#endif
