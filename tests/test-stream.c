/* SPDX-License-Identifier: MIT */
/*
 * Streaming engine (runtime/stream.c): random files and random request
 * sets, compared byte for byte in every io mode and destination layout;
 * fault injection; a file that changes under the load; cancellation;
 * option validation; the residency probe.
 *
 * Files live on the real disk (/var/tmp, else $VRAM_BUILD) so that O_DIRECT
 * is exercised, and on tmpfs (/dev/shm) for the fallback; each is unlinked
 * as soon as it is open, so nothing is left behind.  No test depends on
 * timing: every random choice comes from a seeded generator.
 */
#include <check.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "runtime/internal.h"
#include "runtime/stream.h"
#include "kernels/kernels.h"

#define PATTERN 0xA5
#define MAX_REQS 4096
#define MAX_SLOTS 1024

/* ---- helpers ------------------------------------------------------------ */

struct rng { uint64_t s; };

static uint64_t rnd(struct rng *g)
{
	g->s ^= g->s << 13;
	g->s ^= g->s >> 7;
	g->s ^= g->s << 17;
	return g->s;
}

static uint64_t rnd_below(struct rng *g, uint64_t n)
{
	return n ? rnd(g) % n : 0;
}

static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static bool dir_is(const char *dir, long magic)
{
	struct statfs sfs;
	return statfs(dir, &sfs) == 0 && (long)sfs.f_type == magic;
}

/* A directory on a real (non-tmpfs) filesystem. */
static const char *disk_dir(void)
{
	static char buf[512];
	const char *b = getenv("VRAM_BUILD");

	if (!dir_is("/var/tmp", TMPFS_MAGIC))
		return "/var/tmp";
	snprintf(buf, sizeof(buf), "%s", b ? b : "build");
	return buf;
}

/* A tmpfs directory, or NULL. */
static const char *tmpfs_dir(void)
{
	return dir_is("/dev/shm", TMPFS_MAGIC) ? "/dev/shm" : NULL;
}

struct tfile {
	int fd;
	uint64_t size;
	uint8_t *data;
	char path[512];
};

