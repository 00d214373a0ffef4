/* SPDX-License-Identifier: MIT */
/*
 * helper-gputest: the client side of scripts/check-gpu.sh, run against a
 * real vramd on real GPUs.  One subcommand per check; exit 0 pass, 1 fail,
 * 2 usage, 77 skip (no driver, no usable device).
 *
 *   probe                      driver and devices as this process sees them
 *   devices                    the broker lists every usable GPU, correctly
 *   rw                         grant, import, zero on arrival, write/read back
 *   stale                      a new grant never holds an old grant's bytes
 *   fill / zero                the same across processes (fill, exit; zero)
 *   copy                       copier, sink and pinning on a cpu-pool grant
 *   hold                       take grants, print "ready", wait to be killed
 *   meminfo                    free device memory seen from this process
 *   expect-empty               no grants, no other clients, memory returned
 *   uuid                       the device's UUID as CUDA_VISIBLE_DEVICES takes it
 *   expect-invisible           importing a device hidden from us fails cleanly
 *
 * Options: --socket PATH, --device NAME (default: every CUDA device), --size
 * SIZE, --count N, --baseline BYTES, --timeout-ms N, --no-free.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/cuda-api.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
#include "runtime/vram.h"

#define MiB (1ull << 20)
#define CHUNK (16 * MiB)

static const char *opt_socket;
static const char *opt_device;
static uint64_t opt_size = 64 * MiB + 1;
static unsigned opt_count = 4;
static uint64_t opt_baseline;
static int opt_timeout_ms = 15000;
static int opt_no_free;

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;
	fputs("helper-gputest: FAIL: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

static int skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	return 77;
}

static double now_s(void)
{
	return (double)now_ns() / 1e9;
}

static uint64_t pattern(uint64_t off, uint64_t seed)
{
	return (off / 8 + 1) * 0x9e3779b97f4a7c15ull ^ seed;
}

static void fill_pattern(void *buf, uint64_t base, size_t n, uint64_t seed)
{
	uint64_t *w = buf;
	for (size_t i = 0; i < n / 8; i++)
		w[i] = pattern(base + i * 8, seed);
}

/* Index of the first word that differs from the pattern, or -1. */
static long check_pattern(const void *buf, uint64_t base, size_t n, uint64_t seed)
{
	const uint64_t *w = buf;
	for (size_t i = 0; i < n / 8; i++)
		if (w[i] != pattern(base + i * 8, seed))
			return (long)i;
	return -1;
}

/* ======================================================================
 * Device access through the runtime's handle (its primary context)
 * ====================================================================== */

struct devio {
	struct vram_cuda_dev *d;
	const struct cuda_api *cu;
};

static int devio_open(vram_client *c, uint32_t dev, struct devio *io)
{
	int r = vram_cuda_dev_get(c, dev, &io->d);
	if (r < 0)
		return fail("%s: device handle: %s", c->dev[dev].name, vram_last_error());
	io->cu = vram_cuda_dev_api(io->d);
	if (vram_cuda_dev_push(io->d) < 0) {
		vram_cuda_dev_put(io->d);
		return fail("%s: %s", c->dev[dev].name, vram_last_error());
	}
	return 0;
}

static void devio_close(struct devio *io)
{
	vram_cuda_dev_pop(io->d);
	vram_cuda_dev_put(io->d);
}

static int cu_check(const struct devio *io, CUresult cr, const char *what)
{
	char e[160];
	if (cr == CUDA_SUCCESS)
		return 0;
	return fail("%s: %s", what, cuda_api_strerror(io->cu, cr, e, sizeof(e)));
}

