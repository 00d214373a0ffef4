/* SPDX-License-Identifier: MIT */
/*
 * Filling shared copies (cache.h): the broker reads the checkpoint through
 * the fd the client passed, in FILL_THREADS threads of its own, pieces of
 * up to FILL_PIECE bytes each.  Window runs land straight in the copy's
 * mapping (the file's aligned superset, as the loader lays them out; with
 * O_DIRECT when the client passed such an fd); solo runs go through a
 * bounce buffer and are converted there when asked (kernels/ C
 * references, the same bits as the loader's).  Memory the broker cannot
 * map (CUDA) is written from a bounce buffer through the pool's copy_write.
 * The loop hears of progress and of the end through b->cache_evfd.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/cache-int.h"
#include "common/cleanup.h"
#include "common/util.h"
#include "kernels/kernels.h"

#define FILL_THREADS 4
#define FILL_PIECE (8u << 20)
#define FILL_SIGNAL (64u << 20)   /* a thread wakes the loop every so many bytes */

struct piece {
	uint32_t run;
	uint64_t file_off, len;      /* what to read */
	uint64_t dst;                /* where its first byte goes in the copy */
	bool solo;
};

struct fill {
	struct copy *cp;
	int evfd;
	int fd;
	bool direct;                 /* fd is O_DIRECT: aligned reads only */
	uint8_t *map;                /* the copy, mapped read-write; NULL: copy_write */
	struct piece *pieces;
	uint32_t npieces;
	uint64_t total;
	_Atomic uint32_t next;
	_Atomic uint32_t active;
	_Atomic int err;
	pthread_mutex_t lock;        /* why */
	pthread_t th[FILL_THREADS];
	uint32_t nth;
	bool joined;
};