/* A file of size random bytes in dir, open read-only and already unlinked. */
static void tfile_make(struct tfile *t, const char *dir, uint64_t size, uint64_t seed)
{
	struct rng g = { seed | 1 };
	int wfd;

	snprintf(t->path, sizeof(t->path), "%s/test-stream.XXXXXX", dir);
	wfd = mkstemp(t->path);
	ck_assert_msg(wfd >= 0, "mkstemp %s: %s", t->path, strerror(errno));
	t->size = size;
	t->data = malloc(size ? size : 1);
	ck_assert_ptr_nonnull(t->data);
	for (uint64_t i = 0; i < size; i += 8) {
		uint64_t v = rnd(&g);
		memcpy(t->data + i, &v, MIN(8, size - i));
	}
	for (uint64_t w = 0; w < size;) {
		ssize_t n = write(wfd, t->data + w, size - w);
		ck_assert_int_gt(n, 0);
		w += (uint64_t)n;
	}
	ck_assert_int_eq(fsync(wfd), 0);
	t->fd = open(t->path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(t->fd, 0);
	close(wfd);
	unlink(t->path);
}

static void tfile_free(struct tfile *t)
{
	close(t->fd);
	free(t->data);
}

/* Whether the filesystem under t takes O_DIRECT (overlayfs in some
 * containers does not): what DIRECT mode can be expected to use. */
static bool dio_ok(struct tfile *t)
{
	char p[64];
	struct statx stx;
	int fd;

	if (statx(t->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN) &&
	    (stx.stx_dio_offset_align == 0 || stx.stx_dio_offset_align > STREAM_ALIGN ||
	     stx.stx_dio_mem_align > STREAM_ALIGN))
		return false;
	snprintf(p, sizeof(p), "/proc/self/fd/%d", t->fd);
	fd = open(p, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static void drop_cache(struct tfile *t)
{
	posix_fadvise(t->fd, 0, 0, POSIX_FADV_DONTNEED);
}

/* Reads some random pieces of the file (and what readahead brings). */
static void warm_part(struct tfile *t, uint64_t seed)
{
	struct rng g = { seed | 1 };
	uint8_t buf[4096];
	for (int k = 0; k < 8 && t->size; k++)
		if (pread(t->fd, buf, sizeof(buf), (off_t)rnd_below(&g, t->size)) < 0)
			ck_abort_msg("pread: %s", strerror(errno));
}

static void warm_cache(struct tfile *t)
{
	uint8_t buf[65536];
	for (off_t o = 0; pread(t->fd, buf, sizeof(buf), o) > 0; o += sizeof(buf))
		;
}

/* ---- a sink that copies late (at wait) and checks its sources --------- */

struct pending { uint64_t dst, len, sum; const uint8_t *src; };

struct tsink {
	uint8_t *dev;            /* "device memory" */
	uint64_t dev_size;
	struct pending *p[MAX_SLOTS];
	size_t n[MAX_SLOTS], cap[MAX_SLOTS];
	uint64_t copies, waits;
	uint64_t reused;         /* a slot's bytes changed before wait() */
	uint64_t bad;            /* out-of-range copies */
	uint32_t max_slot;
	const uint8_t *lo, *hi;  /* when set: every src must lie in [lo, hi) */
	int fail_copy_at;        /* 1-based copy() call that fails, 0: none */
	int fail_wait_at;
};

static uint64_t sum64(const uint8_t *p, uint64_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (uint64_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

static int tsink_copy(void *user, uint64_t dst, const void *src, uint64_t len, uint32_t slot)
{
	struct tsink *k = user;

	k->copies++;
	if (k->fail_copy_at && (int)k->copies == k->fail_copy_at)
		return -ENOSPC;
	if (slot >= MAX_SLOTS || dst > k->dev_size || len > k->dev_size - dst ||
	    (k->lo && ((const uint8_t *)src < k->lo || (const uint8_t *)src + len > k->hi))) {
		k->bad++;
		return 0;
	}
	k->max_slot = MAX(k->max_slot, slot);
	if (k->n[slot] == k->cap[slot]) {
		k->cap[slot] = k->cap[slot] ? 2 * k->cap[slot] : 16;
		k->p[slot] = realloc(k->p[slot], k->cap[slot] * sizeof(struct pending));
		ck_assert_ptr_nonnull(k->p[slot]);
	}
	k->p[slot][k->n[slot]++] = (struct pending){ dst, len, sum64(src, len), src };
	return 0;
}

static int tsink_wait(void *user, uint32_t slot)
{
	struct tsink *k = user;

	k->waits++;
	if (slot >= MAX_SLOTS) {
		k->bad++;
		return 0;
	}
	for (size_t i = 0; i < k->n[slot]; i++) {
		struct pending *q = &k->p[slot][i];
		if (sum64(q->src, q->len) != q->sum)
			k->reused++;
		memcpy(k->dev + q->dst, q->src, q->len);
	}
	k->n[slot] = 0;
	if (k->fail_wait_at && (int)k->waits == k->fail_wait_at)
		return -EIO;
	return 0;
}

static void tsink_init(struct tsink *k, uint64_t dev_size)
{
	memset(k, 0, sizeof(*k));
	k->dev_size = dev_size;
	k->dev = malloc(dev_size ? dev_size : 1);
	ck_assert_ptr_nonnull(k->dev);
	memset(k->dev, PATTERN, dev_size);
}

static uint64_t tsink_pending(const struct tsink *k)
{
	uint64_t n = 0;
	for (size_t i = 0; i < MAX_SLOTS; i++)
		n += k->n[i];
	return n;
}

static void tsink_free(struct tsink *k)
{
	for (size_t i = 0; i < MAX_SLOTS; i++)
		free(k->p[i]);
	free(k->dev);
}

/* ---- fault injection ---------------------------------------------------- */

struct tinj {
	struct rng g;
	unsigned pct_short, pct_eintr, pct_eagain;
	int eio_at;              /* 1-based call that fails with -EIO, 0: none */
	int calls, changed;
	uint64_t eio_off;
};

static int tinj_fn(void *user, uint64_t off, uint32_t len, int res)
{
	struct tinj *j = user;
	unsigned r;

	j->calls++;
	if (res < 0)
		return res;
	if (j->eio_at && j->calls == j->eio_at) {
		j->eio_off = off;
		j->changed++;
		return -EIO;
	}
	r = (unsigned)rnd_below(&j->g, 100);
	if (r < j->pct_short && res > 1) {
		j->changed++;
		return 1 + (int)rnd_below(&j->g, (uint64_t)res - 1);
	}
	r -= MIN(r, j->pct_short);
	if (r < j->pct_eintr) {
		j->changed++;
		return -EINTR;
	}
	r -= MIN(r, j->pct_eintr);
	if (r < j->pct_eagain) {
		j->changed++;
		return -EAGAIN;
	}
	return res;
}

/* ---- request sets and destination layouts ----------------------------- */

enum layout {
	L_MIRROR,     /* HOST + SLACK, dst at the file offset in one arena (the loader's layout) */
	L_SLACK,      /* HOST + SLACK, a region per request, base at 4 KiB (+ sometimes 512 B / 8 B) */
	L_PACKED,     /* HOST, no slack, packed at random small misalignment */
	L_CONGRUENT,  /* HOST, no slack, dst congruent to the file offset mod 4 KiB */
	L_STAGED,     /* STAGED through the sink */
	L_MIXED,      /* any of the four above, per request */
	L_COUNT
};
static const char *layout_name[L_COUNT] = { "mirror", "slack", "packed", "congruent", "staged", "mixed" };

static uint64_t pick_len(struct rng *g)
{
	switch (rnd_below(g, 10)) {
	case 0: case 1: case 2: return 1 + rnd_below(g, 64);
	case 3: case 4: case 5: return 1 + rnd_below(g, 8192);
	case 6: case 7: case 8: return 1 + rnd_below(g, 200 << 10);
	default: return 1 + rnd_below(g, 3 << 20);
	}
}

/* shape 0: a safetensors-like tiling after a header; 1: a shuffled subset
 * of one; 2: independent random ranges (may overlap). */
static size_t gen_reqs(struct rng *g, uint64_t size, int shape, struct stream_req *r)
{
	size_t n = 0;

	if (shape == 2) {
		size_t want = 1 + rnd_below(g, 40);
		for (size_t i = 0; i < want && size; i++) {
			uint64_t off = rnd_below(g, size);
			uint64_t pl = pick_len(g), len = MIN(size - off, pl);
			if (rnd_below(g, 8) == 0)
				len = 0;
			r[n++] = (struct stream_req){ .file_off = off, .len = len };
		}
		return n;
	}
	uint64_t pos = size ? rnd_below(g, MIN(size, 3000)) : 0;
	while (pos < size && n < MAX_REQS - 1) {
		uint64_t pl = pick_len(g), len = MIN(size - pos, pl);
		if (rnd_below(g, 10) == 0)
			r[n++] = (struct stream_req){ .file_off = pos, .len = 0 };
		r[n++] = (struct stream_req){ .file_off = pos, .len = len };
		pos += len;
	}
	if (shape == 1) {
		size_t m = 0;
		for (size_t i = 0; i < n; i++)
			if (rnd_below(g, 3))
				r[m++] = r[i];
		n = m;
		for (size_t i = n; i > 1; i--) {
			size_t j = rnd_below(g, i);
			struct stream_req t = r[i - 1];
			r[i - 1] = r[j];
			r[j] = t;
		}
	}
	return n;
}

struct dest {
	uint8_t *arena;
	uint64_t arena_size;
	uint8_t *mark;           /* per arena byte: 0 untouched, 1 scratch, 2 data */
	struct tsink sink;
};

/* Places every request per layout; marks data and scratch. */
static void place(struct rng *g, struct tfile *t, enum layout lay, struct stream_req *r, size_t n, struct dest *d)
{
	uint64_t need = t->size + 2 * STREAM_ALIGN, cur, dcur = 0;

	for (size_t i = 0; i < n; i++)
		need += r[i].len + 5 * STREAM_ALIGN;
	d->arena_size = need;
	d->arena = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(d->arena != MAP_FAILED);
	memset(d->arena, PATTERN, need);
	d->mark = calloc(need, 1);
	ck_assert_ptr_nonnull(d->mark);
	tsink_init(&d->sink, need);

	cur = lay == L_MIRROR ? t->size + STREAM_ALIGN : 0;
	cur = (cur + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN;
	for (size_t i = 0; i < n; i++) {
		struct stream_req *q = &r[i];
		enum layout l = lay == L_MIXED ? (enum layout)(1 + rnd_below(g, 4)) : lay;
		uint64_t head = q->file_off % STREAM_ALIGN, b, e;

		switch (l) {
		case L_STAGED:
			q->kind = STREAM_DST_STAGED;
			q->dst_addr = dcur;
			dcur += q->len + rnd_below(g, 3);
			continue;
		case L_MIRROR:
			q->kind = STREAM_DST_HOST;
			q->flags = STREAM_REQ_SLACK;
			q->dst = d->arena + q->file_off;
			b = q->file_off - head;
			e = (q->file_off + q->len + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN;
			break;
		case L_SLACK: {
			uint64_t skew = rnd_below(g, 4) == 0 ? (rnd_below(g, 2) ? 512 : 8) : 0;
			q->kind = STREAM_DST_HOST;
			q->flags = STREAM_REQ_SLACK;
			b = cur + skew;
			q->dst = d->arena + b + head;
			e = b + (head + q->len + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN;
			cur = (e + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN + STREAM_ALIGN;
			break;
		}
		case L_CONGRUENT:
			q->kind = STREAM_DST_HOST;
			q->dst = d->arena + cur + head;
			b = cur + head;
			e = b + q->len;
			cur = (e + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN + STREAM_ALIGN;
			break;
		default: /* L_PACKED */
			q->kind = STREAM_DST_HOST;
			cur += rnd_below(g, 64);
			q->dst = d->arena + cur;
			b = cur;
			e = cur + q->len;
			cur = e;
			break;
		}
		if (l == L_MIRROR || l == L_SLACK) {
			for (uint64_t x = b; x < e; x++)
				if (d->mark[x] == 0)
					d->mark[x] = 1;
		}
		ck_assert_uint_le(e, need);
		memset(d->mark + ((uint8_t *)q->dst - d->arena), 2, q->len);
	}
}

/* Every request's bytes arrived; nothing outside data and scratch moved. */
static void check_dest(struct tfile *t, const struct stream_req *r, size_t n, struct dest *d, const char *what)
{
	uint8_t *dmark = calloc(d->sink.dev_size ? d->sink.dev_size : 1, 1);

	ck_assert_ptr_nonnull(dmark);
	for (size_t i = 0; i < n; i++) {
		const struct stream_req *q = &r[i];
		const uint8_t *got = q->kind == STREAM_DST_STAGED ? d->sink.dev + q->dst_addr : q->dst;
		if (q->kind == STREAM_DST_STAGED)
			memset(dmark + q->dst_addr, 1, q->len);
		if (q->len && memcmp(got, t->data + q->file_off, q->len)) {
			uint64_t k = 0;
			while (got[k] == t->data[q->file_off + k])
				k++;
			ck_abort_msg("%s: request %zu (off %" PRIu64 " len %" PRIu64 " kind %u flags %u) differs at +%" PRIu64,
				     what, i, q->file_off, q->len, q->kind, q->flags, k);
		}
	}
	for (uint64_t x = 0; x < d->arena_size; x++)
		if (d->mark[x] == 0 && d->arena[x] != PATTERN)
			ck_abort_msg("%s: host byte %" PRIu64 " outside every destination was written", what, x);
	for (uint64_t x = 0; x < d->sink.dev_size; x++)
		if (!dmark[x] && d->sink.dev[x] != PATTERN)
			ck_abort_msg("%s: device byte %" PRIu64 " outside every destination was written", what, x);
	ck_assert_msg(d->sink.reused == 0, "%s: a staging slot changed before wait()", what);
	ck_assert_msg(d->sink.bad == 0, "%s: sink saw bad copies", what);
	ck_assert_msg(tsink_pending(&d->sink) == 0, "%s: slots not waited for at return", what);
	free(dmark);
}

static void dest_free(struct dest *d)
{
	munmap(d->arena, d->arena_size);
	free(d->mark);
	tsink_free(&d->sink);
}

static uint64_t total_of(const struct stream_req *r, size_t n)
{
	uint64_t s = 0;
	for (size_t i = 0; i < n; i++)
		s += r[i].len;
	return s;
}

struct tprog { uint64_t calls, last_done, last_total; bool monotonic; };

static int tprog_fn(void *user, uint64_t done, uint64_t total)
{
	struct tprog *p = user;
	if (done < p->last_done || done > total)
		p->monotonic = false;
	p->calls++;
	p->last_done = done;
	p->last_total = total;
	return 0;
}

/* What the round trips of one test saw (each test is its own process). */
static struct {
	uint64_t loads, uring, stalls, recovered;
} tally;

/* One random load: reads, compares, checks counters. */
static void roundtrip(struct tfile *t, uint32_t mode, enum layout lay, int shape, uint64_t seed,
		      const struct stream_opts *base, struct tinj *inj)
{
	struct rng g = { seed * 2654435761u + 7 };
	struct stream_req *r = calloc(MAX_REQS, sizeof(*r));
	struct stream_opts o = base ? *base : (struct stream_opts){ 0 };
	struct stream_result res;
	struct tprog prog = { .monotonic = true };
	struct dest d;
	char what[256];
	size_t n;
	int fds = fd_count(), rc;

	ck_assert_ptr_nonnull(r);
	n = gen_reqs(&g, t->size, shape, r);
	place(&g, t, lay, r, n, &d);
	snprintf(what, sizeof(what), "size %" PRIu64 " mode %u layout %s shape %d seed %" PRIu64 " chunk %" PRIu64,
		 t->size, mode, layout_name[lay], shape, seed, o.chunk);
	o.io_mode = mode;
	o.sink = &(struct stream_sink){ .copy = tsink_copy, .wait = tsink_wait, .user = &d.sink };
	o.progress = tprog_fn;
	o.user = &prog;
	if (inj) {
		o.inject = tinj_fn;
		o.inject_user = inj;
	}
	memset(&res, 0xff, sizeof(res));
	rc = stream_file(t->path, t->fd, r, n, &o, &res);
	ck_assert_msg(rc == 0, "%s: stream_file: %d %s", what, rc, vram_last_error());
	check_dest(t, r, n, &d, what);
	if (res.reads) {
		tally.loads++;
		tally.uring += res.engine == STREAM_ENGINE_URING;
	}
	tally.stalls += res.stalls;
	tally.recovered += res.recovered;
	ck_assert_msg(res.recovered == 0 || res.stalls > 0, "%s: reads recovered without a stall", what);
	ck_assert_uint_eq(res.bytes, total_of(r, n));
	ck_assert_msg(res.io_mode_used == VRAM_IO_DIRECT || res.io_mode_used == VRAM_IO_BUFFERED, "%s", what);
	if (mode != VRAM_IO_AUTO)
		ck_assert_msg(res.io_mode_used == VRAM_IO_BUFFERED || mode == VRAM_IO_DIRECT, "%s", what);
	ck_assert_uint_ge(res.bytes_read, res.bytes ? 1 : 0);
	/* buffered reads and mirrored slack land in place: nothing bounces */
	if (res.io_mode_used == VRAM_IO_BUFFERED || lay == L_MIRROR)
		ck_assert_msg(res.bytes_bounced == 0, "%s: %" PRIu64 " bytes bounced", what, res.bytes_bounced);
	ck_assert(prog.monotonic);
	if (res.bytes) {
		ck_assert_uint_eq(prog.last_done, res.bytes);
		ck_assert_uint_eq(prog.last_total, res.bytes);
	}
	if (inj && inj->changed)
		ck_assert_msg(res.retries > 0, "%s: faults injected, nothing retried", what);
	ck_assert_int_eq(fd_count(), fds);
	dest_free(&d);
	free(r);
}

static const uint64_t sizes[] = { 1, 100, 4095, 4096, 4097, 65537, (1 << 20) + 123, (5 << 20) + 7 };
static const uint32_t modes[] = { VRAM_IO_AUTO, VRAM_IO_DIRECT, VRAM_IO_BUFFERED };

/* small chunks and slots: many ops, splits, slot reuse */
static const struct stream_opts small_opts = {
	.chunk = 64 << 10, .depth = 3, .nstaging = 2, .staging_size = 64 << 10,
};

static void sweep(const char *dir, enum layout lay, const struct stream_opts *o, bool inject, uint64_t seed0)
{
	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		struct tfile t;
		tfile_make(&t, dir, sizes[si], seed0 + si);
		for (size_t mi = 0; mi < 3; mi++) {
			for (int shape = 0; shape < 3; shape++) {
				uint64_t seed = seed0 * 1000 + si * 100 + mi * 10 + (uint64_t)shape;
				struct tinj j = { .g = { seed | 1 }, .pct_short = 20, .pct_eintr = 10, .pct_eagain = 10 };
				if (mi == 0 && seed % 3 == 1) {
					drop_cache(&t);
				} else if (mi == 0 && seed % 3 == 2) {
					/* partly cached: AUTO mixes buffered and direct reads */
					drop_cache(&t);
					warm_part(&t, seed);
				}
				roundtrip(&t, modes[mi], lay, shape, seed, o, inject ? &j : NULL);
			}
		}
		tfile_free(&t);
	}
}

/* ---- tests: round trips ------------------------------------------------- */

START_TEST(test_layouts_small_ops)
{
	sweep(disk_dir(), (enum layout)_i, &small_opts, false, 100 + (uint64_t)_i);
}
END_TEST

START_TEST(test_layouts_default_ops)
{
	sweep(disk_dir(), (enum layout)_i, NULL, false, 200 + (uint64_t)_i);
}
END_TEST

/* A file in memory is read with pread: io_uring would hand every read of
 * it to a worker thread (where Linux 6.18 was seen to lose some). */
START_TEST(test_layouts_tmpfs)
{
	const char *dir = tmpfs_dir();
	if (!dir)
		return;  /* no tmpfs here */
	memset(&tally, 0, sizeof(tally)); /* CK_FORK=no runs every test in one process */
	sweep(dir, (enum layout)_i, &small_opts, false, 300 + (uint64_t)_i);
	ck_assert_uint_gt(tally.loads, 0);
	ck_assert_uint_eq(tally.uring, 0);
}
END_TEST

/* The ring forced onto tmpfs with a 1 ms stall window: reads still queued
 * when a window passes empty are cancelled and read with pread, and every
 * byte still arrives. */
START_TEST(test_layouts_tmpfs_stalls)
{
	const char *dir = tmpfs_dir();
	struct stream_opts o = small_opts;
	if (!dir)
		return;  /* no tmpfs here */
	o.flags = STREAM_F_URING_MEMFS;
	o.stall_ms = 1;
	memset(&tally, 0, sizeof(tally));
	sweep(dir, (enum layout)_i, &o, false, 700 + (uint64_t)_i);
	ck_assert_uint_eq(tally.uring, tally.loads);
	fprintf(stderr, "tmpfs stalls %" PRIu64 " recovered %" PRIu64 " in %" PRIu64 " loads\n", tally.stalls, tally.recovered, tally.loads);
}
END_TEST

START_TEST(test_layouts_sync_engine)
{
	struct stream_opts o = small_opts;
	o.flags = STREAM_F_NO_URING;
	sweep(disk_dir(), (enum layout)_i, &o, true, 400 + (uint64_t)_i);
}
END_TEST

START_TEST(test_layouts_no_register)
{
	struct stream_opts o = small_opts;
	o.flags = STREAM_F_NO_REGISTER;
	o.depth = 5;
	o.nstaging = 7;
	sweep(disk_dir(), (enum layout)_i, &o, false, 500 + (uint64_t)_i);
}
END_TEST

START_TEST(test_faults_recover)
{
	sweep(disk_dir(), (enum layout)_i, &small_opts, true, 600 + (uint64_t)_i);
}
END_TEST

/* Bigger than a chunk with the defaults: one 8 MiB+ run, split, aligned. */
START_TEST(test_large_file)
{
	struct tfile t;
	tfile_make(&t, disk_dir(), (19 << 20) + 333, 77);
	for (int lay = 0; lay < L_COUNT; lay++) {
		drop_cache(&t);
		roundtrip(&t, VRAM_IO_DIRECT, (enum layout)lay, 0, 9000 + (uint64_t)lay, NULL, NULL);
		roundtrip(&t, VRAM_IO_AUTO, (enum layout)lay, 1, 9100 + (uint64_t)lay, NULL, NULL);
	}
	tfile_free(&t);
}
END_TEST

/* The mode each case must use, and the fallback on tmpfs. */
START_TEST(test_mode_choice)
{
	struct tfile t;
	struct stream_result res;
	double f;
	uint8_t *buf = aligned_alloc(STREAM_ALIGN, 3 << 20);
	struct stream_req r = { .file_off = 0, .len = 3 << 20, .dst = buf, .kind = STREAM_DST_HOST, .flags = STREAM_REQ_SLACK };
	struct stream_opts o = { .io_mode = VRAM_IO_DIRECT };

	ck_assert_ptr_nonnull(buf);
	memset(buf, 0, r.len);  /* valgrind cannot see io_uring's writes */
	tfile_make(&t, disk_dir(), 3 << 20, 5);
	if (!dio_ok(&t)) {
		/* no O_DIRECT on this filesystem: DIRECT falls back */
		ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, &res), 0);
		ck_assert_uint_eq(res.io_mode_used, VRAM_IO_BUFFERED);
		ck_assert_mem_eq(buf, t.data, r.len);
		tfile_free(&t);
		free(buf);
		return;
	}
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, &res), 0);
	ck_assert_uint_eq(res.io_mode_used, VRAM_IO_DIRECT);
	ck_assert_uint_eq(res.bytes_bounced, 0);
	ck_assert_uint_eq(res.bytes_buffered, 0);
	ck_assert(res.cached < 0);
	ck_assert_mem_eq(buf, t.data, r.len);

	/* cold: AUTO goes direct (when the cache could be dropped at all) */
	drop_cache(&t);
	ck_assert_int_eq(stream_probe_cached(t.fd, 0, 0, &f), 0);
	o.io_mode = VRAM_IO_AUTO;
	memset(buf, 0, r.len);
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, &res), 0);
	ck_assert_mem_eq(buf, t.data, r.len);
	ck_assert(res.cached >= 0 && res.cached <= 1);
	if (f < 0.25)
		ck_assert_uint_eq(res.io_mode_used, VRAM_IO_DIRECT);

	/* half cached: AUTO reads direct, the cached half buffered */
	drop_cache(&t);
	ck_assert_int_eq(stream_probe_cached(t.fd, 0, 0, &f), 0);
	if (f < 0.01) {
		struct stream_opts h = { .io_mode = VRAM_IO_AUTO, .chunk = 256 << 10 };
		uint8_t *tmp = malloc(r.len / 2);
		ck_assert_int_eq(pread(t.fd, tmp, r.len / 2, 0), (ssize_t)(r.len / 2));
		free(tmp);
		/* what readahead brought beyond the half */
		posix_fadvise(t.fd, (off_t)(r.len / 2), 0, POSIX_FADV_DONTNEED);
		memset(buf, 0, r.len);
		ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &h, &res), 0);
		ck_assert_mem_eq(buf, t.data, r.len);
		ck_assert_msg(res.cached >= 0.4 && res.cached < STREAM_AUTO_CACHED_MIN, "cached %f", res.cached);
		ck_assert_uint_eq(res.io_mode_used, VRAM_IO_DIRECT);
		ck_assert_uint_ge(res.bytes_buffered, r.len / 2 - (256 << 10));
		ck_assert_uint_lt(res.bytes_buffered, r.len);
		/* and in the pread engine */
		h.flags = STREAM_F_NO_URING;
		memset(buf, 0, r.len);
		ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &h, &res), 0);
		ck_assert_mem_eq(buf, t.data, r.len);
		ck_assert_uint_gt(res.bytes_buffered, 0);
	}

	/* warm: AUTO goes buffered */
	warm_cache(&t);
	memset(buf, 0, r.len);
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, &res), 0);
	ck_assert_mem_eq(buf, t.data, r.len);
	ck_assert(res.cached >= 0.99);
	ck_assert_uint_eq(res.io_mode_used, VRAM_IO_BUFFERED);
	tfile_free(&t);

	/* tmpfs: DIRECT is not used there */
	if (tmpfs_dir()) {
		tfile_make(&t, tmpfs_dir(), 3 << 20, 6);
		o.io_mode = VRAM_IO_DIRECT;
		memset(buf, 0, r.len);
		ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, &res), 0);
		ck_assert_uint_eq(res.io_mode_used, VRAM_IO_BUFFERED);
		ck_assert_mem_eq(buf, t.data, r.len);
		tfile_free(&t);
	}
	free(buf);
}
END_TEST

