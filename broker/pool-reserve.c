/* SPDX-License-Identifier: MIT */
/*
 * The ready reserve of a memfd pool (pool.h).
 *
 * Fresh memory is slow to fill: each page of a new grant is allocated and
 * zeroed at its first touch (and, on a VM, backed by the host then), which
 * costs more than reading it from a fast disk.  The broker owns the memory,
 * so it can do that work before anyone asks: a thread at the lowest CPU
 * priority keeps memfds populated (zeros written in; MADV_POPULATE_WRITE
 * where THP needs a mapping; fallocate for hugetlb), and an ALLOC that
 * finds one of its size gets it at once.
 *
 * Never reused.  A reserve memfd is made for the reserve and handed to one
 * client at most; freed grants are revoked (truncated) and closed as
 * before, never put back.  Its bytes are zero: the kernel zeroes every page
 * it gives a memfd.  It is sealed against growing as soon as it is sized,
 * so nothing is ever allocated past the size it is counted at.
 *
 * Sizes.  A memfd's size is fixed once sealed and a client gets a whole fd,
 * so the reserve holds whole memfds.  ALLOC takes the smallest one at least
 * the size asked and at most half as large again (truncating the tail
 * frees it, in the broker's loop: about 0.2 ms per MiB of 4 KiB pages), or
 * any one at least that large when the pool is short of room (cheaper than
 * dropping it).  Each ALLOC the reserve serves or misses asks the refill
 * for a memfd of its size, so the reserve comes to hold the sizes clients
 * ask for (a model loaded again finds its chunks' sizes); a miss makes room
 * for that by dropping the oldest memfds.  With nothing asked, the refill
 * makes the largest size asked lately, or READY_BLOCK (the loader's 256 MiB
 * chunk and its slack).  Grants under READY_MIN are made fresh (cheap at
 * that size) and counted neither as hits nor as misses.
 *
 * Accounting (under lock).  held (the pool's granted bytes, as the loop
 * tells it) + ready + dropping + pending never passes the pool's capacity:
 * when a grant needs room the loop drops what is being dropped, then ready
 * memfds (newest first), then aborts the memfd being populated by
 * truncating it.  ready + pending + wanted never passes the target.
 *
 * Pressure.  The refill populates a step only while the memory vramd may
 * use (MemAvailable, and its cgroup's limit less its usage) stays above
 * min-free after it, and drops memfds, oldest first, while it is below.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "broker/config.h"
#include "broker/log.h"
#include "broker/pool.h"
#include "common/cleanup.h"
#include "common/util.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define READY_MIN     (8ull << 20)    /* smaller grants are made fresh */
#define READY_BLOCK   (258ull << 20)  /* what the refill makes with nothing asked */
#define READY_STEP    (8ull << 20)    /* populated at a time (abort, pressure, rate) */
#define READY_WANTS   64              /* sizes asked, waiting for the refill */
#define READY_SEEN    16              /* sizes asked lately */
#define READY_POLL_NS (250ull * 1000000) /* pressure checks while holding memory */
#define READY_BACKOFF_NS (1000ull * 1000000) /* after a failed refill */

struct ready_fd {
	int fd;
	uint64_t size;
	bool doomed;             /* to be closed by the refill thread */
};

struct ready_reserve {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_t thread;
	bool running, stop;
	struct memfd_kind kind;
	uint64_t total, granularity;
	char cg_dir[512];        /* vramd's memory cgroup, "" when none is found */
	bool cg_v2;
	/* settings */
	uint64_t target, rate;
	struct broker_amount min_free;
	bool thp;
	/* memfds, oldest first: ready ones and doomed ones */
	struct ready_fd *fds;
	uint32_t nfds, capfds;
	uint64_t ready, dropping, closing;
	uint64_t pending;        /* the memfd being populated, counted already */
	int pending_fd;
	bool pending_abort;
	uint64_t held;           /* the pool's granted bytes */
	uint64_t wants[READY_WANTS];
	uint32_t want_head, nwants;
	uint64_t wanted;         /* bytes in wants */
	uint64_t seen[READY_SEEN];
	uint32_t seen_next;
	uint64_t backoff_until;
	bool waiting_room;       /* the refill waits for the pool to have room */
	/* figures */
	uint64_t hits, misses, refilled, served, waste, dropped;
};

