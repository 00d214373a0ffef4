/* SPDX-License-Identifier: MIT */
/*
 * Streaming engine: file ranges -> host memory or staging + sink.
 *
 * One call, one thread, three phases:
 *   1. decide: DIRECT (our own O_DIRECT fd, aligned reads) or BUFFERED
 *      (the caller's fd, exact reads); AUTO probes page-cache residency;
 *   2. plan: requests become "ops", each one read of at most a chunk:
 *      - direct ops land in the destination itself: HOST requests whose
 *        (aligned) range may be written there, coalesced while neighbours
 *        are contiguous in both the file and memory;
 *      - staged ops land in a staging slot and are delivered from there:
 *        STAGED ranges (sink->copy) and HOST pieces that cannot land
 *        directly (memcpy), packed while their aligned ranges touch;
 *   3. run: ops are submitted in file order on one io_uring, at most
 *      `depth` in flight; short reads, EINTR and EAGAIN are resubmitted for
 *      the remainder; a staging slot is reused only after sink->wait().
 *      Without io_uring the same ops run on pread, one at a time.
 * AUTO on a partly cached file reads direct, except the ops whose range is
 * (almost) all in the page cache: those go to a buffered fd.
 * On any failure nothing new is submitted, every read in flight is reaped
 * and every slot given to the sink is waited for before memory is freed.
 *
 * Cleanup style in this file: one owner struct (struct stream) and
 * stream_free(), which accepts a partly built one.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <linux/magic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/dtype.h"
#include "runtime/internal.h"
#include "runtime/stream.h"

/* HOST pieces without slack whose aligned interior is shorter than this go
 * through staging whole: a small direct read costs more than a memcpy. */
#define SMALL_DIRECT        (64u << 10)
/* Consecutive EINTR/EAGAIN on one read before giving up. */
#define MAX_EAGAIN          1000u
/* Consecutive short reads that add nothing (a file shorter than it was)
 * before calling it the end of the file. */
#define MAX_STALL           64u
/* mincore window. */
#define MINCORE_WINDOW      (1ull << 30)

/* ======================================================================
 * Page-cache residency
 * ====================================================================== */

#if !defined(__NR_cachestat) && (defined(__x86_64__) || defined(__aarch64__))
#define __NR_cachestat 451
#endif

struct cs_range { uint64_t off, len; };
struct cs_stat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };

/* Page-aligned [*ret_b, *ret_e) covering [off, off+len) clipped to the file;
 * 0, or 1 when the range is empty. */
static int probe_span(int fd, uint64_t off, uint64_t len, uint64_t page, uint64_t *ret_b, uint64_t *ret_e)
{
	struct stat st;
	uint64_t end, size;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	size = (uint64_t)st.st_size;
	end = (len == 0 || len > UINT64_MAX - off || off + len > size) ? size : off + len;
	if (off >= end)
		return 1;
	*ret_b = off / page * page;
	*ret_e = (end + page - 1) / page * page;
	return 0;
}

/* Share of [off, off+len) (len 0: to EOF) in the page cache by mmap and
 * mincore, 1 GiB at a time; 1 for an empty range.  0, -EINVAL (not a
 * regular file), -ENOMEM, or -errno of fstat/mmap/mincore. */
int stream_probe_cached_mincore(int fd, uint64_t off, uint64_t len, double *ret_fraction)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), b, e, resident = 0;
	_cleanup_free_ unsigned char *vec = NULL;
	int r;

	r = probe_span(fd, off, len, page, &b, &e);
	if (r < 0)
		return r;
	if (r > 0) {
		*ret_fraction = 1.0;
		return 0;
	}
	vec = malloc(MIN(e - b, MINCORE_WINDOW) / page);
	if (!vec)
		return -ENOMEM;
	for (uint64_t pos = b; pos < e; pos += MINCORE_WINDOW) {
		uint64_t n = MIN(e - pos, MINCORE_WINDOW);
		void *p = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, (off_t)pos);
		if (p == MAP_FAILED)
			return -errno;
		r = mincore(p, n, vec) < 0 ? -errno : 0;
		munmap(p, n);
		if (r < 0)
			return r;
		for (uint64_t i = 0; i < n / page; i++)
			resident += vec[i] & 1;
	}
	*ret_fraction = (double)resident / (double)((e - b) / page);
	return 0;
}

/* The same by cachestat(2) when the kernel has it (6.5+, and no seccomp
 * filter refuses it), else by stream_probe_cached_mincore.  0 or -errno;
 * *ret_fraction untouched on failure. */
int stream_probe_cached(int fd, uint64_t off, uint64_t len, double *ret_fraction)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), b, e;
	int r;

	r = probe_span(fd, off, len, page, &b, &e);
	if (r < 0)
		return r;
	if (r > 0) {
		*ret_fraction = 1.0;
		return 0;
	}
#ifdef __NR_cachestat
	struct cs_range range = { b, e - b };
	struct cs_stat cs = { 0 };
	if (syscall(__NR_cachestat, fd, &range, &cs, 0) == 0) {
		double f = (double)cs.nr_cache / (double)((e - b) / page);
		*ret_fraction = f > 1.0 ? 1.0 : f;
		return 0;
	}
	/* ENOSYS: kernel < 6.5; EPERM: a seccomp filter; EOPNOTSUPP: hugetlbfs */
	if (errno != ENOSYS && errno != EPERM && errno != EOPNOTSUPP)
		return -errno;
#endif
	return stream_probe_cached_mincore(fd, off, len, ret_fraction);
}

/* ======================================================================
 * State
 * ====================================================================== */

/* One read (and its resubmissions). */
struct op {
	uint64_t off;            /* file offset of byte 0 of the read */
	uint64_t len;            /* bytes asked for */
	uint64_t need;           /* bytes from off that must arrive (len may pass EOF) */
	uint64_t done;           /* bytes from off known to have arrived */
	uint64_t start;          /* offset in the op of the read in flight */
	uint64_t payload;        /* request bytes it delivers (progress) */
	uint64_t seq;            /* creation order (stable sort) */
	uint8_t *buf;            /* where byte off lands */
	uint32_t part0, nparts;  /* staged: delivery parts */
	int32_t  slot;           /* staged: slot while reading, else -1 */
	uint8_t  staged;
	uint8_t  buffered;       /* hybrid: read through the page cache */
	uint8_t  pad[2];
	uint32_t eagain;         /* consecutive EINTR/EAGAIN */
	uint32_t stall;          /* consecutive reads that added nothing */
};

/* A file range of one request, delivered from a staged op. */
struct part {
	uint64_t off, len;
	size_t req;
};