/* A caller fd with O_NONBLOCK or O_DIRECT still reads fine in every mode. */
START_TEST(test_odd_caller_fd)
{
	struct tfile t;
	static const int extra[] = { O_NONBLOCK, O_DIRECT };
	uint8_t *buf = malloc(100000);
	struct stream_req r = { .file_off = 123, .len = 100000, .dst = buf, .kind = STREAM_DST_HOST };

	tfile_make(&t, disk_dir(), 200000, 8);
	for (int k = 0; k < 2; k++) {
		for (size_t mi = 0; mi < 3; mi++) {
			struct stream_opts o = { .io_mode = modes[mi] };
			int fds = fd_count();
			int fl = fcntl(t.fd, F_GETFL);
			ck_assert_int_eq(fcntl(t.fd, F_SETFL, fl | extra[k]), 0);
			memset(buf, 0, r.len);
			ck_assert_msg(stream_file(t.path, t.fd, &r, 1, &o, NULL) == 0, "%s", vram_last_error());
			ck_assert_mem_eq(buf, t.data + 123, r.len);
			ck_assert_int_eq(fcntl(t.fd, F_SETFL, fl), 0);
			ck_assert_int_eq(fd_count(), fds);
		}
	}
	tfile_free(&t);
	free(buf);
}
END_TEST