/* ---- memory vramd may use ------------------------------------------------ */

struct mem_view {
	uint64_t avail;          /* what more may be allocated before pressure */
	uint64_t limit;          /* RAM, or the cgroup's limit when lower */
};

/* The number a cgroup file holds ("max": UINT64_MAX); dflt when unreadable. */
static uint64_t file_u64(const char *path, uint64_t dflt)
{
	char buf[64];
	FILE *f = fopen(path, "re");
	if (!f)
		return dflt;
	bool ok = fgets(buf, sizeof(buf), f) != NULL;
	fclose(f);
	if (!ok)
		return dflt;
	if (!strncmp(buf, "max", 3))
		return UINT64_MAX;
	return strtoull(buf, NULL, 10);
}

/* The value of "key N" in a file of such lines (meminfo: kB), or 0. */
static uint64_t file_field(const char *path, const char *key)
{
	char line[256];
	size_t n = strlen(key);
	uint64_t v = 0;
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && (line[n] == ' ' || line[n] == ':')) {
			v = strtoull(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* Finds vramd's memory cgroup (v2, or v1's memory hierarchy). */
static void cgroup_find(struct ready_reserve *r)
{
	char line[1024], path[600];
	FILE *f = fopen("/proc/self/cgroup", "re");
	r->cg_dir[0] = '\0';
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = '\0';
		const char *ctrl = c1 + 1, *rel = c2 + 1;
		bool v2 = !strcmp(line, "0") && !*ctrl;
		bool v1 = !v2 && (!strcmp(ctrl, "memory") || strstr(ctrl, "memory,") || strstr(ctrl, ",memory"));
		if (!v1 && !v2)
			continue;
		snprintf(path, sizeof(path), "/sys/fs/cgroup%s%s/%s", v1 ? "/memory" : "", rel,
			 v1 ? "memory.limit_in_bytes" : "memory.max");
		if (access(path, R_OK) == 0) {
			snprintf(r->cg_dir, sizeof(r->cg_dir), "/sys/fs/cgroup%s%s", v1 ? "/memory" : "", rel);
			r->cg_v2 = v2;
			if (v1)
				break; /* a v1 memory controller is the one that limits */
		}
	}
	fclose(f);
}

static void mem_read(const struct ready_reserve *r, struct mem_view *m)
{
	char path[600];
	m->limit = file_field("/proc/meminfo", "MemTotal") << 10;
	m->avail = file_field("/proc/meminfo", "MemAvailable") << 10;
	if (!r->cg_dir[0])
		return;
	snprintf(path, sizeof(path), "%s/%s", r->cg_dir, r->cg_v2 ? "memory.max" : "memory.limit_in_bytes");
	uint64_t lim = file_u64(path, UINT64_MAX);
	if (lim >= m->limit)
		return;
	m->limit = lim;
	snprintf(path, sizeof(path), "%s/%s", r->cg_dir, r->cg_v2 ? "memory.current" : "memory.usage_in_bytes");
	uint64_t used = file_u64(path, 0);
	snprintf(path, sizeof(path), "%s/memory.stat", r->cg_dir);
	uint64_t cache = file_field(path, r->cg_v2 ? "inactive_file" : "total_inactive_file");
	used = used > cache ? used - cache : 0;
	m->avail = MIN(m->avail, lim > used ? lim - used : 0);
}

/* ---- the memfds (under lock) ----------------------------------------------- */

