/* SPDX-License-Identifier: MIT */
/*
 * Layer 2, the books: grants and who holds them, per-client and per-pool
 * accounting, the limits (per-client maximum, quotas), identifying memory
 * that comes back (REGISTER, the fd store), pools by name or UUID.
 */
#ifndef VRAMD_BROKER_GRANT_H
#define VRAMD_BROKER_GRANT_H

#include <stddef.h>
#include <stdint.h>

#include "broker/internal.h"

/* Accounts a new grant of c on p (handle from the backend): on the pool, c
 * and the broker.  NULL if out of memory (the caller releases the handle). */
struct grant *grant_add(struct broker *b, struct client *c, struct pool *p, uint64_t size, uint32_t flags,
			void *handle);

/* Takes g off its owner's list (it stays accounted to the owner). */
void grant_unlink(struct grant *g);

/* Moves g, unlinked or not, from its owner to c, accounting included. */
void grant_move(struct grant *g, struct client *c);

/* Releases g: revokes its memory (unless the broker is shutting down), the
 * backend's handle, the fd store entry, every account.
 * g must be unlinked from its owner's list already; it is freed. */
void grant_release(struct broker *b, struct grant *g);

/* Records what tells g's memory apart when fd comes back (REGISTER): the
 * inode of a memfd, or, on an fd_identity pool, the open file description
 * itself, kept as a duplicate of fd in g->fd (unless g->fd holds the fd
 * store's already) until the grant is released. */
void grant_identify(struct grant *g, int fd);

/* The live grant whose memory is fd (by inode, or on an fd_identity pool
 * p by open file description with kcmp), and its owner; NULL if none. */
struct grant *grant_by_fd(struct broker *b, const struct pool *p, int fd, struct client **ret_owner);

/* systemd's fd store: g's fd is kept there while the grant lives (when the
 * broker uses the fd store and the pool can adopt), so that a restarted
 * broker knows about memory clients still hold before they reconnect.  Its
 * name carries what the restarted broker needs to account it to its owner
 * without asking /proc (which ProtectProc=invisible hides):
 * grant-PID-UID-GID-UUID-SIZE-FLAGS-ID-NAME, NAME the client's name in
 * hex (up to 248 bytes, under systemd's 255). */
void fdstore_put(struct broker *b, struct grant *g, int fd);

/* What an fd-store name says (fdstore_put's form, or an older vramd's
 * grant-PID-UUID-SIZE-FLAGS-ID, which leaves known_owner false). */
struct fdstore_rec {
	pid_t pid;
	uid_t uid;
	gid_t gid;
	bool known_owner;
	uint8_t uuid[16];
	uint64_t size;
	uint32_t flags;
	char name[VRAMD_NAME_MAX];
};

/* Parses an fd-store name.  0, or -EINVAL when it is not one. */
int fdstore_name_parse(const char *fdname, struct fdstore_rec *ret);

/* The pool called name ("cpu", "cuda:0"), or with that UUID; NULL if none. */
struct pool *pool_by_name(struct broker *b, const char *name);
struct pool *pool_by_uuid(struct broker *b, const uint8_t uuid[16]);

/* 0 if c may hold size more bytes on p under the per-client maximum and
 * its quota; -EDQUOT with why set ("quota uid:1000 on cuda:0: ceiling ...",
 * "client limit: ...") otherwise.  verb says what the bytes are ("asked",
 * "registered"). */
int limits_allow(struct broker *b, const struct client *c, const struct pool *p, uint64_t size, const char *verb,
		 char *why, size_t len);

/* 0 if c's quota bucket on p may hold size more bytes; -EDQUOT with why. */
int quota_allows(struct broker *b, const struct client *c, const struct pool *p, uint64_t size, char *why,
		 size_t len);

/* The largest reclaimable grant x holds on p (0: none). */
uint64_t largest_reclaimable(const struct client *x, const struct pool *p);
/* What RECLAIM may ask of x on p: its reclaimable memory there, and under
 * a floor what it holds above the floor less its largest reclaimable grant
 * there (what a client frees may pass the ask by less than one grant: it
 * still never crosses its floor). */
uint64_t reclaim_room(struct broker *b, const struct client *x, const struct pool *p);

/* Bytes of the shared copies on device d that c maps (only_its: those no
 * other client maps, which count against its limits). */
uint64_t client_shared(const struct client *c, uint32_t d, bool only_its);

/* c's quota bounds on p for the fair share: the floor that protects it
 * (its bucket's, split evenly among the bucket's clients; 0: none) and the
 * lowest ceiling that binds it (UINT64_MAX: none). */
void quota_bounds(struct broker *b, const struct client *c, const struct pool *p, uint64_t *ret_floor,
		  uint64_t *ret_ceiling);

#endif
