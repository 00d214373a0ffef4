/* SPDX-License-Identifier: MIT */
/*
 * The runtime's half of the CUDA backend against the fake driver
 * (tests/fake-cuda.h): importing a grant by the device's UUID (and every
 * call of it failing), copiers, the multi-device sink and pinning, a broker
 * and a client together over a socket, vram_load onto a CUDA device, a
 * client killed while it holds grants, kernel launches, and the UVM pager
 * (with a layer the planner splits between cuda:0 and cpu).
 * The broker's half is test-cuda-broker.c.
 */
#include <poll.h>
#include <stdbool.h>

#include "broker/broker.h"
#include "common/cleanup.h"
#include "common/cuda-api.h"
#include "common/proto.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
#include "runtime/cuda-kernels.h"
#include "runtime/load.h"
#include "kernels/kernels.h"
#include "testlib.h"
#include "testlib-cuda.h"

/* ======================================================================
 * Runtime: import
 * ====================================================================== */

START_TEST(test_import_unimport)
{
	fake_reset(2);
	struct vram_client *c = tc_client(2);
	CUmemGenericAllocationHandle bh;
	int fd = fake_export(1, 4 * MiB, &bh);
	struct vram_grant *g = tc_grant(1, 4 * MiB);

	ck_assert_int_eq(cuda_grant_import(c, g, fd), 0);
	close(fd); /* the import does not need it any more */
	ck_assert_ptr_nonnull(g->cuda);
	ck_assert_uint_ne(g->dptr, 0);
	ck_assert_int_eq(fake_ctx_depth(), 0);
	ck_assert_int_eq(fk.dev[1].ctx_refs, 1);
	ck_assert_int_eq(fk.dev[0].ctx_refs, 0);
	ck_assert_int_eq(fake_count(FK_HANDLES), 2); /* broker's and ours */
	ck_assert_int_eq(fake_count(FK_MAPS), 1);

	/* usable: write and read back through the driver */
	char in[4096], out[4096];
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (char)(i * 7);
	tc_dev_write(c, 1, g->dptr + 3 * MiB, in, sizeof(in));
	tc_dev_read(c, 1, g->dptr + 3 * MiB, out, sizeof(out));
	ck_assert_mem_eq(in, out, sizeof(in));

	/* a second grant shares the device handle */
	int fd2 = fake_export(1, 2 * MiB, &bh);
	CUmemGenericAllocationHandle bh2 = bh;
	struct vram_grant *g2 = tc_grant(1, 2 * MiB);
	ck_assert_int_eq(cuda_grant_import(c, g2, fd2), 0);
	close(fd2);
	ck_assert_int_eq(fk.dev[1].ctx_refs, 1);
	ck_assert_uint_ne(g2->dptr, g->dptr);

	unsigned syncs = fk.calls[F_CtxSynchronize];
	cuda_grant_unimport(g);
	ck_assert_uint_eq(fk.calls[F_CtxSynchronize], syncs + 1);
	ck_assert_ptr_null(g->cuda);
	ck_assert_uint_eq(g->dptr, 0);
	cuda_grant_unimport(g); /* twice is harmless */
	ck_assert_int_eq(fk.dev[1].ctx_refs, 1);
	cuda_grant_unimport(g2);
	ck_assert_int_eq(fk.dev[1].ctx_refs, 0);
	ck_assert_int_eq(fake_ctx_depth(), 0);
	/* what is left are the "broker's" handles */
	ck_assert_int_eq(fake_count(FK_HANDLES), 2);
	ck_assert_int_eq(fake_count(FK_RESV), 0);
	ck_assert_int_eq(fake_count(FK_MAPS), 0);
	for (int i = 0; i < FK_MAX; i++)
		if (fk.handle[i].id && fk.handle[i].id != bh2)
			fake_release(fk.handle[i].id);
	fake_release(bh2);
	free(g);
	free(g2);
	free(c);
	fake_assert_clean();
}
END_TEST

START_TEST(test_import_by_uuid)
{
	/* This process sees the devices in another order (CUDA_VISIBLE_DEVICES
	 * =1,0): broker device cuda:1 is ordinal 0 here. */
	fake_reset(2);
	struct vram_client *c = tc_client(2);
	CUmemGenericAllocationHandle bh;
	int fd = fake_export(1, 2 * MiB, &bh);
	fk.perm[0] = 1;
	fk.perm[1] = 0;
	struct vram_grant *g = tc_grant(1, 2 * MiB);
	ck_assert_int_eq(cuda_grant_import(c, g, fd), 0);
	ck_assert_int_eq(fk.dev[1].ctx_refs, 1);
	struct cuda_dev *d;
	ck_assert_int_eq(cuda_dev_get(c, 1, &d), 0);
	ck_assert_int_eq(cuda_dev_ordinal(d), 0);
	cuda_dev_put(d);
	cuda_grant_unimport(g);

	/* Only physical device 0 visible: broker's cuda:1 is not here. */
	fk.nvisible = 1;
	fk.perm[0] = 0;
	ck_assert_int_eq(cuda_grant_import(c, g, fd), -ENODEV);
	ck_assert_str_eq(vram_last_error(), "cuda:1 (GPU-20212223-2425-2627-2829-2a2b2c2d2e2f) is not among the "
					    "1 CUDA device visible to this process (CUDA_VISIBLE_DEVICES?)");
	ck_assert_ptr_null(g->cuda);
	close(fd);
	fake_release(bh);
	/* not a CUDA device */
	struct vram_grant *gh = tc_grant(2, 2 * MiB);
	ck_assert_int_eq(cuda_grant_import(c, gh, 0), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "cpu is not a CUDA device");
	free(gh);
	free(g);
	free(c);
	fake_assert_clean();
}
END_TEST

START_TEST(test_import_entry_errors)
{
	static const struct {
		enum fk_fn f;
		CUresult code;
		int err;
	} cases[] = {
		{ F_Init, CUDA_ERROR_NO_DEVICE, -ENODEV },
		{ F_DeviceGetCount, CUDA_ERROR_UNKNOWN, -EIO },
		{ F_DevicePrimaryCtxRetain, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM },
		{ F_CtxPushCurrent, CUDA_ERROR_INVALID_CONTEXT, -EIO },
		{ F_MemImportFromShareableHandle, CUDA_ERROR_INVALID_VALUE, -EINVAL },
		{ F_MemAddressReserve, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM },
		{ F_MemMap, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM },
		{ F_MemSetAccess, CUDA_ERROR_NOT_SUPPORTED, -ENOTSUP },
	};
	int fds0 = t_count_fds();
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char want[96];
		fake_reset(1);
		struct vram_client *c = tc_client(1);
		CUmemGenericAllocationHandle bh;
		int fd = fake_export(0, 2 * MiB, &bh);
		struct vram_grant *g = tc_grant(0, 2 * MiB);
		fake_fail(cases[i].f, 0, cases[i].code);
		int r = cuda_grant_import(c, g, fd);
		ck_assert_msg(r == cases[i].err, "%s: %d (%s)", fk_fn_names[cases[i].f], r, vram_last_error());
		snprintf(want, sizeof(want), "%s: CUDA_ERROR_", fk_fn_names[cases[i].f]);
		ck_assert_msg(strstr(vram_last_error(), want), "%s: \"%s\"", fk_fn_names[cases[i].f], vram_last_error());
		ck_assert_ptr_null(g->cuda);
		ck_assert_uint_eq(g->dptr, 0);
		ck_assert_int_eq(fake_ctx_depth(), 0);
		/* and then it works */
		fake_nofail();
		ck_assert_int_eq(cuda_grant_import(c, g, fd), 0);
		cuda_grant_unimport(g);
		close(fd);
		fake_release(bh);
		free(g);
		free(c);
		fake_assert_clean();
	}
	fake_drop_recycled();
	ck_assert_int_eq(t_count_fds(), fds0);
}
END_TEST

/* ======================================================================
 * Runtime: copies and pinning
 * ====================================================================== */

/* Imports a fresh allocation of size on device dev of c. */
static struct vram_grant *imported(struct vram_client *c, uint32_t dev, size_t size, CUmemGenericAllocationHandle *bh)
{
	int fd = fake_export((int)dev, size, bh);
	struct vram_grant *g = tc_grant(dev, size);
	ck_assert_int_eq(cuda_grant_import(c, g, fd), 0);
	close(fd);
	return g;
}

static void drop(struct vram_grant *g, CUmemGenericAllocationHandle bh)
{
	cuda_grant_unimport(g);
	fake_release(bh);
	free(g);
}

