/* SPDX-License-Identifier: MIT */
/*
 * stream_bench: reads a file with the streaming engine and prints GB/s and
 * CPU seconds per GB, to tune chunk and depth (docs/streaming.md).
 *
 *   helper-streambench FILE [--mode all|auto|direct|buffered] [--cold|--warm|--both]
 *                      [--dest mirror|packed|staged|memfd] [--tensors N]
 *                      [--chunk SIZE] [--depth N] [--nstaging N] [--repeat N]
 *                      [--sweep] [--no-register] [--sync] [--partial F] [--no-thp]
 *
 * --cold drops the page cache before each run (echo 3 > drop_caches when
 * root, else POSIX_FADV_DONTNEED on the file); --warm reads the file into
 * the cache first.  --dest: mirror = the loader's host layout (one buffer
 * at file offsets, SLACK: reads land in place); packed = host buffers packed
 * at odd addresses without slack (reads bounce through staging); staged =
 * a simulated GPU (memcpy sink).  --tensors N splits the file into N
 * safetensors-like ranges (default: one range).  --sweep: cold DIRECT runs
 * over chunk 1..32 MiB x depth 1..32.  --partial F: cold runs with the
 * first F (0..1) of the file read into the cache first (a file partly
 * cached: where AUTO's threshold comes from).  --no-thp: destination
 * memory without transparent huge pages (as fio's buffers).
 *
 * --dest memfd: the loader's warm case on fresh memory, A/B: each repeat
 * reads the cached file into a fresh memfd mapping (as a cpu-pool grant),
 * once with reads into the mapping and once through the memfd
 * (STREAM_REQ_FD: sendfile), and prints both, with the time to touch every
 * page of the mapping afterwards (what a consumer pays for the second).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "runtime/stream.h"

struct bench {
	const char *path;
	int fd;
	uint64_t size;
	int dest;                /* 0 mirror, 1 packed, 2 staged */
	uint64_t ntensors;
	struct stream_req *reqs;
	size_t nreqs;
	uint8_t *host;           /* mirror/packed destination */
	uint64_t host_size;
	uint8_t *dev;            /* staged destination */
	struct stream_opts o;
	unsigned repeat;
	double partial;          /* cold runs: share of the file cached first */
	int no_thp;              /* destination without transparent huge pages */
};

static int memcpy_copy(void *user, uint64_t dst, const void *src, uint64_t len, uint32_t slot)
{
	memcpy((uint8_t *)user + dst, src, len);
	return 0;
}

static int memcpy_wait(void *user, uint32_t slot)
{
	return 0;
}

static void drop_caches(struct bench *b)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	sync();
	if (fd >= 0) {
		if (write(fd, "3\n", 2) == 2) {
			close(fd);
			return;
		}
		close(fd);
	}
	posix_fadvise(b->fd, 0, 0, POSIX_FADV_DONTNEED);
}

static void warm_prefix(struct bench *b, uint64_t n)
{
	static uint8_t buf[1 << 20];
	for (uint64_t o = 0; o < n && pread(b->fd, buf, sizeof(buf), (off_t)o) > 0; o += sizeof(buf))
		;
}

