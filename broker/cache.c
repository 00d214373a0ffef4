/* SPDX-License-Identifier: MIT */
/* Layer 2b: shared read-only copies, their books and requests (cache.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/kcmp.h>
#include <xxhash.h>

#include <jansson.h>

#include "broker/cache-int.h"
#include "broker/conn.h"
#include "broker/grant.h"
#include "common/cleanup.h"
#include "common/layout.h"
#include "common/proto.h"
#include "common/util.h"
#include "kernels/kernels.h"

/* ======================================================================
 * Keys
 * ====================================================================== */

uint32_t copy_dtype_size(uint32_t dtype)
{
	switch (dtype) {
	case VK_DTYPE_F8_E4M3: case VK_DTYPE_F8_E5M2: return 1;
	case VK_DTYPE_F16: case VK_DTYPE_BF16: return 2;
	case VK_DTYPE_F32: return 4;
	default: return 0;
	}
}

int copy_run_layout(const struct vramd_share_run *r, struct layout_run *ret)
{
	ret->file_off = r->file_off;
	ret->len = r->len;
	ret->olen = r->len;
	ret->solo = r->flags & VRAMD_SHARE_RUN_SOLO;
	if (r->src_dtype == r->dst_dtype)
		return 0;
	uint32_t ss = copy_dtype_size(r->src_dtype), ds = copy_dtype_size(r->dst_dtype);
	if (!ret->solo || !ss || !ds || !vk_cast_supported(r->src_dtype, r->dst_dtype) || r->len % ss)
		return -EINVAL;
	ret->olen = r->len / ss * ds;
	return 0;
}

uint64_t copy_key_hash(const struct copy_key *k)
{
	XXH3_state_t *st = XXH3_createState();
	uint64_t h = 0;
	if (!st)
		return 0;
	XXH3_64bits_reset(st);
	XXH3_64bits_update(st, &k->st_dev, sizeof(k->st_dev));
	XXH3_64bits_update(st, &k->st_ino, sizeof(k->st_ino));
	XXH3_64bits_update(st, &k->size, sizeof(k->size));
	XXH3_64bits_update(st, &k->mtime_ns, sizeof(k->mtime_ns));
	XXH3_64bits_update(st, &k->ctime_ns, sizeof(k->ctime_ns));
	XXH3_64bits_update(st, &k->device, sizeof(k->device));
	XXH3_64bits_update(st, &k->uid, sizeof(k->uid));
	XXH3_64bits_update(st, k->runs, (size_t)k->nruns * sizeof(*k->runs));
	h = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return h;
}

static bool key_equal(const struct copy_key *a, const struct copy_key *b)
{
	return a->hash == b->hash && a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns && a->device == b->device &&
	       a->uid == b->uid && a->nruns == b->nruns &&
	       !memcmp(a->runs, b->runs, (size_t)a->nruns * sizeof(*a->runs));
}