/* A HOST range written through its file (STREAM_REQ_FD, BUFFERED). */
struct fdcopy {
	uint64_t off, len;
	uint8_t *dst;            /* the mapping, for the fallback */
	int fd;
	uint64_t fd_off;
};

/* A HOST range that may land in place; slack: its aligned superset may too. */
struct piece {
	uint64_t off, len;
	uint8_t *dst;            /* where byte off goes */
	bool slack;
};

enum slot_state { SLOT_FREE = 0, SLOT_READING, SLOT_SINKING };

struct slot {
	enum slot_state state;
	uint64_t since;          /* SINKING: order, oldest is waited for first */
};

struct stream {
	const char *path;
	bool have_path;          /* path was given (not the "(file)" stand-in) */
	const struct stream_req *reqs;
	size_t nreqs;
	const struct stream_opts *o;

	struct stat st0;
	uint32_t mode;           /* VRAM_IO_DIRECT / VRAM_IO_BUFFERED */
	int rfd;                 /* what reads go to */
	int own_fd;              /* an fd we opened, or -1 */
	int bfd;                 /* hybrid: the buffered fd for cached ranges, else -1 */
	int own_bfd;             /* ... when we opened it, else -1 */
	bool hybrid;             /* AUTO, partly cached: each read picks its fd */
	uint64_t align;          /* STREAM_ALIGN (direct) or 1 */
	uint64_t mem_align;      /* O_DIRECT buffer alignment */
	uint64_t chunk, slot_size;
	uint32_t depth, nstaging;

	struct op *ops;
	size_t nops, cap_ops;
	struct part *parts, *segs;
	size_t nparts, cap_parts, nsegs, cap_segs;
	struct piece *pieces;
	size_t npieces, cap_pieces;
	struct fdcopy *fdcs;
	size_t nfdcs, cap_fdcs;
	bool no_sendfile;        /* a destination file refused: read into memory */
	uint64_t max_staged;     /* longest staged op */
	size_t nstaged;

	uint8_t *staging;
	uint64_t staging_len;    /* mapped by us (0: the caller's) */
	uint64_t slot_stride;
	struct slot *slots;
	uint32_t nslots;
	uint64_t sink_seq;

	bool uring;
	struct io_uring ring;
	bool ring_up, file_reg, bufs_reg;
	bool stalled;            /* the ring stalled once: the rest is read with pread */
	uint32_t ring_inflight;  /* reads the ring owes a completion */
	uint64_t quiet_ns;       /* the first empty stall window since the last completion (0: none) */
	size_t *sync_q;          /* ops waiting to be read with pread (FIFO of depth) */
	uint32_t sync_head, sync_n;

	uint32_t inflight;
	uint64_t total, delivered;
	int err;                 /* first failure */
	uint64_t err_off;
	enum { ERR_READ, ERR_EOF, ERR_SINK, ERR_CANCEL, ERR_STALL, ERR_OTHER } err_kind;
	char sink_msg[512];      /* ERR_SINK: what the sink said, if anything */

	struct stream_result res;
};

static void fail(struct stream *s, int err, int kind, uint64_t off)
{
	if (s->err)
		return;
	s->err = err;
	s->err_kind = kind;
	s->err_off = off;
	/* sinks say why through rt_error(); the engine clears the message
	 * before each call, so a message here is theirs */
	if (kind == ERR_SINK)
		snprintf(s->sink_msg, sizeof(s->sink_msg), "%s", vram_last_error());
}

/* Room for element n of array p (cap elements of size bytes): p itself or
 * a larger copy; NULL when out of memory (p is then still valid). */
static void *grow(void *p, size_t *cap, size_t n, size_t size)
{
	size_t ncap;
	void *q;

	if (n < *cap)
		return p;
	ncap = *cap ? *cap * 2 : 64;
	q = reallocarray(p, ncap, size);
	if (q)
		*cap = ncap;
	return q;
}

#define GROW(arr, cap, n) ({                                              \
	__typeof__(arr) _q = grow((arr), &(cap), (n), sizeof(*(arr)));     \
	if (_q)                                                           \
		(arr) = _q;                                               \
	_q ? 0 : -ENOMEM; })

static inline uint64_t align_down(uint64_t x, uint64_t a) { return x / a * a; }
static inline uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ======================================================================
 * Choosing the mode and the fd
 * ====================================================================== */

/* Opens fd's inode again with flags (O_DIRECT needs a file description of
 * its own: setting it on a dup would change the caller's fd too).  Through
 * /proc/self/fd, which reaches the inode and never the path; only where
 * /proc is missing by the path, and then it must still name the same,
 * unchanged file (device, inode, size, mtime as at the start).  The new fd
 * or -errno, -ESTALE when the path names another file now. */
static int reopen(struct stream *s, int fd, int flags)
{
	char p[64];
	struct stat st;
	int nfd;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	nfd = open(p, flags | O_RDONLY | O_CLOEXEC);
	if (nfd < 0 && errno == ENOENT && s->have_path)   /* no /proc */
		nfd = open(s->path, flags | O_RDONLY | O_CLOEXEC);
	if (nfd < 0)
		return -errno;
	if (fstat(nfd, &st) < 0 || st.st_dev != s->st0.st_dev || st.st_ino != s->st0.st_ino ||
	    st.st_size != s->st0.st_size || st.st_mtim.tv_sec != s->st0.st_mtim.tv_sec ||
	    st.st_mtim.tv_nsec != s->st0.st_mtim.tv_nsec) {
		close(nfd);
		return -ESTALE;
	}
	return nfd;
}

/* A file that lives in memory (tmpfs, ramfs, hugetlbfs). */
static bool mem_fs(int fd)
{
	struct statfs sfs;

	return fstatfs(fd, &sfs) == 0 &&
	       (sfs.f_type == TMPFS_MAGIC || sfs.f_type == RAMFS_MAGIC || sfs.f_type == HUGETLBFS_MAGIC);
}

/* Sets up DIRECT reads; a negative errno when the file cannot be read that
 * way (the caller then reads buffered). */
static int setup_direct(struct stream *s, int fd)
{
	struct statx stx;
	int dfd;

	/* tmpfs and friends accept O_DIRECT (6.6+) but it buys nothing there */
	if (mem_fs(fd))
		return -EOPNOTSUPP;

	s->mem_align = STREAM_ALIGN;
	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN)) {
		if (stx.stx_dio_offset_align == 0)
			return -EOPNOTSUPP;  /* the filesystem says: no O_DIRECT */
		if (stx.stx_dio_offset_align > STREAM_ALIGN || stx.stx_dio_mem_align > STREAM_ALIGN)
			return -EOPNOTSUPP;
		s->mem_align = MAX(stx.stx_dio_mem_align, 1u);
	}
	dfd = reopen(s, fd, O_DIRECT);
	if (dfd < 0)
		return dfd;
	s->own_fd = s->rfd = dfd;
	s->align = STREAM_ALIGN;
	s->mode = VRAM_IO_DIRECT;
	return 0;
}