START_TEST(test_copier)
{
	struct vram_client *c = tc_client(1);
	CUmemGenericAllocationHandle bh;
	struct vram_grant *g = imported(c, 0, 4 * MiB, &bh);
	struct cuda_copier *cp;

	ck_assert_int_eq(cuda_copier_new(c, 0, 0, &cp), -EINVAL);
	ck_assert_int_eq(cuda_copier_new(c, 1, 4, &cp), -EINVAL); /* cpu */
	ck_assert_int_eq(cuda_copier_new(c, 0, 4, &cp), 0);
	ck_assert_int_eq(fk.streams, 1);
	ck_assert_int_eq(fk.events, 4);
	ck_assert_uint_eq(cuda_copier_slots(cp), 4);
	ck_assert_ptr_nonnull(cuda_copier_stream(cp));
	ck_assert_int_eq(fake_ctx_depth(), 0);

	struct stream_sink sink;
	cuda_copier_sink(cp, &sink);
	char src[8192], back[8192];
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (char)(i ^ 0x3c);
	ck_assert_int_eq(sink.copy(sink.user, g->dptr, src, 4096, 0), 0);
	ck_assert_int_eq(sink.copy(sink.user, g->dptr + 4096, src + 4096, 4096, 1), 0);
	ck_assert_int_eq(sink.wait(sink.user, 0), 0);
	ck_assert_int_eq(sink.wait(sink.user, 1), 0);
	ck_assert_int_eq(sink.wait(sink.user, 2), 0); /* nothing recorded: no wait */
	ck_assert_uint_eq(fk.calls[F_EventSynchronize], 2);
	ck_assert_int_eq(cuda_copier_dtoh(cp, back, g->dptr, sizeof(back), 3), 0);
	ck_assert_int_eq(cuda_copier_wait(cp, 3), 0);
	ck_assert_mem_eq(src, back, sizeof(src));
	/* device to device within the grant */
	ck_assert_int_eq(cuda_copier_dtod(cp, g->dptr + 2 * MiB, g->dptr, sizeof(src), 2), 0);
	ck_assert_int_eq(cuda_copier_sync(cp), 0);
	memset(back, 0, sizeof(back));
	tc_dev_read(c, 0, g->dptr + 2 * MiB, back, sizeof(back));
	ck_assert_mem_eq(src, back, sizeof(src));
	ck_assert_int_eq(fake_ctx_depth(), 0);

	/* bad slot, zero length, a copy the driver refuses, a failed wait */
	ck_assert_int_eq(sink.copy(sink.user, g->dptr, src, 16, 4), -EINVAL);
	ck_assert_int_eq(sink.wait(sink.user, 9), -EINVAL);
	ck_assert_int_eq(sink.copy(sink.user, g->dptr, src, 0, 0), 0);
	ck_assert_int_eq(sink.copy(sink.user, g->dptr + 4 * MiB - 8, src, 16, 0), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuMemcpyHtoDAsync: CUDA_ERROR_INVALID_VALUE"));
	fake_fail(F_EventRecord, 0, CUDA_ERROR_INVALID_HANDLE);
	ck_assert_int_eq(sink.copy(sink.user, g->dptr, src, 16, 0), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuEventRecord"));
	fake_nofail();
	ck_assert_int_eq(sink.copy(sink.user, g->dptr, src, 16, 0), 0);
	fake_fail(F_EventSynchronize, 0, CUDA_ERROR_UNKNOWN);
	ck_assert_int_eq(sink.wait(sink.user, 0), -EIO);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuEventSynchronize: CUDA_ERROR_UNKNOWN"));
	ck_assert_int_eq(sink.wait(sink.user, 0), 0); /* reported once */
	fake_fail(F_MemcpyDtoDAsync, 0, CUDA_ERROR_UNKNOWN);
	ck_assert_int_eq(cuda_copier_dtod(cp, g->dptr, g->dptr + MiB, 16, 0), -EIO);
	fake_fail(F_MemcpyDtoHAsync, 0, CUDA_ERROR_UNKNOWN);
	ck_assert_int_eq(cuda_copier_dtoh(cp, back, g->dptr, 16, 0), -EIO);
	fake_fail(F_CtxPushCurrent, 0, CUDA_ERROR_INVALID_CONTEXT);
	ck_assert_int_eq(sink.copy(sink.user, g->dptr, src, 16, 0), -EIO);
	fake_nofail();
	ck_assert_int_eq(fake_ctx_depth(), 0);

	cuda_copier_free(cp);
	cuda_copier_free(NULL);
	ck_assert_int_eq(fk.streams, 0);
	ck_assert_int_eq(fk.events, 0);
	drop(g, bh);
	free(c);
	fake_assert_clean();
}
END_TEST

START_TEST(test_copier_create_errors)
{
	struct vram_client *c = tc_client(1);
	struct cuda_copier *cp;
	fake_fail(F_StreamCreate, 0, CUDA_ERROR_OUT_OF_MEMORY);
	ck_assert_int_eq(cuda_copier_new(c, 0, 4, &cp), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuStreamCreate: CUDA_ERROR_OUT_OF_MEMORY"));
	fake_assert_clean();
	fake_fail(F_EventCreate, 2, CUDA_ERROR_OUT_OF_MEMORY);
	ck_assert_int_eq(cuda_copier_new(c, 0, 4, &cp), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuEventCreate"));
	fake_assert_clean();
	fake_fail(F_CtxPushCurrent, 0, CUDA_ERROR_INVALID_CONTEXT);
	ck_assert_int_eq(cuda_copier_new(c, 0, 4, &cp), -EIO);
	fake_assert_clean();
	fake_fail(F_DevicePrimaryCtxRetain, 0, CUDA_ERROR_UNKNOWN);
	ck_assert_int_eq(cuda_copier_new(c, 0, 4, &cp), -EIO);
	fake_nofail();
	free(c);
	fake_assert_clean();
}
END_TEST

START_TEST(test_sink_two_devices)
{
	fake_reset(2);
	struct vram_client *c = tc_client(2);
	CUmemGenericAllocationHandle b0, b1;
	struct vram_grant *g0 = imported(c, 0, 2 * MiB, &b0);
	struct vram_grant *g1 = imported(c, 1, 2 * MiB, &b1);
	struct cuda_sink *s;
	struct stream_sink sink;

	ck_assert_int_eq(cuda_sink_new(c, 0, &s), -EINVAL);
	ck_assert_int_eq(cuda_sink_new(c, 2, &s), 0);
	ck_assert_int_eq(cuda_sink_add_grant(s, g0), 0);
	ck_assert_int_eq(cuda_sink_add_grant(s, g1), 0);
	struct vram_grant host = { .id = 9, .size = 2 * MiB, .device = 2 };
	ck_assert_int_eq(cuda_sink_add_grant(s, &host), -EINVAL);
	ck_assert_int_eq(fk.streams, 2);
	cuda_sink_get(s, &sink);

	char a[1000], b[1000], back[1000];
	memset(a, 'a', sizeof(a));
	memset(b, 'b', sizeof(b));
	ck_assert_int_eq(sink.copy(sink.user, g0->dptr + 100, a, sizeof(a), 0), 0);
	ck_assert_int_eq(sink.copy(sink.user, g1->dptr + 200, b, sizeof(b), 0), 0);
	ck_assert_int_eq(sink.copy(sink.user, g1->dptr, b, sizeof(b), 1), 0);
	ck_assert_int_eq(sink.wait(sink.user, 0), 0);
	ck_assert_int_eq(sink.wait(sink.user, 1), 0);
	ck_assert_uint_eq(fk.calls[F_EventSynchronize], 3);
	tc_dev_read(c, 0, g0->dptr + 100, back, sizeof(back));
	ck_assert_mem_eq(a, back, sizeof(a));
	tc_dev_read(c, 1, g1->dptr + 200, back, sizeof(back));
	ck_assert_mem_eq(b, back, sizeof(b));
	/* outside every grant, or running off the end of one */
	ck_assert_int_eq(sink.copy(sink.user, 16, a, 1, 0), -EFAULT);
	ck_assert_int_eq(sink.copy(sink.user, g0->dptr + 2 * MiB - 10, a, 11, 0), -EFAULT);
	ck_assert_int_eq(sink.copy(sink.user, g0->dptr, a, 1, 7), -EINVAL);
	ck_assert_int_eq(sink.wait(sink.user, 7), -EINVAL);
	cuda_sink_free(s);
	cuda_sink_free(NULL);
	drop(g0, b0);
	drop(g1, b1);
	free(c);
	fake_assert_clean();
}
END_TEST

START_TEST(test_pin)
{
	struct vram_client *c = tc_client(1);
	size_t len = 8 * MiB + 4096;
	int mfd = memfd_create("pin-test", MFD_CLOEXEC);
	ck_assert_int_ge(mfd, 0);
	ck_assert_int_eq(ftruncate(mfd, (off_t)len), 0);
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ck_assert_ptr_ne(m, MAP_FAILED);
	struct cuda_pin *p, *p2;

	/* chunks are page-rounded (1 MiB + 1 -> 1 MiB + 4 KiB: 8 of them), so
	 * that a staging ring pinned a slot per chunk has no registration
	 * across two slots */
	ck_assert_int_eq(cuda_pin(c, 0, m, len, 1 * MiB + 1, &p), 0);
	ck_assert_int_eq(fake_count(FK_REGS), 8);
	ck_assert_int_eq(fake_ctx_depth(), 0);
	/* registered twice */
	ck_assert_int_eq(cuda_pin(c, 0, m + 4096, 4096, 0, &p2), -EBUSY);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"));
	cuda_unpin(p);
	ck_assert_int_eq(fake_count(FK_REGS), 0);

	ck_assert_int_eq(cuda_pin(c, 0, m, len, 0, &p), 0);
	ck_assert_int_eq(fake_count(FK_REGS), 1);
	cuda_unpin(p);
	cuda_unpin(NULL);

	/* the third chunk fails: the first two are given back */
	fake_fail(F_MemHostRegister, 2, CUDA_ERROR_OUT_OF_MEMORY);
	ck_assert_int_eq(cuda_pin(c, 0, m, len, 2 * MiB, &p), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "chunk 2 of 5"));
	ck_assert_int_eq(fake_count(FK_REGS), 0);
	fake_nofail();

	ck_assert_int_eq(cuda_pin(c, 0, m + 1, 4096, 0, &p), -EINVAL);
	ck_assert_int_eq(cuda_pin(c, 0, m, 0, 0, &p), -EINVAL);
	ck_assert_int_eq(cuda_pin(c, 1, m, len, 0, &p), -EINVAL); /* cpu is no CUDA device */
	munmap(m, len);
	close(mfd);
	free(c);
	fake_assert_clean();
}
END_TEST

/* ======================================================================
 * Broker and client over a socket
 * ====================================================================== */

START_TEST(test_broker_and_client)
{
	fake_reset(2);
	struct tc_live l;
	tc_live_start(&l);
	vram_client *c;
	vram_grant *g, *g2;
	struct vram_device_info d;

	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	ck_assert_str_eq(vram_client_note(c), "");
	ck_assert_int_eq(vram_device_count(c), 3);
	ck_assert_int_eq(vram_device_info(c, 1, &d), 0);
	ck_assert_str_eq(d.name, "cuda:1");
	ck_assert_uint_eq(d.backend, VRAM_BACKEND_CUDA);
	ck_assert_str_eq(d.label, "Fake GPU 1");
	ck_assert_mem_eq(d.uuid, fk.dev[1].uuid, 16);
	ck_assert_int_eq(vram_device_find(c, "GPU-20212223-2425-2627-2829-2a2b2c2d2e2f"), 1);

	ck_assert_int_eq(vram_alloc(c, 1, 3 * MiB, 0, &g), 0);
	ck_assert_uint_eq(vram_grant_size(g), 4 * MiB);
	ck_assert_uint_eq(fk.last_reserve_align, 2 * MiB); /* the import's reserve, on a granule */
	ck_assert_ptr_null(vram_grant_host_ptr(g));
	uint64_t dptr = vram_grant_device_ptr(g);
	ck_assert_uint_ne(dptr, 0);
	char *buf = malloc(4 * MiB);
	tc_dev_read(c, 1, dptr, buf, 4 * MiB);
	ck_assert(mem_is_zero(buf, 4 * MiB));
	memset(buf, 0x77, 4 * MiB);
	tc_dev_write(c, 1, dptr, buf, 4 * MiB);
	ck_assert_int_eq(vram_free(c, g), 0);

	/* The same memory, recycled with 0x77 in it, reads zero in the next
	 * grant. */
	ck_assert_int_eq(fk.recycle_size, 4 * MiB);
	ck_assert_int_eq(vram_alloc(c, 1, 4 * MiB, 0, &g), 0);
	ck_assert_int_eq(fk.recycle_fd, -1);
	tc_dev_read(c, 1, vram_grant_device_ptr(g), buf, 4 * MiB);
	ck_assert(mem_is_zero(buf, 4 * MiB));
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, VRAM_ALLOC_RECLAIMABLE, &g2), 0);

	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_eq(s->devices[0].used, 2 * MiB);
	ck_assert_uint_eq(s->devices[1].used, 4 * MiB);
	ck_assert_uint_eq(s->grants, 2);
	vram_status_free(s);

	/* The broker answers a failed cuMemCreate with the reason. */
	fake_fail(F_MemCreate, 0, CUDA_ERROR_OUT_OF_MEMORY);
	vram_grant *g3;
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g3), -ENOMEM);
	ck_assert_str_eq(vram_last_error(), "cuda:0: cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
	/* A failed import gives the grant back. */
	fake_fail(F_MemMap, 1, CUDA_ERROR_OUT_OF_MEMORY); /* broker's clearing map, then ours */
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g3), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "importing grant"));
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuMemMap: CUDA_ERROR_OUT_OF_MEMORY"));
	fake_nofail();
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_eq(s->grants, 2);
	vram_status_free(s);

	vram_close(c); /* frees both grants */
	for (int i = 0; i < 500 && broker_grant_count(l.b); i++)
		t_sleep_ms(10);
	ck_assert_uint_eq(broker_grant_count(l.b), 0);
	ck_assert_int_eq(fake_count(FK_HANDLES), 0);
	ck_assert_int_eq(fk.dev[0].ctx_refs, 1); /* the broker's */
	tc_live_stop(&l);
	free(buf);
	fake_assert_clean();
}
END_TEST