/* Caller-provided staging is used (every sink source lies in it). */
START_TEST(test_caller_staging)
{
	struct tfile t;
	struct dest d;
	struct rng g = { 99 };
	struct stream_req *r = calloc(MAX_REQS, sizeof(*r));
	size_t n;
	uint8_t *st = aligned_alloc(STREAM_ALIGN, 3 * (128 << 10));
	struct stream_opts o = { .chunk = 64 << 10, .nstaging = 3, .staging_size = 128 << 10, .staging = st };

	ck_assert_ptr_nonnull(st);
	memset(st, 0, 3 * (128 << 10));  /* valgrind cannot see io_uring's writes */
	tfile_make(&t, disk_dir(), (2 << 20) + 5, 10);
	for (size_t mi = 0; mi < 3; mi++) {
		n = gen_reqs(&g, t.size, 0, r);
		place(&g, &t, L_MIXED, r, n, &d);
		d.sink.lo = st;
		d.sink.hi = st + 3 * (128 << 10);
		o.io_mode = modes[mi];
		o.sink = &(struct stream_sink){ .copy = tsink_copy, .wait = tsink_wait, .user = &d.sink };
		ck_assert_msg(stream_file(t.path, t.fd, r, n, &o, NULL) == 0, "%s", vram_last_error());
		check_dest(&t, r, n, &d, "caller staging");
		ck_assert_uint_le(d.sink.max_slot, 2);
		dest_free(&d);
	}
	/* misaligned staging is refused */
	o.staging = st + 8;
	n = gen_reqs(&g, t.size, 0, r);
	place(&g, &t, L_STAGED, r, n, &d);
	o.sink = &(struct stream_sink){ .copy = tsink_copy, .wait = tsink_wait, .user = &d.sink };
	ck_assert_int_eq(stream_file(t.path, t.fd, r, n, &o, NULL), -EINVAL);
	dest_free(&d);
	tfile_free(&t);
	free(st);
	free(r);
}
END_TEST

