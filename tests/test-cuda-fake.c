/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend against a fake driver (cuda_api_set_override): broker
 * discovery (devices, skips, every entry point failing or missing, cuInit
 * errors), the grant path (clearing, export, every call failing), the
 * runtime's import by UUID, copiers, the multi-device sink and pinning, a
 * broker and a client together over a socket, a client killed while it
 * holds grants; and the real libcuda loader on a machine without a driver.
 *
 * The fake driver is tests/fake-cuda.c; each test ends by checking that
 * everything it created was given back (fake_assert_clean).
 */
#include <dlfcn.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/syscall.h>

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
#include "testlib-notify.h"
#include "testlib-raw.h"

static int discover(struct pool **out, uint32_t max, char *note, size_t len)
{
	return pool_cuda_discover(out, max, 0, note, len);
}

static void free_pools(struct pool **p, int n)
{
	for (int i = 0; i < n; i++)
		pool_free(p[i]);
}

/* ======================================================================
 * Loader
 * ====================================================================== */

START_TEST(test_abi_constants)
{
	/* With cuda.h these are the toolkit's; without, common/cuda-api.h's
	 * own declarations, which must carry the same ABI. */
	ck_assert_int_eq(CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 102);
	ck_assert_int_eq(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, 103);
	ck_assert_int_eq(CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, 134);
	ck_assert_int_eq(CU_MEM_ALLOCATION_TYPE_PINNED, 1);
	ck_assert_int_eq(CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 1);
	ck_assert_int_eq(CU_MEM_LOCATION_TYPE_DEVICE, 1);
	ck_assert_int_eq(CU_MEM_ACCESS_FLAGS_PROT_READWRITE, 3);
	ck_assert_int_eq(CU_MEM_ALLOC_GRANULARITY_RECOMMENDED, 1);
	ck_assert_int_eq(CU_STREAM_NON_BLOCKING, 1);
	ck_assert_int_eq(CU_EVENT_DISABLE_TIMING, 2);
	ck_assert_int_eq(CU_MEMHOSTREGISTER_PORTABLE, 1);
	ck_assert_int_eq(CUDA_ERROR_NO_DEVICE, 100);
	ck_assert_int_eq(CUDA_ERROR_OUT_OF_MEMORY, 2);
	ck_assert_uint_eq(sizeof(CUmemAllocationProp), 32);
	ck_assert_uint_eq(offsetof(CUmemAllocationProp, location), 8);
	ck_assert_uint_eq(offsetof(CUmemAllocationProp, win32HandleMetaData), 16);
	ck_assert_uint_eq(offsetof(CUmemAllocationProp, allocFlags), 24);
	ck_assert_uint_eq(sizeof(CUmemAccessDesc), 12);
	ck_assert_uint_eq(sizeof(CUuuid), 16);
	ck_assert_uint_eq(sizeof(CUdeviceptr), 8);
	ck_assert_uint_eq(sizeof(CUmemGenericAllocationHandle), 8);
}
END_TEST

START_TEST(test_strerror_errno)
{
	struct cuda_api api;
	char err[256], buf[160];
	ck_assert_int_eq(cuda_api_load(&api, err, sizeof(err)), 0);
	ck_assert_str_eq(cuda_api_strerror(&api, CUDA_ERROR_OUT_OF_MEMORY, buf, sizeof(buf)),
			 "CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
	ck_assert_str_eq(cuda_api_strerror(&api, 12345, buf, sizeof(buf)), "CUDA error 12345");
	ck_assert_str_eq(cuda_api_strerror(NULL, 2, buf, sizeof(buf)), "CUDA error 2");
	ck_assert_int_eq(cuda_api_errno(CUDA_SUCCESS), 0);
	ck_assert_int_eq(cuda_api_errno(CUDA_ERROR_OUT_OF_MEMORY), -ENOMEM);
	ck_assert_int_eq(cuda_api_errno(CUDA_ERROR_NO_DEVICE), -ENODEV);
	ck_assert_int_eq(cuda_api_errno(CUDA_ERROR_INVALID_VALUE), -EINVAL);
	ck_assert_int_eq(cuda_api_errno(CUDA_ERROR_NOT_SUPPORTED), -ENOTSUP);
	ck_assert_int_eq(cuda_api_errno(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED), -EBUSY);
	ck_assert_int_eq(cuda_api_errno(CUDA_ERROR_UNKNOWN), -EIO);
	uint8_t u[16];
	for (int i = 0; i < 16; i++)
		u[i] = (uint8_t)(i * 17);
	ck_assert_str_eq(cuda_uuid_format(u, buf, sizeof(buf)), "GPU-00112233-4455-6677-8899-aabbccddeeff");
}
END_TEST

START_TEST(test_missing_entry_points)
{
	/* Every member, one at a time: discovery and the runtime both refuse
	 * the table and say which call is missing. */
	for (int i = 0; i < F_COUNT; i++) {
		struct cuda_api t = fake_api;
		void (*null_fn)(void) = NULL;
		memcpy((char *)&t + (size_t)i * sizeof(null_fn), &null_fn, sizeof(null_fn));
		fake_reset(1);
		cuda_api_set_override(&t);
		if (i == F_MemAdvise || i == F_MemPrefetchAsync) {
			/* Optional (CUDA 12.2+): the table loads without them. */
			struct cuda_api api;
			char err[256];
			ck_assert_int_eq(cuda_api_load(&api, err, sizeof(err)), 0);
			ck_assert_ptr_nonnull(api.Init);
			ck_assert(i == F_MemAdvise ? !api.MemAdvise : !api.MemPrefetchAsync);
			continue;
		}
		char note[128], want[96];
		struct pool *p[4];
		ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
		snprintf(want, sizeof(want), "the fake driver lacks %s", fk_fn_names[i]);
		ck_assert_msg(strstr(note, want), "entry %d: note \"%s\"", i, note);

		struct cuda_api api;
		char err[256];
		ck_assert_int_eq(cuda_api_load(&api, err, sizeof(err)), -ENOSYS);
		ck_assert_ptr_null(api.Init);

		struct vram_client *c = tc_client(1);
		struct vram_grant *g = tc_grant(0, 2 * MiB);
		ck_assert_int_eq(cuda_grant_import(c, g, 0), -ENOSYS);
		ck_assert_ptr_nonnull(strstr(vram_last_error(), want));
		ck_assert_ptr_null(g->cuda);
		free(g);
		free(c);
		fake_assert_clean();
	}
}
END_TEST

START_TEST(test_real_loader_without_driver)
{
	/* The stub libcuda is not on the loader path here; a machine with a
	 * driver finds it and this test has nothing to say. */
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (h) {
		dlclose(h);
		fprintf(stderr, "test_real_loader_without_driver: libcuda.so.1 present, skipped\n");
		return;
	}
	cuda_api_set_override(NULL);
	struct cuda_api api;
	char err[256], note[128];
	struct pool *p[4];
	ck_assert_int_eq(cuda_api_load(&api, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "NVIDIA driver not found (libcuda.so.1"));
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_ptr_eq(strstr(note, "NVIDIA driver not found (libcuda.so.1"), note);

	/* The runtime says the same. */
	struct vram_client *c = tc_client(1);
	struct vram_grant *g = tc_grant(0, 2 * MiB);
	ck_assert_int_eq(cuda_grant_import(c, g, 0), -ENOENT);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuda:0: NVIDIA driver not found"));
	free(g);
	free(c);
}
END_TEST

START_TEST(test_real_vramd_note)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (h) {
		dlclose(h);
		fprintf(stderr, "test_real_vramd_note: libcuda.so.1 present, skipped\n");
		return;
	}
	struct t_broker b;
	t_broker_dir(&b);
	b.cuda = 1; /* the real loader, which finds no driver */
	const char *args[] = { "--host-pool", "64MiB", NULL };
	t_broker_run(&b, args);
	vram_client *c;
	ck_assert_int_eq(vram_connect(b.sock, "t", &c), 0);
	ck_assert_msg(strstr(vram_client_note(c), "NVIDIA driver not found") == vram_client_note(c), "note: %s",
		      vram_client_note(c));
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_ptr_nonnull(strstr(s->note, "NVIDIA driver not found"));
	ck_assert_uint_eq(s->ndevices, 1);
	ck_assert_str_eq(s->devices[0].name, "cpu");
	vram_status_free(s);
	vram_close(c);
	t_broker_stop(&b);
}
END_TEST

