/* SPDX-License-Identifier: MIT */
/*
 * A fake CUDA driver for the test suites (tests/fake-cuda.c), installed
 * with cuda_api_set_override by fake_reset.
 *
 * The fake is strict where the real driver is (an initialized driver, a
 * current context for streams, events, copies and memsets, unmapping before
 * freeing a VA range, sizes multiple of the granularity) and keeps books of
 * everything created (fk), so that a test can end by checking that all of
 * it was given back (fake_assert_clean).  Device memory is host memory: an
 * allocation is a memfd, a VA reservation is an inaccessible anonymous
 * mapping, cuMemMap maps the memfd into it.  cuMemCreate hands out recycled
 * memory with the previous owner's bytes still in it, as a real GPU may:
 * only the broker's clearing makes a new grant read zero.  Kernel launches
 * run the kernels' C references.
 *
 * A test may read the books and set a device's properties (fk.dev[p]) or
 * the visible devices (fk.nvisible, fk.perm) between calls; the driver's
 * entry points take a lock, the test does not.
 */
#ifndef VRAM_TESTS_FAKE_CUDA_H
#define VRAM_TESTS_FAKE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "common/cuda-api.h"

#ifndef MiB
#define MiB (1ull << 20)
#endif
#ifndef GiB
#define GiB (1ull << 30)
#endif

/* The driver's entry points, in struct cuda_api order. */
enum fk_fn {
	F_Init, F_DriverGetVersion, F_GetErrorName, F_GetErrorString, F_DeviceGetCount, F_DeviceGet,
	F_DeviceGetName, F_DeviceGetUuid, F_DeviceTotalMem, F_DeviceGetAttribute, F_DevicePrimaryCtxRetain,
	F_DevicePrimaryCtxRelease, F_CtxPushCurrent, F_CtxPopCurrent, F_CtxSynchronize, F_MemGetInfo,
	F_MemGetAllocationGranularity, F_MemCreate, F_MemRelease, F_MemExportToShareableHandle,
	F_MemImportFromShareableHandle, F_MemGetAllocationPropertiesFromHandle, F_MemAddressReserve,
	F_MemAddressFree, F_MemMap, F_MemUnmap,
	F_MemSetAccess, F_MemsetD8, F_MemcpyHtoD, F_MemcpyDtoH, F_MemcpyHtoDAsync, F_MemcpyDtoHAsync,
	F_MemcpyDtoDAsync, F_MemHostRegister, F_MemHostUnregister, F_StreamCreate, F_StreamDestroy,
	F_StreamSynchronize, F_EventCreate, F_EventDestroy, F_EventRecord, F_EventSynchronize,
	F_EventQuery, F_StreamWaitEvent,
	F_ModuleLoadData, F_ModuleUnload, F_ModuleGetFunction, F_LaunchKernel, F_MemAllocManaged, F_MemFree,
	F_MemAdvise, F_MemPrefetchAsync,
	F_COUNT
};

#define FK_MAX_DEV 4
#define FK_MAX 64

struct fk_dev {
	char name[64];
	uint8_t uuid[16];
	size_t total, free;
	size_t gran;
	int vmm, posix_fd, numa;
	int numa_unknown;        /* HOST_NUMA_ID query fails (old driver) */
	int cma;                 /* CONCURRENT_MANAGED_ACCESS */
	int compute_mode;        /* COMPUTE_MODE (0: default) */
	int ctx_refs;            /* primary context retains */
};

struct fk_alloc {            /* "physical" memory */
	int live;
	int memfd;
	size_t size;
	int dev;                 /* physical index */
	int handles, maps;
	int exports;             /* exported files still open somewhere */
};

/* An exported POSIX fd, as the real driver makes one: a new open file
 * description of the driver's control device (so every export has the same
 * inode, and a fresh open of that file is no export), which keeps the
 * allocation alive until every copy of it, in any process, is closed, and
 * which can be imported any number of times.  The fake's control device is
 * a memfd (fk.ctl); export i is an open of it holding an OFD lock on byte i.
 * OFD locks belong to the open file description and go when it does: the
 * fake probes them from fk.ctl to see which exports still live, and from an
 * fd to see which export it is (its own lock does not conflict with it). */
struct fk_export {
	int live;
	int alloc;
};

struct fk_handle {
	CUmemGenericAllocationHandle id;
	int alloc;               /* index, -1: free slot */
};

struct fk_resv {
	char *va;
	size_t size;
};

struct fk_map {
	char *va;
	size_t size;
	int alloc;
	int access;
};

struct fk_reg {
	char *p;
	size_t n;
};

struct fk_kernel {           /* a function of a loaded module */
	int magic;
	void *mod;
	char name[64];
};

struct fk_launch {           /* the last launch */
	char name[64];
	unsigned grid[3], block[3], shared;
	CUstream stream;
	uint64_t a[8];           /* parameters, widened */
};

struct fk_managed {          /* a cuMemAllocManaged allocation */
	char *va;
	size_t size;
	int dev;
};

struct fk_uvm_call {         /* a cuMemAdvise or cuMemPrefetchAsync */
	int fn;
	CUdeviceptr p;
	size_t n;
	int advice;
	int loc_type, loc_id;
	CUstream s;
};