/* A hand-written checkpoint whose tensors sit at odd offsets (an F32 at 6:
 * not 4-aligned); their data in *ret_data (free()), the file's data
 * section. */
static void write_odd_checkpoint(const char *path, uint8_t **ret_data, size_t *ret_len)
{
	static const struct t_tensor t[] = {
		{ "model.diffusion_model.input_blocks.0.0.weight", "F16", 3, 2 },
		{ "model.diffusion_model.input_blocks.0.0.bias", "F32", 5, 4 },
		{ "model.diffusion_model.input_blocks.1.0.weight", "F8_E4M3", 7, 1 },
		{ "model.diffusion_model.input_blocks.1.0.bias", "F32", 70000, 4 },
		{ "model.diffusion_model.input_blocks.2.0.weight", "F8_E5M2", 3001, 1 },
	};
	size_t len = 0;
	for (size_t i = 0; i < ARRAY_SIZE(t); i++)
		len += t[i].elems * t[i].esize;
	uint8_t *data = malloc(len);
	ck_assert_ptr_nonnull(data);
	uint64_t x = 88172645463325252ull;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		data[i] = (uint8_t)x;
	}
	ck_assert_uint_eq(t_write_safetensors(path, t, ARRAY_SIZE(t), data), len);
	*ret_data = data;
	*ret_len = len;
}

/* vram_load onto a CUDA device, end to end through a live broker: the
 * staging ring pinned, async H2D per slot, and with cast_to the H2D into
 * device scratch plus the cast kernel (run by the fake as the C reference)
 * into an aligned destination, although one F32 tensor sits at an odd file
 * offset.  vram_device_prepare holds the primary context until vram_close. */
START_TEST(test_load_cuda)
{
	fake_reset(1);
	struct tc_live l;
	tc_live_start(&l);
	char file[300];
	snprintf(file, sizeof(file), "%s/odd.safetensors", l.dir);
	uint8_t *data;
	size_t dlen;
	write_odd_checkpoint(file, &data, &dlen);
	vram_model *m;
	ck_assert_msg(vram_model_open(file, &m) == 0, "%s", vram_last_error());
	vram_client *c;
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	/* an image that holds every cast kernel (the fake runs them as the C
	 * references) */
	static char image[4096];
	size_t il = (size_t)snprintf(image, sizeof(image), "FATBIN") + 1;
	for (int a = 0; a < 5; a++)
		for (int b = 0; b < 5; b++)
			if (a != b)
				il += (size_t)snprintf(image + il, sizeof(image) - il, "%s",
						       vk_cast_kernel_name(fk_dtypes[a], fk_dtypes[b])) + 1;
	fake_set_image(image, il);
	cuda_kernels_set_image(image, il);

	ck_assert_int_eq(fk.dev[0].ctx_refs, 1); /* the broker's */
	ck_assert_int_eq(vram_device_prepare(c, 0), 0);
	ck_assert_int_eq(fk.dev[0].ctx_refs, 2);
	ck_assert_int_eq(vram_device_prepare(c, 0), 0);
	ck_assert_int_eq(fk.dev[0].ctx_refs, 2);
	ck_assert_int_eq(vram_device_prepare(c, 1), 0); /* cpu: nothing to do */
	ck_assert_int_eq(vram_device_prepare(c, 9), -ENODEV);

	for (int cast = 0; cast < 3; cast++) { /* 2: converting, not prepared */
		if (cast == 2) {
			vram_close(c);
			ck_assert_int_eq(fk.dev[0].ctx_refs, 1);
			ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
		}
		struct vram_load_options o;
		vram_load_options_init(&o);
		o.chunk_size = 16384;  /* several slots, elements across slot ends */
		o.staging_slots = 3;
		o.cast_to = cast ? VRAM_DTYPE_BF16 : 0;
		unsigned launches = fk.launches;
		vram_loaded *ld;
		int lr = vram_load(c, m, NULL, 0, &o, &ld);
		ck_assert_msg(lr == 0, "load: %d %s", lr, vram_last_error());
		int n = vram_model_tensor_count(m), converted = 0;
		for (int i = 0; i < n; i++) {
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			vram_model_tensor(m, (uint32_t)i, &ti);
			const uint8_t *src = data + (ti.file_offset - (vram_model_file_size(m) - dlen));
			bool conv = cast && ti.dtype != VRAM_DTYPE_F16;
			uint32_t dt = conv ? VRAM_DTYPE_BF16 : ti.dtype;
			uint64_t nb = vram_loaded_tensor_nbytes(ld, (uint32_t)i);
			ck_assert_int_eq(vram_loaded_tensor_dtype(ld, (uint32_t)i), (int)dt);
			uint64_t dptr = vram_loaded_tensor_device_ptr(ld, (uint32_t)i);
			ck_assert_uint_ne(dptr, 0);
			ck_assert_uint_eq(dptr % (vram_dtype_bits(dt) / 8), 0);
			uint8_t *got = malloc(nb + 1), *want = malloc(nb + 1);
			ck_assert_ptr_nonnull(got);
			ck_assert_ptr_nonnull(want);
			tc_dev_read(c, 0, dptr, got, nb);
			uint64_t elems = ti.nbytes / (vram_dtype_bits(ti.dtype) / 8);
			ck_assert_int_eq(vk_cast(src, ti.dtype, want, dt, elems), 0);
			ck_assert_uint_eq(nb, elems * (vram_dtype_bits(dt) / 8));
			ck_assert_msg(memcmp(got, want, nb) == 0, "tensor %s (cast %d) differs", ti.name, cast);
			converted += conv;
			free(got);
			free(want);
		}
		struct vram_load_stats st = { .struct_size = sizeof(st) };
		ck_assert_int_eq(vram_loaded_stats(ld, &st), 0);
		ck_assert_uint_eq(st.converted, (uint64_t)converted);
		if (cast)
			ck_assert_uint_gt(fk.launches, launches + 4); /* kernels ran, elements split across slots */
		else
			ck_assert_uint_eq(fk.launches, launches);
		vram_unload(ld);
	}
	/* a failing kernel launch fails the load with the driver's words, and
	 * leaves nothing behind */
	struct vram_load_options o;
	vram_load_options_init(&o);
	o.cast_to = VRAM_DTYPE_F16;
	vram_loaded *ld;
	fake_fail(F_LaunchKernel, 0, CUDA_ERROR_LAUNCH_FAILED);
	ck_assert_int_lt(vram_load(c, m, NULL, 0, &o, &ld), 0);
	ck_assert_msg(strstr(vram_last_error(), "cuLaunchKernel") != NULL, "%s", vram_last_error());
	fake_nofail();
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_eq(s->grants, 0);
	vram_status_free(s);

	vram_close(c);
	ck_assert_int_eq(fk.dev[0].ctx_refs, 1);
	cuda_kernels_set_image(NULL, 0);
	fake_set_image(NULL, 0);
	for (int i = 0; i < 500 && broker_grant_count(l.b); i++)
		t_sleep_ms(10);
	ck_assert_uint_eq(broker_grant_count(l.b), 0);
	vram_model_close(m);
	free(data);
	tc_live_stop(&l);
	fake_assert_clean();
}
END_TEST

/* ======================================================================
 * The pager on a CUDA device: stream-ordered release
 * ====================================================================== */

#define SR_LAYERS 4
#define SR_ELEMS (512u * 1024u) /* F16: 1 MiB a layer, a 2 MiB slot each */