/* A buffered fd of the file in *ret_fd: fd itself, or (*ret_own) one we
 * open when fd's flags do not suit. */
static int buffered_fd(struct stream *s, int fd, int *ret_fd, int *ret_own)
{
	int fl = fcntl(fd, F_GETFL);

	/* O_NONBLOCK makes io_uring answer -EAGAIN instead of blocking;
	 * O_DIRECT would need alignment: read through a plain fd instead. */
	if (fl >= 0 && (fl & (O_DIRECT | O_NONBLOCK))) {
		int nfd = reopen(s, fd, 0);
		if (nfd == -ESTALE)
			return rt_error(nfd, "%s: cannot reopen for buffered reads: the path names another file now "
					"(or it changed)", s->path);
		if (nfd < 0)
			return rt_error(nfd, "%s: cannot reopen for buffered reads: %s", s->path, strerror(-nfd));
		*ret_fd = *ret_own = nfd;
		return 0;
	}
	*ret_fd = fd;
	return 0;
}

static int setup_buffered(struct stream *s, int fd)
{
	s->mode = VRAM_IO_BUFFERED;
	s->align = 1;
	s->mem_align = 1;
	return buffered_fd(s, fd, &s->rfd, &s->own_fd);
}

/* ======================================================================
 * Planning
 * ====================================================================== */

static int add_seg(struct stream *s, uint64_t off, uint64_t len, size_t req)
{
	if (GROW(s->segs, s->cap_segs, s->nsegs) < 0)
		return -ENOMEM;
	s->segs[s->nsegs++] = (struct part){ off, len, req };
	return 0;
}

static int add_fdcopy(struct stream *s, const struct stream_req *r)
{
	if (GROW(s->fdcs, s->cap_fdcs, s->nfdcs) < 0)
		return -ENOMEM;
	s->fdcs[s->nfdcs++] = (struct fdcopy){ r->file_off, r->len, r->dst, r->dst_fd, r->dst_fd_off };
	return 0;
}

static int add_piece(struct stream *s, uint64_t off, uint64_t len, uint8_t *dst, bool slack)
{
	if (GROW(s->pieces, s->cap_pieces, s->npieces) < 0)
		return -ENOMEM;
	s->pieces[s->npieces++] = (struct piece){ off, len, dst, slack };
	return 0;
}

static struct op *add_op(struct stream *s)
{
	struct op *op;

	if (GROW(s->ops, s->cap_ops, s->nops) < 0)
		return NULL;
	op = &s->ops[s->nops];
	*op = (struct op){ .seq = s->nops, .slot = -1 };
	s->nops++;
	return op;
}

static int cmp_req(const void *a, const void *b, void *arg)
{
	const struct stream_req *r = arg;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;

	if (r[i].file_off != r[j].file_off)
		return r[i].file_off < r[j].file_off ? -1 : 1;
	return i < j ? -1 : i > j;
}

static int cmp_seg(const void *a, const void *b)
{
	const struct part *x = a, *y = b;

	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->req < y->req ? -1 : x->req > y->req;
}