START_TEST(test_empty)
{
	struct tfile t;
	struct stream_result res;
	struct stream_req r[3] = {
		{ .file_off = 0, .len = 0, .dst = NULL, .kind = STREAM_DST_HOST },
		{ .file_off = 0, .len = 0, .kind = STREAM_DST_STAGED },  /* empty: no sink needed */
		{ .file_off = 0, .len = 0, .dst = NULL, .kind = STREAM_DST_HOST, .flags = STREAM_REQ_SLACK },
	};

	tfile_make(&t, disk_dir(), 0, 11);
	for (size_t mi = 0; mi < 3; mi++) {
		struct stream_opts o = { .io_mode = modes[mi] };
		ck_assert_int_eq(stream_file(t.path, t.fd, r, 3, &o, &res), 0);
		ck_assert_uint_eq(res.bytes, 0);
		ck_assert_int_eq(stream_file(t.path, t.fd, NULL, 0, &o, &res), 0);
		ck_assert_uint_eq(res.bytes, 0);
	}
	ck_assert_int_eq(stream_file(t.path, t.fd, r, 3, NULL, NULL), 0);
	tfile_free(&t);
}
END_TEST

/* ---- tests: failures ---------------------------------------------------- */

/* -EIO at a random read fails cleanly: message, fds, sink slots. */
START_TEST(test_eio)
{
	struct tfile t;
	struct rng g = { 1234 + (uint64_t)_i };

	tfile_make(&t, disk_dir(), (3 << 20) + 99, 12 + (uint64_t)_i);
	for (int round = 0; round < 12; round++) {
		struct stream_req *r = calloc(MAX_REQS, sizeof(*r));
		struct stream_opts o = small_opts;
		struct tinj j = { .g = { rnd(&g) | 1 }, .pct_short = 10, .pct_eagain = 5,
				  .eio_at = 1 + (int)rnd_below(&g, 30) };
		struct stream_result res = { .bytes = 4242 };
		struct dest d;
		char want[1024];
		size_t n;
		int fds = fd_count(), rc;

		n = gen_reqs(&g, t.size, 0, r);
		place(&g, &t, (enum layout)(round % L_COUNT), r, n, &d);
		o.io_mode = modes[round % 3];
		o.flags = (_i & 1) ? STREAM_F_NO_URING : 0;
		o.sink = &(struct stream_sink){ .copy = tsink_copy, .wait = tsink_wait, .user = &d.sink };
		o.inject = tinj_fn;
		o.inject_user = &j;
		rc = stream_file(t.path, t.fd, r, n, &o, &res);
		if (j.calls < j.eio_at) {
			/* fewer reads than the chosen failure point */
			ck_assert_int_eq(rc, 0);
		} else {
			ck_assert_int_eq(rc, -EIO);
			snprintf(want, sizeof(want), "%s: read at offset %" PRIu64 ": Input/output error", t.path, j.eio_off);
			ck_assert_str_eq(vram_last_error(), want);
			ck_assert_uint_eq(res.bytes, 4242);  /* untouched */
		}
		ck_assert_uint_eq(tsink_pending(&d.sink), 0);
		ck_assert_uint_eq(d.sink.reused, 0);
		ck_assert_int_eq(fd_count(), fds);
		dest_free(&d);
		free(r);
	}
	tfile_free(&t);
}
END_TEST

struct tchange { struct tfile *t; int what; int at; int calls; };

static int change_fn(void *user, uint64_t done, uint64_t total)
{
	struct tchange *c = user;

	if (++c->calls != c->at)
		return 0;
	if (c->what == 0)
		ck_assert_int_eq(ftruncate(c->t->fd, (off_t)(c->t->size / 2)), 0);
	else if (c->what == 1) {
		struct timespec ts[2] = { { 0, UTIME_OMIT }, { 1000000, 0 } };
		ck_assert_int_eq(futimens(c->t->fd, ts), 0);
	} else {
		return 1;
	}
	return 0;
}