void copy_identity(const struct stat *st, struct copy_key *k)
{
	k->st_dev = st->st_dev;
	k->st_ino = st->st_ino;
	k->size = (uint64_t)st->st_size;
	k->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	k->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

/* The key of m's request on p from fd (runs copied), and the copy's size.
 * 0, or -errno with why set. */
static int key_from(struct client *c, const struct vramd_share *m, struct pool *p, int fd, struct copy_key *k,
		    uint64_t *ret_size, char *why, size_t len)
{
	struct stat st;
	int fl = fcntl(fd, F_GETFL);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || fl < 0 || (fl & O_ACCMODE) == O_WRONLY)
		return errf(why, len, -EBADF, "SHARE: the fd is not a checkpoint open for reading");
	memset(k, 0, sizeof(*k));
	copy_identity(&st, k);
	k->device = p->index;
	k->uid = p->ops->copy_read_only ? (uint32_t)-1 : (uint32_t)c->uid;
	k->nruns = m->nruns;
	const struct vramd_share_run *runs = (const void *)(m + 1);
	_cleanup_free_ struct layout_run *lr = calloc(m->nruns, sizeof(*lr));
	_cleanup_free_ uint64_t *reg = calloc(m->nruns, sizeof(*reg));
	if (!lr || !reg)
		return errf(why, len, -ENOMEM, "broker out of memory");
	for (uint32_t i = 0; i < m->nruns; i++) {
		if (runs[i].len > k->size || runs[i].file_off > k->size - runs[i].len)
			return errf(why, len, -EINVAL, "SHARE: run %u [%llu, +%llu) is past the file's %llu bytes", i,
				    (unsigned long long)runs[i].file_off, (unsigned long long)runs[i].len,
				    (unsigned long long)k->size);
		if (copy_run_layout(&runs[i], &lr[i]) < 0)
			return errf(why, len, -EINVAL, "SHARE: run %u converts dtype %u to %u, which the broker cannot",
				    i, runs[i].src_dtype, runs[i].dst_dtype);
	}
	*ret_size = round_up_u64(layout_regions(lr, m->nruns, reg), p->granularity, &(int){ 0 });
	if (!(k->runs = malloc((size_t)m->nruns * sizeof(*runs))))
		return errf(why, len, -ENOMEM, "broker out of memory");
	memcpy(k->runs, runs, (size_t)m->nruns * sizeof(*runs));
	k->hash = copy_key_hash(k);
	return 0;
}

/* The live copy of k: ready, or filling (an abandoned fill still winding
 * down included: a request that joins it has it started again, see
 * fill_restart). */
static struct copy *copy_find(struct broker *b, const struct copy_key *k)
{
	for (struct copy *cp = b->copies; cp; cp = cp->next)
		if (!cp->doomed && !cp->orphan && cp->state != COPY_FAILED && key_equal(&cp->key, k))
			return cp;
	return NULL;
}

/* ======================================================================
 * Uses
 * ====================================================================== */

/* c maps cp from now on. */
static int ref_add(struct broker *b, struct client *c, struct copy *cp)
{
	struct copy_ref *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->copy = cp;
	r->next = c->copies;
	c->copies = r;
	if (cp->refs++ == 0)
		b->cache_inuse[cp->pool->index] += cp->size;
	cp->last_use_ns = now_ns();
	return 0;
}

/* c no longer maps cp (one use of it); false if it did not. */
static bool ref_drop(struct broker *b, struct client *c, const struct copy *match, uint64_t id)
{
	for (struct copy_ref **pp = &c->copies; *pp; pp = &(*pp)->next) {
		struct copy *cp = (*pp)->copy;
		if (match ? cp != match : cp->id != id)
			continue;
		struct copy_ref *r = *pp;
		*pp = r->next;
		free(r);
		cp->last_use_ns = now_ns();
		if (--cp->refs == 0) {
			b->cache_inuse[cp->pool->index] -= cp->size;
			if (cp->doomed || cp->orphan)
				copy_free(b, cp, true);
		}
		return true;
	}
	return false;
}

/* ======================================================================
 * Lifetime
 * ====================================================================== */

struct copy *copy_new(struct broker *b, struct pool *p, uint64_t size)
{
	struct copy *cp = calloc(1, sizeof(*cp));
	if (!cp)
		return NULL;
	cp->id = ++b->next_copy_id;
	cp->pool = p;
	cp->size = size;
	cp->fd = cp->ro_fd = cp->file_fd = -1;
	cp->last_use_ns = now_ns();
	cp->next = b->copies;
	b->copies = cp;
	p->used += size;
	b->cache_bytes[p->index] += size;
	return cp;
}