/* ======================================================================
 * Discovery
 * ====================================================================== */

START_TEST(test_discover_devices)
{
	fake_reset(2);
	snprintf(fk.dev[1].name, sizeof(fk.dev[1].name), "NVIDIA H100 80GB HBM3");
	fk.dev[1].total = 80 * GiB;
	fk.dev[1].free = 80 * GiB - 256 * MiB;
	fk.dev[1].numa_unknown = 1;
	struct pool *p[4];
	char note[128] = "junk";
	int n = discover(p, 4, note, sizeof(note));
	ck_assert_int_eq(n, 2);
	ck_assert_str_eq(note, "");
	for (int i = 0; i < 2; i++) {
		char name[16];
		snprintf(name, sizeof(name), "cuda:%d", i);
		ck_assert_str_eq(p[i]->name, name);
		ck_assert_uint_eq(p[i]->index, (uint32_t)i);
		ck_assert_int_eq(p[i]->ordinal, i);
		ck_assert_uint_eq(p[i]->backend, VRAMD_BACKEND_CUDA);
		ck_assert_uint_eq(p[i]->flags, 0);
		ck_assert_uint_eq(p[i]->granularity, 2 * MiB);
		ck_assert_mem_eq(p[i]->uuid, fk.dev[i].uuid, 16);
		ck_assert_int_eq(fk.dev[i].ctx_refs, 1);
	}
	ck_assert_str_eq(p[0]->label, "Fake GPU 0");
	ck_assert_str_eq(p[1]->label, "NVIDIA H100 80GB HBM3");
	ck_assert_int_eq(p[0]->numa_node, 0);
	ck_assert_int_eq(p[1]->numa_node, -1);
	/* free minus the reserve: 1 GiB below 32 GiB, total/32 above */
	ck_assert_uint_eq(p[0]->total, 16 * GiB - 256 * MiB - 1 * GiB);
	ck_assert_uint_eq(p[1]->total, 80 * GiB - 256 * MiB - 80 * GiB / 32);
	ck_assert_uint_eq(p[1]->total % (2 * MiB), 0);
	/* the wire description carries it all */
	struct vramd_device d;
	pool_describe(p[1], &d);
	ck_assert_str_eq(d.name, "cuda:1");
	ck_assert_int_eq(d.ordinal, 1);
	ck_assert_mem_eq(d.uuid, fk.dev[1].uuid, 16);
	free_pools(p, n);
	fake_assert_clean();

	/* indices start at first */
	n = pool_cuda_discover(p, 4, 5, note, sizeof(note));
	ck_assert_int_eq(n, 2);
	ck_assert_uint_eq(p[0]->index, 5);
	ck_assert_uint_eq(p[1]->index, 6);
	free_pools(p, n);
	fake_assert_clean();
}
END_TEST

START_TEST(test_discover_no_devices)
{
	struct pool *p[4];
	char note[128];
	fake_reset(0);
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "no CUDA devices");

	fake_reset(1);
	fk.init_result = CUDA_ERROR_NO_DEVICE;
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "no CUDA devices");

	fake_reset(1);
	fk.init_result = CUDA_ERROR_UNKNOWN;
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "cuInit failed: CUDA_ERROR_UNKNOWN (unknown error)");

	fake_reset(1);
	fk.init_result = CUDA_ERROR_STUB_LIBRARY;
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "cuInit failed: CUDA_ERROR_STUB_LIBRARY (CUDA driver is a stub library)");

	/* an error code the driver cannot name */
	fake_reset(1);
	fk.init_result = 4242;
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "cuInit failed: CUDA error 4242");
	fake_assert_clean();
}
END_TEST

START_TEST(test_discover_skips_unsupported)
{
	struct pool *p[4];
	char note[128];

	fake_reset(2);
	fk.dev[0].vmm = 0;
	int n = discover(p, 4, note, sizeof(note));
	ck_assert_int_eq(n, 1);
	ck_assert_str_eq(p[0]->name, "cuda:1");
	ck_assert_int_eq(p[0]->ordinal, 1);
	ck_assert_str_eq(note, "cuda:0 (Fake GPU 0) skipped: no CUDA VMM support");
	free_pools(p, n);

	fake_reset(2);
	fk.dev[0].posix_fd = 0;
	fk.dev[1].vmm = 0;
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "cuda:0 (Fake GPU 0) skipped: no POSIX-fd handle support; "
			       "cuda:1 (Fake GPU 1) skipped: no CUDA VMM support");
	fake_assert_clean();

	/* an exclusive compute mode (3: exclusive-process) */
	fake_reset(2);
	fk.dev[1].compute_mode = 3;
	n = discover(p, 4, note, sizeof(note));
	ck_assert_int_eq(n, 1);
	ck_assert_str_eq(p[0]->name, "cuda:0");
	ck_assert_ptr_nonnull(strstr(note, "cuda:1 (Fake GPU 1) skipped: compute mode not Default"));
	free_pools(p, n);
	fake_assert_clean();

	/* too little free memory for anything beyond the reserve */
	fake_reset(1);
	fk.dev[0].free = 512 * MiB;
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "cuda:0 (Fake GPU 0) skipped: only 512.00 MiB free");
	fk.dev[0].free = 16 * GiB - 256 * MiB;
	fake_assert_clean();

	/* the broker's device limit */
	fake_reset(3);
	n = discover(p, 2, note, sizeof(note));
	ck_assert_int_eq(n, 2);
	ck_assert_str_eq(note, "cuda:2 and later not used: device limit reached");
	free_pools(p, n);
	fake_assert_clean();
}
END_TEST