/* A file truncated or modified during the load: -ESTALE, clean. */
static void change_case(int what, uint32_t mode, uint32_t flags, enum layout lay, int at)
{
	struct tfile t;
	struct rng g = { 4321 + (uint64_t)at };
	struct stream_req *r = calloc(MAX_REQS, sizeof(*r));
	struct stream_opts o = small_opts;
	struct tchange c = { &t, what, at, 0 };
	struct dest d;
	char want[1024];
	size_t n;
	int wfd, fds, rc;

	/* writable: ftruncate and futimens need it */
	snprintf(t.path, sizeof(t.path), "%s/test-stream.XXXXXX", disk_dir());
	wfd = mkstemp(t.path);
	ck_assert_int_ge(wfd, 0);
	unlink(t.path);
	t.size = (4 << 20) + 17;
	t.data = malloc(t.size);
	for (uint64_t i = 0; i < t.size; i++)
		t.data[i] = (uint8_t)rnd(&g);
	ck_assert_int_eq(pwrite(wfd, t.data, t.size, 0), (ssize_t)t.size);
	t.fd = wfd;

	fds = fd_count();
	n = gen_reqs(&g, t.size, 0, r);
	place(&g, &t, lay, r, n, &d);
	o.io_mode = mode;
	o.flags = flags;
	o.sink = &(struct stream_sink){ .copy = tsink_copy, .wait = tsink_wait, .user = &d.sink };
	o.progress = change_fn;
	o.user = &c;
	rc = stream_file(t.path, t.fd, r, n, &o, NULL);
	if (what == 0) {
		ck_assert_int_eq(rc, -ESTALE);
		snprintf(want, sizeof(want), "%s: file changed during the load (size %" PRIu64 " -> %" PRIu64 ")",
			 t.path, t.size, t.size / 2);
		ck_assert_str_eq(vram_last_error(), want);
	} else if (what == 1) {
		ck_assert_int_eq(rc, -ESTALE);
		snprintf(want, sizeof(want), "%s: file changed during the load (modified)", t.path);
		ck_assert_str_eq(vram_last_error(), want);
	} else {
		ck_assert_int_eq(rc, -ECANCELED);
		snprintf(want, sizeof(want), "%s: load cancelled", t.path);
		ck_assert_str_eq(vram_last_error(), want);
		ck_assert_int_eq(c.calls, at);  /* no progress after cancelling */
	}
	ck_assert_uint_eq(tsink_pending(&d.sink), 0);
	ck_assert_uint_eq(d.sink.reused, 0);
	ck_assert_int_eq(fd_count(), fds);
	dest_free(&d);
	free(r);
	tfile_free(&t);
}

START_TEST(test_truncated)
{
	for (int k = 0; k < 6; k++)
		change_case(0, modes[k % 3], k >= 3 ? STREAM_F_NO_URING : 0, (enum layout)((_i + k) % L_COUNT), 1 + _i);
}
END_TEST

START_TEST(test_modified)
{
	for (int k = 0; k < 6; k++)
		change_case(1, modes[k % 3], k >= 3 ? STREAM_F_NO_URING : 0, (enum layout)((_i + k) % L_COUNT), 1 + _i);
}
END_TEST

START_TEST(test_cancel)
{
	for (int k = 0; k < 6; k++)
		change_case(2, modes[k % 3], k >= 3 ? STREAM_F_NO_URING : 0, (enum layout)((_i + k) % L_COUNT), 1 + _i);
}
END_TEST

/* The sink's errors fail the stream; every slot is still waited for. */
START_TEST(test_sink_errors)
{
	struct tfile t;
	struct rng g = { 55 };

	tfile_make(&t, disk_dir(), (2 << 20) + 1, 13);
	for (int k = 0; k < 8; k++) {
		struct stream_req *r = calloc(MAX_REQS, sizeof(*r));
		struct stream_opts o = small_opts;
		struct dest d;
		size_t n = gen_reqs(&g, t.size, 0, r);
		int fds = fd_count(), rc;

		place(&g, &t, L_STAGED, r, n, &d);
		if (k & 1)
			d.sink.fail_wait_at = 1 + k;
		else
			d.sink.fail_copy_at = 1 + k;
		o.io_mode = modes[k % 3];
		o.sink = &(struct stream_sink){ .copy = tsink_copy, .wait = tsink_wait, .user = &d.sink };
		rc = stream_file(t.path, t.fd, r, n, &o, NULL);
		ck_assert_int_eq(rc, (k & 1) ? -EIO : -ENOSPC);
		ck_assert_msg(strstr(vram_last_error(), "onward copy failed"), "%s", vram_last_error());
		ck_assert_uint_eq(tsink_pending(&d.sink), 0);
		ck_assert_int_eq(fd_count(), fds);
		dest_free(&d);
		free(r);
	}
	tfile_free(&t);
}
END_TEST

/* ---- conversions ------------------------------------------------------- */

struct csink {
	uint8_t *dev;            /* "device memory" */
	uint64_t dev_size;
	const uint8_t *staging;  /* the caller's staging: src must be at slot + slot_off */
	uint64_t slot_size;
	uint64_t casts, copies, bad, max_n;
	int fail_cast_at;        /* 1-based cast() call that fails, 0: none */
};

static int csink_copy(void *user, uint64_t dst, const void *src, uint64_t len, uint32_t slot)
{
	struct csink *k = user;
	k->copies++;
	if (dst > k->dev_size || len > k->dev_size - dst) {
		k->bad++;
		return 0;
	}
	memcpy(k->dev + dst, src, len);
	return 0;
}

static int csink_wait(void *user, uint32_t slot)
{
	return 0;
}

static int csink_cast(void *user, uint64_t dst, uint32_t dst_dtype, const void *src, uint32_t src_dtype,
		      uint64_t n, uint64_t slot_off, uint32_t slot)
{
	struct csink *k = user;
	uint64_t sb = n * vram_dtype_bits(src_dtype) / 8, db = n * vram_dtype_bits(dst_dtype) / 8;
	k->casts++;
	if (k->fail_cast_at && (int)k->casts == k->fail_cast_at)
		return rt_error(-EIO, "planted conversion failure");
	if (dst > k->dev_size || db > k->dev_size - dst || slot_off + sb > k->slot_size ||
	    (k->staging && (const uint8_t *)src != k->staging + slot * k->slot_size + slot_off)) {
		k->bad++;
		return 0;
	}
	k->max_n = MAX(k->max_n, n);
	ck_assert_int_eq(vk_cast(src, src_dtype, k->dev + dst, dst_dtype, n), 0);
	return 0;
}

static const uint32_t cast_dt[] = { VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_F16, VRAM_DTYPE_BF16,
				    VRAM_DTYPE_F32 };

/* Random converting and plain requests over a file at odd offsets, read
 * through small staging slots (so that elements straddle slot and block
 * boundaries): every byte where it belongs, converted like vk_cast does,
 * no element cut (the sink gets whole elements), every conversion's source
 * inside its slot. */