static int fds_add(struct ready_reserve *r, int fd, uint64_t size)
{
	if (r->nfds == r->capfds) {
		uint32_t cap = r->capfds ? 2 * r->capfds : 16;
		struct ready_fd *v = realloc(r->fds, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		r->fds = v;
		r->capfds = cap;
	}
	r->fds[r->nfds++] = (struct ready_fd){ .fd = fd, .size = size };
	r->ready += size;
	return 0;
}

static struct ready_fd fds_remove(struct ready_reserve *r, uint32_t i)
{
	struct ready_fd x = r->fds[i];
	memmove(r->fds + i, r->fds + i + 1, (r->nfds - i - 1) * sizeof(*r->fds));
	r->nfds--;
	if (x.doomed)
		r->dropping -= x.size;
	else
		r->ready -= x.size;
	return x;
}

/* Marks ready memfd i to be closed by the refill. */
static void fds_doom(struct ready_reserve *r, uint32_t i)
{
	r->fds[i].doomed = true;
	r->ready -= r->fds[i].size;
	r->dropping += r->fds[i].size;
	r->dropped += r->fds[i].size;
}

/* The oldest (or newest) ready memfd's index, or -1. */
static int fds_ready(const struct ready_reserve *r, bool newest)
{
	for (uint32_t k = 0; k < r->nfds; k++) {
		uint32_t i = newest ? r->nfds - 1 - k : k;
		if (!r->fds[i].doomed)
			return (int)i;
	}
	return -1;
}

/* The smallest ready memfd of at least size bytes and at most max, or -1. */
static int fds_fit(const struct ready_reserve *r, uint64_t size, uint64_t max)
{
	int best = -1;
	for (uint32_t i = 0; i < r->nfds; i++) {
		const struct ready_fd *x = &r->fds[i];
		if (!x->doomed && x->size >= size && x->size <= max && (best < 0 || x->size < r->fds[best].size))
			best = (int)i;
	}
	return best;
}

/* ---- what the refill makes (under lock) ------------------------------------ */

static void want_drop_oldest(struct ready_reserve *r)
{
	r->wanted -= r->wants[r->want_head];
	r->want_head = (r->want_head + 1) % READY_WANTS;
	r->nwants--;
}

/* Keeps ready + pending + wanted within the target: old wants go first. */
static void wants_trim(struct ready_reserve *r)
{
	while (r->nwants && r->ready + r->pending + r->wanted > r->target)
		want_drop_oldest(r);
}

/* Asks the refill for a memfd of size bytes: old wants give way, then the
 * oldest ready memfds (the reserve holds sizes nobody asks for now). */
static void want_push(struct ready_reserve *r, uint64_t size)
{
	if (size > r->target)
		return;
	while (r->nwants && r->ready + r->pending + r->wanted + size > r->target)
		want_drop_oldest(r);
	int i;
	while (r->ready + r->pending + size > r->target && (i = fds_ready(r, false)) >= 0)
		fds_doom(r, (uint32_t)i);
	if (r->nwants == READY_WANTS)
		want_drop_oldest(r);
	r->wants[(r->want_head + r->nwants) % READY_WANTS] = size;
	r->nwants++;
	r->wanted += size;
}

/* The size to make next (0: nothing): the oldest want, else a block of
 * the largest size asked lately (or READY_BLOCK), or what the target and
 * the pool have left when that is less. */
static uint64_t want_next(const struct ready_reserve *r)
{
	if (r->nwants)
		return r->wants[r->want_head];
	uint64_t block = 0;
	for (uint32_t i = 0; i < READY_SEEN; i++)
		block = MAX(block, r->seen[i]);
	uint64_t room = r->ready + r->pending < r->target ? r->target - r->ready - r->pending : 0;
	uint64_t in_pool = r->held + r->ready + r->dropping + r->closing + r->pending;
	room = MIN(room, in_pool < r->total ? r->total - in_pool : 0);
	block = MIN(block ? block : READY_BLOCK, room); /* the last one fills what is left */
	block -= block % r->granularity;
	return block >= READY_MIN ? block : 0;
}

/* ---- the refill thread ------------------------------------------------------ */

/* Waits on r->wake until deadline (0: until woken).  Under lock. */
static void wait_until(struct ready_reserve *r, uint64_t deadline)
{
	if (!deadline) {
		pthread_cond_wait(&r->wake, &r->lock);
		return;
	}
	struct timespec ts = { (time_t)(deadline / 1000000000ull), (long)(deadline % 1000000000ull) };
	pthread_cond_timedwait(&r->wake, &r->lock, &ts);
}

/* Zeros written into normal-page memfds (pwrite reads it from the shared
 * zero page: no cache misses). */
static const uint8_t zeros[1u << 20];

/* Fills [off, off+n) of fd: hugetlb by fallocate (it zeroes the pages);
 * with THP on advise through the mapping m (MADV_POPULATE_WRITE, the
 * mapping asked for huge pages); else by writing zeros, which on 4 KiB
 * pages costs half the CPU of populating a mapping and never takes the
 * broker's mmap lock (the loop's allocations do not wait for the refill).
 * 0, or -1 and errno. */
static int populate_step(int fd, uint8_t *m, uint64_t off, uint64_t n, bool hugetlb)
{
	if (hugetlb)
		return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)n);
	if (m)
		return madvise(m + off, n, MADV_POPULATE_WRITE);
	for (uint64_t x = 0; x < n;) {
		ssize_t w = pwrite(fd, zeros, MIN(sizeof(zeros), n - x), (off_t)(off + x));
		if (w <= 0) {
			if (w == 0)
				errno = ENOSPC;
			if (w == 0 || errno != EINTR)
				return -1;
			continue;
		}
		x += (uint64_t)w;
	}
	return 0;
}