START_TEST(test_discover_entry_errors)
{
	/* Each call discovery makes, failing on its first use, with one
	 * device: no pool, a note naming the call and the error, nothing
	 * retained. */
	static const struct {
		enum fk_fn f;
		const char *want;
	} cases[] = {
		{ F_DeviceGetCount, "cuDeviceGetCount failed: CUDA_ERROR_UNKNOWN (unknown error)" },
		{ F_DeviceGet, "cuda:0 skipped: cuDeviceGet: CUDA_ERROR_UNKNOWN" },
		{ F_DeviceGetName, "cuda:0 skipped: cuDeviceGetName: CUDA_ERROR_UNKNOWN" },
		{ F_DeviceGetUuid, "cuda:0 (Fake GPU 0) skipped: cuDeviceGetUuid: CUDA_ERROR_UNKNOWN" },
		{ F_DeviceTotalMem, "skipped: cuDeviceTotalMem: CUDA_ERROR_UNKNOWN" },
		{ F_DeviceGetAttribute, "skipped: cuDeviceGetAttribute(VMM): CUDA_ERROR_UNKNOWN" },
		{ F_MemGetAllocationGranularity, "skipped: cuMemGetAllocationGranularity: CUDA_ERROR_UNKNOWN" },
		{ F_DevicePrimaryCtxRetain, "skipped: cuDevicePrimaryCtxRetain: CUDA_ERROR_UNKNOWN" },
		{ F_CtxPushCurrent, "skipped: cuCtxPushCurrent: CUDA_ERROR_UNKNOWN" },
		{ F_MemGetInfo, "skipped: cuMemGetInfo: CUDA_ERROR_UNKNOWN" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct pool *p[4];
		char note[128];
		fake_reset(1);
		fake_fail(cases[i].f, 0, CUDA_ERROR_UNKNOWN);
		ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
		ck_assert_msg(strstr(note, cases[i].want), "%s: note \"%s\"", fk_fn_names[cases[i].f], note);
		fake_assert_clean();
	}
	/* The second attribute query (POSIX fd) failing. */
	struct pool *p[4];
	char note[128];
	fake_reset(1);
	fake_fail(F_DeviceGetAttribute, 1, CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_ptr_nonnull(strstr(note, "cuDeviceGetAttribute(POSIX fd): CUDA_ERROR_INVALID_VALUE"));
	/* The compute mode query (third) failing is not an error. */
	fake_reset(1);
	fake_fail(F_DeviceGetAttribute, 2, CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 1);
	ck_assert_int_eq(p[0]->numa_node, 0);
	free_pools(p, 1);
	/* Nor is the NUMA query (fourth) failing. */
	fake_reset(1);
	fake_fail(F_DeviceGetAttribute, 3, CUDA_ERROR_INVALID_VALUE);
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 1);
	ck_assert_int_eq(p[0]->numa_node, -1);
	free_pools(p, 1);
	/* A failure on one device leaves the next one in use. */
	fake_reset(2);
	fake_fail(F_DeviceGetUuid, 0, CUDA_ERROR_UNKNOWN);
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 1);
	ck_assert_str_eq(p[0]->name, "cuda:1");
	free_pools(p, 1);
	/* An error whose name the driver will not give. */
	fake_reset(1);
	fake_fail(F_DeviceGetCount, 0, 31337);
	ck_assert_int_eq(discover(p, 4, note, sizeof(note)), 0);
	ck_assert_str_eq(note, "cuDeviceGetCount failed: CUDA error 31337");
	fake_assert_clean();
}
END_TEST

/* ======================================================================
 * Grants (pool ops, no socket)
 * ====================================================================== */

START_TEST(test_grant_clears_and_exports)
{
	struct pool *p[1];
	char note[128];
	int fds0 = t_count_fds();
	ck_assert_int_eq(discover(p, 1, note, sizeof(note)), 1);
	const char *why = NULL;
	int fd = -1;
	void *h = NULL;
	size_t size = 4 * MiB;

	ck_assert_int_eq(p[0]->ops->grant(p[0], size, &fd, &h, &why), 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	/* (the fake's memory behind the export is a memfd) */
	char *buf = malloc(size);
	ck_assert_int_eq(pread(fake_memfd_of(fd), buf, size, 0), (ssize_t)size);
	ck_assert(mem_is_zero(buf, size));
	memset(buf, 0x5a, size);
	ck_assert_int_eq(pwrite(fake_memfd_of(fd), buf, size, 0), (ssize_t)size);
	ck_assert_uint_eq(fk.calls[F_MemsetD8], 1);
	ck_assert_uint_eq(fk.calls[F_CtxSynchronize], 1);
	/* the broker keeps only its handle: no mapping, no VA */
	ck_assert_int_eq(fake_count(FK_HANDLES), 1);
	ck_assert_int_eq(fake_count(FK_RESV), 0);
	ck_assert_int_eq(fake_count(FK_MAPS), 0);
	ck_assert_int_eq(fake_ctx_depth(), 0);
	close(fd);
	p[0]->ops->release(p[0], h, size);

	/* The same memory comes back with the bytes above in it: the grant
	 * must read zero all the same. */
	ck_assert_int_eq(fk.recycle_size, size);
	ck_assert_int_eq(p[0]->ops->grant(p[0], size, &fd, &h, &why), 0);
	ck_assert_int_eq(fk.recycle_fd, -1);
	ck_assert_int_eq(pread(fake_memfd_of(fd), buf, size, 0), (ssize_t)size);
	ck_assert(mem_is_zero(buf, size));
	close(fd);
	p[0]->ops->release(p[0], h, size);
	free(buf);

	/* more than the device has */
	ck_assert_int_eq(p[0]->ops->grant(p[0], 32 * GiB, &fd, &h, &why), -ENOMEM);
	ck_assert_str_eq(why, "cuMemCreate: CUDA_ERROR_OUT_OF_MEMORY (out of memory)");
	free_pools(p, 1);
	fake_assert_clean();
	fake_drop_recycled();
	ck_assert_int_eq(t_count_fds(), fds0);
}
END_TEST

START_TEST(test_grant_entry_errors)
{
	static const struct {
		enum fk_fn f;
		CUresult code;
		int err;
		int leaks_va;    /* the VA cannot be given back after this */
	} cases[] = {
		{ F_CtxPushCurrent, CUDA_ERROR_INVALID_CONTEXT, -EIO, 0 },
		{ F_MemCreate, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM, 0 },
		{ F_MemAddressReserve, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM, 0 },
		{ F_MemMap, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM, 0 },
		{ F_MemSetAccess, CUDA_ERROR_INVALID_VALUE, -EINVAL, 0 },
		{ F_MemsetD8, CUDA_ERROR_UNKNOWN, -EIO, 0 },
		{ F_CtxSynchronize, CUDA_ERROR_UNKNOWN, -EIO, 0 },
		{ F_MemUnmap, CUDA_ERROR_UNKNOWN, -EIO, 1 },
		{ F_MemAddressFree, CUDA_ERROR_UNKNOWN, -EIO, 1 },
		{ F_MemExportToShareableHandle, CUDA_ERROR_NOT_SUPPORTED, -ENOTSUP, 0 },
	};
	int fds0 = t_count_fds();
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct pool *p[1];
		char note[128], want[96];
		fake_reset(1);
		ck_assert_int_eq(discover(p, 1, note, sizeof(note)), 1);
		const char *why = NULL;
		int fd = -1;
		void *h = NULL;
		fake_fail(cases[i].f, 0, cases[i].code);
		int r = p[0]->ops->grant(p[0], 2 * MiB, &fd, &h, &why);
		ck_assert_msg(r == cases[i].err, "%s: %d", fk_fn_names[cases[i].f], r);
		ck_assert_int_eq(fd, -1);
		snprintf(want, sizeof(want), "%s: ", fk_fn_names[cases[i].f]);
		ck_assert_msg(why && strstr(why, want) == why, "%s: why \"%s\"", fk_fn_names[cases[i].f], why);
		ck_assert_int_eq(fake_ctx_depth(), 0);
		ck_assert_int_eq(fake_count(FK_HANDLES), 0); /* the allocation was released */
		/* the next grant works */
		fake_nofail();
		ck_assert_int_eq(p[0]->ops->grant(p[0], 2 * MiB, &fd, &h, &why), 0);
		close(fd);
		p[0]->ops->release(p[0], h, 2 * MiB);
		free_pools(p, 1);
		if (cases[i].leaks_va) {
			/* Unmap/free failing for real means a broken driver; what
			 * is left is the VA range (and its mapping), nothing else. */
			ck_assert_int_eq(fake_count(FK_RESV), 1);
			fake_drop_stranded();
		}
		fake_assert_clean();
	}
	fake_drop_recycled();
	ck_assert_int_eq(t_count_fds(), fds0);
}
END_TEST