void copy_free(struct broker *b, struct copy *cp, bool revoke)
{
	struct pool *p = cp->pool;
	for (struct copy **pp = &b->copies; *pp; pp = &(*pp)->next)
		if (*pp == cp) {
			*pp = cp->next;
			break;
		}
	fill_free(cp);
	copy_unstore(b, cp);
	if (cp->handle) {
		if (revoke && p->ops->revoke && !b->shutting_down)
			p->ops->revoke(p, cp->handle, cp->size);
		p->ops->release(p, cp->handle, cp->size);
	}
	if (cp->refs)
		b->cache_inuse[p->index] -= cp->size;
	/* Each by name: handle lies between ro_fd and file_fd, and a walk from
	 * fd to file_fd closed its halves as fds (another grant's, and 0). */
	int *fds[] = { &cp->fd, &cp->ro_fd, &cp->file_fd };
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		if (*fds[i] >= 0)
			close(*fds[i]);
	p->used -= cp->size;
	b->cache_bytes[p->index] -= cp->size;
	while (cp->waiters) {
		struct copy_waiter *w = cp->waiters;
		cp->waiters = w->next;
		free(w);
	}
	free(cp->key.runs);
	free(cp->regions);
	free(cp);
}

static int cmp_lru(const void *a, const void *b)
{
	const struct copy *x = *(struct copy *const *)a, *y = *(struct copy *const *)b;
	return x->last_use_ns < y->last_use_ns ? -1 : x->last_use_ns > y->last_use_ns;
}

uint64_t cache_evict(struct broker *b, struct pool *p, uint64_t bytes)
{
	uint32_t n = 0;
	uint64_t freed = 0;
	for (struct copy *cp = b->copies; cp; cp = cp->next)
		n++;
	_cleanup_free_ struct copy **v = calloc(n + 1, sizeof(*v));
	if (!v)
		return 0;
	n = 0;
	for (struct copy *cp = b->copies; cp; cp = cp->next)
		if (cp->pool == p && !cp->refs && cp->state == COPY_READY)
			v[n++] = cp;
	qsort(v, n, sizeof(*v), cmp_lru);
	for (uint32_t i = 0; i < n && pool_room(p) < bytes; i++) {
		char s1[32];
		broker_log(1, "%s: evicting the unused copy %llu of %s (%s) to make room", p->name,
			   (unsigned long long)v[i]->id, v[i]->path, size_format(v[i]->size, s1, sizeof(s1)));
		freed += v[i]->size;
		b->cache_evictions[p->index]++;
		copy_free(b, v[i], true);
	}
	return freed;
}

/* Makes room for size more bytes of copies on p, within its budget and its
 * capacity, by evicting unused ones.  0, or -ENOSPC / -ENOMEM with why. */
static int cache_room(struct broker *b, struct pool *p, uint64_t size, char *why, size_t len)
{
	uint32_t d = p->index;
	char s1[32], s2[32], s3[32];
	uint64_t max = b->cache_max[d];
	if (size > max)
		return errf(why, len, -ENOSPC, "%s: a copy of %s is larger than the cache budget (%s)", p->name,
			    size_format(size, s1, sizeof(s1)), size_format(max, s2, sizeof(s2)));
	if (b->cache_bytes[d] + size > max)
		cache_evict(b, p, pool_room(p) + (b->cache_bytes[d] + size - max));
	if (b->cache_bytes[d] + size > max)
		return errf(why, len, -ENOSPC, "%s: the cache budget (%s) holds %s of copies in use", p->name,
			    size_format(max, s1, sizeof(s1)), size_format(b->cache_bytes[d], s2, sizeof(s2)));
	if (pool_room(p) < size)
		cache_evict(b, p, size);
	if (pool_room(p) < size)
		return errf(why, len, -ENOMEM, "%s: %s for a copy, %s free of %s", p->name,
			    size_format(size, s1, sizeof(s1)), size_format(pool_room(p), s2, sizeof(s2)),
			    size_format(p->total, s3, sizeof(s3)));
	return 0;
}

/* ======================================================================
 * Replies
 * ====================================================================== */

static void unpark_copy(struct broker *b, struct client *c)
{
	c->parked = false;
	c->waits_copy = false;
	if (!c->dead)
		conn_update_events(b, c);
}