/* Populates size bytes of fd in steps: 0, -ECANCELED (aborted, stopped,
 * or memory got short), or -errno. */
static int populate(struct ready_reserve *r, int fd, uint64_t size, bool hugetlb)
{
	uint8_t *m = NULL;
	int e = 0;
	if (!hugetlb && r->thp) {
		m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED)
			return -errno;
		(void)madvise(m, size, MADV_HUGEPAGE);
	}
	uint64_t t0 = now_ns();
	for (uint64_t off = 0; off < size && !e; off += READY_STEP) {
		uint64_t n = MIN(READY_STEP, size - off);
		struct mem_view mv;
		mem_read(r, &mv);
		pthread_mutex_lock(&r->lock);
		uint64_t floor = broker_amount_of(&r->min_free, mv.limit), rate = r->rate;
		bool go = !r->pending_abort && !r->stop && mv.avail >= floor + n;
		/* the rate cap: this step starts when the bytes so far are due */
		while (go && rate && t0 + off * 1000000000.0 / (double)rate > now_ns()) {
			wait_until(r, t0 + (uint64_t)(off * 1000000000.0 / (double)rate));
			go = !r->pending_abort && !r->stop;
		}
		pthread_mutex_unlock(&r->lock);
		if (!go)
			e = -ECANCELED;
		else if (populate_step(fd, m, off, n, hugetlb) < 0)
			/* truncated under it (EFAULT, or past the size sealed:
			 * EPERM, EFBIG): aborted */
			e = errno == EFAULT || errno == EPERM || errno == EFBIG ? -ECANCELED : -errno;
	}
	if (m)
		munmap(m, size);
	return e;
}

/* A sized memfd for the reserve, sealed against growing; hugetlb as the
 * pool's kind when huge pages are left.  0 or -errno. */
static int refill_memfd(struct ready_reserve *r, uint64_t size, bool hugetlb, int *ret_fd)
{
	const char *why = "";
	int fd = -1;
	int e = memfd_new(&r->kind, size, hugetlb, &fd, &why);
	if (e < 0)
		return e;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_GROW) < 0) {
		e = -errno;
		close(fd);
		return e;
	}
	*ret_fd = fd;
	return 0;
}