static int cmp_op(const void *a, const void *b)
{
	const struct op *x = a, *y = b;

	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts request i into pieces (land in place) and segs (through staging). */
static int classify(struct stream *s, size_t i)
{
	const struct stream_req *r = &s->reqs[i];
	uint64_t off = r->file_off, end = off + r->len, ai, ae;
	uint8_t *dst = r->dst;

	if (r->kind == STREAM_DST_STAGED)
		return add_seg(s, off, r->len, i);
	if (s->mode == VRAM_IO_BUFFERED && (r->flags & STREAM_REQ_FD))
		return add_fdcopy(s, r);
	if (s->mode == VRAM_IO_BUFFERED)
		return add_piece(s, off, r->len, dst, false);

	if ((r->flags & STREAM_REQ_SLACK) &&
	    ((uintptr_t)dst - off % STREAM_ALIGN) % s->mem_align == 0)
		return add_piece(s, off, r->len, dst, true);

	/* no slack (or a base O_DIRECT cannot use): the aligned interior in
	 * place when memory is aligned the same way as the file, head and
	 * tail through staging */
	ai = align_up(off, STREAM_ALIGN);
	ae = align_down(end, STREAM_ALIGN);
	if (ae > ai && ae - ai >= SMALL_DIRECT && ((uintptr_t)dst + (ai - off)) % s->mem_align == 0) {
		int r1 = 0;
		if (ai > off)
			r1 = add_seg(s, off, ai - off, i);
		if (!r1)
			r1 = add_piece(s, ai, ae - ai, dst + (ai - off), false);
		if (!r1 && end > ae)
			r1 = add_seg(s, ae, end - ae, i);
		return r1;
	}
	return add_seg(s, off, r->len, i);
}

/* Turns pieces[p0, p1) (one run: contiguous in file and memory) spanning
 * the aligned [a, b) with buf at a into ops of at most a chunk. */
static int flush_run(struct stream *s, size_t p0, size_t p1, uint64_t a, uint64_t b, uint64_t need_end, uint8_t *buf)
{
	size_t first = s->nops;

	for (uint64_t x = a; x < b; x += s->chunk) {
		struct op *op = add_op(s);
		if (!op)
			return -ENOMEM;
		op->off = x;
		op->len = MIN(b - x, s->chunk);
		op->need = MIN(x + op->len, need_end) - x;
		op->buf = buf + (x - a);
	}
	/* progress: each piece's bytes to the ops it overlaps */
	for (size_t p = p0; p < p1; p++) {
		uint64_t o = s->pieces[p].off, e = o + s->pieces[p].len;
		while (o < e) {
			size_t k = first + (o - a) / s->chunk;
			uint64_t oe = MIN(e, s->ops[k].off + s->ops[k].len);
			s->ops[k].payload += oe - o;
			o = oe;
		}
	}
	return 0;
}

static int plan_direct(struct stream *s)
{
	uint64_t a = 0, b = 0, need_end = 0;
	uint8_t *buf = NULL;
	size_t p0 = 0;
	int r;

	for (size_t p = 0; p < s->npieces; p++) {
		const struct piece *pc = &s->pieces[p];
		uint64_t pa = pc->slack ? align_down(pc->off, s->align) : pc->off;
		uint64_t pb = pc->slack ? align_up(pc->off + pc->len, s->align) : pc->off + pc->len;
		uint8_t *pbuf = pc->dst - (pc->off - pa);

		/* joins the run when it touches it in the file and sits at the
		 * same distance in memory; the bytes between are then scratch
		 * of one of the two or file bytes in their own place */
		if (p > p0 && pa >= a && pa <= b && (uintptr_t)pbuf - (uintptr_t)buf == pa - a) {
			b = MAX(b, pb);
			need_end = MAX(need_end, pc->off + pc->len);
			continue;
		}
		if (p > p0 && (r = flush_run(s, p0, p, a, b, need_end, buf)) < 0)
			return r;
		p0 = p;
		a = pa;
		b = pb;
		buf = pbuf;
		need_end = pc->off + pc->len;
	}
	if (s->npieces > p0)
		return flush_run(s, p0, s->npieces, a, b, need_end, buf);
	return 0;
}

static int add_part(struct stream *s, uint64_t off, uint64_t len, size_t req)
{
	if (GROW(s->parts, s->cap_parts, s->nparts) < 0)
		return -ENOMEM;
	s->parts[s->nparts++] = (struct part){ off, len, req };
	return 0;
}

static void close_staged(struct stream *s, struct op *op, uint64_t b, uint64_t need_end)
{
	op->len = b - op->off;
	op->need = need_end - op->off;
	op->nparts = (uint32_t)(s->nparts - op->part0);
	s->max_staged = MAX(s->max_staged, op->len);
	s->nstaged++;
}

/* Bytes per element of a converting request, else 1. */
static uint64_t req_unit(const struct stream_req *r)
{
	return r->cast_from != r->cast_to ? dtype_size(r->cast_from) : 1;
}

static struct op *open_staged(struct stream *s, uint64_t oa, size_t *cur, uint64_t *b, uint64_t *need_end)
{
	struct op *op = add_op(s);
	if (!op)
		return NULL;
	*cur = (size_t)(op - s->ops);
	op->off = oa;
	op->staged = 1;
	op->part0 = (uint32_t)s->nparts;
	*b = oa;
	*need_end = oa;
	return op;
}

/* Where a part of request r (up to e) in op ends: the op's end, cut back to
 * an element boundary of r when r converts. */
static uint64_t part_end(const struct stream *s, const struct op *op, const struct stream_req *r, uint64_t unit,
			 uint64_t e)
{
	uint64_t te = MIN(e, op->off + s->slot_size);
	return te < e ? r->file_off + (te - r->file_off) / unit * unit : te;
}

/* Packs segs into staged ops of at most a slot, while aligned ranges touch.
 * A converting request is cut only between its elements; when the next
 * element does not fit in the slot, the next op starts a little before it
 * (re-reading at most one aligned block). */
static int plan_staged(struct stream *s)
{
	size_t cur = SIZE_MAX;   /* index: ops may move when the array grows */
	uint64_t b = 0, need_end = 0;

	if (s->nsegs)            /* qsort wants a non-NULL array */
		qsort(s->segs, s->nsegs, sizeof(*s->segs), cmp_seg);
	for (size_t i = 0; i < s->nsegs; i++) {
		uint64_t o = s->segs[i].off, e = o + s->segs[i].len;
		size_t req = s->segs[i].req;
		const struct stream_req *r = &s->reqs[req];
		uint64_t unit = req_unit(r);

		while (o < e) {
			uint64_t oa = align_down(o, s->align), te;
			struct op *op = cur != SIZE_MAX ? &s->ops[cur] : NULL;

			if (!op || oa < op->off || oa > b || o >= op->off + s->slot_size) {
				if (op)
					close_staged(s, op, b, need_end);
				if (!(op = open_staged(s, oa, &cur, &b, &need_end)))
					return -ENOMEM;
			}
			te = part_end(s, op, r, unit, e);
			if (te <= o) {   /* the element does not fit: a fresh op */
				close_staged(s, op, b, need_end);
				if (!(op = open_staged(s, oa, &cur, &b, &need_end)))
					return -ENOMEM;
				te = part_end(s, op, r, unit, e);
			}
			if (add_part(s, o, te - o, req) < 0)
				return -ENOMEM;
			op->payload += te - o;
			b = MAX(b, align_up(te, s->align));
			need_end = MAX(need_end, te);
			o = te;
		}
	}
	if (cur != SIZE_MAX)
		close_staged(s, &s->ops[cur], b, need_end);
	return 0;
}

static int plan(struct stream *s)
{
	_cleanup_free_ size_t *order = NULL;
	size_t n = 0;
	int r;

	order = reallocarray(NULL, s->nreqs ? s->nreqs : 1, sizeof(*order));
	if (!order)
		return -ENOMEM;
	for (size_t i = 0; i < s->nreqs; i++)
		if (s->reqs[i].len)
			order[n++] = i;
	qsort_r(order, n, sizeof(*order), cmp_req, (void *)s->reqs);
	for (size_t k = 0; k < n; k++)
		if ((r = classify(s, order[k])) < 0)
			return r;
	if ((r = plan_direct(s)) < 0 || (r = plan_staged(s)) < 0)
		return r;
	if (s->nops)
		qsort(s->ops, s->nops, sizeof(*s->ops), cmp_op);
	return 0;
}

/* ======================================================================
 * Staging slots
 * ====================================================================== */

static int staging_setup(struct stream *s)
{
	const struct stream_opts *o = s->o;

	if (s->nstaged == 0)
		return 0;
	s->nslots = (uint32_t)MIN((size_t)s->nstaging, s->nstaged);
	if (o->staging) {
		s->staging = o->staging;
		s->slot_stride = s->slot_size;
	} else {
		/* only what the longest staged op needs, page-rounded */
		s->slot_stride = align_up(s->max_staged, STREAM_ALIGN);
		s->staging_len = s->slot_stride * s->nslots;
		void *p = mmap(NULL, s->staging_len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			s->staging_len = 0;
			return -ENOMEM;
		}
		madvise(p, s->staging_len, MADV_HUGEPAGE);
		s->staging = p;
	}
	s->slots = calloc(s->nslots, sizeof(*s->slots));
	return s->slots ? 0 : -ENOMEM;
}

/* A slot to read into in *ret_slot: a free one, else the one longest with
 * the sink (waited for first); -1 when all are being read into.  0, or the
 * sink's -errno. */
static int slot_get(struct stream *s, int *ret_slot)
{
	int best = -1;

	*ret_slot = -1;
	for (uint32_t i = 0; i < s->nslots; i++) {
		if (s->slots[i].state == SLOT_FREE) {
			*ret_slot = (int)i;
			return 0;
		}
		if (s->slots[i].state == SLOT_SINKING &&
		    (best < 0 || s->slots[i].since < s->slots[best].since))
			best = (int)i;
	}
	if (best >= 0) {
		rt_error_clear();
		int r = s->o->sink->wait(s->o->sink->user, (uint32_t)best);
		s->slots[best].state = SLOT_FREE;
		if (r < 0)
			return r;
		*ret_slot = best;
	}
	return 0;
}

/* Waits for every slot still with the sink; a failure fails the stream
 * (the first one, and its message, stays). */
static void slots_drain(struct stream *s)
{
	for (uint32_t i = 0; i < s->nslots; i++) {
		if (s->slots[i].state != SLOT_SINKING)
			continue;
		rt_error_clear();
		int r = s->o->sink->wait(s->o->sink->user, i);
		s->slots[i].state = SLOT_FREE;
		if (r < 0)
			fail(s, r, ERR_SINK, 0);
	}
}

/* ======================================================================
 * Engine
 * ====================================================================== */

static int ring_setup(struct stream *s)
{
	struct io_uring_params p;
	unsigned entries = s->depth;
	int r;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	r = io_uring_queue_init_params(entries, &s->ring, &p);
	if (r == -EINVAL) {      /* kernel < 6.1 */
		memset(&p, 0, sizeof(p));
		r = io_uring_queue_init_params(entries, &s->ring, &p);
	}
	if (r < 0)
		return r;
	s->ring_up = true;
	if (s->o->flags & STREAM_F_NO_REGISTER)
		return 0;
	int fds[2] = { s->rfd, s->bfd };
	s->file_reg = io_uring_register_files(&s->ring, fds, s->hybrid ? 2 : 1) == 0;
	if (s->nslots) {
		struct iovec *iov = calloc(s->nslots, sizeof(*iov));
		if (!iov)
			return -ENOMEM;
		for (uint32_t i = 0; i < s->nslots; i++)
			iov[i] = (struct iovec){ s->staging + i * s->slot_stride, s->slot_stride };
		/* fails under a low RLIMIT_MEMLOCK: then plain reads */
		s->bufs_reg = io_uring_register_buffers(&s->ring, iov, s->nslots) == 0;
		free(iov);
	}
	return 0;
}

static void read_submit(struct stream *s, size_t i)
{
	struct op *op = &s->ops[i];
	uint8_t *buf = op->buf + op->start;
	uint64_t off = op->off + op->start;
	unsigned len = (unsigned)(op->len - op->start);
	struct io_uring_sqe *sqe;

	int fd = s->file_reg ? op->buffered : op->buffered ? s->bfd : s->rfd;

	if (!s->uring || s->stalled) {
		s->sync_q[(s->sync_head + s->sync_n++) % s->depth] = i;
		return;
	}
	s->ring_inflight++;
	/* never NULL: at most depth reads are in flight and the SQ has depth
	 * entries, each consumed by the submit that precedes new ones */
	sqe = io_uring_get_sqe(&s->ring);
	if (op->staged && s->bufs_reg)
		io_uring_prep_read_fixed(sqe, fd, buf, len, off, op->slot);
	else
		io_uring_prep_read(sqe, fd, buf, len, off);
	if (s->file_reg)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, i);
}