/* Reads the grant back in chunks; fails unless every byte is zero. */
static int expect_zero(const struct devio *io, const vram_grant *g, const char *what)
{
	char *buf = malloc(CHUNK);
	if (!buf)
		return fail("out of memory");
	for (uint64_t off = 0; off < g->size; off += CHUNK) {
		size_t n = (size_t)MIN(CHUNK, g->size - off);
		if (cu_check(io, io->cu->MemcpyDtoH(buf, g->dptr + off, n), "cuMemcpyDtoH")) {
			free(buf);
			return 1;
		}
		if (!mem_is_zero(buf, n)) {
			size_t i = 0;
			while (!buf[i])
				i++;
			unsigned char v = (unsigned char)buf[i];
			free(buf);
			return fail("%s: grant %" PRIu64 " byte %" PRIu64 " is 0x%02x, not zero", what, g->id, off + i, v);
		}
	}
	free(buf);
	return 0;
}

static int write_pattern(const struct devio *io, const vram_grant *g, uint64_t seed)
{
	char *buf = malloc(CHUNK);
	if (!buf)
		return fail("out of memory");
	for (uint64_t off = 0; off < g->size; off += CHUNK) {
		size_t n = (size_t)MIN(CHUNK, g->size - off);
		fill_pattern(buf, off, n, seed);
		if (cu_check(io, io->cu->MemcpyHtoD(g->dptr + off, buf, n), "cuMemcpyHtoD")) {
			free(buf);
			return 1;
		}
	}
	free(buf);
	return 0;
}

static int read_pattern(const struct devio *io, const vram_grant *g, uint64_t seed)
{
	char *buf = malloc(CHUNK);
	if (!buf)
		return fail("out of memory");
	for (uint64_t off = 0; off < g->size; off += CHUNK) {
		size_t n = (size_t)MIN(CHUNK, g->size - off);
		if (cu_check(io, io->cu->MemcpyDtoH(buf, g->dptr + off, n), "cuMemcpyDtoH")) {
			free(buf);
			return 1;
		}
		long bad = check_pattern(buf, off, n, seed);
		if (bad >= 0) {
			free(buf);
			return fail("grant %" PRIu64 ": word at %" PRIu64 " reads back wrong", g->id, off + (uint64_t)bad * 8);
		}
	}
	free(buf);
	return 0;
}

/* ======================================================================
 * Broker side helpers
 * ====================================================================== */

static int connect_broker(vram_client **c)
{
	if (vram_connect(opt_socket, "helper-gputest", c) < 0)
		return fail("connect: %s", vram_last_error());
	return 0;
}

/* The broker devices this run is about: --device, else every CUDA one. */
static int selected(vram_client *c, uint32_t *out, uint32_t max)
{
	uint32_t n = 0;
	if (opt_device) {
		int i = vram_device_find(c, opt_device);
		if (i < 0)
			return -fail("%s", vram_last_error());
		if (c->dev[i].backend != VRAM_BACKEND_CUDA)
			return -fail("%s is not a CUDA device (backend %u)", opt_device, c->dev[i].backend);
		out[n++] = (uint32_t)i;
		return (int)n;
	}
	for (uint32_t i = 0; i < c->ndev && n < max; i++)
		if (c->dev[i].backend == VRAM_BACKEND_CUDA)
			out[n++] = i;
	if (n == 0)
		return -fail("the broker lists no CUDA device (note: \"%s\")", vram_client_note(c));
	return (int)n;
}

static int alloc_on(vram_client *c, uint32_t dev, uint64_t size, vram_grant **g)
{
	if (vram_alloc(c, dev, size, 0, g) < 0)
		return fail("%s: alloc of %" PRIu64 " bytes: %s", c->dev[dev].name, size, vram_last_error());
	uint64_t gran = c->dev[dev].granularity;
	uint64_t want = (size + gran - 1) / gran * gran;
	if ((*g)->size != want)
		return fail("%s: %" PRIu64 " bytes asked, %" PRIu64 " granted, expected %" PRIu64, c->dev[dev].name, size,
			    (*g)->size, want);
	if (!(*g)->dptr || (*g)->host)
		return fail("%s: grant %" PRIu64 " has dptr 0x%" PRIx64 ", host %p", c->dev[dev].name, (*g)->id,
			    (*g)->dptr, (*g)->host);
	return 0;
}