/* Hands c the copy (a use of it counted already). */
static void send_share_reply(struct broker *b, struct client *c, uint64_t seq, const struct copy *cp, uint32_t how)
{
	struct vramd_share_reply rep;
	memset(&rep, 0, sizeof(rep));
	proto_hdr_init(&rep.hdr, VRAMD_SHARE_REPLY, sizeof(rep), seq);
	rep.copy_id = cp->id;
	rep.size = cp->size;
	rep.device = cp->pool->index;
	rep.how = how;
	client_send(b, c, &rep, sizeof(rep), cp->ro_fd);
}

/* The fill of cp ended: each waiter gets the copy (now a use of theirs) or
 * the error. */
static void answer_waiters(struct broker *b, struct copy *cp)
{
	while (cp->waiters) {
		struct copy_waiter *w = cp->waiters;
		cp->waiters = w->next;
		struct vramd_hdr req = { .seq = w->seq, .opcode = VRAMD_SHARE };
		if (cp->state == COPY_READY && ref_add(b, w->c, cp) == 0)
			send_share_reply(b, w->c, w->seq, cp, w->filler ? VRAMD_SHARE_FILLED : VRAMD_SHARE_WAITED);
		else if (cp->state == COPY_READY)
			send_error(b, w->c, &req, -ENOMEM, "broker out of memory");
		else
			send_error(b, w->c, &req, cp->error, "%s", cp->why);
		unpark_copy(b, w->c);
		free(w);
	}
}

static void send_progress(struct broker *b, struct copy *cp, uint64_t total)
{
	uint64_t now = now_ns();
	if (now - cp->last_progress_ns < 250000000ull)
		return;
	cp->last_progress_ns = now;
	for (struct copy_waiter *w = cp->waiters; w; w = w->next) {
		struct vramd_share_progress m;
		memset(&m, 0, sizeof(m));
		proto_hdr_init(&m.hdr, VRAMD_SHARE_PROGRESS, sizeof(m), w->seq);
		m.copy_id = cp->id;
		m.total = total;
		m.done = MIN(atomic_load(&cp->filled), total);
		client_send(b, w->c, &m, sizeof(m), -1);
	}
}

static int copy_start(struct broker *b, struct client *c, uint64_t seq, struct pool *p, struct copy_key *k,
		      uint64_t size, int fd, char *why, size_t len, struct copy **ret);

/* An abandoned fill (its filler and waiters gone) that new requests joined
 * while its threads wound down: its memory is freed, then the same copy is
 * filled again for them from the same file (the first of them its filler).
 * Without this they would be refused for want of the memory it still held. */
static void fill_restart(struct broker *b, struct copy *cp)
{
	struct copy_waiter *ws = cp->waiters;
	struct copy_key k = cp->key;
	struct pool *p = cp->pool;
	uint64_t size = cp->size;
	int fd = cp->file_fd;
	cp->waiters = NULL;
	cp->key.runs = NULL;
	cp->file_fd = -1;
	copy_free(b, cp, true);
	char why[VRAMD_REASON_MAX] = "";
	struct copy *nc = NULL;
	int r = fd < 0 ? -EBADF : copy_start(b, ws->c, ws->seq, p, &k, size, fd, why, sizeof(why), &nc);
	free(k.runs);
	if (fd >= 0)
		close(fd);
	/* the first is the new fill's filler (copy_start made its waiter) */
	for (struct copy_waiter *first = ws, *w; (w = ws);) {
		ws = w->next;
		if (r == 0 && w != first) {
			w->next = nc->waiters;
			nc->waiters = w;
			continue;
		}
		if (r < 0) {
			struct vramd_hdr req = { .seq = w->seq, .opcode = VRAMD_SHARE };
			send_error(b, w->c, &req, r, "%s", why[0] ? why : "filling the copy again failed");
			unpark_copy(b, w->c);
		}
		free(w);
	}
}