/* Hands a staged op's bytes on; the slot then belongs to the sink. */
static void deliver(struct stream *s, struct op *op)
{
	bool sunk = false;

	for (uint32_t k = 0; k < op->nparts; k++) {
		const struct part *pt = &s->parts[op->part0 + k];
		const struct stream_req *r = &s->reqs[pt->req];
		const uint8_t *src = op->buf + (pt->off - op->off);
		uint64_t d = pt->off - r->file_off;

		if (r->kind == STREAM_DST_HOST) {
			memcpy((uint8_t *)r->dst + d, src, pt->len);
			s->res.bytes_bounced += pt->len;
			continue;
		}
		int rc;
		rt_error_clear();
		if (r->cast_from != r->cast_to) {
			uint64_t sb = req_unit(r), db = dtype_size(r->cast_to);
			rc = s->o->sink->cast(s->o->sink->user, r->dst_addr + d / sb * db, r->cast_to, src,
					      r->cast_from, pt->len / sb, pt->off - op->off, (uint32_t)op->slot);
		} else {
			rc = s->o->sink->copy(s->o->sink->user, r->dst_addr + d, src, pt->len, (uint32_t)op->slot);
		}
		sunk = true;     /* a failed copy may have started: wait anyway */
		if (rc < 0) {
			fail(s, rc, ERR_SINK, pt->off);
			break;
		}
	}
	if (sunk) {
		s->slots[op->slot].state = SLOT_SINKING;
		s->slots[op->slot].since = s->sink_seq++;
	} else {
		s->slots[op->slot].state = SLOT_FREE;
	}
	op->slot = -1;
}

static void op_retire(struct stream *s, struct op *op)
{
	s->inflight--;
	if (op->slot >= 0) {
		s->slots[op->slot].state = SLOT_FREE;
		op->slot = -1;
	}
}

static void op_complete(struct stream *s, size_t i, int res)
{
	struct op *op = &s->ops[i];
	uint64_t off = op->off + op->start;
	const struct stream_opts *o = s->o;

	if (res == -ECANCELED && s->stalled && !s->err) {
		/* cancelled while still queued: it never ran, read it here */
		s->res.recovered++;
		read_submit(s, i);
		return;
	}
	s->res.reads++;
	if (o->inject) {
		int inj = o->inject(o->inject_user, off, (uint32_t)(op->len - op->start), res);
		res = (inj > 0 && res >= 0 && inj > res) ? res : inj;
	}
	if (s->err) {            /* draining */
		op_retire(s, op);
		return;
	}
	if (res == -EINTR || res == -EAGAIN) {
		if (++op->eagain > MAX_EAGAIN) {
			fail(s, res, ERR_READ, off);
			op_retire(s, op);
			return;
		}
		s->res.retries++;
		read_submit(s, i);
		return;
	}
	if (res < 0) {
		fail(s, res, ERR_READ, off);
		op_retire(s, op);
		return;
	}
	op->eagain = 0;
	s->res.bytes_read += (uint64_t)res;
	if (op->buffered)
		s->res.bytes_buffered += (uint64_t)res;
	if (res == 0 || op->start + (uint64_t)res <= op->done) {
		/* nothing new: at (or, re-reading a partial block, before) the
		 * end of the file */
		if (res == 0 || ++op->stall > MAX_STALL) {
			fail(s, -ESTALE, ERR_EOF, op->off + op->done);
			op_retire(s, op);
			return;
		}
	} else {
		op->done = op->start + (uint64_t)res;
		op->stall = 0;
	}
	if (op->done < op->need) {
		/* the rest; O_DIRECT needs it to start aligned again */
		op->start = align_down(op->done, s->align);
		s->res.retries++;
		read_submit(s, i);
		return;
	}
	s->inflight--;
	if (op->staged)
		deliver(s, op);
	if (s->err)
		return;
	s->delivered += op->payload;
	if (o->progress && o->progress(o->user, s->delivered, s->total))
		fail(s, -ECANCELED, ERR_CANCEL, 0);
}

