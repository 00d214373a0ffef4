/* SPDX-License-Identifier: MIT */
/* A test client that holds reclaimable grants and answers RECLAIM by
 * freeing them, from a thread that dispatches its connection. */
#ifndef VRAM_TESTLIB_HOLDER_H
#define VRAM_TESTLIB_HOLDER_H

#include <check.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#include "runtime/vram.h"

struct holder {
	vram_client *c;
	vram_grant *g[64];
	int n;
	atomic_int stop;
	atomic_int calls;
	pthread_t th;
};

/* Connects h as "holder" to sock and allocates n reclaimable grants of
 * 8 MiB on device 0. */
static inline void holder_fill(struct holder *h, const char *sock, int n)
{
	ck_assert_int_eq(vram_connect(sock, "holder", &h->c), 0);
	for (h->n = 0; h->n < n; h->n++)
		ck_assert_int_eq(vram_alloc(h->c, 0, 8ull << 20, VRAM_ALLOC_RECLAIMABLE, &h->g[h->n]), 0);
}

/* vram_reclaim_fn: frees the newest grants until bytes are freed. */
static inline uint64_t give_back(void *user, uint32_t device, uint64_t bytes, uint64_t deadline_ms)
{
	struct holder *h = user;
	uint64_t freed = 0;
	atomic_fetch_add(&h->calls, 1);
	while (freed < bytes && h->n > 0) {
		vram_grant *g = h->g[--h->n];
		freed += vram_grant_size(g);
		vram_free(h->c, g);
	}
	return freed;
}

/* The runtime's side of reclaim: whoever owns the connection dispatches. */
static inline void *dispatcher(void *arg)
{
	struct holder *h = arg;
	while (!atomic_load(&h->stop)) {
		struct pollfd p = { .fd = vram_client_fd(h->c), .events = POLLIN };
		if (poll(&p, 1, 20) > 0)
			vram_dispatch(h->c);
	}
	return NULL;
}

#endif
