/* SPDX-License-Identifier: MIT */
/* Helpers of the CUDA suites (tests/testlib-cuda.h). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib-cuda.h"
#include "broker/log.h"
#include "runtime/cuda-copy.h"
#include "testlib.h"

void tc_setup(void)
{
	broker_log_level = -1; /* the broker's log lines are not under test */
	fake_reset(1);
}

void tc_teardown(void)
{
	fake_teardown();
}

struct vram_client *tc_client(int ndev)
{
	struct vram_client *c = calloc(1, sizeof(*c));
	ck_assert_ptr_nonnull(c);
	c->fd = -1;
	c->ndev = (uint32_t)ndev + 1;
	for (int i = 0; i < ndev; i++) {
		struct vram_device_info *d = &c->dev[i];
		d->index = (uint32_t)i;
		d->backend = VRAM_BACKEND_CUDA;
		d->ordinal = i;
		d->granularity = 2 * MiB;
		memcpy(d->uuid, fk.dev[i].uuid, 16);
		snprintf(d->name, sizeof(d->name), "cuda:%d", i);
	}
	c->dev[ndev].index = (uint32_t)ndev;
	c->dev[ndev].backend = VRAM_BACKEND_CPU;
	snprintf(c->dev[ndev].name, sizeof(c->dev[ndev].name), "cpu");
	return c;
}

struct vram_grant *tc_grant(uint32_t device, uint64_t size)
{
	struct vram_grant *g = calloc(1, sizeof(*g));
	ck_assert_ptr_nonnull(g);
	g->id = 42;
	g->size = size;
	g->device = device;
	g->backend = VRAM_BACKEND_CUDA;
	return g;
}

void tc_dev_read(struct vram_client *c, uint32_t device, uint64_t src, void *dst, size_t size)
{
	struct cuda_dev *d;
	ck_assert_int_eq(cuda_dev_get(c, device, &d), 0);
	ck_assert_int_eq(cuda_dev_push(d), 0);
	ck_assert_int_eq(cuda_dev_api(d)->MemcpyDtoH(dst, src, size), CUDA_SUCCESS);
	cuda_dev_pop(d);
	cuda_dev_put(d);
}

void tc_dev_write(struct vram_client *c, uint32_t device, uint64_t dst, const void *src, size_t size)
{
	struct cuda_dev *d;
	ck_assert_int_eq(cuda_dev_get(c, device, &d), 0);
	ck_assert_int_eq(cuda_dev_push(d), 0);
	ck_assert_int_eq(cuda_dev_api(d)->MemcpyHtoD(dst, src, size), CUDA_SUCCESS);
	cuda_dev_pop(d);
	cuda_dev_put(d);
}

/* ---- a broker in this process ------------------------------------------------- */

static void *tc_live_loop(void *arg)
{
	struct tc_live *l = arg;
	while (!atomic_load(&l->stop))
		broker_step(l->b, 20);
	return NULL;
}

void tc_live_init(struct tc_live *l)
{
	memset(l, 0, sizeof(*l));
	l->dir = t_tmpdir();
	ck_assert_ptr_nonnull(l->dir);
	snprintf(l->sock, sizeof(l->sock), "%s/vramd.sock", l->dir);
	broker_config_init(&l->cfg);
	l->cfg.host_pool = 64 * MiB;
	l->cfg.socket_path = l->sock;
}

void tc_live_run(struct tc_live *l)
{
	l->b = broker_new(&l->cfg);
	ck_assert_ptr_nonnull(l->b);
	atomic_store(&l->stop, 0);
	ck_assert_int_eq(pthread_create(&l->th, NULL, tc_live_loop, l), 0);
}

void tc_live_start(struct tc_live *l)
{
	tc_live_init(l);
	tc_live_run(l);
}

void tc_live_halt(struct tc_live *l)
{
	atomic_store(&l->stop, 1);
	pthread_join(l->th, NULL);
	broker_free(l->b);
	l->b = NULL;
}

void tc_live_stop(struct tc_live *l)
{
	tc_live_halt(l);
	t_rmtree(l->dir);
	l->dir = NULL;
}