/* BUFFERED requests with a destination file: sendfile from the page cache
 * into it, a chunk at a time (progress and cancel between chunks).  A file
 * that cannot be written so before anything was sent (hugetlbfs: EINVAL; a
 * pipe: ESPIPE) turns the rest into preads into the mapping. */
static void run_fdcopies(struct stream *s)
{
	const struct stream_opts *o = s->o;
	uint32_t again = 0;

	for (size_t i = 0; i < s->nfdcs && !s->err; i++) {
		const struct fdcopy *f = &s->fdcs[i];
		bool positioned = false;
		for (uint64_t done = 0; done < f->len && !s->err;) {
			uint64_t want = MIN(f->len - done, s->chunk);
			ssize_t k;
			bool sent = false;
			if (!s->no_sendfile) {
				off_t in = (off_t)(f->off + done);
				/* sendfile moves the file offset on by what it
				 * wrote: one lseek per request */
				k = !positioned && lseek(f->fd, (off_t)(f->fd_off + done), SEEK_SET) < 0 ? -1
					: sendfile(f->fd, s->rfd, &in, (size_t)want);
				positioned = k >= 0;
				if (k < 0 && s->res.bytes_sent == 0 &&
				    (errno == EINVAL || errno == ESPIPE || errno == ENOSYS || errno == EOPNOTSUPP)) {
					s->no_sendfile = true;
					continue;
				}
				sent = true;
			} else {
				k = pread(s->rfd, f->dst + done, (size_t)want, (off_t)(f->off + done));
			}
			if (k < 0 && (errno == EINTR || errno == EAGAIN) && ++again < MAX_EAGAIN)
				continue;
			if (k < 0) {
				fail(s, -errno, ERR_READ, f->off + done);
				break;
			}
			if (k == 0) {
				fail(s, -ENODATA, ERR_EOF, f->off + done);
				break;
			}
			again = 0;
			done += (uint64_t)k;
			s->res.reads++;
			s->res.bytes_read += (uint64_t)k;
			if (sent)
				s->res.bytes_sent += (uint64_t)k;
			s->delivered += (uint64_t)k;
			if (o->progress && o->progress(o->user, s->delivered, s->total))
				fail(s, -ECANCELED, ERR_CANCEL, 0);
		}
	}
}

/* The sync engine's next read. */
static void sync_read(struct stream *s)
{
	size_t i = s->sync_q[s->sync_head];
	struct op *op = &s->ops[i];
	ssize_t n;

	s->sync_head = (s->sync_head + 1) % s->depth;
	s->sync_n--;
	n = pread(op->buffered ? s->bfd : s->rfd, op->buf + op->start, op->len - op->start, (off_t)(op->off + op->start));
	op_complete(s, i, n < 0 ? -errno : (int)n);
}

/* Nothing completed for a stall window: cancel what is still queued (it
 * comes back -ECANCELED and op_complete queues it for pread); reads that
 * are running are waited for.  -ETIMEDOUT when that has gone on too long. */
static int ring_stalled(struct stream *s)
{
	struct io_uring_sqe *sqe;

	uint64_t now = clock_ns(CLOCK_MONOTONIC);
	if (!s->quiet_ns)
		s->quiet_ns = now;
	else if (now - s->quiet_ns >= STREAM_STALL_GIVE_UP_MS * 1000000ull)
		return -ETIMEDOUT;
	s->stalled = true;
	s->res.stalls++;
	/* the SQ has depth entries and everything before was submitted */
	sqe = io_uring_get_sqe(&s->ring);
	if (sqe) {
		io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
		io_uring_sqe_set_data64(sqe, UINT64_MAX);
	}
	return 0;
}

/* Submits what is queued, waits for at least one completion (at most a
 * stall window), handles all that are there; with reads queued for pread,
 * does one of those instead. */
static int reap(struct stream *s)
{
	uint32_t ms = s->o->stall_ms ? s->o->stall_ms : STREAM_DEFAULT_STALL_MS;

	if (s->sync_n) {
		sync_read(s);
		return 0;
	}
	for (;;) {
		struct __kernel_timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long long)(ms % 1000) * 1000000 };
		struct io_uring_cqe *cqe;
		unsigned head, n = 0, nops = 0;
		int r = io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &ts, NULL);

		if (r == -EINTR)
			continue;
		if (r == -ETIME) {
			if ((r = ring_stalled(s)) < 0)
				return r;
			continue;
		}
		if (r < 0 && r != -EBUSY && r != -EAGAIN)
			return r;
		io_uring_for_each_cqe(&s->ring, head, cqe) {
			uint64_t data = io_uring_cqe_get_data64(cqe);
			n++;
			if (data == UINT64_MAX)
				continue;        /* the stall's cancel */
			nops++;
			s->ring_inflight--;
			op_complete(s, (size_t)data, cqe->res);
		}
		io_uring_cq_advance(&s->ring, n);
		if (nops)
			s->quiet_ns = 0;
		if (nops || s->sync_n || (s->stalled && !s->ring_inflight))
			return 0;
	}
}

static int run(struct stream *s)
{
	size_t next = 0;

	while (next < s->nops || s->inflight) {
		while (!s->err && next < s->nops && s->inflight < s->depth) {
			struct op *op = &s->ops[next];
			if (op->staged) {
				int slot, r = slot_get(s, &slot);
				if (r < 0) {
					fail(s, r, ERR_SINK, op->off);
					break;
				}
				if (slot < 0)
					break;
				op->slot = slot;
				op->buf = s->staging + (uint64_t)slot * s->slot_stride;
				s->slots[slot].state = SLOT_READING;
			}
			if (s->hybrid) {
				double f;
				op->buffered = stream_probe_cached(s->bfd, op->off, op->need, &f) == 0 &&
					       f >= STREAM_AUTO_CACHED_MIN;
			}
			read_submit(s, next);
			s->inflight++;
			next++;
		}
		if (!s->inflight)
			break;
		int r = reap(s);
		if (r < 0) {
			/* the ring itself failed: buffers of reads still in the
			 * kernel stay pinned by it, so freeing them after the
			 * ring is torn down is safe.  Stalled for good
			 * (-ETIMEDOUT): tearing the ring down cancels what is
			 * queued; a read that is truly running yet never ends
			 * is beyond any caller's help */
			fail(s, r, r == -ETIMEDOUT ? ERR_STALL : ERR_OTHER, 0);
			return r;
		}
		if (s->err && !s->inflight)
			break;
	}
	return s->err;
}

