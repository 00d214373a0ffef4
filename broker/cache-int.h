/* SPDX-License-Identifier: MIT */
/* What cache.c, cache-fill.c and cache-store.c share (cache.h). */
#ifndef VRAMD_BROKER_CACHE_INT_H
#define VRAMD_BROKER_CACHE_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "broker/cache.h"
#include "common/layout.h"

/* ---- cache.c ---------------------------------------------------------------- */

/* The layout of a run (converted size included); -EINVAL for a conversion
 * the broker cannot make (not a solo run, not among the kernels' float
 * types, not whole elements). */
int copy_run_layout(const struct vramd_share_run *r, struct layout_run *ret);
/* Bytes per element of the dtypes copies convert between (0: another). */
uint32_t copy_dtype_size(uint32_t dtype);
/* The hash of a key (its hash field aside). */
uint64_t copy_key_hash(const struct copy_key *k);
/* The file identity part of a key. */
void copy_identity(const struct stat *st, struct copy_key *k);
/* A copy of size bytes on p, accounted (pool use, cache bytes), in the
 * broker's list, with nothing else set; NULL if out of memory. */
struct copy *copy_new(struct broker *b, struct pool *p, uint64_t size);
/* Ends cp: its fill stopped, out of the fd store, its memory revoked
 * (revoke, unless the broker shuts down) and released, its accounting
 * undone, freed.  Its users' references must be gone. */
void copy_free(struct broker *b, struct copy *cp, bool revoke);

/* ---- cache-fill.c ------------------------------------------------------------ */

/* Starts filling cp from fd (duplicated): its memory made, its regions
 * laid out, threads reading.  0 or -errno with cp->why. */
int fill_start(struct broker *b, struct copy *cp, int fd);
/* The bytes a fill reads in all (progress's total). */
uint64_t fill_total(const struct copy *cp);
/* Waits for cp's fill threads (asking them to stop first unless they are
 * done); idempotent. */
void fill_join(struct copy *cp);
/* After the threads: checks the file did not change while it was read,
 * seals the copy and makes the fd clients get, frees the fill.  0 or
 * -errno with cp->why. */
int fill_finish(struct broker *b, struct copy *cp);
/* Frees what a fill holds (its threads joined first); idempotent. */
void fill_free(struct copy *cp);

/* ---- cache-store.c ------------------------------------------------------------ */

/* Keeps a filled copy in systemd's fd store, its key in the state
 * directory (when the broker has both). */
void copy_store(struct broker *b, struct copy *cp);
/* Takes it out again. */
void copy_unstore(struct broker *b, struct copy *cp);

#endif