START_TEST(test_convert)
{
	struct tfile t;
	struct rng g = { 4242 + (uint64_t)_i };
	const uint64_t slot = 2 * STREAM_ALIGN;
	uint8_t *st = aligned_alloc(STREAM_ALIGN, 3 * slot);
	ck_assert_ptr_nonnull(st);
	memset(st, 0, 3 * slot);
	tfile_make(&t, disk_dir(), (1 << 20) + 3, 77);
	struct stream_req r[64];
	uint64_t exp_size = 8 << 20;
	uint8_t *exp = calloc(1, exp_size);
	struct csink k = { .dev = calloc(1, exp_size), .dev_size = exp_size, .slot_size = slot };
	ck_assert_ptr_nonnull(exp);
	ck_assert_ptr_nonnull(k.dev);
	size_t n = 0;
	uint64_t dcur = 0, off = rnd_below(&g, 64);
	while (n < 64) {
		uint32_t from = cast_dt[rnd_below(&g, 5)], to = cast_dt[rnd_below(&g, 5)];
		uint64_t sb = vram_dtype_bits(from) / 8, db = vram_dtype_bits(to) / 8;
		uint64_t elems = rnd_below(&g, 4) == 0 ? rnd_below(&g, 4) : rnd_below(&g, 6000);
		if (off + elems * sb > t.size)
			break;
		r[n] = (struct stream_req){ .file_off = off, .len = elems * sb, .kind = STREAM_DST_STAGED,
					    .dst_addr = dcur, .cast_from = from, .cast_to = to };
		ck_assert_int_eq(vk_cast(t.data + off, from, exp + dcur, to, elems), 0);
		dcur += elems * db + rnd_below(&g, 5);
		ck_assert_uint_le(dcur, exp_size);
		/* next one: right after, or a little further (odd offsets) */
		off += elems * sb + (rnd_below(&g, 2) ? rnd_below(&g, 9) : 0);
		n++;
	}
	ck_assert_uint_gt(n, 20);
	struct stream_opts o = { .io_mode = modes[_i % 3], .chunk = slot, .nstaging = 3 };
	if (_i >= 3) {       /* the caller's staging */
		o.staging = st;
		o.staging_size = slot;
		k.staging = st;
	}
	o.sink = &(struct stream_sink){ .copy = csink_copy, .wait = csink_wait, .user = &k, .cast = csink_cast };
	/* in random order */
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = rnd_below(&g, i + 1);
		struct stream_req x = r[i];
		r[i] = r[j];
		r[j] = x;
	}
	struct stream_result res;
	ck_assert_msg(stream_file(t.path, t.fd, r, n, &o, &res) == 0, "%s", vram_last_error());
	ck_assert_uint_eq(k.bad, 0);
	ck_assert_uint_gt(k.casts, n / 2);
	ck_assert_uint_le(k.max_n, slot);
	ck_assert_msg(memcmp(k.dev, exp, dcur) == 0, "converted bytes differ");

	/* a failing conversion fails the stream with its message */
	k.fail_cast_at = 3;
	k.casts = 0;
	ck_assert_int_eq(stream_file(t.path, t.fd, r, n, &o, NULL), -EIO);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "planted conversion failure"));
	free(exp);
	free(k.dev);
	free(st);
	tfile_free(&t);
}
END_TEST

START_TEST(test_convert_invalid)
{
	struct tfile t;
	uint8_t buf[64];
	struct csink k = { .dev = buf, .dev_size = sizeof(buf), .slot_size = 1 << 20 };
	struct stream_sink sink = { .copy = csink_copy, .wait = csink_wait, .user = &k, .cast = csink_cast };
	struct stream_req r = { .file_off = 0, .len = 8, .kind = STREAM_DST_STAGED, .cast_from = VRAM_DTYPE_F32,
				.cast_to = VRAM_DTYPE_F16 };
	struct stream_opts o = { .sink = &sink };

	tfile_make(&t, disk_dir(), 100, 15);
	ck_assert_msg(stream_file(t.path, t.fd, &r, 1, &o, NULL) == 0, "%s", vram_last_error());
	ck_assert_uint_eq(k.casts, 1);
	/* not whole elements */
	r.len = 6;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "not whole F32 elements"));
	r.len = 8;
	/* a sink that cannot convert */
	sink.cast = NULL;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "a sink that converts"));
	sink.cast = csink_cast;
	/* host destinations do not convert */
	r.kind = STREAM_DST_HOST;
	r.dst = buf;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	r.kind = STREAM_DST_STAGED;
	/* sub-byte and unknown dtypes */
	r.cast_from = VRAM_DTYPE_F4;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	r.cast_from = 999;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cannot convert dtype 999"));
	r.cast_from = VRAM_DTYPE_F32;
	/* slots too small to hold an element whatever the offset */
	o.chunk = STREAM_ALIGN;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "staging slots of at least 8192"));
	ck_assert_uint_eq(k.casts, 1);
	tfile_free(&t);
}
END_TEST

/* STREAM_REQ_FD: requests into a memfd mapping, warm.  BUFFERED (and AUTO
 * on the cached file) copy through the file: the bytes seen through the
 * mapping are right and every byte went through the file (bytes_sent ==
 * bytes).  A destination that cannot be written so (a pipe) falls back to
 * reading into the mapping; DIRECT ignores the flag. */
static int cancel_at_1mib(void *user, uint64_t done, uint64_t total)
{
	return done >= (1u << 20);
}

START_TEST(test_fd_destination)
{
	struct tfile t;
	struct rng g = { 515 };
	tfile_make(&t, disk_dir(), (3 << 20) + 7, 21);
	warm_cache(&t);
	uint64_t msize = 8 << 20;
	int mfd = memfd_create("dst", MFD_CLOEXEC);
	ck_assert_int_ge(mfd, 0);
	ck_assert_int_eq(ftruncate(mfd, (off_t)msize), 0);
	uint8_t *map = mmap(NULL, msize, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ck_assert_ptr_ne(map, MAP_FAILED);
	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	static const uint32_t fmodes[] = { VRAM_IO_BUFFERED, VRAM_IO_AUTO, VRAM_IO_DIRECT, VRAM_IO_BUFFERED };
	for (int k = 0; k < 4; k++) {
		memset(map, 0xa5, msize);
		struct stream_req r[40];
		size_t n = 0;
		uint64_t off = rnd_below(&g, 100), dcur = 0, want = 0;
		while (n < 40) {
			uint64_t len = rnd_below(&g, 200000) + (n % 7 == 0 ? 0 : 1);
			if (off + len > t.size)
				break;
			dcur += rnd_below(&g, 3) * 4096 + rnd_below(&g, 50);
			r[n] = (struct stream_req){ .file_off = off, .len = len, .dst = map + dcur, .kind = STREAM_DST_HOST,
						    .flags = STREAM_REQ_FD, .dst_fd = k == 3 ? pfd[1] : mfd,
						    .dst_fd_off = dcur };
			dcur += len;
			ck_assert_uint_le(dcur, msize);
			want += len;
			off += len + rnd_below(&g, 5000);
			n++;
		}
		struct stream_opts o = { .io_mode = fmodes[k], .chunk = 64 << 10 }; /* requests of several copies */
		struct stream_result res;
		ck_assert_msg(stream_file(t.path, t.fd, r, n, &o, &res) == 0, "%s", vram_last_error());
		for (size_t i = 0; i < n; i++)
			ck_assert_msg(memcmp(r[i].dst, t.data + r[i].file_off, r[i].len) == 0, "mode %u request %zu", fmodes[k], i);
		ck_assert_uint_eq(res.bytes, want);
		if (k < 2) {
			ck_assert_uint_eq(res.io_mode_used, VRAM_IO_BUFFERED);
			ck_assert_uint_eq(res.bytes_sent, want);
		} else {
			ck_assert_uint_eq(res.bytes_sent, 0);
		}
	}
	/* cancelled from the progress callback between two copies */
	{
		struct stream_req r = { .file_off = 0, .len = 3 << 20, .dst = map, .kind = STREAM_DST_HOST,
					.flags = STREAM_REQ_FD, .dst_fd = mfd, .dst_fd_off = 0 };
		struct stream_opts o = { .io_mode = VRAM_IO_BUFFERED, .chunk = 1 << 20, .progress = cancel_at_1mib };
		ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -ECANCELED);
		ck_assert_ptr_nonnull(strstr(vram_last_error(), "cancelled"));
	}
	/* an fd without a host destination is refused */
	struct stream_req bad = { .file_off = 0, .len = 10, .kind = STREAM_DST_HOST, .dst = map, .flags = STREAM_REQ_FD,
				  .dst_fd = -1 };
	ck_assert_int_eq(stream_file(t.path, t.fd, &bad, 1, NULL, NULL), -EINVAL);
	close(pfd[0]);
	close(pfd[1]);
	munmap(map, msize);
	close(mfd);
	tfile_free(&t);
}
END_TEST