/* ======================================================================
 * The call
 * ====================================================================== */

static void stream_free(struct stream *s)
{
	if (s->ring_up)
		io_uring_queue_exit(&s->ring);
	if (s->staging_len)
		munmap(s->staging, s->staging_len);
	if (s->own_fd >= 0)
		close(s->own_fd);
	if (s->own_bfd >= 0)
		close(s->own_bfd);
	free(s->sync_q);
	free(s->slots);
	free(s->ops);
	free(s->parts);
	free(s->segs);
	free(s->pieces);
	free(s->fdcs);
}

static int validate(struct stream *s)
{
	const struct stream_opts *o = s->o;
	uint64_t size = (uint64_t)s->st0.st_size;

	if (o->io_mode > VRAM_IO_BUFFERED)
		return rt_error(-EINVAL, "%s: unknown io mode %u", s->path, o->io_mode);
	if (o->flags & ~STREAM_F_VALID)
		return rt_error(-EINVAL, "%s: unknown stream flags 0x%x", s->path, o->flags);
	s->chunk = stream_chunk(o->chunk);
	if (o->chunk > STREAM_MAX_CHUNK)
		return rt_error(-EINVAL, "%s: chunk size %" PRIu64 " out of range (at most %llu)",
				s->path, o->chunk, STREAM_MAX_CHUNK);
	s->depth = o->depth ? o->depth : STREAM_DEFAULT_DEPTH;
	if (s->depth > STREAM_MAX_DEPTH)
		return rt_error(-EINVAL, "%s: queue depth %u out of range (at most %u)",
				s->path, s->depth, STREAM_MAX_DEPTH);
	s->nstaging = o->nstaging ? o->nstaging : STREAM_DEFAULT_NSTAGING;
	if (s->nstaging > STREAM_MAX_NSTAGING)
		return rt_error(-EINVAL, "%s: %u staging slots out of range (at most %u)",
				s->path, s->nstaging, STREAM_MAX_NSTAGING);
	s->slot_size = o->staging_size ? o->staging_size : s->chunk;
	if (s->slot_size % STREAM_ALIGN || s->slot_size > STREAM_MAX_CHUNK)
		return rt_error(-EINVAL, "%s: staging slot size %" PRIu64 " is not a multiple of %u up to %llu",
				s->path, s->slot_size, STREAM_ALIGN, STREAM_MAX_CHUNK);
	if (o->staging && (uintptr_t)o->staging % STREAM_ALIGN)
		return rt_error(-EINVAL, "%s: staging memory %p is not %u-byte aligned",
				s->path, o->staging, STREAM_ALIGN);

	for (size_t i = 0; i < s->nreqs; i++) {
		const struct stream_req *r = &s->reqs[i];
		if (r->kind != STREAM_DST_HOST && r->kind != STREAM_DST_STAGED)
			return rt_error(-EINVAL, "%s: request %zu: unknown destination kind %u", s->path, i, r->kind);
		if (r->flags & ~STREAM_REQ_VALID_FLAGS)
			return rt_error(-EINVAL, "%s: request %zu: unknown flags 0x%x", s->path, i, r->flags);
		if (r->len == 0)
			continue;
		if (r->file_off > UINT64_MAX - r->len)
			return rt_error(-EOVERFLOW, "%s: request %zu: range %" PRIu64 "+%" PRIu64 " overflows",
					s->path, i, r->file_off, r->len);
		if (r->file_off + r->len > size)
			return rt_error(-EINVAL, "%s: request %zu: range %" PRIu64 "+%" PRIu64
					" is past the end of the file (size %" PRIu64 ")",
					s->path, i, r->file_off, r->len, size);
		if (r->kind == STREAM_DST_HOST && !r->dst)
			return rt_error(-EINVAL, "%s: request %zu: host destination is NULL", s->path, i);
		if ((r->flags & STREAM_REQ_FD) && (r->kind != STREAM_DST_HOST || r->dst_fd < 0))
			return rt_error(-EINVAL, "%s: request %zu: a destination file needs a host destination "
					"and an fd", s->path, i);
		if (r->kind == STREAM_DST_STAGED && (!o->sink || !o->sink->copy || !o->sink->wait))
			return rt_error(-EINVAL, "%s: request %zu: staged destination without a sink", s->path, i);
		if (r->cast_from != r->cast_to) {
			uint32_t fb = vram_dtype_bits(r->cast_from), tb = vram_dtype_bits(r->cast_to);
			if (r->kind != STREAM_DST_STAGED || !o->sink->cast)
				return rt_error(-EINVAL, "%s: request %zu: a conversion needs a staged destination "
						"and a sink that converts", s->path, i);
			if (!fb || !tb || fb % 8 || tb % 8)
				return rt_error(-EINVAL, "%s: request %zu: cannot convert dtype %u to %u",
						s->path, i, r->cast_from, r->cast_to);
			if (r->len % (fb / 8))
				return rt_error(-EINVAL, "%s: request %zu: %" PRIu64 " bytes are not whole %s elements",
						s->path, i, r->len, vram_dtype_name(r->cast_from));
			if (s->slot_size < 2 * STREAM_ALIGN)
				return rt_error(-EINVAL, "%s: converting needs staging slots of at least %u bytes",
						s->path, 2 * STREAM_ALIGN);
		}
		if (s->total > UINT64_MAX - r->len)
			return rt_error(-EOVERFLOW, "%s: requests add up past 2^64 bytes", s->path);
		s->total += r->len;
	}
	return 0;
}

