/* SPDX-License-Identifier: MIT */
/* Layer 2: grant books, accounting, limits, the fd store (grant.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <linux/kcmp.h>

#include "broker/grant.h"
#include "common/cleanup.h"
#include "common/util.h"

/* Adds (sign 1) or removes (sign -1) g's bytes to or from c's accounting.
 * The one place a client's held/reclaimable figures change. */
static void client_account(struct client *c, const struct grant *g, int sign)
{
	uint64_t d = g->size;
	uint32_t i = g->pool->index;
	if (sign > 0) {
		c->held += d;
		c->held_dev[i] += d;
		c->ngrants++;
	} else {
		c->held -= d;
		c->held_dev[i] -= d;
		c->ngrants--;
	}
	if (g->flags & VRAMD_ALLOC_RECLAIMABLE) {
		c->reclaimable = sign > 0 ? c->reclaimable + d : c->reclaimable - d;
		c->reclaimable_dev[i] = sign > 0 ? c->reclaimable_dev[i] + d : c->reclaimable_dev[i] - d;
	}
}

struct grant *grant_add(struct broker *b, struct client *c, struct pool *p, uint64_t size, uint32_t flags,
			void *handle)
{
	struct grant *g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->id = ++b->next_grant_id;
	g->pool = p;
	g->owner = c;
	g->size = size;
	g->flags = flags;
	g->handle = handle;
	g->fd = -1;
	g->next = c->grants;
	c->grants = g;
	b->ngrants++;
	p->used += size;
	if (g->flags & VRAMD_ALLOC_RECLAIMABLE)
		p->reclaimable += size;
	client_account(c, g, 1);
	return g;
}

void grant_unlink(struct grant *g)
{
	for (struct grant **pp = &g->owner->grants; *pp; pp = &(*pp)->next)
		if (*pp == g) {
			*pp = g->next;
			break;
		}
	g->next = NULL;
}

void grant_move(struct grant *g, struct client *c)
{
	grant_unlink(g);
	client_account(g->owner, g, -1);
	g->owner = c;
	g->next = c->grants;
	c->grants = g;
	client_account(c, g, 1);
}

static void fdstore_drop(struct grant *g)
{
	char msg[sizeof(g->fdname) + 32];
	if (!g->stored)
		return;
	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", g->fdname);
	sd_notify(0, msg);
	g->stored = false;
}

void grant_release(struct broker *b, struct grant *g)
{
	struct pool *p = g->pool;
	fdstore_drop(g);
	if (g->fd >= 0)
		close(g->fd);
	if (p->ops->revoke && !b->shutting_down)
		p->ops->revoke(p, g->handle, g->size);
	p->ops->release(p, g->handle, g->size);
	p->used -= g->size;
	if (g->flags & VRAMD_ALLOC_RECLAIMABLE)
		p->reclaimable -= g->size;
	client_account(g->owner, g, -1);
	b->ngrants--;
	free(g);
}