/* ======================================================================
 * Subcommands
 * ====================================================================== */

static int cmd_probe(void)
{
	struct cuda_api cu;
	char err[256], e[160], name[128], u[48];
	int count = 0, version = 0, usable = 0;
	if (cuda_api_load(&cu, err, sizeof(err)) < 0)
		return skip("no GPU: %s", err);
	CUresult cr = cu.Init(0);
	if (cr == CUDA_ERROR_NO_DEVICE)
		return skip("no GPU: no CUDA devices");
	if (cr != CUDA_SUCCESS)
		return skip("no GPU: cuInit failed: %s", cuda_api_strerror(&cu, cr, e, sizeof(e)));
	cu.DriverGetVersion(&version);
	if ((cr = cu.DeviceGetCount(&count)) != CUDA_SUCCESS)
		return fail("cuDeviceGetCount: %s", cuda_api_strerror(&cu, cr, e, sizeof(e)));
	if (count == 0)
		return skip("no GPU: no CUDA devices");
	printf("driver %d.%d, %d device%s\n", version / 1000, version % 1000 / 10, count, count == 1 ? "" : "s");
	for (int i = 0; i < count; i++) {
		CUdevice d;
		CUuuid uu;
		int vmm = 0, pfd = 0;
		size_t total = 0;
		if (cu.DeviceGet(&d, i) || cu.DeviceGetName(name, sizeof(name), d) || cu.DeviceGetUuid(&uu, d) ||
		    cu.DeviceTotalMem(&total, d) ||
		    cu.DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, d) ||
		    cu.DeviceGetAttribute(&pfd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, d))
			return fail("querying device %d failed", i);
		printf("  %d: %s %s, %zu MiB, VMM %s, POSIX-fd %s\n", i, name,
		       cuda_uuid_format((const uint8_t *)uu.bytes, u, sizeof(u)), total >> 20, vmm ? "yes" : "no",
		       pfd ? "yes" : "no");
		usable += vmm && pfd;
	}
	if (!usable)
		return skip("no GPU vramd can use: no device has CUDA VMM with POSIX-fd handles");
	printf("usable %d\n", usable);
	return 0;
}

static int cmd_devices(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	char u[48];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES);
	int r = n < 0 ? 1 : 0;
	if (*vram_client_note(c))
		printf("note: %s\n", vram_client_note(c));
	for (int i = 0; i < n && !r; i++) {
		const struct vram_device_info *d = &c->dev[sel[i]];
		printf("%s: %s %s, %" PRIu64 " MiB, granularity %" PRIu64 " KiB, NUMA %d, ordinal %d\n", d->name,
		       d->label, cuda_uuid_format(d->uuid, u, sizeof(u)), d->total >> 20, d->granularity >> 10,
		       d->numa_node, d->ordinal);
		if (d->flags & VRAM_DEV_SIMULATED)
			r = fail("%s is flagged simulated", d->name);
		else if (d->ordinal < 0 || d->total == 0 || !d->label[0])
			r = fail("%s: ordinal %d, total %" PRIu64 ", label \"%s\"", d->name, d->ordinal, d->total, d->label);
		else if (d->granularity == 0 || (d->granularity & (d->granularity - 1)))
			r = fail("%s: granularity %" PRIu64, d->name, d->granularity);
		else if (mem_is_zero(d->uuid, 16))
			r = fail("%s: UUID is zero", d->name);
		else if (d->flags & VRAM_DEV_HOST_MAPPABLE)
			r = fail("%s: a CUDA device flagged host-mappable", d->name);
		if (r)
			break;
		struct vram_cuda_dev *h;
		if (vram_cuda_dev_get(c, sel[i], &h) < 0) {
			r = fail("%s: not found in this process by UUID: %s", d->name, vram_last_error());
			break;
		}
		vram_cuda_dev_put(h);
	}
	vram_close(c);
	return r;
}