/* A fill ended: seal the copy and hand it out, or drop it. */
static void fill_settled(struct broker *b, struct copy *cp)
{
	char s1[32];
	fill_join(cp);
	if (cp->state == COPY_FILLING && !cp->error)
		cp->error = fill_finish(b, cp);
	if (cp->error == -ECANCELED && cp->waiters) {
		broker_log(2, "%s: copy %llu of %s: abandoned, asked for again: filling it anew", cp->pool->name,
			   (unsigned long long)cp->id, cp->path);
		fill_restart(b, cp);
		return;
	}
	if (cp->error) {
		cp->state = COPY_FAILED;
		broker_log(1, "%s: the copy of %s failed: %s", cp->pool->name, cp->path, cp->why);
		answer_waiters(b, cp);
		copy_free(b, cp, true);
		return;
	}
	cp->state = COPY_READY;
	b->cache_fills[cp->pool->index]++;
	broker_log(1, "%s: copy %llu of %s filled (%s)", cp->pool->name, (unsigned long long)cp->id, cp->path,
		   size_format(cp->size, s1, sizeof(s1)));
	copy_store(b, cp);
	answer_waiters(b, cp);
}

void cache_event(struct broker *b)
{
	uint64_t x;
	if (read(b->cache_evfd, &x, sizeof(x)) < 0)
		return;
	for (struct copy *cp = b->copies, *next; cp; cp = next) {
		next = cp->next;
		if (cp->state != COPY_FILLING)
			continue;
		if (atomic_load(&cp->done))
			fill_settled(b, cp);
		else
			send_progress(b, cp, fill_total(cp));
	}
}

/* ======================================================================
 * Requests
 * ====================================================================== */

static int add_waiter(struct copy *cp, struct client *c, uint64_t seq, bool filler)
{
	struct copy_waiter *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	*w = (struct copy_waiter){ c, seq, filler, cp->waiters };
	cp->waiters = w;
	return 0;
}

static void park_for_copy(struct broker *b, struct client *c)
{
	c->parked = true;
	c->waits_copy = true;
	conn_update_events(b, c);
}

/* A new copy of k on p, filled from fd for c's request seq (*ret).  0, or
 * -errno with why set (nothing made). */
static int copy_start(struct broker *b, struct client *c, uint64_t seq, struct pool *p, struct copy_key *k,
		      uint64_t size, int fd, char *why, size_t len, struct copy **ret)
{
	int r = cache_room(b, p, size, why, len);
	if (r == 0)
		r = limits_allow(b, c, p, size, "in a copy only it maps", why, len);
	if (r < 0)
		return r;
	struct copy *cp = copy_new(b, p, size);
	if (!cp)
		return errf(why, len, -ENOMEM, "broker out of memory");
	cp->key = *k;
	k->runs = NULL; /* the copy's now */
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(proc, cp->path, sizeof(cp->path) - 1);
	cp->path[n > 0 ? n : 0] = '\0';
	if ((r = fill_start(b, cp, fd)) < 0 || (r = add_waiter(cp, c, seq, true)) < 0) {
		errf(why, len, r, "%s", cp->why[0] ? cp->why : "starting the fill failed");
		copy_free(b, cp, true);
		return r;
	}
	*ret = cp;
	return 0;
}