/* A unet of SR_LAYERS donor layers (all on the cpu pool, computed on
 * cuda:0) paged through a window of two slots. */
struct sr_env {
	struct tc_live live;
	uint8_t *data;           /* the file's data section */
	vram_model *m;
	vram_client *c;
	vram_plan *plan;
	vram_loaded *l;
	vram_pager *p;
};

static void sr_open(struct sr_env *e)
{
	static const struct t_tensor t[SR_LAYERS] = {
		{ "model.diffusion_model.input_blocks.0.0.weight", "F16", SR_ELEMS, 2 },
		{ "model.diffusion_model.input_blocks.1.0.weight", "F16", SR_ELEMS, 2 },
		{ "model.diffusion_model.input_blocks.2.0.weight", "F16", SR_ELEMS, 2 },
		{ "model.diffusion_model.input_blocks.3.0.weight", "F16", SR_ELEMS, 2 },
	};
	char file[300];
	size_t len = (size_t)SR_LAYERS * SR_ELEMS * 2;

	fake_reset(1);
	tc_live_start(&e->live);
	snprintf(file, sizeof(file), "%s/sr.safetensors", e->live.dir);
	e->data = malloc(len);
	ck_assert_ptr_nonnull(e->data);
	for (size_t i = 0; i < len; i++)
		e->data[i] = (uint8_t)(i * 7 + i / (SR_ELEMS * 2) * 31);
	ck_assert_uint_eq(t_write_safetensors(file, t, SR_LAYERS, e->data), len);
	ck_assert_msg(vram_model_open(file, &e->m) == 0, "%s", vram_last_error());
	ck_assert_int_eq(vram_model_layer_count(e->m), SR_LAYERS);
	ck_assert_int_eq(vram_connect(e->live.sock, "t", &e->c), 0);

	struct vram_plan_device devs[4];
	uint32_t nd = 0;
	for (int i = 0; i < 4; i++)
		devs[i].struct_size = sizeof(devs[i]);
	ck_assert_int_eq(vram_plan_devices_from_client(e->c, devs, 4, &nd), 0);
	struct vram_plan_options po;
	vram_plan_options_init(&po);
	po.unet_compute_device = "cuda:0";
	po.unet_expert_mode_allocations = "cpu,*";
	ck_assert_msg(vram_plan_create(e->m, &po, devs, nd, &e->plan) == 0, "%s", vram_last_error());
	ck_assert_msg(vram_load(e->c, e->m, e->plan, 0, NULL, &e->l) == 0, "%s", vram_last_error());
	for (uint32_t i = 0; i < SR_LAYERS; i++)
		ck_assert_int_eq(vram_loaded_tensor_device(e->l, i), 1); /* cpu */
	struct vram_pager_options o;
	vram_pager_options_init(&o);
	o.window_bytes = 4 * MiB; /* two slots */
	o.flags = VRAM_PAGER_NO_RECLAIM;
	ck_assert_msg(vram_pager_create(e->l, e->plan, &o, &e->p) == 0, "%s", vram_last_error());
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	ck_assert_int_eq(vram_pager_stats(e->p, &st), 0);
	ck_assert_uint_eq(st.window_slots, 2);
}

static void sr_close(struct sr_env *e)
{
	vram_pager_free(e->p);
	vram_unload(e->l);
	vram_plan_free(e->plan);
	vram_close(e->c);
	vram_model_close(e->m);
	for (int i = 0; i < 500 && broker_grant_count(e->live.b); i++)
		t_sleep_ms(10);
	ck_assert_uint_eq(broker_grant_count(e->live.b), 0);
	tc_live_stop(&e->live);
	free(e->data);
}

/* Layer li (one tensor, the layer's index) as acquired: its device
 * address, after checking that its bytes there are the file's. */
static uint64_t sr_check(struct sr_env *e, uint32_t li)
{
	uint64_t d = vram_pager_tensor_device_ptr(e->p, li);
	ck_assert_uint_ne(d, 0);
	uint8_t *got = malloc(SR_ELEMS * 2);
	ck_assert_ptr_nonnull(got);
	tc_dev_read(e->c, 0, d, got, SR_ELEMS * 2);
	ck_assert_msg(memcmp(got, e->data + (size_t)li * SR_ELEMS * 2, SR_ELEMS * 2) == 0, "layer %u differs", li);
	free(got);
	return d;
}

/* Whether the memory at device address d holds layer li's bytes. */
static bool sr_holds(struct sr_env *e, uint64_t d, uint32_t li)
{
	uint8_t *got = malloc(SR_ELEMS * 2);
	ck_assert_ptr_nonnull(got);
	tc_dev_read(e->c, 0, d, got, SR_ELEMS * 2);
	bool same = memcmp(got, e->data + (size_t)li * SR_ELEMS * 2, SR_ELEMS * 2) == 0;
	free(got);
	return same;
}

struct sr_acquire {
	vram_pager *p;
	uint32_t layer;
	int r;
	atomic_int done;
};

static void *sr_acquire_main(void *arg)
{
	struct sr_acquire *a = arg;
	a->r = vram_pager_acquire(a->p, a->layer);
	atomic_store(&a->done, 1);
	return NULL;
}

/* Completes the held work once a thread waits for it; *arg: how many
 * waited. */
static void *sr_complete_main(void *arg)
{
	for (int i = 0; i < 3000 && fake_sync_waiters() == 0; i++)
		t_sleep_ms(5);
	*(int *)arg = fake_sync_waiters();
	fake_complete();
	return NULL;
}

static uint64_t sr_prefetches(struct sr_env *e)
{
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	ck_assert_int_eq(vram_pager_stats(e->p, &st), 0);
	return st.prefetches;
}

/* A slot released on a stream is not reused, by prefetch or by another
 * layer's acquire, while the event recorded at release is pending: the
 * other slot is taken, and with both released on the stream an acquire
 * waits for the GPU (cuEventSynchronize), then takes the older one. */
START_TEST(test_pager_release_on_stream)
{
	struct sr_env e;
	sr_open(&e);
	CUstream s = fake_stream_new(0);
	fake_stream_hold(s); /* its kernels do not finish until fake_complete */

	/* L0 into slot A, L1 prefetched into slot B */
	ck_assert_msg(vram_pager_acquire(e.p, 0) == 0, "%s", vram_last_error());
	uint64_t a = sr_check(&e, 0);
	uint64_t pf = sr_prefetches(&e);
	ck_assert_uint_eq(pf, 1);
	unsigned records = fk.calls[F_EventRecord];
	ck_assert_msg(vram_pager_release_on_stream(e.p, 0, s) == 0, "%s", vram_last_error());
	ck_assert_uint_gt(fk.calls[F_EventRecord], records);
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, 0, s), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "layer 0 is not acquired");

	/* L1 from B; L2 is not prefetched into A (L0 is not wanted soon, so
	 * without the fence it would be) */
	ck_assert_int_eq(vram_pager_acquire(e.p, 1), 0);
	uint64_t b = sr_check(&e, 1);
	ck_assert_uint_ne(a, b);
	ck_assert_uint_eq(sr_prefetches(&e), pf);
	ck_assert_int_eq(vram_pager_release(e.p, 1), 0);

	/* L2's acquire takes B although A is the least recently used */
	ck_assert_int_eq(vram_pager_acquire(e.p, 2), 0);
	ck_assert_uint_eq(sr_check(&e, 2), b);
	ck_assert(sr_holds(&e, a, 0)); /* what the queued kernels read */
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, 2, s), 0);

	/* both slots fenced: L3's acquire waits for the GPU */
	struct sr_acquire w = { .p = e.p, .layer = 3 };
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, sr_acquire_main, &w), 0);
	for (int i = 0; i < 3000 && fake_sync_waiters() == 0; i++)
		t_sleep_ms(5);
	ck_assert_int_eq(fake_sync_waiters(), 1);
	ck_assert_int_eq(atomic_load(&w.done), 0);
	ck_assert(sr_holds(&e, a, 0));
	ck_assert(sr_holds(&e, b, 2));
	fake_complete();
	pthread_join(th, NULL);
	ck_assert_msg(w.r == 0, "%s", vram_last_error());
	ck_assert_uint_eq(sr_check(&e, 3), a); /* the older fence's slot */

	/* Released on two streams (acquires nest): the second stream waits
	 * for the first's event before recording, so that the fence covers
	 * both. */
	CUstream s2 = fake_stream_new(0);
	ck_assert_int_eq(vram_pager_acquire(e.p, 3), 0);
	fake_stream_hold(s);
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, 3, s), 0);
	ck_assert_uint_eq(fk.stream_waits, 0);
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, 3, s2), 0);
	ck_assert_uint_eq(fk.stream_waits, 1);
	/* the legacy default stream (NULL) is a stream too */
	ck_assert_int_eq(vram_pager_acquire(e.p, 3), 0);
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, 3, NULL), 0);
	ck_assert_uint_eq(fk.stream_waits, 2);
	fake_complete();

	/* errors: no such layer; a failing record leaves the layer acquired */
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, SR_LAYERS, s), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "no layer 4 (the model has 4)");
	ck_assert_int_eq(vram_pager_release_on_stream(NULL, 0, s), -EINVAL);
	ck_assert_int_eq(vram_pager_acquire(e.p, 1), 0);
	fake_fail(F_EventRecord, 0, CUDA_ERROR_UNKNOWN);
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, 1, s), -EIO);
	ck_assert_msg(strstr(vram_last_error(), "layer 1 (still acquired)") &&
		      strstr(vram_last_error(), "cuEventRecord: CUDA_ERROR_UNKNOWN"), "%s", vram_last_error());
	fake_nofail();
	ck_assert_int_eq(vram_pager_release(e.p, 1), 0);
	ck_assert_int_eq(vram_pager_release(e.p, 1), -EINVAL);

	/* a fence pending at free: the pager waits for the GPU before it
	 * frees the window */
	ck_assert_int_eq(vram_pager_acquire(e.p, 2), 0);
	fake_stream_hold(s2);
	ck_assert_int_eq(vram_pager_release_on_stream(e.p, 2, s2), 0);
	int waiters = 0;
	ck_assert_int_eq(pthread_create(&th, NULL, sr_complete_main, &waiters), 0);
	vram_pager_free(e.p);
	e.p = NULL;
	pthread_join(th, NULL);
	ck_assert_int_eq(waiters, 1);
	sr_close(&e);
	fake_stream_free(s);
	fake_stream_free(s2);
	fake_assert_clean();
}
END_TEST