/* One try at a reserve memfd: made, published as the pending one (so that
 * the loop can abort it), populated.  *ret_fd is set whenever a memfd was
 * made, also on failure (the caller unpublishes and closes it).  0,
 * -ECANCELED (aborted) or -errno. */
static int refill_try(struct ready_reserve *r, uint64_t size, bool hugetlb, int *ret_fd)
{
	int fd = -1, e = refill_memfd(r, size, hugetlb, &fd);
	if (e < 0)
		return e;
	*ret_fd = fd;
	pthread_mutex_lock(&r->lock);
	if (r->pending_abort)
		e = -ECANCELED;
	else
		r->pending_fd = fd;
	pthread_mutex_unlock(&r->lock);
	return e ? e : populate(r, fd, size, hugetlb);
}

/* Makes and populates one memfd of size bytes (r->pending counts it) and
 * adds it to the reserve unless aborted; hugetlb pools fall back to normal
 * pages when huge pages run out; a failure backs off a while. */
static void refill_make(struct ready_reserve *r, uint64_t size)
{
	int fd = -1;
	int e = refill_try(r, size, r->kind.hugetlb, &fd);
	if (e < 0 && e != -ECANCELED && r->kind.hugetlb) {
		if (fd >= 0) {
			/* still counted as pending while it is closed */
			pthread_mutex_lock(&r->lock);
			r->pending_fd = -1;
			pthread_mutex_unlock(&r->lock);
			close(fd);
		}
		fd = -1;
		e = refill_try(r, size, false, &fd);
	}
	pthread_mutex_lock(&r->lock);
	r->pending_fd = -1;
	bool keep = !e && !r->pending_abort && fds_add(r, fd, size) == 0;
	/* a memfd not kept counts until closed, unless an abort truncated it
	 * (and took it out of the count already) */
	bool counted = !keep && fd >= 0 && !r->pending_abort;
	if (!r->pending_abort)
		r->pending = 0;
	if (counted)
		r->closing += size;
	if (keep)
		r->refilled += size;
	if (e && e != -ECANCELED) {
		r->backoff_until = now_ns() + READY_BACKOFF_NS;
		broker_log(2, "%s: ready reserve: refill of %llu MiB failed: %s", r->kind.name,
			   (unsigned long long)(size >> 20), strerror(-e));
	}
	pthread_mutex_unlock(&r->lock);
	if (keep || fd < 0)
		return;
	close(fd);
	if (counted) {
		pthread_mutex_lock(&r->lock);
		r->closing -= size;
		pthread_mutex_unlock(&r->lock);
	}
}

/* What the refill does next (under lock): a memfd to close (*drop), a size
 * to make (*make, counted as pending from now on), or nothing (returns
 * the time to wait until, 0: until woken). */
static uint64_t refill_plan(struct ready_reserve *r, const struct mem_view *mv, struct ready_fd *drop,
			    uint64_t *make)
{
	uint64_t floor = broker_amount_of(&r->min_free, mv->limit), now = now_ns();
	int i;
	for (uint32_t k = 0; k < r->nfds; k++)
		if (r->fds[k].doomed) {
			*drop = fds_remove(r, k);
			r->closing += drop->size;
			return 0;
		}
	if ((r->ready + r->pending > r->target || mv->avail < floor) && (i = fds_ready(r, false)) >= 0) {
		fds_doom(r, (uint32_t)i);
		*drop = fds_remove(r, (uint32_t)i);
		r->closing += drop->size;
		return 0;
	}
	uint64_t size = want_next(r);
	uint64_t poll = r->ready ? now + READY_POLL_NS : 0;
	/* short of its target with nothing to make: the pool is full (or
	 * nearly), and a release wakes the refill */
	r->waiting_room = r->ready + r->pending + READY_MIN <= r->target &&
			  (!size || r->held + r->ready + r->dropping + r->closing + size > r->total);
	if (!size || r->held + r->ready + r->dropping + r->closing + size > r->total)
		return poll;
	if (now < r->backoff_until)
		return r->backoff_until;
	if (mv->avail < floor + size)
		return now + READY_POLL_NS;
	if (r->nwants)
		want_drop_oldest(r);
	r->pending = size;
	r->pending_abort = false;
	*make = size;
	return 0;
}