void handle_share(struct broker *b, struct client *c, const struct vramd_share *m, int fd)
{
	char why[VRAMD_REASON_MAX] = "";
	uint64_t size = 0;
	struct copy_key k = { 0 };
	if (m->device >= b->npools) {
		send_error(b, c, &m->hdr, -ENODEV, "no device %u (the broker has %u)", m->device, b->npools);
		return;
	}
	struct pool *p = b->pools[m->device];
	if (!p->ops->copy_create || !b->cache_max[p->index]) {
		send_error(b, c, &m->hdr, -EOPNOTSUPP, "%s keeps no shared copies", p->name);
		return;
	}
	int r = key_from(c, m, p, fd, &k, &size, why, sizeof(why));
	struct copy *cp = r < 0 ? NULL : copy_find(b, &k);
	if (r == 0 && cp && cp->state == COPY_READY) {
		r = ref_add(b, c, cp);
		if (r == 0) {
			b->cache_hits[p->index]++;
			broker_log(2, CLIENT_FMT ": copy %llu of %s: hit", CLIENT_ARGS(c), (unsigned long long)cp->id,
				   cp->path);
			send_share_reply(b, c, m->hdr.seq, cp, VRAMD_SHARE_HIT);
		}
	} else if (r == 0 && cp) {
		r = add_waiter(cp, c, m->hdr.seq, false);
		if (r == 0)
			park_for_copy(b, c);
	} else if (r == 0) {
		struct copy *nc;
		r = copy_start(b, c, m->hdr.seq, p, &k, size, fd, why, sizeof(why), &nc);
		if (r == 0)
			park_for_copy(b, c);
	}
	free(k.runs);
	if (r < 0)
		send_error(b, c, &m->hdr, r, "%s", why[0] ? why : "broker out of memory");
}

void handle_unshare(struct broker *b, struct client *c, const struct vramd_unshare *m)
{
	if (!ref_drop(b, c, NULL, m->copy_id)) {
		send_error(b, c, &m->hdr, -ENOENT, "no copy %llu mapped by this client", (unsigned long long)m->copy_id);
		return;
	}
	send_ok(b, c, &m->hdr);
}

void cache_client_gone(struct broker *b, struct client *c)
{
	while (c->copies)
		ref_drop(b, c, c->copies->copy, 0);
	for (struct copy *cp = b->copies; cp; cp = cp->next) {
		for (struct copy_waiter **pp = &cp->waiters; *pp;) {
			if ((*pp)->c != c) {
				pp = &(*pp)->next;
				continue;
			}
			struct copy_waiter *w = *pp;
			*pp = w->next;
			free(w);
		}
		/* nobody waits for this fill any more: abandoned */
		if (cp->state == COPY_FILLING && !cp->waiters)
			atomic_store(&cp->cancel, 1);
	}
}

int cache_init(struct broker *b)
{
	b->cache_evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->cache_evfd < 0)
		return -errno;
	for (uint32_t d = 0; d < b->npools; d++) {
		struct pool *p = b->pools[d];
		uint64_t max = b->cfg.cache_max ? b->cfg.cache_max : p->total / 100 * b->cfg.cache_max_pct;
		b->cache_max[d] = p->ops->copy_create ? MIN(max, p->total) : 0;
	}
	return 0;
}

void cache_free(struct broker *b)
{
	while (b->copies)
		copy_free(b, b->copies, false);
	if (b->cache_evfd >= 0)
		close(b->cache_evfd);
	b->cache_evfd = -1;
}

/* ======================================================================
 * Listing and dropping
 * ====================================================================== */

static bool client_maps(const struct client *c, const struct copy *cp)
{
	for (const struct copy_ref *r = c->copies; r; r = r->next)
		if (r->copy == cp)
			return true;
	return false;
}

/* "as stored", or the conversions its runs make ("F8_E4M3->BF16"). */
static void conversion_text(const struct copy *cp, char *buf, size_t len)
{
	static const char *const names[] = { [VK_DTYPE_F8_E5M2] = "F8_E5M2", [VK_DTYPE_F8_E4M3] = "F8_E4M3",
					     [VK_DTYPE_F16] = "F16", [VK_DTYPE_BF16] = "BF16", [VK_DTYPE_F32] = "F32" };
	size_t n = 0;
	buf[0] = '\0';
	for (uint32_t i = 0; i < cp->key.nruns; i++) {
		const struct vramd_share_run *r = &cp->key.runs[i];
		if (r->src_dtype == r->dst_dtype)
			continue;
		char one[40];
		snprintf(one, sizeof(one), "%s->%s", names[r->src_dtype], names[r->dst_dtype]);
		if (strstr(buf, one))
			continue;
		n += (size_t)snprintf(buf + n, n < len ? len - n : 0, "%s%s", n ? "," : "", one);
	}
	if (!buf[0])
		str_copy(buf, "as stored", len);
}