START_TEST(test_client_killed)
{
	/* A client killed while it holds grants: the broker releases its
	 * handles (the process's own went with it).  The child speaks the
	 * protocol raw; it never imports. */
	int go[2], ready[2];
	ck_assert_int_eq(pipe(go), 0);
	ck_assert_int_eq(pipe(ready), 0);
	struct tc_live l;
	tc_live_init(&l);
	pid_t pid = fork(); /* before any thread exists */
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char x;
		if (read(go[0], &x, 1) != 1)
			_exit(2);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		str_copy(sa.sun_path, l.sock, sizeof(sa.sun_path));
		int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			_exit(3);
		static char buf[VRAMD_MSG_MAX];
		int fds[PROTO_MAX_FDS], nfds;
		struct vramd_hello h;
		memset(&h, 0, sizeof(h));
		proto_hdr_init(&h.hdr, VRAMD_HELLO, sizeof(h), 1);
		if (proto_send(fd, &h, sizeof(h), -1, 0) < 0 || proto_recv(fd, buf, sizeof(buf), fds, &nfds, 0) <= 0)
			_exit(4);
		for (int i = 0; i < 3; i++) {
			struct vramd_alloc a;
			memset(&a, 0, sizeof(a));
			proto_hdr_init(&a.hdr, VRAMD_ALLOC, sizeof(a), 2 + (uint64_t)i);
			a.device = 0;
			a.size = 2 * MiB;
			if (proto_send(fd, &a, sizeof(a), -1, 0) < 0 || proto_recv(fd, buf, sizeof(buf), fds, &nfds, 0) <= 0 ||
			    ((struct vramd_hdr *)buf)->opcode != VRAMD_ALLOC_REPLY || nfds != 1)
				_exit(5);
		}
		if (write(ready[1], "r", 1) != 1)
			_exit(6);
		pause();
		_exit(0);
	}
	tc_live_run(&l);
	ck_assert_int_eq(write(go[1], "g", 1), 1);
	char x;
	struct pollfd pf = { .fd = ready[0], .events = POLLIN };
	ck_assert_int_eq(poll(&pf, 1, 10000), 1);
	ck_assert_int_eq(read(ready[0], &x, 1), 1);
	ck_assert_uint_eq(broker_grant_count(l.b), 3);
	ck_assert_int_eq(fake_count(FK_HANDLES), 3);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	for (int i = 0; i < 500 && (broker_client_count(l.b) || broker_grant_count(l.b)); i++)
		t_sleep_ms(10);
	ck_assert_uint_eq(broker_client_count(l.b), 0);
	ck_assert_uint_eq(broker_grant_count(l.b), 0);
	ck_assert_int_eq(fake_count(FK_HANDLES), 0);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 0);
	tc_live_stop(&l);
	close(go[0]);
	close(go[1]);
	close(ready[0]);
	close(ready[1]);
	fake_assert_clean();
}
END_TEST

/* ======================================================================
 * Kernels
 * ====================================================================== */

static const char fk_test_image[] = "FATBIN\0vk_cast_f16_f32\0vk_cast_f32_bf16\0vk_lora_merge_f16\0";

START_TEST(test_kernels_launch)
{
	struct vram_client *c = tc_client(1);
	CUmemGenericAllocationHandle bh;
	struct vram_grant *g = imported(c, 0, 2 * MiB, &bh);
	fake_set_image(fk_test_image, sizeof(fk_test_image));
	cuda_kernels_set_image(fk_test_image, sizeof(fk_test_image));

	/* f16 -> f32 of 1000 elements: kernel, grid, block, arguments, result. */
	uint16_t h[1000];
	float want[1000], got[1000];
	for (int i = 0; i < 1000; i++)
		h[i] = (uint16_t)(0x3c00 + i);
	ck_assert_int_eq(vk_cast(h, VRAM_DTYPE_F16, want, VRAM_DTYPE_F32, 1000), 0);
	tc_dev_write(c, 0, g->dptr, h, sizeof(h));
	uint64_t dst = g->dptr + MiB;
	ck_assert_int_eq(vram_gpu_cast(c, 0, dst, VRAM_DTYPE_F32, g->dptr, VRAM_DTYPE_F16, 1000), 0);
	ck_assert_str_eq(fk.launch.name, "vk_cast_f16_f32");
	ck_assert_uint_eq(fk.launch.grid[0], vk_cast_grid(1000));
	ck_assert_uint_eq(fk.launch.grid[1], 1);
	ck_assert_uint_eq(fk.launch.block[0], VK_CAST_BLOCK);
	ck_assert_uint_eq(fk.launch.block[1], 1);
	ck_assert_uint_eq(fk.launch.shared, 0);
	ck_assert_uint_eq(fk.launch.a[0], g->dptr);
	ck_assert_uint_eq(fk.launch.a[1], dst);
	ck_assert_uint_eq(fk.launch.a[2], 1000);
	ck_assert_uint_eq(fk.launch.a[3], 0);
	tc_dev_read(c, 0, dst, got, sizeof(got));
	ck_assert_mem_eq(got, want, sizeof(got));
	/* Loaded once per call's handle, unloaded when the last put. */
	ck_assert_uint_eq(fk.calls[F_ModuleLoadData], 1);
	ck_assert_uint_eq(fk.calls[F_ModuleUnload], 1);
	ck_assert_ptr_eq(fk.last_image, fk_test_image);

	/* Held across launches: one load, functions cached. */
	struct cuda_dev *d;
	struct cuda_kernels *k;
	ck_assert_int_eq(cuda_dev_get(c, 0, &d), 0);
	ck_assert_int_eq(cuda_kernels_get(d, &k), 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(cuda_cast_launch(d, NULL, dst, VRAM_DTYPE_BF16, dst, VRAM_DTYPE_F32, 10,
						  VK_CAST_SATFINITE), 0);
	ck_assert_str_eq(fk.launch.name, "vk_cast_f32_bf16");
	ck_assert_uint_eq(fk.launch.a[3], VK_CAST_SATFINITE);
	ck_assert_uint_eq(fk.calls[F_ModuleLoadData], 2);
	ck_assert_uint_eq(fk.calls[F_ModuleGetFunction], 2);
	/* LoRA: grid from vk_lora_grid, block 32x8, every parameter. */
	ck_assert_int_eq(cuda_lora_launch(d, NULL, g->dptr, VRAM_DTYPE_F16, dst, dst + 4096, 40, 70, 3, 0.5f,
					  99), 0);
	uint32_t gx, gy;
	vk_lora_grid(40, 70, &gx, &gy);
	ck_assert_str_eq(fk.launch.name, "vk_lora_merge_f16");
	ck_assert_uint_eq(fk.launch.grid[0], gx);
	ck_assert_uint_eq(fk.launch.grid[1], gy);
	ck_assert_uint_eq(fk.launch.block[0], VK_LORA_BLOCK_X);
	ck_assert_uint_eq(fk.launch.block[1], VK_LORA_BLOCK_Y);
	ck_assert_uint_eq(fk.launch.a[3], 40);
	ck_assert_uint_eq(fk.launch.a[4], 70);
	ck_assert_uint_eq(fk.launch.a[5], 3);
	float sc;
	memcpy(&sc, &fk.launch.a[6], sizeof(sc));
	ck_assert(sc == 0.5f);
	ck_assert_uint_eq(fk.launch.a[7], 99);
	/* A kernel the image lacks. */
	ck_assert_int_eq(cuda_cast_launch(d, NULL, dst, VRAM_DTYPE_F8_E4M3, dst, VRAM_DTYPE_F32, 10, 0),
			 -EIO);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuModuleGetFunction"));
	cuda_kernels_put(k);
	cuda_dev_put(d);

	/* Unsupported pairs, no work, no fatbin. */
	unsigned before = fk.calls[F_LaunchKernel];
	ck_assert_int_eq(vram_gpu_cast(c, 0, dst, VRAM_DTYPE_I32, dst, VRAM_DTYPE_F32, 10), -EINVAL);
	ck_assert_int_eq(vram_gpu_lora_merge(c, 0, dst, VRAM_DTYPE_I8, dst, dst, 1, 1, 1, 1.0f, 0), -EINVAL);
	ck_assert_int_eq(vram_gpu_lora_merge(c, 0, dst, VRAM_DTYPE_F16, dst, dst, 1, 1, 0, 1.0f, 0), -EINVAL);
	ck_assert_int_eq(vram_gpu_cast(c, 0, dst, VRAM_DTYPE_F16, dst, VRAM_DTYPE_F32, 0), 0);
	cuda_kernels_set_image(fk_test_image, 0);
	ck_assert_int_eq(vram_gpu_cast(c, 0, dst, VRAM_DTYPE_F16, dst, VRAM_DTYPE_F32, 10), -ENOTSUP);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "without nvcc"));
	ck_assert_uint_eq(fk.calls[F_LaunchKernel], before);
	cuda_kernels_set_image(fk_test_image, sizeof(fk_test_image));

	/* Every entry point failing. */
	enum fk_fn fail[] = { F_ModuleLoadData, F_ModuleGetFunction, F_LaunchKernel, F_StreamSynchronize };
	for (size_t i = 0; i < ARRAY_SIZE(fail); i++) {
		fake_fail(fail[i], 0, CUDA_ERROR_OUT_OF_MEMORY);
		ck_assert_int_eq(vram_gpu_cast(c, 0, dst, VRAM_DTYPE_F32, g->dptr, VRAM_DTYPE_F16, 10), -ENOMEM);
		ck_assert_msg(strstr(vram_last_error(), fk_fn_names[fail[i]]), "%s", vram_last_error());
		fake_nofail();
	}
	cuda_kernels_set_image(NULL, 0);
	fake_set_image(NULL, 0);
	drop(g, bh);
	free(c);
	fake_assert_clean();
}
END_TEST