void grant_identify(struct grant *g, int fd)
{
	struct stat st;
	if (g->pool->ops->fd_identity) {
		if (g->fd < 0 && (g->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0) {
			int e = errno;
			broker_log(0, "grant %llu: cannot keep its fd (%s): a REGISTER of it will not be recognised",
				   (unsigned long long)g->id, strerror(e));
		}
		return;
	}
	if (fstat(fd, &st) == 0) {
		g->st_dev = st.st_dev;
		g->st_ino = st.st_ino;
	}
}

/* The live grant whose memory is the file (dev, ino), or NULL. */
static struct grant *grant_by_inode(struct broker *b, dev_t dev, ino_t ino, struct client **ret_owner)
{
	for (struct client *x = b->clients; x; x = x->next)
		for (struct grant *g = x->grants; g; g = g->next)
			if (g->st_ino == ino && g->st_dev == dev && g->st_ino) {
				*ret_owner = x;
				return g;
			}
	return NULL;
}

/* The live grant on fd_identity pool p whose fd is the open file
 * description of fd (kcmp KCMP_FILE), or NULL.  Without kcmp (a kernel
 * built without it, a seccomp filter) nothing is found: such memory is then
 * counted as new, never as someone else's. */
static struct grant *grant_by_file(struct broker *b, const struct pool *p, int fd, struct client **ret_owner)
{
	static bool warned;
	pid_t self = getpid();
	for (struct client *x = b->clients; x; x = x->next)
		for (struct grant *g = x->grants; g; g = g->next) {
			if (g->pool != p || g->fd < 0)
				continue;
			long r = syscall(SYS_kcmp, self, self, KCMP_FILE, g->fd, fd);
			if (r == 0) {
				*ret_owner = x;
				return g;
			}
			if (r < 0) {
				int e = errno;
				if (!warned)
					broker_log(0, "kcmp: %s: re-registered %s grants cannot be matched to "
						   "known ones", strerror(e), p->ops->name);
				warned = true;
				return NULL;
			}
		}
	return NULL;
}

struct grant *grant_by_fd(struct broker *b, const struct pool *p, int fd, struct client **ret_owner)
{
	struct stat st;
	if (p->ops->fd_identity)
		return grant_by_file(b, p, fd, ret_owner);
	return fstat(fd, &st) == 0 ? grant_by_inode(b, st.st_dev, st.st_ino, ret_owner) : NULL;
}

static void hex_encode(char *dst, const uint8_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		snprintf(dst + 2 * i, 3, "%02x", src[i]);
}

static int hex_digit(char ch)
{
	return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Decodes 2n lower-case hex digits; false if src is not exactly that. */
static bool hex_decode(uint8_t *dst, const char *src, size_t n)
{
	if (strlen(src) != 2 * n)
		return false;
	for (size_t i = 0; i < n; i++) {
		int hi = hex_digit(src[2 * i]), lo = hex_digit(src[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		dst[i] = (uint8_t)(hi << 4 | lo);
	}
	return true;
}

void fdstore_put(struct broker *b, struct grant *g, int fd)
{
	char msg[sizeof(g->fdname) + 32], uuid[33], name[2 * VRAMD_NAME_MAX + 1];
	if (!b->fdstore || !g->pool->ops->adopt)
		return;
	const struct client *c = g->owner;
	const char *owner = client_quota_name(c);
	hex_encode(uuid, g->pool->uuid, 16);
	hex_encode(name, (const uint8_t *)owner, strlen(owner));
	snprintf(g->fdname, sizeof(g->fdname), "grant-%d-%u-%u-%s-%llu-%u-%llu-%s", (int)c->pid, (unsigned)c->uid,
		 (unsigned)c->gid, uuid, (unsigned long long)g->size, g->flags, (unsigned long long)g->id, name);
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", g->fdname);
	g->stored = sd_pid_notify_with_fds(0, 0, msg, &fd, 1) > 0;
}

int fdstore_name_parse(const char *fdname, struct fdstore_rec *ret)
{
	char uuid[33] = "";
	unsigned long long size, id;
	unsigned uid, gid, flags;
	int pid, end = 0;
	struct fdstore_rec r;
	memset(&r, 0, sizeof(r));
	if (sscanf(fdname, "grant-%d-%u-%u-%32[0-9a-f]-%llu-%u-%llu-%n", &pid, &uid, &gid, uuid, &size, &flags, &id,
		   &end) == 7 && end) {
		const char *hex = fdname + end;
		size_t n = strlen(hex);
		if (n % 2 || n / 2 >= sizeof(r.name) || !hex_decode((uint8_t *)r.name, hex, n / 2) ||
		    !text_printable(r.name))
			return -EINVAL;
		r.uid = uid;
		r.gid = gid;
		r.known_owner = true;
	} else if (sscanf(fdname, "grant-%d-%32[0-9a-f]-%llu-%u-%llu", &pid, uuid, &size, &flags, &id) != 5) {
		/* the above: names an older vramd stored, without the owner */
		return -EINVAL;
	}
	if (pid <= 0 || !hex_decode(r.uuid, uuid, 16))
		return -EINVAL;
	r.pid = pid;
	r.size = size;
	r.flags = flags & VRAMD_ALLOC_FLAGS_MASK;
	*ret = r;
	return 0;
}

struct pool *pool_by_name(struct broker *b, const char *name)
{
	for (uint32_t i = 0; i < b->npools; i++)
		if (!strcmp(b->pools[i]->name, name))
			return b->pools[i];
	return NULL;
}

struct pool *pool_by_uuid(struct broker *b, const uint8_t uuid[16])
{
	for (uint32_t i = 0; i < b->npools; i++)
		if (!memcmp(b->pools[i]->uuid, uuid, 16))
			return b->pools[i];
	return NULL;
}

uint64_t client_shared(const struct client *c, uint32_t d, bool only_its)
{
	uint64_t n = 0;
	for (const struct copy_ref *r = c->copies; r; r = r->next)
		if (r->copy->pool->index == d && (!only_its || r->copy->refs == 1))
			n += r->copy->size;
	return n;
}

/* What c holds on device d for its limits: its grants, and the shared
 * copies only it maps. */
static uint64_t charged(const struct client *c, uint32_t d)
{
	return c->held_dev[d] + client_shared(c, d, true);
}

/* The uid-level entry of a lookup: the client's uid's, else default's. */
static const struct quota_entry *uid_level(const struct quota_match *m)
{
	return m->by_uid ? m->by_uid : m->by_default;
}

/* The bytes entry e's bucket holds on p: every client e applies to at its
 * level (name_level: the clients of that name; otherwise every client
 * whose uid-level entry it is, whatever its name). */
static uint64_t bucket_of(struct broker *b, const struct pool *p, const struct quota_entry *e, bool name_level)
{
	uint64_t n = 0;
	for (struct client *x = b->clients; x; x = x->next) {
		struct quota_match xm;
		quota_lookup(&b->quotas, x->uid, client_quota_name(x), p->name, &xm);
		if ((name_level ? xm.by_name : uid_level(&xm)) == e)
			n += charged(x, p->index);
	}
	return n;
}

/* 0 if e's bucket may hold size more bytes under its ceiling; -EDQUOT with
 * why set otherwise. */
static int ceiling_allows(struct broker *b, const struct pool *p, const struct quota_entry *e, bool name_level,
			  uint64_t size, char *why, size_t len)
{
	if (!e || e->ceiling == QUOTA_NO_CEILING)
		return 0;
	uint64_t bucket = bucket_of(b, p, e, name_level);
	if (bucket <= e->ceiling && size <= e->ceiling - bucket)
		return 0;
	char subj[128], s1[32], s2[32], s3[32];
	snprintf(why, len, "quota %s on %s: ceiling %s, %s held + %s asked",
		 quota_subject_format(&e->subject, subj, sizeof(subj)), p->name,
		 size_format(e->ceiling, s1, sizeof(s1)), size_format(bucket, s2, sizeof(s2)),
		 size_format(size, s3, sizeof(s3)));
	return -EDQUOT;
}

/* Both levels bind: a name's ceiling bounds the clients of that name, and
 * the uid's (else default's) ceiling bounds the user whatever names its
 * clients choose, so a name, which any client may claim, can lower what a
 * user may hold but never raise it. */
int quota_allows(struct broker *b, const struct client *c, const struct pool *p, uint64_t size, char *why,
		 size_t len)
{
	struct quota_match m;
	quota_lookup(&b->quotas, c->uid, client_quota_name(c), p->name, &m);
	int r = ceiling_allows(b, p, m.by_name, true, size, why, len);
	return r < 0 ? r : ceiling_allows(b, p, uid_level(&m), false, size, why, len);
}

int limits_allow(struct broker *b, const struct client *c, const struct pool *p, uint64_t size, const char *verb,
		 char *why, size_t len)
{
	uint64_t max = b->cfg.client_max, held = c->held;
	for (uint32_t d = 0; d < b->npools; d++)
		held += client_shared(c, d, true);
	if (max && size > max - MIN(held, max)) {
		char s1[32], s2[32], s3[32];
		snprintf(why, len, "client limit: %s held + %s %s > %s per client",
			 size_format(held, s1, sizeof(s1)), size_format(size, s2, sizeof(s2)), verb,
			 size_format(max, s3, sizeof(s3)));
		return -EDQUOT;
	}
	return quota_allows(b, c, p, size, why, len);
}

uint64_t largest_reclaimable(const struct client *x, const struct pool *p)
{
	uint64_t m = 0;
	for (const struct grant *g = x->grants; g; g = g->next)
		if (g->pool == p && (g->flags & VRAMD_ALLOC_RECLAIMABLE))
			m = MAX(m, g->size);
	return m;
}

uint64_t reclaim_room(struct broker *b, const struct client *x, const struct pool *p)
{
	struct quota_match m;
	uint64_t r = x->reclaimable_dev[p->index];
	quota_lookup(&b->quotas, x->uid, client_quota_name(x), p->name, &m);
	/* the floor that protects x: its name's, else its uid level's */
	const struct quota_entry *e = m.by_name ? m.by_name : uid_level(&m);
	if (e && e->floor) {
		uint64_t bucket = bucket_of(b, p, e, m.by_name != NULL);
		/* less the largest grant x could free: a client asked for X
		 * may free past it by less than one grant (whole grants:
		 * runtime/pager-reclaim.c) and must still not cross its floor */
		uint64_t above = bucket > e->floor ? bucket - e->floor : 0, largest = largest_reclaimable(x, p);
		r = MIN(r, above > largest ? above - largest : 0);
	}
	return r;
}

void quota_bounds(struct broker *b, const struct client *c, const struct pool *p, uint64_t *ret_floor,
		  uint64_t *ret_ceiling)
{
	struct quota_match m;
	quota_lookup(&b->quotas, c->uid, client_quota_name(c), p->name, &m);
	const struct quota_entry *fe = m.by_name ? m.by_name : uid_level(&m);
	*ret_floor = 0;
	*ret_ceiling = UINT64_MAX;
	if (fe && fe->floor) {
		/* a bucket's floor, split evenly among its clients here */
		uint32_t k = 0;
		for (struct client *x = b->clients; x; x = x->next) {
			struct quota_match xm;
			quota_lookup(&b->quotas, x->uid, client_quota_name(x), p->name, &xm);
			k += (m.by_name ? xm.by_name : uid_level(&xm)) == fe;
		}
		*ret_floor = fe->floor / (k ? k : 1);
	}
	const struct quota_entry *ce[2] = { m.by_name, uid_level(&m) };
	for (int i = 0; i < 2; i++)
		if (ce[i] && ce[i]->ceiling != QUOTA_NO_CEILING)
			*ret_ceiling = MIN(*ret_ceiling, ce[i]->ceiling);
	if (b->cfg.client_max)
		*ret_ceiling = MIN(*ret_ceiling, b->cfg.client_max);
}