START_TEST(test_invalid)
{
	struct tfile t;
	uint8_t buf[64];
	struct stream_req r = { .file_off = 0, .len = 10, .dst = buf, .kind = STREAM_DST_HOST };
	struct stream_opts o = { 0 };
	int dirfd;

	memset(buf, 0, sizeof(buf));
	tfile_make(&t, disk_dir(), 100, 14);
	r.file_off = 95;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, NULL, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "past the end of the file (size 100)"));
	r.file_off = UINT64_MAX - 3;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, NULL, NULL), -EOVERFLOW);
	r.file_off = 0;
	r.kind = 7;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, NULL, NULL), -EINVAL);
	r.kind = STREAM_DST_STAGED;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, NULL, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "without a sink"));
	r.kind = STREAM_DST_HOST;
	r.flags = 1u << 7;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, NULL, NULL), -EINVAL);
	r.flags = 0;
	r.dst = NULL;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, NULL, NULL), -EINVAL);
	r.dst = buf;
	o.io_mode = 3;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	o.io_mode = 0;
	o.flags = 1u << 20;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	o.flags = 0;
	o.chunk = STREAM_MAX_CHUNK + 1;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	o.chunk = 0;
	o.depth = STREAM_MAX_DEPTH + 1;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	o.depth = 0;
	o.staging_size = 1000;
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), -EINVAL);
	o.staging_size = 0;
	ck_assert_int_eq(stream_file(t.path, -1, &r, 1, &o, NULL), -EBADF);
	dirfd = open("/", O_RDONLY | O_DIRECTORY);
	ck_assert_int_eq(stream_file("/", dirfd, &r, 1, &o, NULL), -EINVAL);
	close(dirfd);
	ck_assert_int_eq(stream_file(t.path, t.fd, NULL, 1, &o, NULL), -EINVAL);
	/* and a good one still works afterwards */
	ck_assert_int_eq(stream_file(t.path, t.fd, &r, 1, &o, NULL), 0);
	ck_assert_mem_eq(buf, t.data, 10);
	tfile_free(&t);
}
END_TEST

/* ---- tests: residency probe -------------------------------------------- */

START_TEST(test_probe)
{
	struct tfile t;
	double a, b;

	tfile_make(&t, disk_dir(), (8 << 20) + 5, 15);
	warm_cache(&t);
	ck_assert_int_eq(stream_probe_cached(t.fd, 0, 0, &a), 0);
	ck_assert_int_eq(stream_probe_cached_mincore(t.fd, 0, 0, &b), 0);
	ck_assert_msg(a >= 0.99 && b >= 0.99, "warm: cachestat %f mincore %f", a, b);
	ck_assert_int_eq(stream_probe_cached(t.fd, 4096, 1 << 20, &a), 0);
	ck_assert(a >= 0.99);

	drop_cache(&t);
	ck_assert_int_eq(stream_probe_cached(t.fd, 0, 0, &a), 0);
	ck_assert_int_eq(stream_probe_cached_mincore(t.fd, 0, 0, &b), 0);
	ck_assert(a >= 0 && a <= 1 && b >= 0 && b <= 1);
	if (a < 0.5)  /* the cache could be dropped: both see it */
		ck_assert_msg(b < 0.6, "cold: cachestat %f mincore %f", a, b);

	/* half: read the first half back in */
	drop_cache(&t);
	ck_assert_int_eq(stream_probe_cached(t.fd, 0, 0, &a), 0);
	if (a < 0.01) {
		uint8_t *buf = malloc(4 << 20);
		ck_assert_int_eq(pread(t.fd, buf, 4 << 20, 0), 4 << 20);
		ck_assert_int_eq(stream_probe_cached(t.fd, 0, 4 << 20, &a), 0);
		ck_assert(a >= 0.99);
		ck_assert_int_eq(stream_probe_cached_mincore(t.fd, 0, 0, &b), 0);
		ck_assert_msg(b > 0.4, "half: mincore %f", b);
		free(buf);
	}

	/* empty ranges, past the end */
	ck_assert_int_eq(stream_probe_cached(t.fd, t.size, 10, &a), 0);
	ck_assert(a == 1.0);
	ck_assert_int_eq(stream_probe_cached_mincore(t.fd, t.size + 100, 0, &b), 0);
	ck_assert(b == 1.0);
	ck_assert_int_eq(stream_probe_cached(-1, 0, 0, &a), -EBADF);
	ck_assert_int_eq(stream_probe_cached_mincore(-1, 0, 0, &a), -EBADF);
	tfile_free(&t);
}
END_TEST

static Suite *stream_suite(void)
{
	Suite *s = suite_create("stream");
	TCase *tc;

	tc = tcase_create("roundtrip");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_layouts_small_ops, 0, L_COUNT);
	tcase_add_loop_test(tc, test_layouts_default_ops, 0, L_COUNT);
	tcase_add_loop_test(tc, test_layouts_tmpfs, 0, L_COUNT);
	tcase_add_loop_test(tc, test_layouts_tmpfs_stalls, 0, L_COUNT);
	tcase_add_loop_test(tc, test_layouts_sync_engine, 0, L_COUNT);
	tcase_add_loop_test(tc, test_layouts_no_register, 0, L_COUNT);
	tcase_add_test(tc, test_large_file);
	tcase_add_test(tc, test_mode_choice);
	tcase_add_test(tc, test_odd_caller_fd);
	tcase_add_test(tc, test_caller_staging);
	tcase_add_test(tc, test_empty);
	suite_add_tcase(s, tc);

	tc = tcase_create("faults");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_faults_recover, 0, L_COUNT);
	tcase_add_loop_test(tc, test_eio, 0, 4);
	tcase_add_loop_test(tc, test_truncated, 0, 3);
	tcase_add_loop_test(tc, test_modified, 0, 2);
	tcase_add_loop_test(tc, test_cancel, 0, 3);
	tcase_add_test(tc, test_sink_errors);
	tcase_add_test(tc, test_invalid);
	tcase_add_loop_test(tc, test_convert, 0, 6);
	tcase_add_test(tc, test_convert_invalid);
	tcase_add_test(tc, test_fd_destination);
	suite_add_tcase(s, tc);

	tc = tcase_create("probe");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_probe);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(stream_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
