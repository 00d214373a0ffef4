/* SPDX-License-Identifier: MIT */
/*
 * The broker's half of the CUDA backend against the fake driver
 * (tests/fake-cuda.h): the driver table and its loader (every entry point
 * missing, the real libcuda loader on a machine without a driver, what
 * vramd then says), discovery (devices, skips, every entry point failing,
 * cuInit errors), the grant path (clearing, export, every call failing,
 * adopting an export back), and CUDA grants surviving a restart: handed
 * back by their holders (REGISTER), forged REGISTERs refused, and the fd
 * store of a broker under systemd.  The runtime's half is
 * test-cuda-runtime.c.
 */
#include <dlfcn.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/syscall.h>

#include "broker/broker.h"
#include "common/cleanup.h"
#include "common/cuda-api.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
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

int main(void)
{
	Suite *s = suite_create("cuda-broker");
	TCase *tl = tcase_create("loader");
	tcase_add_checked_fixture(tl, tc_setup, tc_teardown);
	tcase_set_timeout(tl, 60);
	tcase_add_test(tl, test_abi_constants);
	tcase_add_test(tl, test_strerror_errno);
	tcase_add_test(tl, test_missing_entry_points);
	tcase_add_test(tl, test_real_loader_without_driver);
	tcase_add_test(tl, test_real_vramd_note);
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

	TCase *tr = tcase_create("restart");
	tcase_add_checked_fixture(tr, tc_setup, tc_teardown);
	tcase_set_timeout(tr, 60);
	tcase_add_test(tr, test_cuda_restart);
	tcase_add_test(tr, test_cuda_register_forged);
	tcase_add_test(tr, test_cuda_fdstore_restart);
	suite_add_tcase(s, tr);

	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