static json_t *copy_json(const struct copy *cp)
{
	char conv[128];
	json_t *o = json_object();
	conversion_text(cp, conv, sizeof(conv));
	json_object_set_new(o, "id", json_integer((json_int_t)cp->id));
	json_object_set_new(o, "device", json_string(cp->pool->name));
	json_object_set_new(o, "file", json_string(cp->path));
	json_object_set_new(o, "identity", json_pack("{s:I,s:I,s:I,s:I,s:I}", "dev", (json_int_t)cp->key.st_dev, "ino",
						      (json_int_t)cp->key.st_ino, "size", (json_int_t)cp->key.size,
						      "mtime_ns", (json_int_t)cp->key.mtime_ns, "ctime_ns",
						      (json_int_t)cp->key.ctime_ns));
	json_object_set_new(o, "bytes", json_integer((json_int_t)cp->size));
	json_object_set_new(o, "conversion", json_string(conv));
	json_object_set_new(o, "runs", json_integer(cp->key.nruns));
	json_object_set_new(o, "users", json_integer(cp->refs));
	json_object_set_new(o, "state", json_string(cp->state == COPY_FILLING ? "filling" : cp->doomed ? "dropping" : "ready"));
	json_object_set_new(o, "shared_by", json_string(cp->orphan ? "its users (key lost)" :
						   cp->key.uid == (uint32_t)-1 ? "every uid" : "one uid"));
	if (cp->key.uid != (uint32_t)-1)
		json_object_set_new(o, "uid", json_integer(cp->key.uid));
	json_object_set_new(o, "idle_ms", json_integer(cp->refs ? 0 : (json_int_t)((now_ns() - cp->last_use_ns) / 1000000)));
	return o;
}

void handle_cache_list(struct broker *b, struct client *c, const struct vramd_hdr *m)
{
	json_auto_t *root = json_object();
	json_t *copies = json_array(), *devs = json_array();
	for (const struct copy *cp = b->copies; cp; cp = cp->next)
		if (c->admin || client_maps(c, cp))
			json_array_append_new(copies, copy_json(cp));
	for (uint32_t d = 0; d < b->npools; d++) {
		if (!b->cache_max[d])
			continue;
		json_array_append_new(devs, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I}", "device", b->pools[d]->name,
						      "bytes", (json_int_t)b->cache_bytes[d], "in_use",
						      (json_int_t)b->cache_inuse[d], "budget", (json_int_t)b->cache_max[d],
						      "hits", (json_int_t)b->cache_hits[d], "fills",
						      (json_int_t)b->cache_fills[d], "evictions",
						      (json_int_t)b->cache_evictions[d]));
	}
	json_object_set_new(root, "copies", copies);
	json_object_set_new(root, "devices", devs);
	_cleanup_free_ char *text = json_dumps(root, JSON_COMPACT);
	if (!text) {
		send_error(b, c, m, -ENOMEM, "broker out of memory");
		return;
	}
	send_text(b, c, m, text, strlen(text));
}

/* Whether fd (a file) is the file cp was made from (any version of it). */
static bool same_file(const struct copy *cp, const struct stat *st)
{
	return st && cp->key.st_dev == st->st_dev && cp->key.st_ino == st->st_ino;
}

/* Drops cp: at once when nobody maps it; else, forced, its users are
 * asked to let go (RECLAIM of its size on its device) and it goes with
 * the last of them.  Returns the users asked, or -EBUSY. */
static int drop_copy(struct broker *b, struct copy *cp, bool force)
{
	if (!cp->refs && cp->state != COPY_FILLING) {
		b->cache_evictions[cp->pool->index]++;
		copy_free(b, cp, true);
		return 0;
	}
	if (!force)
		return -EBUSY;
	int asked = 0;
	cp->doomed = true;
	uint64_t deadline = now_ns() + b->cfg.reclaim_deadline_ms * 1000000ull;
	for (struct client *x = b->clients; x; x = x->next)
		if (client_maps(x, cp) && send_reclaim(b, x, cp->pool->index, cp->size, 0, deadline) == 0)
			asked++;
	return asked;
}