START_TEST(test_release_failure_is_survived)
{
	struct pool *p[1];
	char note[128];
	ck_assert_int_eq(discover(p, 1, note, sizeof(note)), 1);
	const char *why;
	int fd;
	void *h;
	ck_assert_int_eq(p[0]->ops->grant(p[0], 2 * MiB, &fd, &h, &why), 0);
	close(fd);
	fake_fail(F_MemRelease, 0, CUDA_ERROR_UNKNOWN);
	p[0]->ops->release(p[0], h, 2 * MiB);
	ck_assert_int_eq(fake_ctx_depth(), 0);
	fake_nofail();
	p[0]->ops->release(p[0], h, 2 * MiB); /* what a retry would do */
	free_pools(p, 1);
	fake_assert_clean();
}
END_TEST

/* ops->adopt (REGISTER after a restart, the fd store): a real export of the
 * size claimed is taken back as a new handle of the broker's, its bytes
 * untouched and nothing left mapped; everything else is refused with the
 * import released. */
START_TEST(test_adopt)
{
	fake_reset(2);
	struct pool *p[2];
	char note[128];
	int fds0 = t_count_fds();
	ck_assert_int_eq(discover(p, 2, note, sizeof(note)), 2);
	const char *why = NULL;
	int fd = -1;
	void *h = NULL, *h2 = NULL;
	size_t size = 4 * MiB;
	char *buf = malloc(size), *back = malloc(size);

	ck_assert_int_eq(p[0]->ops->grant(p[0], size, &fd, &h, &why), 0);
	for (size_t i = 0; i < size; i++)
		buf[i] = (char)(i * 13 + 1);
	ck_assert_int_eq(pwrite(fake_memfd_of(fd), buf, size, 0), (ssize_t)size);
	ck_assert(p[0]->ops->fd_identity);

	ck_assert_msg(p[0]->ops->adopt(p[0], fd, size, &h2, &why) == 0, "%s", why);
	ck_assert_ptr_nonnull(h2);
	ck_assert_ptr_ne(h2, h);
	ck_assert_int_eq(fake_count(FK_HANDLES), 2);  /* the grant's handle and the adopted one */
	ck_assert_int_eq(fake_count(FK_RESV), 0);  /* the size probes left no VA... */
	ck_assert_int_eq(fake_count(FK_MAPS), 0);  /* ...and no mapping */
	ck_assert_int_eq(fake_ctx_depth(), 0);
	ck_assert_uint_eq(fk.calls[F_MemsetD8], 1); /* the grant's clearing only */
	ck_assert_int_eq(pread(fake_memfd_of(fd), back, size, 0), (ssize_t)size);
	ck_assert_mem_eq(buf, back, size);
	/* the adopted handle alone keeps the memory (as after a restart, when
	 * the granting broker's handle is gone) */
	p[0]->ops->release(p[0], h, size);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 1);
	p[0]->ops->release(p[0], h2, size);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 1); /* the export, still open, holds it */
	close(fd);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 0);

	/* Refusals: each releases what it imported. */
	CUmemGenericAllocationHandle bh;
	int fd4 = fake_export(0, size, &bh); /* a 4 MiB allocation on device 0 */
	static const struct {
		int dev;
		uint64_t claim;
		int lie;
		int err;
		const char *why;
	} cases[] = {
		{ 0, 6 * MiB, 0, -EINVAL, "smaller than the size claimed" },
		{ 0, 2 * MiB, 0, -EINVAL, "larger than the size claimed" },
		{ 0, 3 * MiB, 0, -EINVAL, "is not a grant size" },
		{ 0, 0, 0, -EINVAL, "is not a grant size" },
		{ 1, 4 * MiB, 0, -EINVAL, "not memory of this device" },
		{ 0, 4 * MiB, 1, -EINVAL, "not pinned memory exportable as a POSIX fd" },
		{ 0, 4 * MiB, 2, -EINVAL, "not pinned memory exportable as a POSIX fd" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		fk.prop_lie = cases[i].lie;
		h2 = NULL;
		int r = p[cases[i].dev]->ops->adopt(p[cases[i].dev], fd4, cases[i].claim, &h2, &why);
		fk.prop_lie = 0;
		ck_assert_msg(r == cases[i].err, "case %zu: %d (%s)", i, r, why);
		ck_assert_msg(strstr(why, cases[i].why), "case %zu: %s", i, why);
		ck_assert_int_eq(fake_count(FK_HANDLES), 1); /* bh only */
		ck_assert_int_eq(fake_count(FK_RESV), 0);
		ck_assert_int_eq(fake_count(FK_MAPS), 0);
		ck_assert_int_eq(fake_ctx_depth(), 0);
	}
	/* not an export at all */
	int mfd = memfd_create("not-vram", MFD_CLOEXEC);
	ck_assert_int_ge(mfd, 0);
	ck_assert_int_eq(ftruncate(mfd, (off_t)size), 0);
	ck_assert_int_eq(p[0]->ops->adopt(p[0], mfd, size, &h2, &why), -EINVAL);
	ck_assert_ptr_nonnull(
		strstr(why, "not a CUDA allocation (cuMemImportFromShareableHandle: CUDA_ERROR_INVALID_VALUE"));
	close(mfd);

	/* Every driver call failing: an error naming it, nothing left but
	 * what a broken unmap strands (the probe's VA). */
	static const struct {
		enum fk_fn f;
		unsigned nth;
		CUresult code;
		int err;            /* 0: adopted all the same */
		const char *why;
	} fails[] = {
		{ F_CtxPushCurrent, 0, CUDA_ERROR_INVALID_CONTEXT, -EIO, "cuCtxPushCurrent: " },
		{ F_MemImportFromShareableHandle, 0, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM,
		  "cuMemImportFromShareableHandle: " },
		{ F_MemGetAllocationPropertiesFromHandle, 0, CUDA_ERROR_UNKNOWN, -EIO,
		  "cuMemGetAllocationPropertiesFromHandle: " },
		{ F_MemAddressReserve, 0, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM, "cuMemAddressReserve: " },
		{ F_MemMap, 0, CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM, "cuMemMap: " },
		{ F_MemMap, 0, CUDA_ERROR_INVALID_VALUE, -EINVAL, "smaller than the size claimed" },
		{ F_MemUnmap, 0, CUDA_ERROR_UNKNOWN, -EIO, "cuMemUnmap: " },
		/* the granularity query falls back to the pool's; the second
		 * probe failing means "not larger"; a failed VA free is logged */
		{ F_MemGetAllocationGranularity, 0, CUDA_ERROR_UNKNOWN, 0, NULL },
		{ F_MemMap, 1, CUDA_ERROR_UNKNOWN, 0, NULL },
		{ F_MemAddressFree, 0, CUDA_ERROR_UNKNOWN, 0, NULL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(fails); i++) {
		h2 = NULL;
		fake_fail(fails[i].f, fails[i].nth, fails[i].code);
		int r = p[0]->ops->adopt(p[0], fd4, size, &h2, &why);
		unsigned seen = fk.fail_seen;
		fake_nofail();
		ck_assert_msg(seen > fails[i].nth, "%s #%u never called", fk_fn_names[fails[i].f], fails[i].nth);
		ck_assert_msg(r == fails[i].err, "%s: %d (%s)", fk_fn_names[fails[i].f], r, r ? why : "");
		ck_assert_int_eq(fake_ctx_depth(), 0);
		if (r == 0) {
			ck_assert_int_eq(fake_count(FK_HANDLES), 2);
			p[0]->ops->release(p[0], h2, size);
		} else {
			ck_assert_msg(strstr(why, fails[i].why), "%s: %s", fk_fn_names[fails[i].f], why);
		}
		ck_assert_int_eq(fake_count(FK_HANDLES), 1); /* bh only */
		if (fails[i].f == F_MemUnmap || fails[i].f == F_MemAddressFree) {
			/* what a broken driver strands: the probe's VA (and, for
			 * unmap, its mapping) */
			ck_assert_int_eq(fake_count(FK_RESV), 1);
			ck_assert_int_eq(fake_count(FK_MAPS), fails[i].f == F_MemUnmap);
			fake_drop_stranded();
		}
		ck_assert_int_eq(fake_count(FK_RESV), 0);
		ck_assert_int_eq(fake_count(FK_MAPS), 0);
	}
	close(fd4);
	fake_release(bh);
	free_pools(p, 2);
	free(buf);
	free(back);
	fake_assert_clean();
	fake_drop_recycled();
	ck_assert_int_eq(t_count_fds(), fds0);
}
END_TEST

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
 * Restart survival: CUDA grants re-registered and restored
 * ====================================================================== */

/* The broker's view, from a connection of its own. */
static struct vram_status *observe(const char *sock)
{
	vram_client *o;
	struct vram_status *st;
	ck_assert_int_eq(vram_connect(sock, "observer", &o), 0);
	ck_assert_int_eq(vram_get_status(o, &st), 0);
	vram_close(o);
	return st;
}

static uint64_t held_by(const struct vram_status *st, const char *name)
{
	uint64_t h = 0;
	for (uint32_t i = 0; i < st->nclients; i++)
		if (!strcmp(st->clients[i].name, name))
			h += st->clients[i].held;
	return h;
}

/* Waits (bounded) until the fake holds n allocations; returns how many it holds. */
static int wait_allocs(int n)
{
	int k = fake_count(FK_ALLOCS);
	for (int i = 0; i < 500 && k != n; i++) {
		t_sleep_ms(10);
		k = fake_count(FK_ALLOCS);
	}
	return k;
}

static void pattern(char *buf, size_t n, int seed)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)(seed * 31 + i * 7 + (i >> 12));
}