static void *refill_main(void *arg)
{
	struct ready_reserve *r = arg;
	/* The lowest nice level: the refill takes CPU others leave, and a
	 * little when none is left (SCHED_IDLE was tried: on a machine with
	 * four runnable tasks per core it starved, 30 s without populating
	 * 32 MiB, and gave ALLOCs no measurably better p99). */
	(void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
	(void)pthread_setname_np(pthread_self(), "vramd-ready");
	for (;;) {
		struct mem_view mv;
		struct ready_fd drop = { .fd = -1 };
		uint64_t make = 0;
		mem_read(r, &mv);
		pthread_mutex_lock(&r->lock);
		if (r->stop) {
			pthread_mutex_unlock(&r->lock);
			break;
		}
		uint64_t until = refill_plan(r, &mv, &drop, &make);
		if (drop.fd < 0 && !make)
			wait_until(r, until);
		pthread_mutex_unlock(&r->lock);
		if (drop.fd >= 0) {
			close(drop.fd);
			pthread_mutex_lock(&r->lock);
			r->closing -= drop.size;
			pthread_mutex_unlock(&r->lock);
		}
		if (make)
			refill_make(r, make);
	}
	return NULL;
}

/* ---- the loop's side ---------------------------------------------------------- */

struct ready_reserve *ready_new(const struct memfd_kind *k, uint64_t total, uint64_t granularity)
{
	struct ready_reserve *r = calloc(1, sizeof(*r));
	pthread_condattr_t ca;
	if (!r) {
		errno = ENOMEM;
		return NULL;
	}
	r->kind = *k;
	r->total = total;
	r->granularity = granularity ? granularity : 1;
	r->pending_fd = -1;
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->wake, &ca);
	pthread_condattr_destroy(&ca);
	cgroup_find(r);
	return r;
}

/* Aborts the memfd being populated: truncated, its pages are freed now
 * and no more can be added (it is sealed against growing).  Under lock. */
static void abort_pending(struct ready_reserve *r)
{
	if (!r->pending || r->pending_abort)
		return;
	r->pending_abort = true;
	if (r->pending_fd >= 0 && ftruncate(r->pending_fd, 0) < 0)
		broker_log(1, "%s: ready reserve: cannot abort a refill (%m)", r->kind.name);
	r->pending = 0;
}

