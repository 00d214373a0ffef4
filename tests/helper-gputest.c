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
 *   restart-holder READY REGISTERED GO
 *                              grants that must survive a broker restart
 *                              (check-gpu.sh restarts the broker; see the
 *                              function's comment for the hand-shake)
 *
 * Options: --socket PATH, --device NAME (default: every CUDA device), --size
 * SIZE, --count N, --baseline BYTES, --timeout-ms N, --no-free, --sim-ok
 * (restart-holder only: a simulated device, written through its host
 * mapping, for CHECK_GPU_SIM=1's dry run of the script).
 */
#include <errno.h>
#include <fcntl.h>
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
#include "tests/testlib-raw.h"

#define MiB (1ull << 20)
#define CHUNK (16 * MiB)

static const char *opt_socket;
static const char *opt_device;
static uint64_t opt_size = 64 * MiB + 1;
static unsigned opt_count = 4;
static uint64_t opt_baseline;
static int opt_timeout_ms = 15000;
static int opt_no_free;
static int opt_sim_ok;
/* a subcommand's own arguments */
static char **cmd_argv;
static int cmd_argc;

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
	struct cuda_dev *d;
	const struct cuda_api *cu;
};

static int devio_open(vram_client *c, uint32_t dev, struct devio *io)
{
	int r = cuda_dev_get(c, dev, &io->d);
	if (r < 0)
		return fail("%s: device handle: %s", c->dev[dev].name, vram_last_error());
	io->cu = cuda_dev_api(io->d);
	if (cuda_dev_push(io->d) < 0) {
		cuda_dev_put(io->d);
		return fail("%s: %s", c->dev[dev].name, vram_last_error());
	}
	return 0;
}

static void devio_close(struct devio *io)
{
	cuda_dev_pop(io->d);
	cuda_dev_put(io->d);
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
		struct cuda_dev *h;
		if (cuda_dev_get(c, sel[i], &h) < 0) {
			r = fail("%s: not found in this process by UUID: %s", d->name, vram_last_error());
			break;
		}
		cuda_dev_put(h);
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
		struct cuda_pin *pin = NULL;
		struct cuda_copier *cp = NULL;
		struct cuda_sink *sk = NULL;
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
		if (cuda_pin(c, dev, h->host, h->size, 0, &pin) < 0) {
			r = fail("pin: %s", vram_last_error());
			goto out;
		}
		if (cuda_copier_new(c, dev, slots, &cp) < 0) {
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
			if (cuda_copier_wait(cp, slot) < 0 ||
			    cuda_copier_copy(cp, g->dptr + off, (char *)h->host + off, len, slot) < 0) {
				r = fail("copy: %s", vram_last_error());
				goto out;
			}
		}
		for (uint32_t s = 0; s < slots; s++)
			if (cuda_copier_wait(cp, s) < 0) {
				r = fail("wait: %s", vram_last_error());
				goto out;
			}
		double dt = now_s() - t0;
		back = malloc(g->size);
		if (!back) {
			r = fail("out of memory");
			goto out;
		}
		if (cuda_copier_dtoh(cp, back, g->dptr, g->size, 0) < 0 || cuda_copier_wait(cp, 0) < 0) {
			r = fail("dtoh: %s", vram_last_error());
			goto out;
		}
		if (check_pattern(back, 0, g->size, 0xc0ffee) >= 0) {
			r = fail("%s: pinned host-to-device copy reads back wrong", c->dev[dev].name);
			goto out;
		}
		/* device to device: second half <- first half */
		uint64_t half = g->size / 2;
		if (cuda_copier_dtod(cp, g->dptr + half, g->dptr, half, 1) < 0 || cuda_copier_sync(cp) < 0 ||
		    cuda_copier_dtoh(cp, back, g->dptr + half, half, 2) < 0 || cuda_copier_wait(cp, 2) < 0) {
			r = fail("dtod: %s", vram_last_error());
			goto out;
		}
		if (check_pattern(back, 0, half, 0xc0ffee) >= 0) {
			r = fail("%s: device-to-device copy reads back wrong", c->dev[dev].name);
			goto out;
		}
		/* the multi-device sink */
		struct stream_sink sink;
		if (cuda_sink_new(c, slots, &sk) < 0 || cuda_sink_add_grant(sk, g) < 0) {
			r = fail("sink: %s", vram_last_error());
			goto out;
		}
		cuda_sink_get(sk, &sink);
		fill_pattern(h->host, 0, chunk, 0xabcdef);
		if (sink.copy(sink.user, g->dptr + g->size - chunk, h->host, chunk, 3) < 0 || sink.wait(sink.user, 3) < 0 ||
		    sink.copy(sink.user, g->dptr + g->size - chunk + 1, h->host, chunk, 3) != -EFAULT) {
			r = fail("sink copy: %s", vram_last_error());
			goto out;
		}
		if (cuda_copier_dtoh(cp, back, g->dptr + g->size - chunk, chunk, 0) < 0 ||
		    cuda_copier_wait(cp, 0) < 0 || check_pattern(back, 0, chunk, 0xabcdef) >= 0) {
			r = fail("%s: sink copy reads back wrong", c->dev[dev].name);
			goto out;
		}
		printf("%s: %" PRIu64 " MiB pinned host-to-device in %.1f ms (%.1f GB/s); dtod, dtoh, sink ok\n",
		       c->dev[dev].name, g->size >> 20, dt * 1e3, (double)g->size / dt / 1e9);
out:
		cuda_sink_free(sk);
		cuda_copier_free(cp);
		cuda_unpin(pin);
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

/* ======================================================================
 * Restart survival
 * ====================================================================== */

/* The broker's view of this client and of one device. */
struct snap {
	uint32_t broker_pid;
	uint32_t ngrants;        /* ours */
	uint64_t held;           /* ours, on the device */
	uint64_t used;           /* the device's, everyone's */
};

static int snapshot(vram_client *c, uint32_t dev, struct snap *out)
{
	struct vram_status *s;
	memset(out, 0, sizeof(*out));
	if (vram_get_status(c, &s) < 0)
		return -1;
	out->broker_pid = s->broker_pid;
	if (dev < s->ndevices)
		out->used = s->devices[dev].used;
	int found = 0;
	for (uint32_t i = 0; i < s->nclients; i++) {
		const struct vram_client_status *cl = &s->clients[i];
		if ((cl->flags & VRAM_CLIENT_SELF) || cl->id == c->id) {
			out->ngrants = cl->ngrants;
			out->held = dev < 16 ? cl->held_dev[dev] : cl->held;
			found = 1;
			break;
		}
	}
	vram_status_free(s);
	if (!found) {
		rt_error(-ENOENT, "the broker's status does not list this client (id %u)", c->id);
		return -1;
	}
	return 0;
}

/* Writes (check == 0) or checks (check != 0) grant k's pattern, seed +
 * k, in every grant: through the device for CUDA, through the host
 * mapping for a simulated device (--sim-ok). */
static int holder_io(vram_client *c, uint32_t dev, int sim, vram_grant **gs, unsigned n, uint64_t seed, int check)
{
	int r = 0;
	if (sim) {
		for (unsigned k = 0; k < n && !r; k++) {
			if (!check)
				fill_pattern(gs[k]->host, 0, gs[k]->size, seed + k);
			else if (check_pattern(gs[k]->host, 0, gs[k]->size, seed + k) >= 0)
				r = fail("grant %" PRIu64 " reads back wrong (host mapping)", gs[k]->id);
		}
		return r;
	}
	struct devio io;
	if (devio_open(c, dev, &io))
		return 1;
	for (unsigned k = 0; k < n && !r; k++)
		r = check ? read_pattern(&io, gs[k], seed + k) : write_pattern(&io, gs[k], seed + k);
	devio_close(&io);
	return r;
}

/* The grant's export (its own fd, then a dup of it) handed in by another
 * connection: the broker must recognise the memory as accounted already
 * (-EEXIST; for CUDA: kcmp(KCMP_FILE) against its kept copy). */
static int expect_known(vram_client *c, const vram_grant *g, const char *when)
{
	char why[256] = "";
	int s = tr_connect(c->socket);
	if (s < 0)
		return fail("%s: second connection: %s", when, strerror(-s));
	int r = tr_hello(s, "restart-copycat");
	if (r < 0) {
		close(s);
		return fail("%s: second connection: HELLO: %s", when, strerror(-r));
	}
	const uint8_t *uuid = c->dev[g->device].uuid;
	int twin = fcntl(g->fd, F_DUPFD_CLOEXEC, 3);
	int r1 = tr_register(s, uuid, g->size, 0, g->fd, 10, NULL, why, sizeof(why));
	if (r1 != -EEXIST) {
		close(s);
		if (twin >= 0)
			close(twin);
		return fail("%s: grant %" PRIu64 "'s export registered again from another connection: expected "
			    "-EEXIST, got %d (%s)", when, g->id, r1, why[0] ? why : r1 ? strerror(-r1) : "accepted");
	}
	int r2 = twin < 0 ? -errno : tr_register(s, uuid, g->size, 0, twin, 11, NULL, why, sizeof(why));
	if (twin >= 0)
		close(twin);
	close(s);
	if (r2 != -EEXIST)
		return fail("%s: a dup of grant %" PRIu64 "'s export registered from another connection: expected "
			    "-EEXIST, got %d (%s)", when, g->id, r2, why[0] ? why : r2 ? strerror(-r2) : "accepted");
	return 0;
}

/* Writes text to path atomically (a temporary, then rename). */
static int put_file(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int put_file(const char *path, const char *fmt, ...)
{
	char tmp[4096];
	va_list ap;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return fail("%s: %s", tmp, strerror(errno));
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	if (fclose(f) != 0 || rename(tmp, path) < 0)
		return fail("%s: %s", path, strerror(errno));
	return 0;
}

/* restart-holder READY REGISTERED GO, with check-gpu.sh restarting the
 * broker in between:
 *   1. take --count grants of --size on --device (default: the first CUDA
 *      device), write a pattern through the device and read it back; the
 *      broker accounts them to us; each grant's export handed in again by
 *      another connection is -EEXIST; write READY (our bytes on the device);
 *   2. call the broker every 100 ms (vram_get_status) until libvram has
 *      reconnected (c->reconnects grew: on the first call after the broker
 *      went away it reconnects with backoff, $VRAMD_RECONNECT_TIMEOUT_MS,
 *      and REGISTERs every grant's kept fd before that call's request);
 *      then the new broker (another pid) must account exactly our grants
 *      and bytes to us again, and the first grant's export is again
 *      -EEXIST from another connection; write REGISTERED (our bytes);
 *   3. wait for GO (the script compares the device's used bytes while we
 *      hold the grants), read the patterns back through the device (the
 *      memory survived), write and read another, take a new grant (zero)
 *      and free it, free ours (by their new ids), and check the broker
 *      accounts nothing to us.
 * Each wait is bounded by --timeout-ms.  Exit 0 only when all of it held. */
static int cmd_restart_holder(void)
{
	enum { MAXG = 8 };
	vram_client *c;
	vram_grant *gs[MAXG];
	unsigned n = 0, count = MIN(MAX(opt_count, 1u), (unsigned)MAXG);
	const uint64_t seed = 0x7e57ab1e00ull;
	char lasterr[1024] = "";
	int r = 0, dev, sim = 0;

	if (cmd_argc != 3) {
		fprintf(stderr, "usage: helper-gputest [options] restart-holder READY REGISTERED GO\n");
		return 2;
	}
	const char *ready = cmd_argv[0], *registered = cmd_argv[1], *go = cmd_argv[2];
	setvbuf(stdout, NULL, _IOLBF, 0); /* in order with stderr in the script's file */
	if (connect_broker(&c))
		return 1;
	if (opt_device) {
		if ((dev = vram_device_find(c, opt_device)) < 0) {
			r = fail("%s", vram_last_error());
			goto out;
		}
	} else {
		uint32_t sel[VRAMD_MAX_DEVICES];
		if (selected(c, sel, VRAMD_MAX_DEVICES) < 0) {
			r = 1;
			goto out;
		}
		dev = (int)sel[0];
	}
	const char *name = c->dev[dev].name;
	if (c->dev[dev].backend != VRAM_BACKEND_CUDA) {
		if (!opt_sim_ok || !(c->dev[dev].flags & VRAM_DEV_SIMULATED) ||
		    !(c->dev[dev].flags & VRAM_DEV_HOST_MAPPABLE)) {
			r = fail("%s is not a CUDA device (backend %u)", name, c->dev[dev].backend);
			goto out;
		}
		sim = 1;
		printf("restart-holder: %s is SIMULATED (--sim-ok): a dry run, nothing CUDA is checked\n", name);
	}

	/* 1. grants, written and read back, accounted, known */
	struct snap s0, s1, s2;
	if (snapshot(c, (uint32_t)dev, &s0) < 0) {
		r = fail("status before the grants: %s", vram_last_error());
		goto out;
	}
	uint32_t reconnects0 = c->reconnects;
	uint64_t total = 0;
	for (; n < count; n++) {
		if (sim) {
			if (vram_alloc(c, (uint32_t)dev, opt_size, 0, &gs[n]) < 0) {
				r = fail("%s: alloc: %s", name, vram_last_error());
				goto out;
			}
			if (!gs[n]->host) {
				r = fail("%s: a simulated grant without a host mapping", name);
				goto out;
			}
		} else if ((r = alloc_on(c, (uint32_t)dev, opt_size, &gs[n]))) {
			goto out;
		}
		if (gs[n]->fd < 0) {
			r = fail("%s: grant %" PRIu64 " kept no fd to re-register", name, gs[n]->id);
			goto out;
		}
		total += gs[n]->size;
	}
	if ((r = holder_io(c, (uint32_t)dev, sim, gs, n, seed, 0)) || (r = holder_io(c, (uint32_t)dev, sim, gs, n, seed, 1))) {
		fprintf(stderr, "restart-holder: writing and reading back the grants before the restart failed\n");
		goto out;
	}
	if (snapshot(c, (uint32_t)dev, &s1) < 0) {
		r = fail("status with the grants: %s", vram_last_error());
		goto out;
	}
	if (s1.ngrants != n || s1.held != s0.held + total) {
		r = fail("before the restart: the broker accounts %u grants, %" PRIu64 " bytes on %s to us; expected %u, "
			 "%" PRIu64, s1.ngrants, s1.held, name, n, s0.held + total);
		goto out;
	}
	/* Not fatal: the restart is what this is about. */
	int unknown = 0;
	for (unsigned k = 0; k < n; k++)
		unknown |= expect_known(c, gs[k], "before the restart");
	printf("restart-holder: %u grants, %" PRIu64 " bytes on %s written and read back; broker pid %u accounts them; "
	       "their exports from another connection: %s\n", n, total, name, s1.broker_pid,
	       unknown ? "NOT refused (see above)" : "-EEXIST");
	fflush(stdout);
	if ((r = put_file(ready, "%" PRIu64 "\n", s1.held)))
		goto out;

	/* 2. the broker restarts under us: wait for the reconnect */
	double deadline = now_s() + opt_timeout_ms / 1e3;
	for (;;) {
		if (snapshot(c, (uint32_t)dev, &s2) < 0) {
			r = fail("waiting for the broker restart: the call that should reconnect failed: %s",
				 vram_last_error());
			goto out;
		}
		if (c->reconnects != reconnects0) {
			/* Why a REGISTER failed, if one did (the call itself
			 * succeeded after the reconnect). */
			str_copy(lasterr, vram_last_error(), sizeof(lasterr));
			break;
		}
		if (now_s() > deadline) {
			r = fail("no broker restart seen within %d ms (still broker pid %u)", opt_timeout_ms,
				 s2.broker_pid);
			goto out;
		}
		usleep(100 * 1000);
	}
	if (s2.broker_pid == s1.broker_pid) {
		r = fail("reconnected, but to the same broker (pid %u): the connection was lost otherwise (%s)",
			 s2.broker_pid, lasterr);
		goto out;
	}
	if (s2.ngrants != n || s2.held != s1.held) {
		r = fail("after the restart: the new broker (pid %u) accounts %u grants, %" PRIu64 " bytes on %s to us; "
			 "expected %u, %" PRIu64 " (re-registering failed; libvram's last error: %s)",
			 s2.broker_pid, s2.ngrants, s2.held, name, n, s1.held, lasterr[0] ? lasterr : "none");
		goto out;
	}
	if (s2.used < total) {
		r = fail("after the restart: %s has %" PRIu64 " bytes used, less than our %" PRIu64, name, s2.used,
			 total);
		goto out;
	}
	int unknown2 = expect_known(c, gs[0], "after the restart");
	unknown |= unknown2;
	printf("restart-holder: reconnected to broker pid %u (was %u); it accounts our %u grants, %" PRIu64
	       " bytes again; an export from another connection: %s\n",
	       s2.broker_pid, s1.broker_pid, n, s2.held, unknown2 ? "NOT refused (see above)" : "-EEXIST");
	fflush(stdout);
	if ((r = put_file(registered, "%" PRIu64 "\n", s2.held)))
		goto out;

	/* 3. after GO: the bytes survived, the grants work, free */
	deadline = now_s() + opt_timeout_ms / 1e3;
	while (access(go, F_OK) != 0) {
		if (now_s() > deadline) {
			r = fail("no %s within %d ms", go, opt_timeout_ms);
			goto out;
		}
		usleep(100 * 1000);
	}
	if ((r = holder_io(c, (uint32_t)dev, sim, gs, n, seed, 1))) {
		fprintf(stderr, "restart-holder: the grants lost their bytes across the broker restart\n");
		goto out;
	}
	if ((r = holder_io(c, (uint32_t)dev, sim, gs, n, seed + 0x100, 0)) ||
	    (r = holder_io(c, (uint32_t)dev, sim, gs, n, seed + 0x100, 1))) {
		fprintf(stderr, "restart-holder: writing and reading back the grants after the restart failed\n");
		goto out;
	}
	vram_grant *fresh = NULL;
	if (sim) {
		if (vram_alloc(c, (uint32_t)dev, opt_size, 0, &fresh) < 0)
			r = fail("%s: a new grant after the restart: %s", name, vram_last_error());
		else if (!fresh->host || !mem_is_zero(fresh->host, fresh->size))
			r = fail("%s: a new grant after the restart is not zero", name);
	} else if (!(r = alloc_on(c, (uint32_t)dev, opt_size, &fresh))) {
		struct devio io;
		if (!(r = devio_open(c, (uint32_t)dev, &io))) {
			r = expect_zero(&io, fresh, "a new grant after the restart");
			devio_close(&io);
		}
	}
	if (fresh && vram_free(c, fresh) < 0 && !r)
		r = fail("freeing the new grant: %s", vram_last_error());
	if (r)
		goto out;
	while (n > 0) {
		n--;
		uint64_t id = gs[n]->id;
		if (vram_free(c, gs[n]) < 0) {
			r = fail("freeing re-registered grant %" PRIu64 ": %s", id, vram_last_error());
			goto out;
		}
	}
	if (snapshot(c, (uint32_t)dev, &s2) < 0) {
		r = fail("status after freeing: %s", vram_last_error());
		goto out;
	}
	if (s2.ngrants != 0 || s2.held != s0.held) {
		r = fail("after freeing: the broker accounts %u grants, %" PRIu64 " bytes on %s to us", s2.ngrants,
			 s2.held, name);
		goto out;
	}
	printf("restart-holder: after the restart the bytes were intact, the grants writable, a new grant zero; "
	       "all freed\n");
	if (unknown)
		r = fail("a grant's export registered again from another connection was not refused (above)");
out:
	/* On failure the grants go with the connection (and the process). */
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
		{ "sim-ok", no_argument, NULL, 'S' },
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
		case 'S': opt_sim_ok = 1; break;
		default: return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "usage: helper-gputest [--socket PATH] [--device NAME] COMMAND\n");
		return 2;
	}
	const char *cmd = argv[optind];
	cmd_argv = argv + optind + 1;
	cmd_argc = argc - optind - 1;
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
		{ "restart-holder", cmd_restart_holder },
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmd, cmds[i].name))
			return cmds[i].fn();
	fprintf(stderr, "helper-gputest: unknown command %s\n", cmd);
	return 2;
}