static int cmd_rw(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	for (int i = 0; i < n && !r; i++) {
		uint32_t dev = sel[i];
		vram_grant *g = NULL, *g2 = NULL;
		struct devio io;
		if ((r = alloc_on(c, dev, opt_size, &g)))
			break;
		if ((r = devio_open(c, dev, &io))) {
			vram_free(c, g);
			break;
		}
		r = expect_zero(&io, g, "new grant");
		if (!r)
			r = write_pattern(&io, g, 0x1234);
		if (!r)
			r = read_pattern(&io, g, 0x1234);
		/* a second grant is distinct memory: zero, and writing it leaves
		 * the first alone */
		if (!r)
			r = alloc_on(c, dev, opt_size, &g2);
		if (!r && (g2->dptr < g->dptr + g->size && g->dptr < g2->dptr + g2->size))
			r = fail("grants %" PRIu64 " and %" PRIu64 " overlap", g->id, g2->id);
		if (!r)
			r = expect_zero(&io, g2, "second grant");
		if (!r)
			r = cu_check(&io, io.cu->MemsetD8(g2->dptr, 0xee, (size_t)g2->size), "cuMemsetD8");
		if (!r)
			r = cu_check(&io, io.cu->CtxSynchronize(), "cuCtxSynchronize");
		if (!r)
			r = read_pattern(&io, g, 0x1234);
		devio_close(&io);
		if (vram_free(c, g2) < 0 && !r)
			r = fail("free: %s", vram_last_error());
		if (vram_free(c, g) < 0 && !r)
			r = fail("free: %s", vram_last_error());
		if (!r)
			printf("%s: %" PRIu64 " bytes granted, zero on arrival, written and read back\n", c->dev[dev].name,
			       opt_size);
	}
	vram_close(c);
	return r;
}

/* Fills a grant with 0xa5 and frees it, count times, checking that every
 * next grant reads zero; also with the dirty grant still held. */
static int cmd_stale(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	for (int i = 0; i < n && !r; i++) {
		uint32_t dev = sel[i];
		struct devio io;
		vram_grant *g = NULL;
		if ((r = devio_open(c, dev, &io)))
			break;
		for (unsigned k = 0; k < opt_count && !r; k++) {
			if ((r = alloc_on(c, dev, opt_size, &g)))
				break;
			r = expect_zero(&io, g, "grant after a dirty one");
			if (!r)
				r = cu_check(&io, io.cu->MemsetD8(g->dptr, 0xa5, (size_t)g->size), "cuMemsetD8");
			if (!r)
				r = cu_check(&io, io.cu->CtxSynchronize(), "cuCtxSynchronize");
			vram_free(c, g);
		}
		devio_close(&io);
		if (!r)
			printf("%s: %u grants of %" PRIu64 " bytes, each zero after a dirty one\n", c->dev[dev].name,
			       opt_count, opt_size);
	}
	vram_close(c);
	return r;
}

static int cmd_fill(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	for (int i = 0; i < n && !r; i++) {
		struct devio io;
		if ((r = devio_open(c, sel[i], &io)))
			break;
		for (unsigned k = 0; k < opt_count && !r; k++) {
			vram_grant *g;
			if ((r = alloc_on(c, sel[i], opt_size, &g)))
				break;
			r = cu_check(&io, io.cu->MemsetD8(g->dptr, 0xa5, (size_t)g->size), "cuMemsetD8");
			if (!r)
				r = cu_check(&io, io.cu->CtxSynchronize(), "cuCtxSynchronize");
			if (!opt_no_free)
				vram_free(c, g);
		}
		devio_close(&io);
	}
	if (opt_no_free) {
		/* Exit holding everything: the broker and the driver clean up. */
		fflush(stdout);
		_exit(r);
	}
	vram_close(c);
	return r;
}