void ready_free(struct ready_reserve *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	abort_pending(r);
	pthread_cond_broadcast(&r->wake);
	pthread_mutex_unlock(&r->lock);
	if (r->running)
		pthread_join(r->thread, NULL);
	if (r->hits || r->misses)
		broker_log(2, "%s: ready reserve: %llu hits, %llu misses; refilled %llu MiB, served %llu MiB, "
			   "tails cut %llu MiB, dropped %llu MiB", r->kind.name, (unsigned long long)r->hits,
			   (unsigned long long)r->misses, (unsigned long long)(r->refilled >> 20),
			   (unsigned long long)(r->served >> 20), (unsigned long long)(r->waste >> 20),
			   (unsigned long long)(r->dropped >> 20));
	for (uint32_t i = 0; i < r->nfds; i++)
		close(r->fds[i].fd);
	free(r->fds);
	pthread_cond_destroy(&r->wake);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

int ready_configure(struct ready_reserve *r, const struct pool_ready_settings *s, bool thp)
{
	int e = 0;
	pthread_mutex_lock(&r->lock);
	r->target = s->target;
	r->rate = s->rate;
	r->min_free = (struct broker_amount){ .bytes = s->min_free_bytes, .bp = s->min_free_bp,
					      .share = s->min_free_share };
	r->thp = thp;
	wants_trim(r);
	if (r->target && !r->running) {
		/* no signal is ever the refill's: the loop takes them (signalfd) */
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		e = -pthread_create(&r->thread, NULL, refill_main, r);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		r->running = e == 0;
	}
	pthread_cond_broadcast(&r->wake);
	pthread_mutex_unlock(&r->lock);
	if (e < 0)
		broker_log(0, "%s: ready reserve: cannot start its refill: %s", r->kind.name, strerror(-e));
	return e;
}

/* Yields reserve memory until held + ready + dropping + pending fit the
 * pool: what is being dropped, then ready memfds (newest first), then the
 * one being populated.  The loop needs the memory now: closed here.  Under
 * lock (the refill waits meanwhile; clients do not). */
static void make_room(struct ready_reserve *r)
{
	while (r->held + r->ready + r->dropping + r->pending > r->total && r->nfds) {
		int i = fds_ready(r, true);
		for (uint32_t k = 0; i < 0 && k < r->nfds; k++)
			if (r->fds[k].doomed)
				i = (int)k;
		if (i < 0)
			break;
		if (!r->fds[i].doomed)
			fds_doom(r, (uint32_t)i);
		close(fds_remove(r, (uint32_t)i).fd);
	}
	if (r->held + r->ready + r->dropping + r->pending > r->total)
		abort_pending(r);
}

int ready_take(struct ready_reserve *r, uint64_t size, uint64_t used, int *ret_fd)
{
	struct ready_fd got = { .fd = -1 };
	pthread_mutex_lock(&r->lock);
	r->held = used + size;
	bool wake = false;
	if (r->target && size >= READY_MIN) {
		wake = true; /* a want, and maybe memfds to drop */
		bool short_room = r->held + r->ready + r->dropping + r->pending > r->total;
		int i = fds_fit(r, size, short_room ? UINT64_MAX : size + size / 2);
		r->seen[r->seen_next++ % READY_SEEN] = size;
		if (i >= 0) {
			got = fds_remove(r, (uint32_t)i);
			r->hits++;
			r->served += size;
			r->waste += got.size - size;
		} else {
			r->misses++;
		}
		want_push(r, size);
	}
	make_room(r);
	/* the refill wakes for work only: small grants cost it nothing */
	if (wake)
		pthread_cond_broadcast(&r->wake);
	pthread_mutex_unlock(&r->lock);
	if (got.fd < 0)
		return -ENOENT;
	if (got.size > size && ftruncate(got.fd, (off_t)size) < 0) {
		close(got.fd); /* a fresh one instead (room was made: this one is gone) */
		return -ENOENT;
	}
	*ret_fd = got.fd;
	return 0;
}

void ready_room(struct ready_reserve *r, uint64_t size, uint64_t used)
{
	pthread_mutex_lock(&r->lock);
	r->held = used + size;
	make_room(r);
	pthread_mutex_unlock(&r->lock);
}

void ready_released(struct ready_reserve *r, uint64_t size)
{
	pthread_mutex_lock(&r->lock);
	r->held = r->held > size ? r->held - size : 0;
	if (r->waiting_room)
		pthread_cond_broadcast(&r->wake);
	pthread_mutex_unlock(&r->lock);
}

void ready_describe(struct ready_reserve *r, struct vramd_device *d)
{
	pthread_mutex_lock(&r->lock);
	d->ready = r->ready;
	d->ready_target = r->target;
	d->ready_hits = r->hits;
	d->ready_misses = r->misses;
	d->ready_refilled = r->refilled;
	pthread_mutex_unlock(&r->lock);
}