START_TEST(test_cuda_restart)
{
	/* The broker goes away while a client holds CUDA grants (and a cpu
	 * one): the client reconnects and hands each export back (REGISTER),
	 * the new broker imports it, and the accounting after equals the
	 * accounting before; the memory is the same memory, not cleared. */
	static const struct {
		uint32_t dev;
		uint64_t size;
		uint32_t flags;
	} spec[] = {
		{ 0, 4 * MiB, VRAM_ALLOC_RECLAIMABLE },
		{ 1, 6 * MiB, 0 },
		{ 0, 2 * MiB, 0 },
		{ 2, 2 * MiB, VRAM_ALLOC_RECLAIMABLE }, /* cpu */
	};
	fake_reset(2);
	int fds0 = t_count_fds();
	struct tc_live l;
	tc_live_start(&l);
	vram_client *c;
	vram_grant *g[4];
	char *buf = malloc(6 * MiB), *back = malloc(6 * MiB);
	ck_assert_int_eq(vram_connect(l.sock, "survivor", &c), 0);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(vram_alloc(c, spec[i].dev, spec[i].size, spec[i].flags, &g[i]), 0);
		pattern(buf, spec[i].size, i);
		if (spec[i].dev < 2)
			tc_dev_write(c, spec[i].dev, vram_grant_device_ptr(g[i]), buf, spec[i].size);
		else
			memcpy(vram_grant_host_ptr(g[i]), buf, spec[i].size);
	}
	struct vram_status *before, *after;
	ck_assert_int_eq(vram_get_status(c, &before), 0);
	ck_assert_int_eq(fake_count(FK_HANDLES), 6); /* each CUDA grant: the broker's handle and ours */

	tc_live_halt(&l);
	/* the broker's handles went with it; ours keep the memory */
	ck_assert_int_eq(fake_count(FK_HANDLES), 3);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 3);
	unsigned clears = fk.calls[F_MemsetD8];
	tc_live_run(&l);

	/* the next call notices, reconnects and re-registers */
	ck_assert_msg(vram_get_status(c, &after) == 0, "%s", vram_last_error());
	ck_assert_uint_eq(after->ndevices, before->ndevices);
	for (uint32_t d = 0; d < after->ndevices; d++) {
		ck_assert_uint_eq(after->devices[d].used, before->devices[d].used);
		ck_assert_uint_eq(after->devices[d].reclaimable, before->devices[d].reclaimable);
		/* the new broker measured free memory without the grants still
		 * held; they come back into its capacity as they are adopted */
		ck_assert_uint_eq(after->devices[d].total, before->devices[d].total);
	}
	ck_assert_uint_eq(after->devices[0].used, 6 * MiB);
	ck_assert_uint_eq(after->devices[1].used, 6 * MiB);
	ck_assert_uint_eq(after->grants, 4);
	ck_assert_uint_eq(after->nclients, 1);
	ck_assert_uint_eq(after->clients[0].held, before->clients[0].held);
	ck_assert_uint_eq(after->clients[0].reclaimable, before->clients[0].reclaimable);
	vram_status_free(before);
	vram_status_free(after);
	ck_assert_int_eq(fake_count(FK_HANDLES), 6); /* the new broker imported each... */
	ck_assert_uint_eq(fk.calls[F_MemsetD8], clears); /* ...and cleared none */
	for (int i = 0; i < 4; i++) {
		pattern(buf, spec[i].size, i);
		if (spec[i].dev < 2)
			tc_dev_read(c, spec[i].dev, vram_grant_device_ptr(g[i]), back, spec[i].size);
		else
			memcpy(back, vram_grant_host_ptr(g[i]), spec[i].size);
		ck_assert_msg(!memcmp(buf, back, spec[i].size), "grant %d lost its bytes", i);
	}

	/* The new broker knows those exports: handed in again, by anyone, in
	 * any fd of that open file, they are refused. */
	int s = tr_connect(l.sock);
	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(tr_hello(s, "copycat"), 0);
	char why[256];
	int twin = fcntl(g[0]->fd, F_DUPFD_CLOEXEC, 3);
	ck_assert_int_eq(tr_register(s, fk.dev[0].uuid, 4 * MiB, 0, g[0]->fd, 10, NULL, why, sizeof(why)), -EEXIST);
	ck_assert_int_eq(tr_register(s, fk.dev[0].uuid, 4 * MiB, 0, twin, 11, NULL, why, sizeof(why)), -EEXIST);
	ck_assert_str_eq(why, "REGISTER: that memory is accounted already");
	close(twin);
	close(s);
	ck_assert_int_eq(fake_count(FK_HANDLES), 6);

	/* and it keeps working: free by the new id, allocate more */
	ck_assert_int_eq(vram_free(c, g[1]), 0);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 2);
	vram_grant *n;
	ck_assert_int_eq(vram_alloc(c, 1, 2 * MiB, 0, &n), 0);
	vram_close(c);
	for (int i = 0; i < 500 && broker_grant_count(l.b); i++)
		t_sleep_ms(10);
	ck_assert_uint_eq(broker_grant_count(l.b), 0);
	tc_live_stop(&l);
	free(buf);
	free(back);
	fake_assert_clean();
	fake_drop_recycled();
	ck_assert_int_eq(t_count_fds(), fds0);
}
END_TEST