static int cmd_zero(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	vram_grant *gs[64];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	for (int i = 0; i < n && !r; i++) {
		struct devio io;
		unsigned k, cnt = MIN(opt_count, 64u);
		if ((r = devio_open(c, sel[i], &io)))
			break;
		for (k = 0; k < cnt && !r; k++) {
			if ((r = alloc_on(c, sel[i], opt_size, &gs[k])))
				break;
			r = expect_zero(&io, gs[k], "grant after another process's");
			if (r)
				k++;
		}
		devio_close(&io);
		while (k-- > 0)
			vram_free(c, gs[k]);
		if (!r)
			printf("%s: %u grants of %" PRIu64 " bytes read zero\n", c->dev[sel[i]].name, cnt, opt_size);
	}
	vram_close(c);
	return r;
}

static int cmd_copy(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	int cpu = vram_device_find(c, "cpu");
	if (!r && cpu < 0)
		r = fail("the broker has no cpu pool");
	uint64_t size = (opt_size + 2 * MiB - 1) / (2 * MiB) * (2 * MiB);
	for (int i = 0; i < n && !r; i++) {
		uint32_t dev = sel[i];
		vram_grant *g = NULL, *h = NULL;
		struct vram_cuda_pin *pin = NULL;
		struct vram_cuda_copier *cp = NULL;
		struct vram_cuda_sink *sk = NULL;
		const uint32_t slots = 4;
		const uint64_t chunk = 8 * MiB;
		char *back = NULL;

		if ((r = alloc_on(c, dev, size, &g)))
			break;
		if (vram_alloc(c, (uint32_t)cpu, size, 0, &h) < 0 || !h->host) {
			r = fail("cpu grant: %s", vram_last_error());
			goto out;
		}
		fill_pattern(h->host, 0, h->size, 0xc0ffee);
		if (vram_cuda_pin(c, dev, h->host, h->size, 0, &pin) < 0) {
			r = fail("pin: %s", vram_last_error());
			goto out;
		}
		if (vram_cuda_copier_new(c, dev, slots, &cp) < 0) {
			r = fail("copier: %s", vram_last_error());
			goto out;
		}
		/* The streaming engine's protocol: wait for a slot before
		 * reusing it, wait for them all at the end. */
		double t0 = now_s();
		uint64_t k = 0;
		for (uint64_t off = 0; off < g->size; off += chunk, k++) {
			uint32_t slot = (uint32_t)(k % slots);
			uint64_t len = MIN(chunk, g->size - off);
			if (vram_cuda_copier_wait(cp, slot) < 0 ||
			    vram_cuda_copier_copy(cp, g->dptr + off, (char *)h->host + off, len, slot) < 0) {
				r = fail("copy: %s", vram_last_error());
				goto out;
			}
		}
		for (uint32_t s = 0; s < slots; s++)
			if (vram_cuda_copier_wait(cp, s) < 0) {
				r = fail("wait: %s", vram_last_error());
				goto out;
			}
		double dt = now_s() - t0;
		back = malloc(g->size);
		if (!back) {
			r = fail("out of memory");
			goto out;
		}
		if (vram_cuda_copier_dtoh(cp, back, g->dptr, g->size, 0) < 0 || vram_cuda_copier_wait(cp, 0) < 0) {
			r = fail("dtoh: %s", vram_last_error());
			goto out;
		}
		if (check_pattern(back, 0, g->size, 0xc0ffee) >= 0) {
			r = fail("%s: pinned host-to-device copy reads back wrong", c->dev[dev].name);
			goto out;
		}
		/* device to device: second half <- first half */
		uint64_t half = g->size / 2;
		if (vram_cuda_copier_dtod(cp, g->dptr + half, g->dptr, half, 1) < 0 || vram_cuda_copier_sync(cp) < 0 ||
		    vram_cuda_copier_dtoh(cp, back, g->dptr + half, half, 2) < 0 || vram_cuda_copier_wait(cp, 2) < 0) {
			r = fail("dtod: %s", vram_last_error());
			goto out;
		}
		if (check_pattern(back, 0, half, 0xc0ffee) >= 0) {
			r = fail("%s: device-to-device copy reads back wrong", c->dev[dev].name);
			goto out;
		}
		/* the multi-device sink */
		struct stream_sink sink;
		if (vram_cuda_sink_new(c, slots, &sk) < 0 || vram_cuda_sink_add_grant(sk, g) < 0) {
			r = fail("sink: %s", vram_last_error());
			goto out;
		}
		vram_cuda_sink_get(sk, &sink);
		fill_pattern(h->host, 0, chunk, 0xabcdef);
		if (sink.copy(sink.user, g->dptr + g->size - chunk, h->host, chunk, 3) < 0 || sink.wait(sink.user, 3) < 0 ||
		    sink.copy(sink.user, g->dptr + g->size - chunk + 1, h->host, chunk, 3) != -EFAULT) {
			r = fail("sink copy: %s", vram_last_error());
			goto out;
		}
		if (vram_cuda_copier_dtoh(cp, back, g->dptr + g->size - chunk, chunk, 0) < 0 ||
		    vram_cuda_copier_wait(cp, 0) < 0 || check_pattern(back, 0, chunk, 0xabcdef) >= 0) {
			r = fail("%s: sink copy reads back wrong", c->dev[dev].name);
			goto out;
		}
		printf("%s: %" PRIu64 " MiB pinned host-to-device in %.1f ms (%.1f GB/s); dtod, dtoh, sink ok\n",
		       c->dev[dev].name, g->size >> 20, dt * 1e3, (double)g->size / dt / 1e9);
out:
		vram_cuda_sink_free(sk);
		vram_cuda_copier_free(cp);
		vram_cuda_unpin(pin);
		free(back);
		vram_free(c, h);
		vram_free(c, g);
	}
	vram_close(c);
	return r;
}

