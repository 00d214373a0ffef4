/* SPDX-License-Identifier: MIT */
/*
 * What the CUDA suites (test-cuda-broker, test-cuda-runtime) share besides
 * the fake driver (tests/fake-cuda.h): their fixture, hand-made clients
 * and grants that know the fake's devices, device memory read and written
 * through the runtime, and a broker served by a thread of the test process
 * (in-process, so that it runs on the same fake driver).
 */
#ifndef VRAM_TESTS_TESTLIB_CUDA_H
#define VRAM_TESTS_TESTLIB_CUDA_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/broker.h"
#include "runtime/client.h"
#include "fake-cuda.h"

/* The checked fixture: the broker's log lines off (they are not under
 * test) and a fake with one device. */
void tc_setup(void);

/* The fixture's end (fake_teardown). */
void tc_teardown(void);

/* A hand-made client that knows the fake's first ndev devices as a broker
 * would describe them, cuda:0..ndev-1 and then cpu (runtime-only tests, no
 * socket); free() it. */
struct vram_client *tc_client(int ndev);

/* A CUDA grant record of size bytes on the client's device index device,
 * nothing imported yet; free() it. */
struct vram_grant *tc_grant(uint32_t device, uint64_t size);

/* Reads (writes) size bytes of device memory at src (dst) on the client's
 * device through the runtime's device handle and the driver's copies;
 * fails the test if any of it fails. */
void tc_dev_read(struct vram_client *c, uint32_t device, uint64_t src, void *dst, size_t size);
void tc_dev_write(struct vram_client *c, uint32_t device, uint64_t dst, const void *src, size_t size);

/* A broker in this process, served by a thread. */
struct tc_live {
	struct broker *b;
	pthread_t th;
	atomic_int stop;
	char *dir;               /* a temporary directory, the socket in it */
	char sock[256];
	struct broker_config cfg;
};

/* A temporary directory and the config of a broker on a socket in it
 * (64 MiB of host pool); nothing started, no thread (a test may fork). */
void tc_live_init(struct tc_live *l);

/* The broker of l->cfg, served by a thread. */
void tc_live_run(struct tc_live *l);

/* tc_live_init, then tc_live_run. */
void tc_live_start(struct tc_live *l);

/* The broker goes away: its loop stops and it is freed as at SIGTERM (its
 * clients keep their memory, the fd store keeps its fds); the process's
 * driver state, which a crash would also take, goes with its handles.  The
 * directory stays (tc_live_run starts the next broker there). */
void tc_live_halt(struct tc_live *l);

/* tc_live_halt, and the directory removed. */
void tc_live_stop(struct tc_live *l);

#endif