/* ======================================================================
 * The UVM pager (runtime/uvm.c)
 * ====================================================================== */

#define UVM_NLAYERS 4
#define UVM_FLOATS 1024 /* 4 KiB per layer */

struct uvm_fx {
	char *dir;
	vram_model *m;
	vram_plan *plan;
	struct vram_client *c;
	vram_loaded *l;
	struct vram_grant *g[2];       /* [0] resident (cuda:0), [1] donor (cpu) */
	uint8_t *donor;                /* host memory of the donor grant */
	float data[UVM_NLAYERS][UVM_FLOATS];
	int layer_dev[UVM_NLAYERS];    /* broker device index per layer */
	uint32_t ndonor;
};

/* A hand-written safetensors file of UVM_NLAYERS unet layers, planned on
 * cuda:0 and cpu (half of the unet donated by the cpu), "loaded" by hand:
 * resident layers in a cuda:0 grant (an address that is only compared),
 * donor layers in a host-mappable cpu grant. */
static void uvm_fx_start(struct uvm_fx *f)
{
	memset(f, 0, sizeof(*f));
	f->dir = t_tmpdir();
	ck_assert_ptr_nonnull(f->dir);
	char file[300];
	snprintf(file, sizeof(file), "%s/uvm.safetensors", f->dir);
	char hdr[2048];
	size_t hl = 0;
	hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl, "{");
	for (int i = 0; i < UVM_NLAYERS; i++) {
		size_t b = sizeof(f->data[0]);
		hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl,
				       "%s\"model.diffusion_model.input_blocks.%d.0.weight\":{\"dtype\":\"F32\","
				       "\"shape\":[%d],\"data_offsets\":[%zu,%zu]}",
				       i ? "," : "", i, UVM_FLOATS, i * b, (i + 1) * b);
		for (int k = 0; k < UVM_FLOATS; k++)
			f->data[i][k] = (float)(i * 100000 + k);
	}
	hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl, "}");
	while (hl % 8)
		hdr[hl++] = ' ';
	ck_assert_uint_lt(hl, sizeof(hdr));
	FILE *fp = fopen(file, "wb");
	ck_assert_ptr_nonnull(fp);
	uint64_t n = hl;
	ck_assert_uint_eq(fwrite(&n, 8, 1, fp), 1);
	ck_assert_uint_eq(fwrite(hdr, 1, hl, fp), hl);
	ck_assert_uint_eq(fwrite(f->data, 1, sizeof(f->data), fp), sizeof(f->data));
	ck_assert_int_eq(fclose(fp), 0);
	ck_assert_msg(vram_model_open(file, &f->m) == 0, "%s", vram_last_error());
	ck_assert_int_eq(vram_model_layer_count(f->m), UVM_NLAYERS);

	struct vram_plan_device devs[4];
	uint32_t nd = 0;
	for (int i = 0; i < 4; i++)
		devs[i].struct_size = sizeof(devs[i]);
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=1GiB,cpu=1GiB", devs, 4, &nd), 0);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_compute_device = "cuda:0";
	o.unet_expert_mode_allocations = "cuda:0,50%;cpu,*";
	ck_assert_msg(vram_plan_create(f->m, &o, devs, nd, &f->plan) == 0, "%s", vram_last_error());

	f->c = tc_client(1); /* cuda:0 = 0, cpu = 1 */
	f->g[0] = tc_grant(0, 2 * MiB);
	f->g[0]->dptr = 0x7a0000000000ull;
	f->g[1] = tc_grant(1, sizeof(f->data));
	f->g[1]->backend = VRAM_BACKEND_CPU;
	vram_loaded *l = calloc(1, sizeof(*l));
	ck_assert_ptr_nonnull(l);
	l->client = f->c;
	l->model = f->m;
	l->ntensors = UVM_NLAYERS;
	l->ngrants = 2;
	l->tensors = calloc(UVM_NLAYERS, sizeof(*l->tensors));
	l->grants = calloc(2, sizeof(*l->grants));
	ck_assert(l->tensors && l->grants);
	l->grants[0] = (struct loaded_grant){ .grant = f->g[0], .device = 0, .component = VRAM_COMP_UNET };
	l->grants[1] = (struct loaded_grant){ .grant = f->g[1], .device = 1, .component = VRAM_COMP_UNET };
	uint64_t off[2] = { 0, 0 };
	for (uint32_t li = 0; li < UVM_NLAYERS; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		ck_assert_int_eq(vram_model_layer(f->m, li, &info), 0);
		ck_assert_uint_eq(info.ntensors, 1);
		uint32_t t = info.first_tensor;
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		ck_assert_int_eq(vram_model_tensor(f->m, t, &ti), 0);
		ck_assert_uint_eq(ti.nbytes, sizeof(f->data[0]));
		int pd = vram_plan_layer_device(f->plan, li);
		ck_assert_int_ge(pd, 0);
		const char *dn = vram_plan_device_name(f->plan, (uint32_t)pd);
		uint32_t gi = strcmp(dn, "cuda:0") == 0 ? 0 : 1;
		ck_assert_msg(gi == 0 || strcmp(dn, "cpu") == 0, "layer %u on %s", li, dn);
		f->layer_dev[li] = (int)gi;
		f->ndonor += gi;
		l->tensors[t] = (struct loaded_tensor){ .grant = gi, .offset = off[gi], .dtype = VRAM_DTYPE_F32,
							.nbytes = sizeof(f->data[0]) };
		off[gi] += 256 * 1024; /* far apart: a wrong offset reads zeros or another layer */
	}
	ck_assert_msg(f->ndonor > 0 && f->ndonor < UVM_NLAYERS, "%u donor layers", f->ndonor);
	/* the donor layers' bytes, as the load would have put them */
	f->donor = calloc(1, off[1] ? off[1] : 1);
	ck_assert_ptr_nonnull(f->donor);
	f->g[1]->host = f->donor;
	f->g[1]->size = off[1];
	for (uint32_t li = 0; li < UVM_NLAYERS; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(f->m, li, &info);
		uint32_t t = info.first_tensor;
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(f->m, t, &ti);
		size_t idx = (size_t)(ti.file_offset - (8 + hl)) / sizeof(f->data[0]);
		ck_assert_uint_lt(idx, UVM_NLAYERS);
		if (l->tensors[t].grant == 1)
			memcpy(f->donor + l->tensors[t].offset, f->data[idx], sizeof(f->data[0]));
	}
	f->l = l;
}

static void uvm_fx_stop(struct uvm_fx *f)
{
	free(f->l->tensors);
	free(f->l->grants);
	free(f->l);
	free(f->g[0]);
	free(f->g[1]);
	free(f->donor);
	free(f->c);
	vram_plan_free(f->plan);
	vram_model_close(f->m);
	t_rmtree(f->dir);
}

/* The file bytes of layer li's (only) tensor. */
static const void *uvm_file_bytes(struct uvm_fx *f, uint32_t li, uint32_t *ret_tensor)
{
	struct vram_layer_info info = { .struct_size = sizeof(info) };
	vram_model_layer(f->m, li, &info);
	*ret_tensor = info.first_tensor;
	struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
	vram_model_tensor(f->m, info.first_tensor, &ti);
	const uint8_t *base = (const uint8_t *)f->data;
	struct vram_tensor_info t0 = { .struct_size = sizeof(t0) };
	uint64_t min = UINT64_MAX;
	for (uint32_t t = 0; t < UVM_NLAYERS; t++) {
		vram_model_tensor(f->m, t, &t0);
		if (t0.file_offset < min)
			min = t0.file_offset;
	}
	return base + (ti.file_offset - min);
}