static int cmd_hold(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	for (int i = 0; i < n && !r; i++) {
		struct devio io;
		if ((r = devio_open(c, sel[i], &io)))
			break;
		for (unsigned k = 0; k < opt_count && !r; k++) {
			vram_grant *g;
			if ((r = alloc_on(c, sel[i], opt_size, &g)))
				break;
			r = cu_check(&io, io.cu->MemsetD8(g->dptr, 0x5a, (size_t)g->size), "cuMemsetD8");
		}
		if (!r)
			r = cu_check(&io, io.cu->CtxSynchronize(), "cuCtxSynchronize");
		devio_close(&io);
	}
	if (r)
		return r;
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}

/* Free memory on the first selected device, from this process. */
static int free_memory(vram_client *c, uint32_t dev, size_t *ret)
{
	struct devio io;
	size_t total;
	if (devio_open(c, dev, &io))
		return 1;
	int r = cu_check(&io, io.cu->MemGetInfo(ret, &total), "cuMemGetInfo");
	devio_close(&io);
	return r;
}

static int cmd_meminfo(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	size_t f = 0;
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	if (!r)
		r = free_memory(c, sel[0], &f);
	if (!r)
		printf("%zu\n", f);
	vram_close(c);
	return r;
}

static int cmd_expect_empty(void)
{
	vram_client *c;
	struct vram_status *s = NULL;
	uint32_t sel[VRAMD_MAX_DEVICES];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	double deadline = now_s() + opt_timeout_ms / 1e3;
	while (!r) {
		if (vram_get_status(c, &s) < 0) {
			r = fail("status: %s", vram_last_error());
			break;
		}
		uint64_t used = 0;
		for (uint32_t i = 0; i < s->ndevices; i++)
			used += s->devices[i].used;
		if (s->grants == 0 && used == 0 && s->nclients == 1)
			break;
		if (now_s() > deadline) {
			r = fail("after %d ms: %" PRIu64 " grants, %" PRIu64 " bytes used, %u clients", opt_timeout_ms,
				 s->grants, used, s->nclients);
			break;
		}
		vram_status_free(s);
		s = NULL;
		usleep(50 * 1000);
	}
	vram_status_free(s);
	/* The device got the memory back too (the broker released its
	 * handles, the driver the dead process's).  Our own context and
	 * rounding make a few hundred MiB of slack. */
	if (!r && opt_baseline) {
		size_t f = 0;
		const size_t slack = 512 * MiB;
		for (;;) {
			if ((r = free_memory(c, sel[0], &f)))
				break;
			if (f + slack >= opt_baseline)
				break;
			if (now_s() > deadline) {
				r = fail("%s: %zu MiB free, %" PRIu64 " MiB before the grants", c->dev[sel[0]].name, f >> 20,
					 opt_baseline >> 20);
				break;
			}
			usleep(100 * 1000);
		}
		if (!r)
			printf("%s: %zu MiB free (%" PRIu64 " MiB before)\n", c->dev[sel[0]].name, f >> 20,
			       opt_baseline >> 20);
	}
	vram_close(c);
	return r;
}