static void fill_fail(struct fill *f, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The first error wins; the threads stop at their next piece. */
static void fill_fail(struct fill *f, int err, const char *fmt, ...)
{
	int zero = 0;
	pthread_mutex_lock(&f->lock);
	if (atomic_compare_exchange_strong(&f->err, &zero, err)) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(f->cp->why, sizeof(f->cp->why), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&f->lock);
}

static void wake(struct fill *f)
{
	uint64_t one = 1;
	if (write(f->evfd, &one, sizeof(one)) < 0) {
		/* the counter is full: the loop has been told already */
	}
}

/* Reads [off, off + len) into buf (its bytes past EOF stay as they were):
 * aligned to the page on an O_DIRECT fd (buf then holds the aligned
 * superset from off rounded down).  Returns the bytes of buf that hold file
 * bytes, or -errno. */
static int64_t read_range(struct fill *f, uint8_t *buf, uint64_t off, uint64_t len)
{
	uint64_t a = f->direct ? off / LAYOUT_PAGE * LAYOUT_PAGE : off;
	uint64_t e = f->direct ? (off + len + LAYOUT_PAGE - 1) / LAYOUT_PAGE * LAYOUT_PAGE : off + len;
	uint64_t done = 0;
	while (a + done < e) {
		ssize_t n = pread(f->fd, buf + done, (size_t)(e - a - done), (off_t)(a + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break; /* end of file: only an aligned superset runs past it */
		done += (uint64_t)n;
	}
	if (a + done < off + len)
		return -EIO; /* the file is shorter than when it was opened */
	return (int64_t)done;
}

/* A window piece: the run's aligned superset, straight into the mapping
 * when there is one. */
static int do_window(struct fill *f, const struct piece *pc, uint8_t *bounce)
{
	struct pool *p = f->cp->pool;
	const char *why = "";
	uint8_t *dst = f->map ? f->map + pc->dst : bounce;
	int64_t n = read_range(f, dst, pc->file_off, pc->len);
	if (n < 0)
		return (int)n;
	if (f->map)
		return 0;
	int r = p->ops->copy_write(p, f->cp->handle, pc->dst, bounce, pc->len, &why);
	if (r < 0)
		fill_fail(f, r, "%s: %s", p->name, why);
	return r;
}

/* A solo piece (whole elements of one tensor): read into the bounce
 * buffer, converted when the run asks, then to its place. */
static int do_solo(struct fill *f, const struct piece *pc, uint8_t *bounce, uint8_t *conv)
{
	const struct vramd_share_run *ru = &f->cp->key.runs[pc->run];
	struct pool *p = f->cp->pool;
	const char *why = "";
	int64_t n = read_range(f, bounce, pc->file_off, pc->len);
	if (n < 0)
		return (int)n;
	const uint8_t *src = bounce + (f->direct ? pc->file_off % LAYOUT_PAGE : 0);
	uint64_t out = pc->len;
	uint8_t *dst = f->map ? f->map + pc->dst : conv;
	if (ru->src_dtype != ru->dst_dtype) {
		uint64_t elems = pc->len / copy_dtype_size(ru->src_dtype);
		out = elems * copy_dtype_size(ru->dst_dtype);
		int r = vk_cast(src, ru->src_dtype, dst, ru->dst_dtype, elems);
		if (r < 0) {
			fill_fail(f, r, "converting a tensor at %llu from dtype %u to %u failed",
				  (unsigned long long)pc->file_off, ru->src_dtype, ru->dst_dtype);
			return r;
		}
	} else if (f->map) {
		memcpy(dst, src, out);
	} else {
		dst = (uint8_t *)src;
	}
	if (f->map)
		return 0;
	int r = p->ops->copy_write(p, f->cp->handle, pc->dst, dst, out, &why);
	if (r < 0)
		fill_fail(f, r, "%s: %s", p->name, why);
	return r;
}

static void *fill_thread(void *arg)
{
	struct fill *f = arg;
	struct copy *cp = f->cp;
	uint64_t since = 0;
	/* a piece's aligned superset, and its conversion (up to 4x wider);
	 * mapped, not malloc'ed, so that they go back to the system after
	 * the fill instead of staying in a thread's malloc arena */
	size_t bl = FILL_PIECE + 2 * LAYOUT_PAGE, cl = 4 * (size_t)FILL_PIECE;
	uint8_t *bounce = mmap(NULL, bl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *conv = mmap(NULL, cl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (bounce == MAP_FAILED || conv == MAP_FAILED)
		fill_fail(f, -ENOMEM, "broker out of memory");
	while (bounce != MAP_FAILED && conv != MAP_FAILED && !atomic_load(&f->err) && !atomic_load(&cp->cancel)) {
		uint32_t i = atomic_fetch_add(&f->next, 1);
		if (i >= f->npieces)
			break;
		const struct piece *pc = &f->pieces[i];
		int r = pc->solo ? do_solo(f, pc, bounce, conv) : do_window(f, pc, bounce);
		if (r < 0) {
			fill_fail(f, r, "reading %s at %llu: %s", cp->path, (unsigned long long)pc->file_off,
				  strerror(-r));
			break;
		}
		atomic_fetch_add(&cp->filled, pc->len);
		if ((since += pc->len) >= FILL_SIGNAL) {
			since = 0;
			wake(f);
		}
	}
	if (bounce != MAP_FAILED)
		munmap(bounce, bl);
	if (conv != MAP_FAILED)
		munmap(conv, cl);
	if (atomic_fetch_sub(&f->active, 1) == 1) {
		/* the last thread out tells the loop */
		if (!atomic_load(&f->err) && atomic_load(&cp->cancel))
			fill_fail(f, -ECANCELED, "abandoned: nobody waits for it any more");
		cp->error = atomic_load(&f->err);
		atomic_store(&cp->done, 1);
		wake(f);
	}
	return NULL;
}

/* Cuts the runs into pieces of up to FILL_PIECE bytes (whole pages for
 * window runs, whole elements for solo ones).  0 or -ENOMEM. */
static int make_pieces(struct fill *f)
{
	struct copy *cp = f->cp;
	uint32_t cap = 0;
	for (uint32_t i = 0; i < cp->key.nruns; i++)
		cap += (uint32_t)(cp->key.runs[i].len / FILL_PIECE) + 2;
	if (!(f->pieces = calloc(cap, sizeof(*f->pieces))))
		return -ENOMEM;
	for (uint32_t i = 0; i < cp->key.nruns; i++) {
		const struct vramd_share_run *ru = &cp->key.runs[i];
		bool solo = ru->flags & VRAMD_SHARE_RUN_SOLO;
		uint64_t start = solo ? ru->file_off : ru->file_off / LAYOUT_PAGE * LAYOUT_PAGE;
		uint64_t end = ru->file_off + ru->len;
		uint64_t step = FILL_PIECE;
		if (solo && ru->src_dtype != ru->dst_dtype)
			step = FILL_PIECE / copy_dtype_size(ru->src_dtype) * copy_dtype_size(ru->src_dtype);
		for (uint64_t o = start; o < end; o += step) {
			uint64_t len = MIN(step, end - o);
			/* window runs: the region holds the superset from start;
			 * solo runs: the tensor (converted: scaled by element) */
			uint64_t dst = cp->regions[i] + (o - start);
			if (solo && ru->src_dtype != ru->dst_dtype)
				dst = cp->regions[i] + (o - start) / copy_dtype_size(ru->src_dtype) *
							       copy_dtype_size(ru->dst_dtype);
			f->pieces[f->npieces++] = (struct piece){ i, o, len, dst, solo };
			f->total += len;
		}
	}
	return 0;
}

/* The copy's memory, mapped for filling when the pool allows. */
static int fill_memory(struct fill *f)
{
	struct copy *cp = f->cp;
	struct pool *p = cp->pool;
	const char *why = "";
	int r = p->ops->copy_create(p, cp->size, &cp->fd, &cp->handle, &why);
	if (r < 0) {
		snprintf(cp->why, sizeof(cp->why), "%s: %s", p->name, why);
		return r;
	}
	if (p->ops->copy_map && !(f->map = p->ops->copy_map(p, cp->handle, cp->fd, cp->size))) {
		snprintf(cp->why, sizeof(cp->why), "%s: mapping the copy failed", p->name);
		return -ENOMEM;
	}
	return 0;
}

int fill_start(struct broker *b, struct copy *cp, int fd)
{
	struct fill *f = calloc(1, sizeof(*f));
	_cleanup_free_ struct layout_run *lr = calloc(cp->key.nruns, sizeof(*lr));
	cp->regions = calloc(cp->key.nruns, sizeof(*cp->regions));
	if (!f || !lr || !cp->regions) {
		free(f);
		snprintf(cp->why, sizeof(cp->why), "broker out of memory");
		return -ENOMEM;
	}
	cp->fill = f;
	f->cp = cp;
	f->evfd = b->cache_evfd;
	pthread_mutex_init(&f->lock, NULL);
	for (uint32_t i = 0; i < cp->key.nruns; i++)
		copy_run_layout(&cp->key.runs[i], &lr[i]);
	layout_regions(lr, cp->key.nruns, cp->regions);
	f->fd = cp->file_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	int fl = f->fd >= 0 ? fcntl(f->fd, F_GETFL) : -1;
	f->direct = fl >= 0 && (fl & O_DIRECT);
	int r = f->fd < 0 ? -errno : make_pieces(f);
	if (r == 0)
		r = fill_memory(f);
	if (r < 0) {
		if (!cp->why[0])
			snprintf(cp->why, sizeof(cp->why), "starting the fill failed: %s", strerror(-r));
		return r;
	}
	cp->state = COPY_FILLING;
	uint32_t n = MIN(FILL_THREADS, MAX(f->npieces, 1u));
	atomic_store(&f->active, n);
	for (f->nth = 0; f->nth < n; f->nth++)
		if (pthread_create(&f->th[f->nth], NULL, fill_thread, f) != 0)
			break;
	if (f->nth < n) {
		/* fewer threads: the ones that run do the work */
		atomic_fetch_sub(&f->active, n - f->nth);
		if (!f->nth) {
			snprintf(cp->why, sizeof(cp->why), "no fill thread could be started");
			cp->state = COPY_FAILED;
			return -EAGAIN;
		}
	}
	return 0;
}

uint64_t fill_total(const struct copy *cp)
{
	const struct fill *f = cp->fill;
	return f ? f->total : cp->size;
}

void fill_join(struct copy *cp)
{
	struct fill *f = cp->fill;
	if (!f || f->joined)
		return;
	if (!atomic_load(&cp->done))
		atomic_store(&cp->cancel, 1);
	for (uint32_t i = 0; i < f->nth; i++)
		pthread_join(f->th[i], NULL);
	f->joined = true;
}

int fill_finish(struct broker *b, struct copy *cp)
{
	struct fill *f = cp->fill;
	struct pool *p = cp->pool;
	struct stat st;
	struct copy_key now = { 0 };
	const char *why = "";
	int r = 0;
	if (fstat(f->fd, &st) < 0)
		r = -errno;
	copy_identity(&st, &now);
	if (r == 0 && (now.st_dev != cp->key.st_dev || now.st_ino != cp->key.st_ino || now.size != cp->key.size ||
		       now.mtime_ns != cp->key.mtime_ns || now.ctime_ns != cp->key.ctime_ns)) {
		snprintf(cp->why, sizeof(cp->why), "%.100s changed while it was being read: the copy is dropped", cp->path);
		r = -ESTALE;
	}
	if (f->map)
		munmap(f->map, cp->size);
	f->map = NULL;
	if (r == 0 && (r = p->ops->copy_seal(p, cp->handle, cp->fd, &cp->ro_fd, &why)) < 0)
		snprintf(cp->why, sizeof(cp->why), "%s: %s", p->name, why);
	close(cp->file_fd);
	cp->file_fd = -1;
	fill_free(cp);
	return r;
}

void fill_free(struct copy *cp)
{
	struct fill *f = cp->fill;
	if (!f)
		return;
	fill_join(cp);
	if (f->map)
		munmap(f->map, cp->size);
	pthread_mutex_destroy(&f->lock);
	free(f->pieces);
	free(f);
	cp->fill = NULL;
}