START_TEST(test_uvm_pager)
{
	struct uvm_fx f;
	uvm_fx_start(&f);
	vram_uvm_pager *p = NULL;

	/* depth over 64 */
	ck_assert_int_eq(vram_uvm_pager_create(f.l, f.plan, 65, &p), -EINVAL);
	ck_assert_ptr_null(p);

	/* more donor bytes (ndonor 2 MiB layers) than the card has free */
	size_t saved_free = fk.dev[0].free;
	fk.dev[0].free = 2 * MiB * f.ndonor - 1;
	ck_assert_int_eq(vram_uvm_pager_create(f.l, f.plan, 1, &p), -ENOMEM);
	ck_assert_ptr_null(p);
	ck_assert_msg(strstr(vram_last_error(), "cuda:0") && strstr(vram_last_error(), "more than"), "%s",
		      vram_last_error());
	ck_assert_uint_eq(fk.calls[F_MemAllocManaged], 0);
	fk.dev[0].free = saved_free;
	fake_assert_clean();

	/* exactly what is free is fine */
	fk.dev[0].free = 2 * MiB * f.ndonor;
	ck_assert_msg(vram_uvm_pager_create(f.l, f.plan, 1, &p) == 0, "%s", vram_last_error());
	vram_uvm_pager_free(p);
	p = NULL;
	fk.dev[0].free = saved_free;
	fake_assert_clean();
	fk.nucall = 0;
	memset(fk.calls, 0, sizeof(fk.calls));

	ck_assert_msg(vram_uvm_pager_create(f.l, f.plan, 1, &p) == 0, "%s", vram_last_error());
	ck_assert_uint_eq(fk.calls[F_MemAllocManaged], 1);
	int mi = -1;
	for (int i = 0; i < FK_MAX; i++)
		if (fk.managed[i].va)
			mi = i;
	ck_assert_int_ge(mi, 0);
	ck_assert_uint_eq(fk.managed[mi].size, 2 * MiB * f.ndonor);
	ck_assert_int_eq(fk.managed[mi].dev, 0);
	CUdeviceptr mbase = (CUdeviceptr)(uintptr_t)fk.managed[mi].va;
	/* advice on the whole allocation: preferred location host, accessed
	 * by device 0; nothing prefetched yet */
	ck_assert_uint_eq(fk.nucall, 2);
	ck_assert_int_eq(fk.ucall[0].fn, F_MemAdvise);
	ck_assert_int_eq(fk.ucall[0].advice, CU_MEM_ADVISE_SET_PREFERRED_LOCATION);
	ck_assert_int_eq(fk.ucall[0].loc_type, CU_MEM_LOCATION_TYPE_HOST);
	ck_assert_uint_eq(fk.ucall[0].p, mbase);
	ck_assert_uint_eq(fk.ucall[0].n, fk.managed[mi].size);
	ck_assert_int_eq(fk.ucall[1].fn, F_MemAdvise);
	ck_assert_int_eq(fk.ucall[1].advice, CU_MEM_ADVISE_SET_ACCESSED_BY);
	ck_assert_int_eq(fk.ucall[1].loc_type, CU_MEM_LOCATION_TYPE_DEVICE);
	ck_assert_int_eq(fk.ucall[1].loc_id, 0);
	ck_assert_uint_eq(fk.ucall[1].p, mbase);
	ck_assert_uint_eq(fk.ucall[1].n, fk.managed[mi].size);
	ck_assert_int_eq(fk.streams, 1);
	ck_assert_int_eq(fk.events, (int)f.ndonor);

	/* not acquired: no pointers; bad layers */
	for (uint32_t t = 0; t < UVM_NLAYERS; t++)
		ck_assert_uint_eq(vram_uvm_tensor_device_ptr(p, t), 0);
	ck_assert_uint_eq(vram_uvm_tensor_device_ptr(p, UVM_NLAYERS), 0);
	ck_assert_int_eq(vram_uvm_pager_acquire(p, UVM_NLAYERS), -EINVAL);
	ck_assert_int_eq(vram_uvm_pager_release(p, UVM_NLAYERS), -EINVAL);
	ck_assert_int_eq(vram_uvm_pager_release(p, 0), -EINVAL);

	/* donor layers in layer order, to find the lookahead */
	uint32_t donors[UVM_NLAYERS], nd = 0;
	for (uint32_t li = 0; li < UVM_NLAYERS; li++)
		if (f.layer_dev[li])
			donors[nd++] = li;
	ck_assert_uint_eq(nd, f.ndonor);

	CUstream stream = NULL;
	CUdeviceptr seen[UVM_NLAYERS] = { 0 };
	for (uint32_t li = 0; li < UVM_NLAYERS; li++) {
		unsigned before = fk.nucall, syncs = fk.calls[F_EventSynchronize];
		ck_assert_msg(vram_uvm_pager_acquire(p, li) == 0, "%s", vram_last_error());
		uint32_t t;
		const void *want = uvm_file_bytes(&f, li, &t);
		uint64_t d = vram_uvm_tensor_device_ptr(p, t);
		ck_assert_uint_ne(d, 0);
		if (!f.layer_dev[li]) {
			/* resident: the loaded address, nothing moved */
			ck_assert_uint_eq(d, vram_loaded_tensor_device_ptr(f.l, t));
			ck_assert_uint_eq(fk.nucall, before);
			ck_assert_uint_eq(fk.calls[F_EventSynchronize], syncs);
		} else {
			/* in managed memory, on its own 2 MiB page, with the file's bytes */
			ck_assert(d >= mbase && d + sizeof(f.data[0]) <= mbase + fk.managed[mi].size);
			ck_assert_uint_eq((d - mbase) % (2 * MiB), 0);
			ck_assert_int_eq(memcmp((const void *)(uintptr_t)d, want, sizeof(f.data[0])), 0);
			for (uint32_t k = 0; k < li; k++)
				ck_assert_uint_ne(seen[k], d);
			seen[li] = d;
			/* this layer's prefetch (unless queued as lookahead
			 * before), then the next donor layer's */
			ck_assert_uint_ge(fk.nucall, before + 1);
			uint32_t k = 0;
			while (donors[k] != li)
				k++;
			bool self = false, ahead = false;
			for (unsigned i = before; i < fk.nucall; i++) {
				struct fk_uvm_call *u = &fk.ucall[i];
				ck_assert_int_eq(u->fn, F_MemPrefetchAsync);
				ck_assert_int_eq(u->loc_type, CU_MEM_LOCATION_TYPE_DEVICE);
				ck_assert_int_eq(u->loc_id, 0);
				ck_assert_ptr_nonnull(u->s);
				if (!stream)
					stream = u->s;
				ck_assert_ptr_eq(u->s, stream);
				ck_assert_uint_eq(u->n, sizeof(f.data[0]));
				ck_assert_uint_eq((u->p - mbase) % (2 * MiB), 0);
				self |= u->p == d;
				ahead |= u->p != d;
			}
			/* the first donor is prefetched by its own acquire; later
			 * ones were queued ahead by the previous donor's */
			ck_assert(self == (k == 0));
			ck_assert(ahead == (nd > 1));
			ck_assert_uint_eq(fk.calls[F_EventSynchronize], syncs + 1);
		}
		/* nested acquire: nothing more queued */
		unsigned mid = fk.nucall;
		ck_assert_int_eq(vram_uvm_pager_acquire(p, li), 0);
		ck_assert_uint_eq(fk.nucall, mid);
		ck_assert_int_eq(vram_uvm_pager_release(p, li), 0);
		ck_assert_uint_eq(vram_uvm_tensor_device_ptr(p, t), d);
		ck_assert_int_eq(vram_uvm_pager_release(p, li), 0);
		ck_assert_uint_eq(vram_uvm_tensor_device_ptr(p, t), 0);
		ck_assert_int_eq(vram_uvm_pager_release(p, li), -EINVAL);
	}
	/* an acquire that fails to prefetch */
	fake_fail(F_MemPrefetchAsync, 0, CUDA_ERROR_UNKNOWN);
	ck_assert_int_lt(vram_uvm_pager_acquire(p, donors[nd - 1]), 0);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuMemPrefetchAsync"));
	fake_nofail();
	uint32_t t;
	uvm_file_bytes(&f, donors[nd - 1], &t);
	ck_assert_uint_eq(vram_uvm_tensor_device_ptr(p, t), 0);
	ck_assert_int_eq(vram_uvm_pager_acquire(p, donors[nd - 1]), 0);
	ck_assert_int_eq(vram_uvm_pager_release(p, donors[nd - 1]), 0);

	vram_uvm_pager_free(p);
	vram_uvm_pager_free(NULL);
	fake_assert_clean();

	/* depth 0: no lookahead, and a released layer is prefetched again by
	 * its next acquire */
	ck_assert_int_eq(vram_uvm_pager_create(f.l, f.plan, 0, &p), 0);
	fk.nucall = 0;
	for (int pass = 0; pass < 2; pass++) {
		ck_assert_int_eq(vram_uvm_pager_acquire(p, donors[nd - 1]), 0);
		ck_assert_uint_eq(fk.nucall, (unsigned)pass + 1);
		ck_assert_int_eq(fk.ucall[pass].fn, F_MemPrefetchAsync);
		ck_assert_uint_eq(fk.ucall[pass].p, vram_uvm_tensor_device_ptr(p, t));
		ck_assert_int_eq(vram_uvm_pager_release(p, donors[nd - 1]), 0);
	}
	vram_uvm_pager_free(p);
	fake_assert_clean();
	uvm_fx_stop(&f);
}
END_TEST

/* create's refusals and every driver call of create failing leave nothing
 * behind. */
START_TEST(test_uvm_pager_errors)
{
	struct uvm_fx f;
	uvm_fx_start(&f);
	vram_uvm_pager *p = NULL;

	fk.dev[0].cma = 0;
	ck_assert_int_eq(vram_uvm_pager_create(f.l, f.plan, 1, &p), -ENOTSUP);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "concurrent managed access"));
	ck_assert_ptr_null(p);
	fk.dev[0].cma = 1;
	fake_assert_clean();

	static const enum fk_fn fns[] = { F_MemGetInfo, F_StreamCreate, F_MemAllocManaged, F_MemAdvise, F_EventCreate,
				       F_DeviceGetAttribute };
	for (size_t i = 0; i < ARRAY_SIZE(fns); i++)
		for (unsigned nth = 0; nth < 2; nth++) {
			fake_fail(fns[i], nth, CUDA_ERROR_OUT_OF_MEMORY);
			int r = vram_uvm_pager_create(f.l, f.plan, 1, &p);
			unsigned seen = fk.fail_seen;
			fake_nofail();
			if (seen <= nth) { /* called fewer times: it succeeded */
				ck_assert_msg(r == 0, "%s: %s", fk_fn_names[fns[i]], vram_last_error());
				vram_uvm_pager_free(p);
			} else {
				ck_assert_msg(r < 0, "%s #%u", fk_fn_names[fns[i]], nth);
				ck_assert_msg(strstr(vram_last_error(), fk_fn_names[fns[i]]), "%s", vram_last_error());
			}
			p = NULL;
			fake_assert_clean();
		}

	/* a donor layer that is not host-mappable */
	f.g[1]->host = NULL;
	ck_assert_int_eq(vram_uvm_pager_create(f.l, f.plan, 1, &p), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "host-mappable"));
	f.g[1]->host = f.donor;
	fake_assert_clean();

	/* a driver without the optional entry points */
	static struct cuda_api old;
	old = fake_api;
	old.MemPrefetchAsync = NULL;
	cuda_api_set_override(&old);
	ck_assert_int_eq(vram_uvm_pager_create(f.l, f.plan, 1, &p), -ENOTSUP);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuMemPrefetchAsync_v2"));
	old.MemAdvise = NULL;
	ck_assert_int_eq(vram_uvm_pager_create(f.l, f.plan, 1, &p), -ENOTSUP);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuMemAdvise_v2"));
	cuda_api_set_override(&fake_api);
	fake_assert_clean();
	uvm_fx_stop(&f);
}
END_TEST

/* A layer the planner splits between devices, paged by the UVM pager.
 * UVMS_LAYERS unet layers of two leaf modules each (a weight and a bias
 * apiece, all modules the same size), planned "cuda:0,50%;cpu,*" so that
 * the boundary falls inside a layer, and "loaded" by hand where
 * vram_plan_tensor_device puts each tensor: cuda:0's grant is an address
 * that is only compared (no host memory), cpu's holds the file's bytes at
 * the offsets the file has them (0xee elsewhere, so a wrong offset shows). */
