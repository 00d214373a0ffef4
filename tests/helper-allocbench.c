/* SPDX-License-Identifier: MIT */
/*
 * ALLOC round trips for make bench (scripts/bench-load.sh):
 *
 *   helper-allocbench SOCKET DEVICE SIZE N
 *
 * N times: waits (untimed) until DEVICE's ready reserve is full (the refill
 * idle: what is timed is the ALLOC, not the refill beside it), ALLOCs SIZE
 * (timed: request to mapped grant), then FREEs it (untimed); a grant
 * the reserve served is a hit (its hit counter moved), else a miss.  Then N
 * ALLOC+FREE round trips of one granule (timed together).  Prints one line:
 *
 *   HITS MISSES HIT_P50_US HIT_P99_US HIT_MAX_US SMALL_P50_US SMALL_P99_US REFILL_GBPS
 *
 * REFILL_GBPS: bytes the reserve was refilled with per second spent waiting
 * for it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "runtime/vram.h"

/* "Full": the reserve leaves out pieces too small to be worth making
 * (under 8 MiB) when its blocks do not add up to its size. */
#define FULL_SLACK (16ull << 20)

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The p-th percentile (0..100) of n sorted values. */
static double pct(const uint64_t *v, size_t n, double p)
{
	if (!n)
		return 0;
	size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
	return (double)v[i < n ? i : n - 1] / 1000.0;
}

static int status_of(vram_client *c, uint32_t dev, struct vram_device_info *ret)
{
	struct vram_status *s;
	int r = vram_get_status(c, &s);
	if (r < 0)
		return r;
	if (dev >= s->ndevices) {
		vram_status_free(s);
		return -ENODEV;
	}
	*ret = s->devices[dev];
	vram_status_free(s);
	return 0;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { 0, ms * 1000000L };
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	uint64_t size;
	if (argc != 5 || size_parse(argv[3], &size) < 0 || atoi(argv[4]) <= 0) {
		fprintf(stderr, "usage: helper-allocbench SOCKET DEVICE SIZE N\n");
		return 2;
	}
	size_t n = (size_t)atoi(argv[4]), hits = 0, misses = 0;
	vram_client *c;
	if (vram_connect(argv[1], "allocbench", &c) < 0) {
		fprintf(stderr, "%s\n", vram_last_error());
		return 1;
	}
	int dev = vram_device_find(c, argv[2]);
	uint64_t *hit_ns = calloc(n, sizeof(*hit_ns)), *small_ns = calloc(n, sizeof(*small_ns));
	uint64_t wait_ns = 0, refilled = 0;
	struct vram_device_info a, b;
	if (dev < 0 || !hit_ns || !small_ns) {
		fprintf(stderr, "no device %s\n", argv[2]);
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t w0 = now_ns();
		if (status_of(c, (uint32_t)dev, &a) < 0)
			return 1;
		uint64_t r0 = a.ready_refilled;
		for (int k = 0; k < 60000 && a.ready + FULL_SLACK < a.ready_target && a.ready_target >= size; k++) {
			sleep_ms(1);
			if (status_of(c, (uint32_t)dev, &a) < 0)
				return 1;
		}
		wait_ns += now_ns() - w0;
		refilled += a.ready_refilled - r0;
		vram_grant *g;
		uint64_t t0 = now_ns();
		if (vram_alloc(c, (uint32_t)dev, size, 0, &g) < 0) {
			fprintf(stderr, "%s\n", vram_last_error());
			return 1;
		}
		uint64_t t = now_ns() - t0;
		if (status_of(c, (uint32_t)dev, &b) < 0 || vram_free(c, g) < 0)
			return 1;
		if (b.ready_hits > a.ready_hits)
			hit_ns[hits++] = t;
		else
			misses++;
	}
	uint64_t gran = a.granularity ? a.granularity : 2u << 20;
	for (size_t i = 0; i < n; i++) {
		vram_grant *g;
		uint64_t t0 = now_ns();
		if (vram_alloc(c, (uint32_t)dev, gran, 0, &g) < 0 || vram_free(c, g) < 0) {
			fprintf(stderr, "%s\n", vram_last_error());
			return 1;
		}
		small_ns[i] = now_ns() - t0;
	}
	qsort(hit_ns, hits, sizeof(*hit_ns), cmp_u64);
	qsort(small_ns, n, sizeof(*small_ns), cmp_u64);
	printf("%zu %zu %.1f %.1f %.1f %.1f %.1f %.3f\n", hits, misses, pct(hit_ns, hits, 50), pct(hit_ns, hits, 99),
	       hits ? (double)hit_ns[hits - 1] / 1000.0 : 0.0, pct(small_ns, n, 50), pct(small_ns, n, 99),
	       wait_ns ? (double)refilled / ((double)wait_ns / 1e9) / 1e9 : 0.0);
	free(hit_ns);
	free(small_ns);
	vram_close(c);
	return 0;
}