/* Decides the mode and sets up the fd reads go to. */
static int choose_mode(struct stream *s, int fd)
{
	uint32_t want = s->o->io_mode;

	s->res.cached = -1;
	if (want == VRAM_IO_AUTO) {
		uint64_t lo = UINT64_MAX, hi = 0;
		double f;
		for (size_t i = 0; i < s->nreqs; i++) {
			if (!s->reqs[i].len)
				continue;
			lo = MIN(lo, s->reqs[i].file_off);
			hi = MAX(hi, s->reqs[i].file_off + s->reqs[i].len);
		}
		/* a failed probe says nothing: assume cold */
		want = VRAM_IO_DIRECT;
		if (lo < hi && stream_probe_cached(fd, lo, hi - lo, &f) == 0) {
			s->res.cached = f;
			if (f >= STREAM_AUTO_CACHED_MIN)
				want = VRAM_IO_BUFFERED;
		}
	}
	if (want == VRAM_IO_DIRECT && setup_direct(s, fd) == 0) {
		/* partly cached: the cached ranges are read buffered (an aligned
		 * superset is as good a buffered read as any), the rest direct */
		if (s->res.cached >= STREAM_AUTO_HYBRID_MIN) {
			int r = buffered_fd(s, fd, &s->bfd, &s->own_bfd);
			if (r < 0)
				return r;
			s->hybrid = true;
		}
		return 0;
	}
	return setup_buffered(s, fd);
}

static int finish_error(struct stream *s, int fd)
{
	struct stat st;
	bool have = fstat(fd, &st) == 0;
	int err = s->err;

	switch (s->err_kind) {
	case ERR_READ:
		errno = -err;
		return rt_error(err, "%s: read at offset %" PRIu64 ": %m", s->path, s->err_off);
	case ERR_SINK:
		errno = -err;
		if (s->sink_msg[0])
			return rt_error(err, "%s: onward copy failed: %s", s->path, s->sink_msg);
		return rt_error(err, "%s: onward copy failed: %m", s->path);
	case ERR_CANCEL:
		return rt_error(err, "%s: load cancelled", s->path);
	case ERR_STALL:
		return rt_error(err, "%s: %u reads made no progress in over %u s (stuck in the kernel's io_uring)",
				s->path, s->ring_inflight, STREAM_STALL_GIVE_UP_MS / 1000);
	case ERR_EOF:
		if (have && st.st_size != s->st0.st_size)
			return rt_error(-ESTALE, "%s: file changed during the load (size %" PRIu64 " -> %" PRIu64 ")",
					s->path, (uint64_t)s->st0.st_size, (uint64_t)st.st_size);
		return rt_error(-ESTALE, "%s: file changed during the load (end of file at offset %" PRIu64 ")",
				s->path, s->err_off);
	default:
		errno = -err;
		return rt_error(err, "%s: streaming failed: %m", s->path);
	}
}

/* Streams reqs from fd (stream.h has the full contract): 0 and *ret filled,
 * or -errno with vram_last_error() set, nothing in flight, nothing left
 * allocated, *ret untouched. */
int stream_file(const char *path, int fd, const struct stream_req *reqs, size_t nreqs,
		const struct stream_opts *o, struct stream_result *ret)
{
	static const struct stream_opts defaults;
	uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
	uint64_t c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	uint64_t p0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	struct stream s = {
		.path = path ? path : "(file)", .have_path = path != NULL, .reqs = reqs, .nreqs = nreqs,
		.o = o ? o : &defaults, .rfd = -1, .own_fd = -1, .bfd = -1, .own_bfd = -1,
	};
	struct stat st1;
	int r;

	if (nreqs && !reqs)
		return rt_error(-EINVAL, "%s: no requests array", s.path);
	if (fstat(fd, &s.st0) < 0) {
		r = -errno;
		return rt_error(r, "%s: %s", s.path, strerror(-r));
	}
	if (!S_ISREG(s.st0.st_mode))
		return rt_error(-EINVAL, "%s: not a regular file", s.path);
	if ((r = validate(&s)) < 0)
		return r;
	if (s.total == 0) {
		/* nothing to read: no fds, no ring */
		s.mode = s.o->io_mode == VRAM_IO_DIRECT ? VRAM_IO_DIRECT : VRAM_IO_BUFFERED;
		s.res.cached = -1;
	} else if ((r = choose_mode(&s, fd)) < 0) {
		goto out;
	}
	s.res.io_mode_used = s.mode;
	/* io_uring cannot read a file in memory without blocking, so it hands
	 * every such read to its io-wq threads: a thread hop per read, for a
	 * memcpy pread does as well, and the one place a ring was seen to
	 * stall for good (STREAM_DEFAULT_STALL_MS) */
	s.uring = !(s.o->flags & STREAM_F_NO_URING) && (!mem_fs(fd) || (s.o->flags & STREAM_F_URING_MEMFS));

	if ((r = plan(&s)) < 0 || (r = staging_setup(&s)) < 0) {
		rt_error(r, "%s: out of memory planning %zu requests", s.path, nreqs);
		goto out;
	}
	if (s.uring && s.nops && ring_setup(&s) < 0) {
		/* io_uring refused (seccomp, io_uring_disabled, old kernel) */
		if (s.ring_up)
			io_uring_queue_exit(&s.ring);
		s.ring_up = s.file_reg = s.bufs_reg = false;
		s.uring = false;
	}
	if (!s.uring)
		s.depth = 1;
	if (!(s.sync_q = calloc(s.depth, sizeof(*s.sync_q)))) {
		r = rt_error(-ENOMEM, "%s: out of memory", s.path);
		goto out;
	}
	s.res.engine = s.uring ? STREAM_ENGINE_URING : STREAM_ENGINE_SYNC;

	run_fdcopies(&s);
	if (!s.err)
		run(&s);
	slots_drain(&s);
	if (s.err) {
		r = finish_error(&s, fd);
		goto out;
	}
	/* the bytes are only good if the file stayed the same throughout */
	if (fstat(fd, &st1) < 0) {
		r = -errno;
		rt_error(r, "%s: %s", s.path, strerror(-r));
		goto out;
	}
	if (st1.st_size != s.st0.st_size) {
		r = rt_error(-ESTALE, "%s: file changed during the load (size %" PRIu64 " -> %" PRIu64 ")",
			     s.path, (uint64_t)s.st0.st_size, (uint64_t)st1.st_size);
		goto out;
	}
	if (st1.st_mtim.tv_sec != s.st0.st_mtim.tv_sec || st1.st_mtim.tv_nsec != s.st0.st_mtim.tv_nsec) {
		r = rt_error(-ESTALE, "%s: file changed during the load (modified)", s.path);
		goto out;
	}
	r = 0;
	if (ret) {
		s.res.bytes = s.delivered;
		s.res.ns = clock_ns(CLOCK_MONOTONIC) - t0;
		s.res.cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
		s.res.proc_cpu_ns = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - p0;
		*ret = s.res;
	}
out:
	stream_free(&s);
	return r;
}