START_TEST(test_cuda_register_forged)
{
	/* REGISTER of a CUDA grant must come with an export of pinned memory of
	 * that device and of exactly the size claimed, not already accounted,
	 * and within the limits an ALLOC has. */
	fake_reset(2);
	struct tc_live l;
	tc_live_init(&l);
	l.cfg.client_max = 10 * MiB;
	tc_live_run(&l);
	struct pool *p0 = broker_pool(l.b, 0);
	ck_assert_str_eq(p0->name, "cuda:0");
	int s = tr_connect(l.sock);
	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(tr_hello(s, "forger"), 0);
	const uint8_t *u0 = fk.dev[0].uuid;
	char why[256];
	uint64_t id = 0;

	/* a sealed memfd claiming to be GPU memory */
	int mfd = memfd_create("forged", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	ck_assert_int_eq(ftruncate(mfd, 4 * MiB), 0);
	ck_assert_int_eq(fcntl(mfd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
	ck_assert_int_eq(tr_register(s, u0, 4 * MiB, 0, mfd, 10, NULL, why, sizeof(why)), -EINVAL);
	ck_assert_msg(strstr(why, "not a CUDA allocation"), "%s", why);
	/* memory of the other device */
	CUmemGenericAllocationHandle bh0, bh1, bh2;
	int e1 = fake_export(1, 4 * MiB, &bh1);
	ck_assert_int_eq(tr_register(s, u0, 4 * MiB, 0, e1, 11, NULL, why, sizeof(why)), -EINVAL);
	ck_assert_msg(strstr(why, "not memory of this device"), "%s", why);
	/* the right device, another size */
	int e0 = fake_export(0, 4 * MiB, &bh0);
	ck_assert_int_eq(tr_register(s, u0, 6 * MiB, 0, e0, 12, NULL, why, sizeof(why)), -EINVAL);
	ck_assert_msg(strstr(why, "smaller than the size claimed"), "%s", why);
	ck_assert_int_eq(tr_register(s, u0, 2 * MiB, 0, e0, 13, NULL, why, sizeof(why)), -EINVAL);
	ck_assert_msg(strstr(why, "larger than the size claimed"), "%s", why);
	ck_assert_int_eq(tr_register(s, u0, 3 * MiB, 0, e0, 14, NULL, why, sizeof(why)), -EINVAL);
	/* a fresh open of the export's file: the same inode as every export
	 * (the driver's control device), but no export */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", e0);
	int reopened = open(path, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(reopened, 0);
	struct stat sa, sb;
	ck_assert_int_eq(fstat(reopened, &sa), 0);
	ck_assert_int_eq(fstat(e1, &sb), 0);
	ck_assert(sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev);
	ck_assert_int_eq(tr_register(s, u0, 4 * MiB, 0, reopened, 21, NULL, why, sizeof(why)), -EINVAL);
	ck_assert_msg(strstr(why, "not a CUDA allocation"), "%s", why);
	close(reopened);
	ck_assert_uint_eq(p0->used, 0);
	ck_assert_int_eq(fake_count(FK_HANDLES), 2); /* every refused import was released */

	/* A real export the broker did not make (memory the client created
	 * itself) is accounted, against the sender only, as a sealed memfd of
	 * its own is... */
	ck_assert_msg(tr_register(s, u0, 4 * MiB, 0, e0, 15, &id, why, sizeof(why)) == 0, "%s", why);
	ck_assert_uint_ne(id, 0);
	ck_assert_uint_eq(p0->used, 4 * MiB);
	ck_assert_int_eq(fake_count(FK_HANDLES), 3);
	/* ...once: the same export again, or another fd of the same open file,
	 * is refused */
	int twin = fcntl(e0, F_DUPFD_CLOEXEC, 3);
	ck_assert_int_eq(tr_register(s, u0, 4 * MiB, 0, e0, 16, NULL, why, sizeof(why)), -EEXIST);
	ck_assert_int_eq(tr_register(s, u0, 4 * MiB, 0, twin, 17, NULL, why, sizeof(why)), -EEXIST);
	close(twin);
	/* so is a live grant of this broker's, handed back */
	int gfd = -1;
	ck_assert_int_eq(tr_alloc(s, 0, 2 * MiB, 0, 18, &gfd, NULL), 0);
	ck_assert_uint_eq(p0->used, 6 * MiB);
	ck_assert_int_eq(tr_register(s, u0, 2 * MiB, 0, gfd, 19, NULL, why, sizeof(why)), -EEXIST);
	ck_assert_uint_eq(p0->used, 6 * MiB);
	ck_assert_int_eq(fake_count(FK_HANDLES), 4); /* bh0, bh1, the adopted one, the grant's */
	/* bounded like an ALLOC: 6 MiB held + 6 MiB is past the client's 10 */
	int e2 = fake_export(0, 6 * MiB, &bh2);
	ck_assert_int_eq(tr_register(s, u0, 6 * MiB, 0, e2, 20, NULL, why, sizeof(why)), -EDQUOT);
	ck_assert_msg(strstr(why, "client limit"), "%s", why);
	ck_assert_uint_eq(p0->used, 6 * MiB);
	ck_assert_int_eq(fake_count(FK_HANDLES), 5); /* + bh2, nothing of the broker's */

	/* The connection goes while the process runs on: the broker cannot
	 * revoke CUDA memory (an import keeps it), so what the connection held
	 * stays charged to the process, detached, until it exits (here: never;
	 * the broker's shutdown drops it). */
	close(s);
	for (int i = 0; i < 500 && broker_client_count(l.b) != 1; i++)
		t_sleep_ms(10);
	t_sleep_ms(50);
	ck_assert_uint_eq(broker_client_count(l.b), 1);
	ck_assert_uint_eq(broker_grant_count(l.b), 2);
	ck_assert_uint_eq(p0->used, 6 * MiB);
	ck_assert_int_eq(fake_count(FK_HANDLES), 5);
	tc_live_stop(&l);
	ck_assert_int_eq(fake_count(FK_HANDLES), 3);
	close(gfd);
	close(mfd);
	close(e0);
	close(e1);
	close(e2);
	fake_release(bh0);
	fake_release(bh1);
	fake_release(bh2);
	fake_assert_clean();
}
END_TEST

/* A holder in a child process, speaking raw (its copy of the fake driver
 * knows nothing of the parent's allocations, so it never imports): when
 * told, takes one grant of size on dev, keeps its fd, says so, and waits to
 * be killed. */
static void holder_child(const char *sock, uint32_t dev, uint64_t size, int go, int ready)
{
	char x;
	int fd = -1;
	if (read(go, &x, 1) != 1)
		_exit(2);
	int s = tr_connect(sock);
	if (s < 0 || tr_hello(s, "holder") < 0)
		_exit(3);
	if (tr_alloc(s, dev, size, 0, 2, &fd, NULL) != 0)
		_exit(4);
	if (write(ready, "r", 1) != 1)
		_exit(5);
	for (;;)
		pause();
}

/* Applies fd store messages until the store holds want fds (bounded). */
static int store_drain(struct tn_listener *nl, struct tn_fdstore *st, int want)
{
	for (int i = 0; i < 200 && st->n != want; i++) {
		struct tn_msg m;
		if (tn_recv(nl, 25, &m) > 0)
			tn_fdstore_apply(st, &m);
	}
	return st->n;
}

START_TEST(test_cuda_fdstore_restart)
{
	/* Under systemd every CUDA grant's export is kept in the fd store: a
	 * restarted broker imports them before it serves anyone, accounts them
	 * to a "restored" client per holder until the holder re-registers
	 * (hand-over, counted once) or dies (released: the memory goes). */
	fake_reset(2);
	struct tc_live l;
	tc_live_init(&l);
	int go[2], ready[2];
	ck_assert_int_eq(pipe(go), 0);
	ck_assert_int_eq(pipe(ready), 0);
	pid_t kid[2];
	for (int k = 0; k < 2; k++) { /* before any thread exists */
		kid[k] = fork();
		ck_assert_int_ge(kid[k], 0);
		if (kid[k] == 0)
			holder_child(l.sock, (uint32_t)k, (k + 1) * 2 * MiB, go[0], ready[1]);
	}
	struct tn_listener nl;
	struct tn_fdstore store;
	ck_assert_int_eq(tn_listen(&nl, l.dir, "notify"), 0);
	tn_fdstore_init(&store);
	setenv("NOTIFY_SOCKET", nl.path, 1);
	l.cfg.fdstore = 1;
	tc_live_run(&l);

	/* kid 0 holds 2 MiB on cuda:0, kid 1 4 MiB on cuda:1 */
	ck_assert_int_eq(write(go[1], "gg", 2), 2);
	for (int k = 0; k < 2; k++) {
		char x;
		struct pollfd pf = { .fd = ready[0], .events = POLLIN };
		ck_assert_int_eq(poll(&pf, 1, 10000), 1);
		ck_assert_int_eq(read(ready[0], &x, 1), 1);
	}
	/* and this process 4 MiB (reclaimable) on cuda:0, 2 MiB on cuda:1 */
	vram_client *c;
	vram_grant *g[2];
	char *buf = malloc(4 * MiB), *back = malloc(4 * MiB);
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 4 * MiB, VRAM_ALLOC_RECLAIMABLE, &g[0]), 0);
	ck_assert_int_eq(vram_alloc(c, 1, 2 * MiB, 0, &g[1]), 0);
	for (int i = 0; i < 2; i++) {
		pattern(buf, vram_grant_size(g[i]), 10 + i);
		tc_dev_write(c, (uint32_t)i, vram_grant_device_ptr(g[i]), buf, vram_grant_size(g[i]));
	}
	ck_assert_int_eq(store_drain(&nl, &store, 4), 4);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 4);

	/* The broker goes; kid 0 dies while none runs. */
	tc_live_halt(&l);
	ck_assert_int_eq(store.n, 4); /* stopping is not releasing */
	kill(kid[0], SIGKILL);
	waitpid(kid[0], NULL, 0);
	ck_assert_int_eq(fake_count(FK_ALLOCS), 4); /* the store's fds hold kid 0's memory */

	/* The next broker gets the store back (copies, as from systemd). */
	int rfds[8];
	char *rnames[8];
	for (int i = 0; i < store.n; i++) {
		rfds[i] = fcntl(store.fds[i], F_DUPFD_CLOEXEC, 3);
		ck_assert_int_ge(rfds[i], 0);
		rnames[i] = store.names[i];
	}
	l.cfg.restore_fds = rfds;
	l.cfg.restore_names = rnames;
	l.cfg.nrestore = (uint32_t)store.n;
	tc_live_run(&l);
	l.cfg.nrestore = 0;
	/* kid 0's grant: released at once, and its memory is gone */
	ck_assert_int_eq(store_drain(&nl, &store, 3), 3);
	ck_assert_int_eq(wait_allocs(3), 3);
	struct vram_status *st = observe(l.sock);
	ck_assert_uint_eq(st->devices[0].used, 4 * MiB);
	ck_assert_uint_eq(st->devices[1].used, 6 * MiB);
	ck_assert_uint_eq(st->devices[0].reclaimable, 4 * MiB);
	ck_assert_uint_eq(held_by(st, "restored"), 10 * MiB); /* before anyone reconnects */
	ck_assert_uint_eq(held_by(st, "t"), 0);
	vram_status_free(st);
	ck_assert_int_eq(fake_count(FK_HANDLES), 5); /* ours, and the broker's imports of the three */

	/* this process comes back: its grants change hands, counted once */
	struct vram_status *mine;
	ck_assert_msg(vram_get_status(c, &mine) == 0, "%s", vram_last_error());
	vram_status_free(mine);
	st = observe(l.sock);
	ck_assert_uint_eq(st->devices[0].used, 4 * MiB);
	ck_assert_uint_eq(st->devices[1].used, 6 * MiB);
	ck_assert_uint_eq(st->devices[0].reclaimable, 4 * MiB);
	ck_assert_uint_eq(held_by(st, "t"), 6 * MiB);
	ck_assert_uint_eq(held_by(st, "restored"), 4 * MiB); /* kid 1's */
	ck_assert_uint_eq(st->grants, 3);
	vram_status_free(st);
	ck_assert_int_eq(fake_count(FK_HANDLES), 5); /* the REGISTERs' own imports were dropped */
	for (int i = 0; i < 2; i++) {
		pattern(buf, vram_grant_size(g[i]), 10 + i);
		tc_dev_read(c, (uint32_t)i, vram_grant_device_ptr(g[i]), back, vram_grant_size(g[i]));
		ck_assert_msg(!memcmp(buf, back, vram_grant_size(g[i])), "grant %d lost its bytes", i);
	}
	/* the handed-over grant is still known by its export */
	int s = tr_connect(l.sock);
	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(tr_hello(s, "copycat"), 0);
	ck_assert_int_eq(tr_register(s, fk.dev[0].uuid, 4 * MiB, 0, g[0]->fd, 5, NULL, NULL, 0), -EEXIST);
	close(s);

	/* kid 1 dies: the broker releases its restored grant (it watches the
	 * holder through a pidfd), and the memory goes.  Without pidfd_open
	 * (valgrind 3.19 does not know it) nothing tells the broker: kid 1's
	 * grant then stays until the broker stops. */
	int probe = (int)syscall(SYS_pidfd_open, getpid(), 0);
	bool have_pidfd = probe >= 0;
	if (probe >= 0)
		close(probe);
	kill(kid[1], SIGKILL);
	waitpid(kid[1], NULL, 0);
	if (have_pidfd) {
		ck_assert_int_eq(store_drain(&nl, &store, 2), 2);
		ck_assert_int_eq(wait_allocs(2), 2);
		st = observe(l.sock);
		ck_assert_uint_eq(st->devices[1].used, 2 * MiB);
		ck_assert_uint_eq(held_by(st, "restored"), 0);
		vram_status_free(st);
	} else {
		fprintf(stderr, "test_cuda_fdstore_restart: no pidfd_open, a holder's later death not checked\n");
	}

	vram_close(c);
	int left = have_pidfd ? 0 : 1; /* without a pidfd kid 1's restored grant stays */
	ck_assert_int_eq(store_drain(&nl, &store, left), left);
	for (int i = 0; i < 500 && broker_grant_count(l.b) != (uint64_t)left; i++)
		t_sleep_ms(10);
	ck_assert_uint_eq(broker_grant_count(l.b), (uint64_t)left);
	tc_live_stop(&l);
	unsetenv("NOTIFY_SOCKET");
	tn_fdstore_clear(&store);
	tn_close(&nl);
	for (int i = 0; i < 2; i++) {
		close(go[i]);
		close(ready[i]);
	}
	free(buf);
	free(back);
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

int main(void)
{
	Suite *s = suite_create("cuda-fake");
	TCase *tl = tcase_create("loader");
	tcase_add_checked_fixture(tl, tc_setup, tc_teardown);
	tcase_add_test(tl, test_abi_constants);
	tcase_add_test(tl, test_strerror_errno);
	tcase_add_test(tl, test_missing_entry_points);
	tcase_add_test(tl, test_real_loader_without_driver);
	suite_add_tcase(s, tl);

	TCase *td = tcase_create("discovery");
	tcase_add_checked_fixture(td, tc_setup, tc_teardown);
	tcase_add_test(td, test_discover_devices);
	tcase_add_test(td, test_discover_no_devices);
	tcase_add_test(td, test_discover_skips_unsupported);
	tcase_add_test(td, test_discover_entry_errors);
	suite_add_tcase(s, td);

	TCase *tg = tcase_create("grants");
	tcase_add_checked_fixture(tg, tc_setup, tc_teardown);
	tcase_add_test(tg, test_grant_clears_and_exports);
	tcase_add_test(tg, test_grant_entry_errors);
	tcase_add_test(tg, test_release_failure_is_survived);
	tcase_add_test(tg, test_adopt);
	suite_add_tcase(s, tg);

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
	suite_add_tcase(s, tr);

	TCase *tb = tcase_create("broker");
	tcase_add_checked_fixture(tb, tc_setup, tc_teardown);
	tcase_set_timeout(tb, 60);
	tcase_add_test(tb, test_broker_and_client);
	tcase_add_test(tb, test_load_cuda);
	tcase_add_test(tb, test_client_killed);
	tcase_add_test(tb, test_cuda_restart);
	tcase_add_test(tb, test_cuda_register_forged);
	tcase_add_test(tb, test_cuda_fdstore_restart);
	tcase_add_test(tb, test_real_vramd_note);
	suite_add_tcase(s, tb);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