static int cmd_uuid(void)
{
	vram_client *c;
	uint32_t sel[VRAMD_MAX_DEVICES];
	char u[48];
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	if (!r)
		printf("%s\n", cuda_uuid_format(c->dev[sel[0]].uuid, u, sizeof(u)));
	vram_close(c);
	return r;
}

/* Run with the device hidden (CUDA_VISIBLE_DEVICES): the import fails with
 * -ENODEV (device not among ours, or no device at all) and the grant goes
 * back to the broker. */
static int cmd_expect_invisible(void)
{
	vram_client *c;
	vram_grant *g;
	uint32_t sel[VRAMD_MAX_DEVICES];
	struct vram_status *s;
	if (connect_broker(&c))
		return 1;
	int n = selected(c, sel, VRAMD_MAX_DEVICES), r = n < 0;
	if (!r) {
		int e = vram_alloc(c, sel[0], opt_size, 0, &g);
		if (e == 0) {
			vram_free(c, g);
			r = fail("%s: alloc and import worked with the device hidden", c->dev[sel[0]].name);
		} else if (e != -ENODEV) {
			r = fail("%s: expected -ENODEV, got %d: %s", c->dev[sel[0]].name, e, vram_last_error());
		} else {
			printf("%s\n", vram_last_error());
		}
	}
	if (!r && vram_get_status(c, &s) == 0) {
		if (s->grants != 0)
			r = fail("%" PRIu64 " grants left after the failed import", s->grants);
		vram_status_free(s);
	}
	vram_close(c);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "device", required_argument, NULL, 'd' },
		{ "size", required_argument, NULL, 'z' },
		{ "count", required_argument, NULL, 'n' },
		{ "baseline", required_argument, NULL, 'b' },
		{ "timeout-ms", required_argument, NULL, 't' },
		{ "no-free", no_argument, NULL, 'F' },
		{ 0 }
	};
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 's': opt_socket = optarg; break;
		case 'd': opt_device = optarg; break;
		case 'z':
			if (size_parse(optarg, &opt_size) < 0 || opt_size == 0)
				return fprintf(stderr, "bad --size %s\n", optarg), 2;
			break;
		case 'n': opt_count = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'b': opt_baseline = strtoull(optarg, NULL, 0); break;
		case 't': opt_timeout_ms = atoi(optarg); break;
		case 'F': opt_no_free = 1; break;
		default: return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "usage: helper-gputest [--socket PATH] [--device NAME] COMMAND\n");
		return 2;
	}
	const char *cmd = argv[optind];
	static const struct {
		const char *name;
		int (*fn)(void);
	} cmds[] = {
		{ "probe", cmd_probe },
		{ "devices", cmd_devices },
		{ "rw", cmd_rw },
		{ "stale", cmd_stale },
		{ "fill", cmd_fill },
		{ "zero", cmd_zero },
		{ "copy", cmd_copy },
		{ "hold", cmd_hold },
		{ "meminfo", cmd_meminfo },
		{ "expect-empty", cmd_expect_empty },
		{ "uuid", cmd_uuid },
		{ "expect-invisible", cmd_expect_invisible },
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmd, cmds[i].name))
			return cmds[i].fn();
	fprintf(stderr, "helper-gputest: unknown command %s\n", cmd);
	return 2;
}