#define UVMS_LAYERS 5
#define UVMS_W 3000
#define UVMS_B 100
#define UVMS_NT (4 * UVMS_LAYERS)
#define UVMS_BYTES (4 * 2 * UVMS_LAYERS * (UVMS_W + UVMS_B))

struct uvms_fx {
	char *dir;
	vram_model *m;
	vram_plan *plan;
	struct vram_client *c;
	vram_loaded l;
	struct loaded_tensor t[UVMS_NT];
	struct loaded_grant lg[2];
	struct vram_grant *g[2];       /* [0] cuda:0, [1] cpu */
	uint8_t file[UVMS_BYTES];      /* the file's data */
	uint8_t host[UVMS_BYTES];      /* cpu's grant, laid out as the file */
	uint32_t split, resident, donor; /* layers split, all on cuda:0, all on cpu */
};

/* The model, its plan and the placement the plan gives each tensor. */
static void uvms_start(struct uvms_fx *f)
{
	struct t_tensor tt[UVMS_NT];
	char names[UVMS_NT][64], file[300];

	memset(f, 0, sizeof(*f));
	f->dir = t_tmpdir();
	ck_assert_ptr_nonnull(f->dir);
	for (size_t i = 0; i < sizeof(f->file); i++)
		f->file[i] = (uint8_t)(i * 7 + i / 251);
	for (int i = 0; i < UVMS_NT; i++) {
		snprintf(names[i], sizeof(names[i]), "model.diffusion_model.input_blocks.%d.%d.%s", i / 4, i / 2 % 2,
			 i % 2 ? "bias" : "weight");
		tt[i] = (struct t_tensor){ names[i], "F32", i % 2 ? UVMS_B : UVMS_W, 4 };
	}
	snprintf(file, sizeof(file), "%s/split.safetensors", f->dir);
	ck_assert_uint_eq(t_write_safetensors(file, tt, UVMS_NT, f->file), sizeof(f->file));
	ck_assert_msg(vram_model_open(file, &f->m) == 0, "%s", vram_last_error());
	ck_assert_int_eq(vram_model_layer_count(f->m), UVMS_LAYERS);

	struct vram_plan_device devs[2] = { { .struct_size = sizeof(devs[0]) }, { .struct_size = sizeof(devs[1]) } };
	uint32_t nd = 0;
	struct vram_plan_options o;
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=1GiB,cpu=1GiB", devs, 2, &nd), 0);
	vram_plan_options_init(&o);
	o.unet_compute_device = "cuda:0";
	o.unet_expert_mode_allocations = "cuda:0,50%;cpu,*";
	ck_assert_msg(vram_plan_create(f->m, &o, devs, nd, &f->plan) == 0, "%s", vram_last_error());

	f->c = tc_client(1); /* cuda:0 = 0, cpu = 1 */
	f->g[0] = tc_grant(0, sizeof(f->file));
	f->g[0]->dptr = 0x7a0000000000ull;
	f->g[1] = tc_grant(1, sizeof(f->host));
	f->g[1]->backend = VRAM_BACKEND_CPU;
	f->g[1]->host = f->host;
	memset(f->host, 0xee, sizeof(f->host));
	f->lg[0] = (struct loaded_grant){ .grant = f->g[0], .device = 0, .component = VRAM_COMP_UNET };
	f->lg[1] = (struct loaded_grant){ .grant = f->g[1], .device = 1, .component = VRAM_COMP_UNET };
	f->l = (vram_loaded){ .client = f->c, .model = f->m, .ntensors = UVMS_NT, .ngrants = 2,
			      .tensors = f->t, .grants = f->lg };
	for (uint32_t li = 0; li < UVMS_LAYERS; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		uint32_t on[2] = { 0, 0 };

		ck_assert_int_eq(vram_model_layer(f->m, li, &info), 0);
		ck_assert_uint_eq(info.ntensors, 4);
		for (uint32_t t = info.first_tensor; t < info.first_tensor + 4; t++) {
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			int pd = vram_plan_tensor_device(f->plan, t);
			ck_assert_int_ge(pd, 0);
			const char *dn = vram_plan_device_name(f->plan, (uint32_t)pd);
			uint32_t gi = strcmp(dn, "cuda:0") == 0 ? 0 : 1;
			ck_assert_msg(gi == 0 || strcmp(dn, "cpu") == 0, "tensor %u on %s", t, dn);
			ck_assert_int_eq(vram_model_tensor(f->m, t, &ti), 0);
			uint64_t off = ti.file_offset - vram_model_data_offset(f->m);
			f->t[t] = (struct loaded_tensor){ .grant = gi, .offset = off, .dtype = VRAM_DTYPE_F32,
							  .nbytes = ti.nbytes };
			if (gi)
				memcpy(f->host + off, f->file + off, ti.nbytes);
			on[gi]++;
		}
		f->split += on[0] && on[1];
		f->resident += !on[1];
		f->donor += !on[0];
	}
	/* the plan did split a layer, with whole layers on either side */
	ck_assert_msg(f->split == 1 && f->resident >= 1 && f->donor >= 1, "split %u, resident %u, donor %u",
		      f->split, f->resident, f->donor);
}

static void uvms_stop(struct uvms_fx *f)
{
	free(f->g[0]);
	free(f->g[1]);
	free(f->c);
	vram_plan_free(f->plan);
	vram_model_close(f->m);
	t_rmtree(f->dir);
}

/* Only the part of a split layer off the compute device is managed (and
 * prefetched) and reads back as the file has it; the part on cuda:0 keeps
 * the address the load gave it. */
START_TEST(test_uvm_pager_split_layer)
{
	static struct uvms_fx f; /* 250 KB: off the stack */
	vram_uvm_pager *p = NULL;
	int mi = -1;

	uvms_start(&f);
	ck_assert_msg(vram_uvm_pager_create(&f.l, f.plan, 0, &p) == 0, "%s", vram_last_error());
	for (int i = 0; i < FK_MAX; i++)
		if (fk.managed[i].va)
			mi = i;
	ck_assert_int_ge(mi, 0);
	/* a 2 MiB page for each layer with a part on cpu */
	ck_assert_uint_eq(fk.managed[mi].size, (f.split + f.donor) * 2 * MiB);
	CUdeviceptr mbase = (CUdeviceptr)(uintptr_t)fk.managed[mi].va;
	uint32_t seen_split = 0;
	for (uint32_t li = 0; li < UVMS_LAYERS; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		unsigned before = fk.nucall;
		uint64_t base = 0, packed = 0;
		uint32_t on[2] = { 0, 0 };

		ck_assert_int_eq(vram_model_layer(f.m, li, &info), 0);
		ck_assert_msg(vram_uvm_pager_acquire(p, li) == 0, "%s", vram_last_error());
		for (uint32_t t = info.first_tensor; t < info.first_tensor + info.ntensors; t++) {
			uint64_t d = vram_uvm_tensor_device_ptr(p, t), nb = f.t[t].nbytes;
			on[f.t[t].grant]++;
			if (f.t[t].grant == 0) { /* on cuda:0: where the load put it */
				ck_assert_uint_eq(d, f.g[0]->dptr + f.t[t].offset);
				continue;
			}
			/* on cpu: in managed memory, packed in tensor order from a
			 * 2 MiB boundary, 256-byte aligned, the file's bytes */
			ck_assert_msg(d >= mbase && d + nb <= mbase + fk.managed[mi].size, "layer %u tensor %u", li, t);
			packed = (packed + 255) / 256 * 256;
			if (!packed) {
				base = d;
				ck_assert_uint_eq((base - mbase) % (2 * MiB), 0);
			}
			ck_assert_uint_eq(d, base + packed);
			ck_assert_msg(memcmp((const void *)(uintptr_t)d, f.file + f.t[t].offset, nb) == 0,
				      "layer %u tensor %u differs from the file", li, t);
			packed += nb;
		}
		seen_split += on[0] && on[1];
		if (!on[1]) {
			ck_assert_uint_eq(fk.nucall, before); /* all on cuda:0: nothing moved */
		} else {
			/* depth 0: the prefetch of this layer's part on cpu only */
			ck_assert_uint_eq(fk.nucall, before + 1);
			ck_assert_int_eq(fk.ucall[before].fn, F_MemPrefetchAsync);
			ck_assert_int_eq(fk.ucall[before].loc_type, CU_MEM_LOCATION_TYPE_DEVICE);
			ck_assert_uint_eq(fk.ucall[before].p, base);
			ck_assert_uint_eq(fk.ucall[before].n, packed);
		}
		ck_assert_int_eq(vram_uvm_pager_release(p, li), 0);
		for (uint32_t t = info.first_tensor; t < info.first_tensor + info.ntensors; t++)
			ck_assert_uint_eq(vram_uvm_tensor_device_ptr(p, t), 0);
	}
	ck_assert_uint_eq(seen_split, 1);
	vram_uvm_pager_free(p);
	fake_assert_clean();
	uvms_stop(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cuda-runtime");
	TCase *tr = tcase_create("runtime");
	tcase_add_checked_fixture(tr, tc_setup, tc_teardown);
	tcase_add_test(tr, test_import_unimport);
	tcase_add_test(tr, test_import_by_uuid);
	tcase_add_test(tr, test_import_entry_errors);
	tcase_add_test(tr, test_copier);
	tcase_add_test(tr, test_copier_create_errors);
	tcase_add_test(tr, test_sink_two_devices);
	tcase_add_test(tr, test_pin);
	tcase_add_test(tr, test_kernels_launch);
	tcase_add_test(tr, test_uvm_pager);
	tcase_add_test(tr, test_uvm_pager_errors);
	tcase_add_test(tr, test_uvm_pager_split_layer);
	suite_add_tcase(s, tr);

	TCase *tb = tcase_create("broker");
	tcase_add_checked_fixture(tb, tc_setup, tc_teardown);
	tcase_set_timeout(tb, 60);
	tcase_add_test(tb, test_broker_and_client);
	tcase_add_test(tb, test_load_cuda);
	tcase_add_test(tb, test_client_killed);
	tcase_add_test(tb, test_pager_release_on_stream);
	suite_add_tcase(s, tb);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