void handle_cache_drop(struct broker *b, struct client *c, const struct vramd_cache_drop *m, int fd)
{
	bool all = m->flags & VRAMD_CACHE_DROP_ALL, force = m->flags & VRAMD_CACHE_DROP_FORCE;
	struct stat st;
	if (all == (fd >= 0)) {
		send_error(b, c, &m->hdr, -EINVAL, "CACHE_DROP takes the file's fd, or the ALL flag without one");
		return;
	}
	if ((all || force) && !c->admin) {
		send_error(b, c, &m->hdr, -EPERM, "dropping %s needs root or the admin group",
			   all ? "every copy" : "copies in use");
		return;
	}
	if (fd >= 0 && fstat(fd, &st) < 0) {
		send_error(b, c, &m->hdr, -EBADF, "CACHE_DROP: the fd cannot be read");
		return;
	}
	uint32_t dropped = 0, busy = 0, asked = 0;
	for (struct copy *cp = b->copies, *next; cp; cp = next) {
		next = cp->next;
		if (!all && !same_file(cp, &st))
			continue;
		int r = drop_copy(b, cp, force);
		if (r < 0)
			busy++;
		else if (r == 0)
			dropped++;
		else
			asked += (uint32_t)r;
	}
	if (busy) {
		send_error(b, c, &m->hdr, -EBUSY,
			   "%u cop%s in use (dropped %u unused): `vramctl cache drop --force` asks their users to let go",
			   busy, busy == 1 ? "y is" : "ies are", dropped);
		return;
	}
	broker_log(1, CLIENT_FMT ": dropped %u copies%s", CLIENT_ARGS(c), dropped,
		   asked ? ", asked their users to let go of the others" : "");
	send_ok(b, c, &m->hdr);
}

/* ======================================================================
 * After a restart
 * ====================================================================== */

/* Whether fd is the copy's memory: the same inode (memfd), or on a pool
 * whose fds share one, the same open file description (kcmp). */
static bool same_memory(const struct copy *cp, int fd)
{
	struct stat a, b;
	if (cp->fd < 0)
		return false;
	if (cp->pool->ops->fd_identity) {
		pid_t self = getpid();
		return syscall(SYS_kcmp, self, self, KCMP_FILE, cp->fd, fd) == 0 ||
		       (cp->ro_fd >= 0 && syscall(SYS_kcmp, self, self, KCMP_FILE, cp->ro_fd, fd) == 0);
	}
	return fstat(cp->fd, &a) == 0 && fstat(fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

void cache_register(struct broker *b, struct client *c, const struct vramd_register *m, struct pool *p, int fd)
{
	struct copy *cp = b->copies;
	const char *why = "";
	while (cp && !(cp->pool == p && cp->size == m->size && same_memory(cp, fd)))
		cp = cp->next;
	if (!cp) {
		/* Not kept across the restart: counted again as an orphan its
		 * users hold, never handed out anew. */
		void *handle = NULL;
		int r = p->ops->copy_adopt ? p->ops->copy_adopt(p, fd, m->size, &handle, &why) : -EOPNOTSUPP;
		if (r < 0) {
			send_error(b, c, &m->hdr, r, "REGISTER of a copy on %s: %s", p->name, why);
			return;
		}
		if (!(cp = copy_new(b, p, m->size))) {
			p->ops->release(p, handle, m->size);
			send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
			return;
		}
		cp->handle = handle;
		cp->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		cp->state = COPY_READY;
		cp->orphan = true;
		str_copy(cp->path, "(re-registered)", sizeof(cp->path));
	}
	if (ref_add(b, c, cp) < 0) {
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	struct grant g = { .id = cp->id, .pool = p, .size = cp->size };
	send_alloc_reply(b, c, m->hdr.seq, &g, -1);
}