/* The fake's books. */
struct fake {
	int inited;
	CUresult init_result;    /* what cuInit returns */
	int ndev;
	struct fk_dev dev[FK_MAX_DEV];
	int nvisible;            /* devices this "process" sees, in order: */
	int perm[FK_MAX_DEV];    /* visible ordinal -> physical index */
	/* injection: the fail_nth call (0-based) of fail_fn returns fail_code */
	int fail_fn;
	unsigned fail_nth, fail_seen;
	CUresult fail_code;
	unsigned calls[F_COUNT];
	struct fk_alloc alloc[FK_MAX];
	struct fk_handle handle[FK_MAX];
	struct fk_export exp[FK_MAX];
	int ctl;                 /* the "control device" exports are opens of */
	int prop_lie;            /* properties reported: 1 not pinned, 2 no POSIX-fd handle type */
	CUmemGenericAllocationHandle next_handle;
	struct fk_resv resv[FK_MAX];
	struct fk_map map[FK_MAX];
	struct fk_reg reg[FK_MAX];
	int streams, events;
	int sync_waiters;        /* threads in cuEventSynchronize on a pending event */
	unsigned stream_waits;   /* cuStreamWaitEvent calls that succeeded */
	int recycle_fd;          /* memory given back, handed out again uncleared */
	size_t recycle_size;
	int ctx_objs[FK_MAX_DEV];
	/* kernels */
	int modules;             /* loaded */
	const void *last_image;
	struct fk_kernel fn[FK_MAX];
	struct fk_launch launch;
	unsigned launches;
	size_t last_reserve_align;  /* cuMemAddressReserve alignment last asked for */
	/* unified memory */
	struct fk_managed managed[FK_MAX];
	struct fk_uvm_call ucall[256];
	unsigned nucall;
};

extern struct fake fk;

/* The fake's entry points, as cuda_api_set_override takes them. */
extern const struct cuda_api fake_api;

/* The driver's name of each entry point ("cuMemCreate"), by enum fk_fn. */
extern const char *const fk_fn_names[F_COUNT];

/* The dtypes the cast kernels convert between, in the fatbin's order. */
extern const uint32_t fk_dtypes[5];

/* What fake_count counts. */
enum fk_what {
	FK_ALLOCS,               /* live allocations */
	FK_HANDLES,              /* allocation handles, any process's */
	FK_RESV,                 /* VA reservations */
	FK_MAPS,                 /* mappings */
	FK_REGS,                 /* host registrations */
	FK_EXPORTS,              /* exported fds still open somewhere */
};

/* ndev devices ("Fake GPU <p>", 16 GiB, 256 MiB of it taken by a context),
 * all visible in order, nothing created, no failure injected; the fake
 * installed as this process's driver.  Fails the test if it cannot make
 * its control device. */
void fake_reset(int ndev);

/* A test's end: forgets every export and the recycled memory and removes
 * the fake (the real loader again). */
void fake_teardown(void);

/* From now on the nth call (0-based) of f returns code, once. */
void fake_fail(enum fk_fn f, unsigned nth, CUresult code);

/* No failure injected. */
void fake_nofail(void);

/* How many of what live now (closed exports reaped first). */
int fake_count(enum fk_what what);

/* Fails the test unless everything created was given back, every device's
 * free memory is what it was and this thread's context stack is empty. */
void fake_assert_clean(void);

/* This thread's depth of pushed contexts. */
int fake_ctx_depth(void);

/* An allocation of size bytes on physical device p, exported as the broker
 * would send it: returns the fd; *ret_h is the "broker's" handle.  Fails
 * the test if the fake refuses. */
int fake_export(int p, size_t size, CUmemGenericAllocationHandle *ret_h);

/* Releases a handle fake_export (or anyone) made; fails the test if h is
 * none. */
void fake_release(CUmemGenericAllocationHandle h);

/* The memfd holding the memory of the exported fd (the fake's "device
 * memory"), or -1. */
int fake_memfd_of(int fd);

/* Drops every VA reservation and mapping still there, which a driver whose
 * unmap or VA free failed strands, and the allocations only those held. */
void fake_drop_stranded(void);

/* Closes the recycled memory (given back, not handed out again). */
void fake_drop_recycled(void);

/* A stream of physical device p, made as the caller's framework would
 * (counted in fk.streams); fake_stream_free frees it. */
CUstream fake_stream_new(int p);
void fake_stream_free(CUstream s);
/* Work queued on s from now on does not complete: events recorded on it
 * stay pending (cuEventQuery says CUDA_ERROR_NOT_READY, cuEventSynchronize
 * blocks), as do those of a stream made to wait for one of them
 * (cuStreamWaitEvent), until fake_complete. */
void fake_stream_hold(CUstream s);
/* Everything queued completes: no stream is held, no event pending, the
 * threads in cuEventSynchronize return. */
void fake_complete(void);
/* Threads blocked in cuEventSynchronize on a pending event now. */
int fake_sync_waiters(void);

/* The fatbin cuModuleGetFunction finds kernels in: NUL-terminated names in
 * names[0..len), as the real (uncompressed) fatbin holds them; NULL: none. */
void fake_set_image(const char *names, size_t len);

#endif