static void warm(struct bench *b)
{
	warm_prefix(b, b->size);
}

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Requests and destinations for the chosen layout. */
static int setup(struct bench *b)
{
	uint64_t seed = 88172645463325252ull, pos = 0, cur = 0;
	uint64_t n = b->ntensors ? b->ntensors : 1;
	uint64_t mean = b->size / n;

	b->reqs = calloc(n + 1, sizeof(*b->reqs));
	if (!b->reqs)
		return -ENOMEM;
	/* a small "header", then ranges of random length around the mean */
	if (b->ntensors > 1)
		pos = 8 + xs(&seed) % 4000;
	for (uint64_t i = 0; i < n && pos < b->size; i++) {
		uint64_t len = (i == n - 1 || mean < 2) ? b->size - pos : 1 + xs(&seed) % (2 * mean);
		if (len > b->size - pos)
			len = b->size - pos;
		b->reqs[b->nreqs++] = (struct stream_req){ .file_off = pos, .len = len };
		pos += len;
	}
	b->host_size = (b->size + 64 * b->nreqs + 2 * STREAM_ALIGN + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN;
	void *p = mmap(NULL, b->host_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	madvise(p, b->host_size, b->no_thp ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
	memset(p, 0, b->host_size);   /* a grant's memory is mapped and populated */
	if (b->dest == 2) {
		b->dev = p;
	} else {
		b->host = p;
	}
	for (size_t i = 0; i < b->nreqs; i++) {
		struct stream_req *r = &b->reqs[i];
		switch (b->dest) {
		case 0:
			r->kind = STREAM_DST_HOST;
			r->flags = STREAM_REQ_SLACK;
			r->dst = b->host + r->file_off;
			break;
		case 1:
			r->kind = STREAM_DST_HOST;
			cur += 1 + cur % 7;      /* odd addresses */
			r->dst = b->host + cur;
			cur += r->len;
			break;
		default:
			r->kind = STREAM_DST_STAGED;
			r->dst_addr = r->file_off;
			break;
		}
	}
	return 0;
}

static const char *mode_name(uint32_t m)
{
	return m == VRAM_IO_DIRECT ? "direct" : m == VRAM_IO_BUFFERED ? "buffered" : "auto";
}

static int run_one(struct bench *b, uint32_t mode, int cold, int quiet, double *ret_gbs)
{
	struct stream_opts o = b->o;
	struct stream_sink sink = { .copy = memcpy_copy, .wait = memcpy_wait, .user = b->dev };
	struct stream_result res;
	double best = 0;

	o.io_mode = mode;
	o.sink = &sink;
	for (unsigned k = 0; k < b->repeat; k++) {
		if (cold) {
			drop_caches(b);
			if (b->partial > 0)
				warm_prefix(b, (uint64_t)(b->partial * (double)b->size));
		} else
			warm(b);
		int r = stream_file(b->path, b->fd, b->reqs, b->nreqs, &o, &res);
		if (r < 0) {
			fprintf(stderr, "stream_bench: %s\n", vram_last_error());
			return r;
		}
		double s = (double)res.ns / 1e9, gb = (double)res.bytes / 1e9;
		double gbs = gb / s;
		if (gbs > best)
			best = gbs;
		if (!quiet)
			printf("%-8s %-5s %-6s %-8s chunk %3" PRIu64 " MiB depth %3u  %6.2f GB/s  cpu %.3f s/GB (thread) %.3f s/GB (process)  read %.2f GB bounced %.2f GB buffered %.2f GB reads %" PRIu64 " cached %.2f engine %s\n",
			       mode_name(mode), cold ? "cold" : "warm",
			       b->dest == 0 ? "mirror" : b->dest == 1 ? "packed" : "staged",
			       mode_name(res.io_mode_used),
			       (uint64_t)((o.chunk ? o.chunk : STREAM_DEFAULT_CHUNK) >> 20),
			       o.depth ? o.depth : STREAM_DEFAULT_DEPTH, gbs,
			       (double)res.cpu_ns / 1e9 / gb, (double)res.proc_cpu_ns / 1e9 / gb,
			       (double)res.bytes_read / 1e9, (double)res.bytes_bounced / 1e9,
			       (double)res.bytes_buffered / 1e9, res.reads,
			       res.cached, res.engine == STREAM_ENGINE_URING ? "io_uring" : "pread");
		fflush(stdout);
	}
	if (ret_gbs)
		*ret_gbs = best;
	return 0;
}

static double mono_s(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* --dest memfd: see the top of the file. */
static int memfd_ab(struct bench *b)
{
	uint64_t msize = (b->size + 2 * STREAM_ALIGN) / STREAM_ALIGN * STREAM_ALIGN;
	double gb = (double)b->size / 1e9;
	for (unsigned k = 0; k < b->repeat; k++)
		for (int usefd = 0; usefd < 2; usefd++) {
			int m = memfd_create("streambench", MFD_CLOEXEC);
			if (m < 0 || ftruncate(m, (off_t)msize) < 0)
				return -errno;
			uint8_t *p = mmap(NULL, msize, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
			if (p == MAP_FAILED) {
				close(m);
				return -ENOMEM;
			}
			struct stream_req r = { .file_off = 0, .len = b->size, .dst = p, .kind = STREAM_DST_HOST,
						.flags = STREAM_REQ_SLACK | (usefd ? STREAM_REQ_FD : 0), .dst_fd = m };
			struct stream_opts o = b->o;
			struct stream_result res;
			o.io_mode = VRAM_IO_BUFFERED;
			warm(b);
			double t0 = mono_s(CLOCK_MONOTONIC), c0 = mono_s(CLOCK_PROCESS_CPUTIME_ID);
			int rc = stream_file(b->path, b->fd, &r, 1, &o, &res);
			double t1 = mono_s(CLOCK_MONOTONIC), c1 = mono_s(CLOCK_PROCESS_CPUTIME_ID);
			volatile uint8_t sum = 0;
			for (uint64_t i = 0; rc == 0 && i < b->size; i += 4096)
				sum += p[i];
			double t2 = mono_s(CLOCK_MONOTONIC);
			munmap(p, msize);
			close(m);
			if (rc < 0) {
				fprintf(stderr, "stream_bench: %s\n", vram_last_error());
				return rc;
			}
			printf("warm -> fresh memfd, %-22s %6.2f GB/s  cpu %.3f s/GB  then touching every page %.3f s/GB\n",
			       usefd ? "through the fd (sendfile)" : "read into the mapping", gb / (t1 - t0),
			       (c1 - c0) / gb, (t2 - t1) / gb);
			fflush(stdout);
		}
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: helper-streambench FILE [--mode all|auto|direct|buffered] [--cold|--warm|--both]\n"
		"       [--dest mirror|packed|staged|memfd] [--tensors N] [--chunk SIZE] [--depth N]\n"
		"       [--nstaging N] [--repeat N] [--sweep] [--no-register] [--sync] [--partial F] [--no-thp]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct bench b = { .repeat = 1 };
	const char *mode = "all";
	int cold = 1, hot = 0, sweep = 0;
	struct stat st;

	if (argc < 2)
		usage();
	b.path = argv[1];
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t x;
		if (!strcmp(a, "--cold")) { cold = 1; hot = 0; }
		else if (!strcmp(a, "--warm")) { cold = 0; hot = 1; }
		else if (!strcmp(a, "--both")) { cold = 1; hot = 1; }
		else if (!strcmp(a, "--sweep")) sweep = 1;
		else if (!strcmp(a, "--no-register")) b.o.flags |= STREAM_F_NO_REGISTER;
		else if (!strcmp(a, "--sync")) b.o.flags |= STREAM_F_NO_URING;
		else if (!strcmp(a, "--no-thp")) b.no_thp = 1;
		else if (!v) usage();
		else if (!strcmp(a, "--mode")) { mode = v; i++; }
		else if (!strcmp(a, "--dest")) {
			b.dest = !strcmp(v, "mirror") ? 0 : !strcmp(v, "packed") ? 1 : !strcmp(v, "staged") ? 2 :
				 !strcmp(v, "memfd") ? 3 : -1;
			if (b.dest < 0)
				usage();
			i++;
		} else if (!strcmp(a, "--chunk")) {
			if (size_parse(v, &x) < 0)
				usage();
			b.o.chunk = x;
			i++;
		} else if (!strcmp(a, "--tensors")) { b.ntensors = strtoull(v, NULL, 0); i++; }
		else if (!strcmp(a, "--depth")) { b.o.depth = (uint32_t)strtoul(v, NULL, 0); i++; }
		else if (!strcmp(a, "--nstaging")) { b.o.nstaging = (uint32_t)strtoul(v, NULL, 0); i++; }
		else if (!strcmp(a, "--partial")) { b.partial = strtod(v, NULL); i++; }
		else if (!strcmp(a, "--repeat")) { b.repeat = (unsigned)strtoul(v, NULL, 0); i++; }
		else usage();
	}
	b.fd = open(b.path, O_RDONLY | O_CLOEXEC);
	if (b.fd < 0 || fstat(b.fd, &st) < 0) {
		fprintf(stderr, "stream_bench: %s: %s\n", b.path, strerror(errno));
		return 1;
	}
	b.size = (uint64_t)st.st_size;
	if (b.dest == 3)
		return memfd_ab(&b) < 0;
	if (setup(&b) < 0) {
		fprintf(stderr, "stream_bench: out of memory\n");
		return 1;
	}
	printf("# %s: %.2f GB, %zu ranges, dest %s\n", b.path, (double)b.size / 1e9, b.nreqs,
	       b.dest == 0 ? "mirror" : b.dest == 1 ? "packed" : "staged");

	if (sweep) {
		static const unsigned chunks[] = { 1, 2, 4, 8, 16, 32 };
		static const unsigned depths[] = { 1, 2, 4, 8, 16, 32 };
		printf("# cold DIRECT GB/s (best of %u); rows chunk MiB, columns depth\n%8s", b.repeat, "");
		for (size_t j = 0; j < sizeof(depths) / sizeof(depths[0]); j++)
			printf(" %7u", depths[j]);
		printf("\n");
		for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
			printf("%8u", chunks[i]);
			for (size_t j = 0; j < sizeof(depths) / sizeof(depths[0]); j++) {
				double g = 0;
				b.o.chunk = (uint64_t)chunks[i] << 20;
				b.o.depth = depths[j];
				if (run_one(&b, VRAM_IO_DIRECT, 1, 1, &g) < 0)
					return 1;
				printf(" %7.2f", g);
				fflush(stdout);
			}
			printf("\n");
		}
		return 0;
	}

	static const uint32_t all[] = { VRAM_IO_DIRECT, VRAM_IO_BUFFERED, VRAM_IO_AUTO };
	for (int pass = 0; pass < 2; pass++) {
		int c = pass == 0;
		if ((c && !cold) || (!c && !hot))
			continue;
		for (size_t k = 0; k < 3; k++) {
			if (strcmp(mode, "all") && strcmp(mode, mode_name(all[k])))
				continue;
			if (run_one(&b, all[k], c, 0, NULL) < 0)
				return 1;
		}
	}
	return 0;
}
