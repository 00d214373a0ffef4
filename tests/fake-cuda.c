/* SPDX-License-Identifier: MIT */
/*
 * The fake CUDA driver the test suites run the CUDA backend against
 * (tests/fake-cuda.h says what it does and how strict it is): its entry
 * points, the table of them, and the controls the tests use.
 */
#include <check.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "kernels/kernels.h"
#include "runtime/vram.h"
#include "fake-cuda.h"

#define FK_STREAM 0x5354
#define FK_EVENT 0x4556

/* streams, events and modules */
struct fk_obj {
	int magic;
	int dev;
	int held;                /* stream: work on it does not complete (fake_stream_hold) */
	int pending;             /* event: recorded after work that has not completed */
	struct fk_obj *next;     /* streams and events, for fake_complete */
};

static struct fk_obj *fk_objs;  /* streams and events */
static pthread_cond_t fk_cv = PTHREAD_COND_INITIALIZER; /* an event completed */

struct fake fk;

static pthread_mutex_t fk_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread CUcontext ctx_stack[16];
static __thread int ctx_depth;

#define ENTER(id)                                                             \
	pthread_mutex_lock(&fk_lock);                                         \
	fk.calls[id]++;                                                       \
	if (fk.fail_fn == (id) && fk.fail_seen++ == fk.fail_nth) {            \
		CUresult r_ = fk.fail_code;                                   \
		pthread_mutex_unlock(&fk_lock);                               \
		return r_;                                                    \
	}
#define ENTER_INIT(id)                                                        \
	ENTER(id)                                                             \
	if (!fk.inited)                                                       \
		OUT(CUDA_ERROR_NOT_INITIALIZED);
#define ENTER_CTX(id)                                                         \
	ENTER_INIT(id)                                                        \
	if (ctx_depth == 0)                                                   \
		OUT(CUDA_ERROR_INVALID_CONTEXT);
#define OUT(x)                                                                \
	do {                                                                  \
		CUresult r_ = (x);                                            \
		pthread_mutex_unlock(&fk_lock);                               \
		return r_;                                                    \
	} while (0)

static const struct {
	CUresult r;
	const char *name, *desc;
} fk_errors[] = {
	{ CUDA_SUCCESS, "CUDA_SUCCESS", "no error" },
	{ CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument" },
	{ CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory" },
	{ CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error" },
	{ CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected" },
	{ CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal" },
	{ CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context" },
	{ CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
	  "part or all of the requested memory range is already mapped" },
	{ CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
	  "pointer does not correspond to a registered memory region" },
	{ CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported" },
	{ CUDA_ERROR_STUB_LIBRARY, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library" },
	{ CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error" },
};

static CUresult fk_GetErrorName(CUresult e, const char **s)
{
	ENTER(F_GetErrorName);
	for (size_t i = 0; i < ARRAY_SIZE(fk_errors); i++)
		if (fk_errors[i].r == e) {
			*s = fk_errors[i].name;
			OUT(CUDA_SUCCESS);
		}
	*s = NULL;
	OUT(CUDA_ERROR_INVALID_VALUE);
}

static CUresult fk_GetErrorString(CUresult e, const char **s)
{
	ENTER(F_GetErrorString);
	for (size_t i = 0; i < ARRAY_SIZE(fk_errors); i++)
		if (fk_errors[i].r == e) {
			*s = fk_errors[i].desc;
			OUT(CUDA_SUCCESS);
		}
	*s = NULL;
	OUT(CUDA_ERROR_INVALID_VALUE);
}

static CUresult fk_Init(unsigned flags)
{
	ENTER(F_Init);
	if (flags)
		OUT(CUDA_ERROR_INVALID_VALUE);
	if (fk.init_result == CUDA_SUCCESS)
		fk.inited = 1;
	OUT(fk.init_result);
}

static CUresult fk_DriverGetVersion(int *v)
{
	ENTER(F_DriverGetVersion);
	*v = 13000;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_DeviceGetCount(int *n)
{
	ENTER_INIT(F_DeviceGetCount);
	*n = fk.nvisible;
	OUT(CUDA_SUCCESS);
}

/* Physical index of visible ordinal o, or -1. */
static int phys(int o)
{
	return o >= 0 && o < fk.nvisible ? fk.perm[o] : -1;
}

/* The device of visible ordinal o, or NULL.  (Its index is looked up once:
 * a store through fk.dev[] between two lookups could, for all the compiler
 * knows, have changed fk.perm.) */
static struct fk_dev *dev_of(int o)
{
	int p = phys(o);
	return p >= 0 ? &fk.dev[p] : NULL;
}

static CUresult fk_DeviceGet(CUdevice *d, int o)
{
	ENTER_INIT(F_DeviceGet);
	if (phys(o) < 0)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	*d = o; /* as in CUDA: the handle is the ordinal */
	OUT(CUDA_SUCCESS);
}

static CUresult fk_DeviceGetName(char *name, int len, CUdevice d)
{
	ENTER_INIT(F_DeviceGetName);
	struct fk_dev *x = dev_of(d);
	if (!x)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	snprintf(name, (size_t)len, "%s", x->name);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_DeviceGetUuid(CUuuid *u, CUdevice d)
{
	ENTER_INIT(F_DeviceGetUuid);
	struct fk_dev *x = dev_of(d);
	if (!x)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	memcpy(u->bytes, x->uuid, 16);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_DeviceTotalMem(size_t *n, CUdevice d)
{
	ENTER_INIT(F_DeviceTotalMem);
	struct fk_dev *x = dev_of(d);
	if (!x)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	*n = x->total;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_DeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d)
{
	ENTER_INIT(F_DeviceGetAttribute);
	struct fk_dev *x = dev_of(d);
	if (!x)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	switch ((int)a) {
	case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
		*v = x->vmm;
		break;
	case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
		*v = x->posix_fd;
		break;
	case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS:
		*v = x->cma;
		break;
	case CU_DEVICE_ATTRIBUTE_COMPUTE_MODE:
		*v = x->compute_mode;
		break;
	case CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID:
		if (x->numa_unknown)
			OUT(CUDA_ERROR_INVALID_VALUE);
		*v = x->numa;
		break;
	default:
		OUT(CUDA_ERROR_INVALID_VALUE);
	}
	OUT(CUDA_SUCCESS);
}

static CUcontext ctx_of(int p)
{
	return (CUcontext)(void *)&fk.ctx_objs[p];
}

static int ctx_dev(CUcontext c)
{
	for (int p = 0; p < fk.ndev; p++)
		if (c == ctx_of(p))
			return p;
	return -1;
}

static CUresult fk_DevicePrimaryCtxRetain(CUcontext *c, CUdevice d)
{
	ENTER_INIT(F_DevicePrimaryCtxRetain);
	int p = phys(d);
	if (p < 0)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	fk.dev[p].ctx_refs++;
	*c = ctx_of(p);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_DevicePrimaryCtxRelease(CUdevice d)
{
	ENTER_INIT(F_DevicePrimaryCtxRelease);
	struct fk_dev *x = dev_of(d);
	if (!x)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	if (x->ctx_refs <= 0)
		OUT(CUDA_ERROR_INVALID_CONTEXT);
	x->ctx_refs--;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_CtxPushCurrent(CUcontext c)
{
	ENTER_INIT(F_CtxPushCurrent);
	int p = ctx_dev(c);
	if (p < 0 || fk.dev[p].ctx_refs <= 0)
		OUT(CUDA_ERROR_INVALID_CONTEXT);
	if (ctx_depth == (int)ARRAY_SIZE(ctx_stack))
		OUT(CUDA_ERROR_UNKNOWN);
	ctx_stack[ctx_depth++] = c;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_CtxPopCurrent(CUcontext *c)
{
	ENTER_INIT(F_CtxPopCurrent);
	if (ctx_depth == 0)
		OUT(CUDA_ERROR_INVALID_CONTEXT);
	*c = ctx_stack[--ctx_depth];
	OUT(CUDA_SUCCESS);
}

static CUresult fk_CtxSynchronize(void)
{
	ENTER_CTX(F_CtxSynchronize);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemGetInfo(size_t *f, size_t *t)
{
	ENTER_CTX(F_MemGetInfo);
	int p = ctx_dev(ctx_stack[ctx_depth - 1]);
	*f = fk.dev[p].free;
	*t = fk.dev[p].total;
	OUT(CUDA_SUCCESS);
}

static int prop_ok(const CUmemAllocationProp *prop)
{
	return prop->type == CU_MEM_ALLOCATION_TYPE_PINNED &&
	       prop->requestedHandleTypes == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR &&
	       prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE && phys(prop->location.id) >= 0 &&
	       prop->win32HandleMetaData == NULL;
}

static CUresult fk_MemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *prop,
					       CUmemAllocationGranularity_flags o)
{
	ENTER_INIT(F_MemGetAllocationGranularity);
	if (!prop_ok(prop))
		OUT(CUDA_ERROR_INVALID_VALUE);
	*g = dev_of(prop->location.id)->gran; /* prop_ok: a visible device */
	OUT(CUDA_SUCCESS);
}

static void alloc_put(int a)
{
	struct fk_alloc *x = &fk.alloc[a];
	if (x->handles || x->maps || x->exports)
		return;
	fk.dev[x->dev].free += x->size;
	if (fk.recycle_fd < 0) {
		fk.recycle_fd = x->memfd;
		fk.recycle_size = x->size;
	} else {
		close(x->memfd);
	}
	memset(x, 0, sizeof(*x));
}

/* The lock type on export i's byte as fd sees it: F_UNLCK when nobody else
 * holds it (no export i, or fd is export i's file). */
static int export_lock_seen(int fd, int i)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1 };
	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return -1;
	return fl.l_type;
}

/* Drops the exports whose files are closed everywhere.  Lock held. */
static void fk_reap(void)
{
	for (int i = 0; i < FK_MAX; i++) {
		struct fk_export *e = &fk.exp[i];
		if (!e->live || export_lock_seen(fk.ctl, i) != F_UNLCK)
			continue;
		int a = e->alloc;
		memset(e, 0, sizeof(*e));
		fk.alloc[a].exports--;
		alloc_put(a);
	}
}

/* The export whose open file fd is, or -1.  Lock held. */
static int export_of(int fd)
{
	struct stat st, ctl;
	if (fstat(fd, &st) < 0 || fstat(fk.ctl, &ctl) < 0 || st.st_ino != ctl.st_ino || st.st_dev != ctl.st_dev)
		return -1;
	fk_reap();
	for (int i = 0; i < FK_MAX; i++)
		if (fk.exp[i].live && export_lock_seen(fd, i) == F_UNLCK)
			return i;
	return -1;
}

static CUmemGenericAllocationHandle handle_new(int a)
{
	for (int i = 0; i < FK_MAX; i++)
		if (fk.handle[i].id == 0) {
			fk.handle[i].id = ++fk.next_handle * 0x1000 + 7;
			fk.handle[i].alloc = a;
			fk.alloc[a].handles++;
			return fk.handle[i].id;
		}
	return 0;
}

static struct fk_handle *handle_find(CUmemGenericAllocationHandle h)
{
	for (int i = 0; i < FK_MAX; i++)
		if (h && fk.handle[i].id == h)
			return &fk.handle[i];
	return NULL;
}

static CUresult fk_MemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
			     unsigned long long flags)
{
	ENTER_INIT(F_MemCreate);
	fk_reap();
	if (!prop_ok(prop) || flags || size == 0)
		OUT(CUDA_ERROR_INVALID_VALUE);
	int p = phys(prop->location.id); /* prop_ok: a visible device */
	struct fk_dev *d = &fk.dev[p];
	if (size % d->gran)
		OUT(CUDA_ERROR_INVALID_VALUE);
	if (size > d->free)
		OUT(CUDA_ERROR_OUT_OF_MEMORY);
	int a = -1;
	for (int i = 0; i < FK_MAX && a < 0; i++)
		if (!fk.alloc[i].live)
			a = i;
	if (a < 0)
		OUT(CUDA_ERROR_OUT_OF_MEMORY);
	int fd;
	if (fk.recycle_fd >= 0 && fk.recycle_size == size) {
		fd = fk.recycle_fd; /* the previous owner's bytes are still there */
		fk.recycle_fd = -1;
	} else {
		fd = memfd_create("fake-vram", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
			OUT(CUDA_ERROR_OUT_OF_MEMORY);
		/* Fresh memory is not zero on a GPU either. */
		char *m = mmap(NULL, size, PROT_WRITE, MAP_SHARED, fd, 0);
		if (m != MAP_FAILED) {
			memset(m, 0xa5, size);
			munmap(m, size);
		}
	}
	fk.alloc[a] = (struct fk_alloc){ .live = 1, .memfd = fd, .size = size, .dev = p };
	d->free -= size;
	*h = handle_new(a);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemRelease(CUmemGenericAllocationHandle h)
{
	ENTER_INIT(F_MemRelease);
	fk_reap();
	struct fk_handle *x = handle_find(h);
	if (!x)
		OUT(CUDA_ERROR_INVALID_VALUE);
	int a = x->alloc;
	x->id = 0;
	fk.alloc[a].handles--;
	alloc_put(a);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemExportToShareableHandle(void *out, CUmemGenericAllocationHandle h,
					      CUmemAllocationHandleType t, unsigned long long flags)
{
	ENTER_INIT(F_MemExportToShareableHandle);
	struct fk_handle *x = handle_find(h);
	if (!x || t != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || flags)
		OUT(CUDA_ERROR_INVALID_VALUE);
	int i = 0;
	fk_reap();
	while (i < FK_MAX && fk.exp[i].live)
		i++;
	if (i == FK_MAX)
		OUT(CUDA_ERROR_OUT_OF_MEMORY);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fk.ctl);
	/* Deliberately without close-on-exec: the broker must set it. */
	int fd = open(path, O_RDWR);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1 };
	if (fd < 0)
		OUT(CUDA_ERROR_OPERATING_SYSTEM);
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
		close(fd);
		OUT(CUDA_ERROR_OPERATING_SYSTEM);
	}
	fk.exp[i] = (struct fk_export){ 1, x->alloc };
	fk.alloc[x->alloc].exports++;
	*(int *)out = fd;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemImportFromShareableHandle(CUmemGenericAllocationHandle *h, void *os,
						CUmemAllocationHandleType t)
{
	ENTER_INIT(F_MemImportFromShareableHandle);
	int e = t == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ? export_of((int)(uintptr_t)os) : -1;
	if (e < 0)
		OUT(CUDA_ERROR_INVALID_VALUE);
	*h = handle_new(fk.exp[e].alloc);
	OUT(*h ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY);
}

static CUresult fk_MemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop, CUmemGenericAllocationHandle h)
{
	ENTER_INIT(F_MemGetAllocationPropertiesFromHandle);
	struct fk_handle *x = handle_find(h);
	if (!x || !prop)
		OUT(CUDA_ERROR_INVALID_VALUE);
	/* The location in this process's ordinals. */
	int o = -1;
	for (int i = 0; i < fk.nvisible; i++)
		if (fk.perm[i] == fk.alloc[x->alloc].dev)
			o = i;
	if (o < 0)
		OUT(CUDA_ERROR_INVALID_DEVICE);
	memset(prop, 0, sizeof(*prop));
	prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop->requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
	prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop->location.id = o;
	if (fk.prop_lie == 1)
		prop->type = CU_MEM_ALLOCATION_TYPE_INVALID;
	if (fk.prop_lie == 2)
		prop->requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemAddressReserve(CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr,
				     unsigned long long flags)
{
	ENTER_INIT(F_MemAddressReserve);
	if (size == 0 || size % (2 * MiB) || addr || flags || (align & (align - 1)))
		OUT(CUDA_ERROR_INVALID_VALUE);
	fk.last_reserve_align = align;
	for (int i = 0; i < FK_MAX; i++)
		if (!fk.resv[i].va) {
			void *m = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
			if (m == MAP_FAILED)
				OUT(CUDA_ERROR_OUT_OF_MEMORY);
			fk.resv[i] = (struct fk_resv){ m, size };
			*p = (CUdeviceptr)(uintptr_t)m;
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_OUT_OF_MEMORY);
}

static CUresult fk_MemAddressFree(CUdeviceptr p, size_t size)
{
	ENTER_INIT(F_MemAddressFree);
	char *va = (char *)(uintptr_t)p;
	for (int i = 0; i < FK_MAX; i++)
		if (fk.resv[i].va == va && fk.resv[i].size == size) {
			for (int k = 0; k < FK_MAX; k++)
				if (fk.map[k].va >= va && fk.map[k].va < va + size)
					OUT(CUDA_ERROR_INVALID_VALUE); /* still mapped */
			munmap(va, size);
			fk.resv[i] = (struct fk_resv){ 0 };
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_INVALID_VALUE);
}

static CUresult fk_MemMap(CUdeviceptr p, size_t size, size_t off, CUmemGenericAllocationHandle h,
			  unsigned long long flags)
{
	ENTER_INIT(F_MemMap);
	char *va = (char *)(uintptr_t)p;
	struct fk_handle *x = handle_find(h);
	if (!x || flags || size == 0)
		OUT(CUDA_ERROR_INVALID_VALUE);
	struct fk_alloc *a = &fk.alloc[x->alloc];
	if (off + size > a->size)
		OUT(CUDA_ERROR_INVALID_VALUE);
	int inside = 0;
	for (int i = 0; i < FK_MAX; i++)
		if (fk.resv[i].va && va >= fk.resv[i].va && va + size <= fk.resv[i].va + fk.resv[i].size)
			inside = 1;
	if (!inside)
		OUT(CUDA_ERROR_INVALID_VALUE);
	for (int k = 0; k < FK_MAX; k++)
		if (fk.map[k].va && va < fk.map[k].va + fk.map[k].size && fk.map[k].va < va + size)
			OUT(CUDA_ERROR_ALREADY_MAPPED);
	for (int k = 0; k < FK_MAX; k++)
		if (!fk.map[k].va) {
			if (mmap(va, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, a->memfd, (off_t)off) ==
			    MAP_FAILED)
				OUT(CUDA_ERROR_OUT_OF_MEMORY);
			fk.map[k] = (struct fk_map){ va, size, x->alloc, 0 };
			a->maps++;
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_OUT_OF_MEMORY);
}

static CUresult fk_MemUnmap(CUdeviceptr p, size_t size)
{
	ENTER_INIT(F_MemUnmap);
	fk_reap();
	char *va = (char *)(uintptr_t)p;
	for (int k = 0; k < FK_MAX; k++)
		if (fk.map[k].va == va && fk.map[k].size == size) {
			mmap(va, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
			int a = fk.map[k].alloc;
			fk.map[k] = (struct fk_map){ 0 };
			fk.alloc[a].maps--;
			alloc_put(a);
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_INVALID_VALUE);
}

static CUresult fk_MemSetAccess(CUdeviceptr p, size_t size, const CUmemAccessDesc *desc, size_t count)
{
	ENTER_INIT(F_MemSetAccess);
	char *va = (char *)(uintptr_t)p;
	if (count != 1 || desc->location.type != CU_MEM_LOCATION_TYPE_DEVICE || phys(desc->location.id) < 0 ||
	    desc->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
		OUT(CUDA_ERROR_INVALID_VALUE);
	for (int k = 0; k < FK_MAX; k++)
		if (fk.map[k].va == va && fk.map[k].size == size) {
			/* Access for another device than the memory's own would
			 * need peer access; vramd never asks for it. */
			if (phys(desc->location.id) != fk.alloc[fk.map[k].alloc].dev)
				OUT(CUDA_ERROR_INVALID_DEVICE);
			fk.map[k].access = 1;
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_INVALID_VALUE);
}

/* 1 if [p, p+n) lies in one accessible mapping. */
static int dev_range_ok(CUdeviceptr p, size_t n)
{
	char *va = (char *)(uintptr_t)p;
	for (int k = 0; k < FK_MAX; k++)
		if (fk.map[k].va && fk.map[k].access && va >= fk.map[k].va &&
		    va + n <= fk.map[k].va + fk.map[k].size)
			return 1;
	return 0;
}

static CUresult fk_MemsetD8(CUdeviceptr p, unsigned char v, size_t n)
{
	ENTER_CTX(F_MemsetD8);
	if (!dev_range_ok(p, n))
		OUT(CUDA_ERROR_INVALID_VALUE);
	memset((void *)(uintptr_t)p, v, n);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemcpyHtoD(CUdeviceptr d, const void *s, size_t n)
{
	ENTER_CTX(F_MemcpyHtoD);
	if (!dev_range_ok(d, n))
		OUT(CUDA_ERROR_INVALID_VALUE);
	memcpy((void *)(uintptr_t)d, s, n);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemcpyDtoH(void *d, CUdeviceptr s, size_t n)
{
	ENTER_CTX(F_MemcpyDtoH);
	if (!dev_range_ok(s, n))
		OUT(CUDA_ERROR_INVALID_VALUE);
	memcpy(d, (void *)(uintptr_t)s, n);
	OUT(CUDA_SUCCESS);
}

static int obj_ok(void *o, int magic)
{
	return o && ((struct fk_obj *)o)->magic == magic;
}

/* A new stream, event or module of the current context's device, counted
 * in *count; NULL when out of memory. */
static struct fk_obj *fk_obj_new(int magic, int *count)
{
	struct fk_obj *o = malloc(sizeof(*o));
	if (!o)
		return NULL;
	*o = (struct fk_obj){ .magic = magic, .dev = ctx_dev(ctx_stack[ctx_depth - 1]) };
	if (magic == FK_STREAM || magic == FK_EVENT) {
		o->next = fk_objs;
		fk_objs = o;
	}
	(*count)++;
	return o;
}

/* Invalidates and frees h (checked with obj_ok first), uncounting it. */
static void fk_obj_free(void *h, int *count)
{
	for (struct fk_obj **pp = &fk_objs; *pp; pp = &(*pp)->next)
		if (*pp == h) {
			*pp = ((struct fk_obj *)h)->next;
			break;
		}
	((struct fk_obj *)h)->magic = 0;
	free(h);
	(*count)--;
}

static CUresult fk_MemcpyHtoDAsync(CUdeviceptr d, const void *s, size_t n, CUstream st)
{
	ENTER_CTX(F_MemcpyHtoDAsync);
	if (!dev_range_ok(d, n) || !obj_ok(st, FK_STREAM))
		OUT(CUDA_ERROR_INVALID_VALUE);
	memcpy((void *)(uintptr_t)d, s, n);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemcpyDtoHAsync(void *d, CUdeviceptr s, size_t n, CUstream st)
{
	ENTER_CTX(F_MemcpyDtoHAsync);
	if (!dev_range_ok(s, n) || !obj_ok(st, FK_STREAM))
		OUT(CUDA_ERROR_INVALID_VALUE);
	memcpy(d, (void *)(uintptr_t)s, n);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st)
{
	ENTER_CTX(F_MemcpyDtoDAsync);
	if (!dev_range_ok(d, n) || !dev_range_ok(s, n) || !obj_ok(st, FK_STREAM))
		OUT(CUDA_ERROR_INVALID_VALUE);
	memmove((void *)(uintptr_t)d, (void *)(uintptr_t)s, n);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemHostRegister(void *p, size_t n, unsigned flags)
{
	ENTER_CTX(F_MemHostRegister);
	char *c = p;
	if (!p || n == 0 || flags != CU_MEMHOSTREGISTER_PORTABLE)
		OUT(CUDA_ERROR_INVALID_VALUE);
	for (int i = 0; i < FK_MAX; i++)
		if (fk.reg[i].p && c < fk.reg[i].p + fk.reg[i].n && fk.reg[i].p < c + n)
			OUT(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
	for (int i = 0; i < FK_MAX; i++)
		if (!fk.reg[i].p) {
			fk.reg[i] = (struct fk_reg){ c, n };
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_OUT_OF_MEMORY);
}

static CUresult fk_MemHostUnregister(void *p)
{
	ENTER_CTX(F_MemHostUnregister);
	for (int i = 0; i < FK_MAX; i++)
		if (p && fk.reg[i].p == p) {
			fk.reg[i] = (struct fk_reg){ 0 };
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
}

static CUresult fk_StreamCreate(CUstream *s, unsigned flags)
{
	ENTER_CTX(F_StreamCreate);
	if (flags != CU_STREAM_NON_BLOCKING)
		OUT(CUDA_ERROR_INVALID_VALUE);
	struct fk_obj *o = fk_obj_new(FK_STREAM, &fk.streams);
	if (!o)
		OUT(CUDA_ERROR_OUT_OF_MEMORY);
	*s = (CUstream)(void *)o;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_StreamDestroy(CUstream s)
{
	ENTER_INIT(F_StreamDestroy);
	if (!obj_ok(s, FK_STREAM))
		OUT(CUDA_ERROR_INVALID_HANDLE);
	fk_obj_free(s, &fk.streams);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_StreamSynchronize(CUstream s)
{
	ENTER_INIT(F_StreamSynchronize);
	if (!s) /* the legacy default stream of the current context */
		OUT(ctx_depth ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT);
	OUT(obj_ok(s, FK_STREAM) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE);
}

static CUresult fk_EventCreate(CUevent *e, unsigned flags)
{
	ENTER_CTX(F_EventCreate);
	if (flags != CU_EVENT_DISABLE_TIMING)
		OUT(CUDA_ERROR_INVALID_VALUE);
	struct fk_obj *o = fk_obj_new(FK_EVENT, &fk.events);
	if (!o)
		OUT(CUDA_ERROR_OUT_OF_MEMORY);
	*e = (CUevent)(void *)o;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_EventDestroy(CUevent e)
{
	ENTER_INIT(F_EventDestroy);
	if (!obj_ok(e, FK_EVENT))
		OUT(CUDA_ERROR_INVALID_HANDLE);
	fk_obj_free(e, &fk.events);
	OUT(CUDA_SUCCESS);
}

/* The device of stream s (NULL: the legacy default stream of the current
 * context), -1 when it is none. */
static int stream_dev(CUstream s)
{
	if (!s)
		return ctx_depth ? ctx_dev(ctx_stack[ctx_depth - 1]) : -1;
	return obj_ok(s, FK_STREAM) ? ((struct fk_obj *)(void *)s)->dev : -1;
}

static CUresult fk_EventRecord(CUevent e, CUstream s)
{
	ENTER_INIT(F_EventRecord);
	if (!obj_ok(e, FK_EVENT) || stream_dev(s) < 0 || ((struct fk_obj *)(void *)e)->dev != stream_dev(s))
		OUT(CUDA_ERROR_INVALID_HANDLE);
	/* work on a held stream (or one waiting for a held stream's event)
	 * does not complete until fake_complete */
	((struct fk_obj *)(void *)e)->pending = s && ((struct fk_obj *)(void *)s)->held;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_EventSynchronize(CUevent e)
{
	ENTER_INIT(F_EventSynchronize);
	if (!obj_ok(e, FK_EVENT))
		OUT(CUDA_ERROR_INVALID_HANDLE);
	while (((struct fk_obj *)(void *)e)->pending) {
		fk.sync_waiters++;
		pthread_cond_wait(&fk_cv, &fk_lock);
		fk.sync_waiters--;
	}
	OUT(CUDA_SUCCESS);
}

static CUresult fk_EventQuery(CUevent e)
{
	ENTER_INIT(F_EventQuery);
	if (!obj_ok(e, FK_EVENT))
		OUT(CUDA_ERROR_INVALID_HANDLE);
	OUT(((struct fk_obj *)(void *)e)->pending ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS);
}

static CUresult fk_StreamWaitEvent(CUstream s, CUevent e, unsigned flags)
{
	ENTER_INIT(F_StreamWaitEvent);
	if (!obj_ok(e, FK_EVENT) || stream_dev(s) < 0 || flags)
		OUT(CUDA_ERROR_INVALID_VALUE);
	fk.stream_waits++;
	/* what is queued on s from now on waits for e: held until it completes */
	if (s && ((struct fk_obj *)(void *)e)->pending)
		((struct fk_obj *)(void *)s)->held = 1;
	OUT(CUDA_SUCCESS);
}

#define FK_MODULE 0x4d4f
#define FK_FN 0x464e

static CUresult fk_ModuleLoadData(CUmodule *m, const void *image)
{
	ENTER_CTX(F_ModuleLoadData);
	if (!image)
		OUT(CUDA_ERROR_INVALID_VALUE);
	struct fk_obj *o = fk_obj_new(FK_MODULE, &fk.modules);
	if (!o)
		OUT(CUDA_ERROR_OUT_OF_MEMORY);
	fk.last_image = image;
	*m = (CUmodule)(void *)o;
	OUT(CUDA_SUCCESS);
}

static CUresult fk_ModuleUnload(CUmodule m)
{
	ENTER_CTX(F_ModuleUnload);
	if (!obj_ok(m, FK_MODULE))
		OUT(CUDA_ERROR_INVALID_HANDLE);
	for (int i = 0; i < FK_MAX; i++)
		if (fk.fn[i].mod == (void *)m)
			memset(&fk.fn[i], 0, sizeof(fk.fn[i]));
	fk_obj_free(m, &fk.modules);
	OUT(CUDA_SUCCESS);
}

/* The fake's image holds kernel names as NUL-terminated strings, as the
 * real fatbin does (uncompressed). */
static const char *fk_image_names;
static size_t fk_image_len;

static CUresult fk_ModuleGetFunction(CUfunction *f, CUmodule m, const char *name)
{
	ENTER_CTX(F_ModuleGetFunction);
	if (!obj_ok(m, FK_MODULE) || !name)
		OUT(CUDA_ERROR_INVALID_HANDLE);
	size_t nl = strlen(name);
	const char *hit = fk_image_names ? memmem(fk_image_names, fk_image_len, name, nl + 1) : NULL;
	if (!hit || nl >= sizeof(fk.fn[0].name))
		OUT(CUDA_ERROR_NOT_FOUND);
	for (int i = 0; i < FK_MAX; i++)
		if (!fk.fn[i].magic) {
			fk.fn[i].magic = FK_FN;
			fk.fn[i].mod = (void *)m;
			snprintf(fk.fn[i].name, sizeof(fk.fn[i].name), "%s", name);
			*f = (CUfunction)(void *)&fk.fn[i];
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_OUT_OF_MEMORY);
}

const uint32_t fk_dtypes[5] = { VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_F16, VRAM_DTYPE_BF16,
				       VRAM_DTYPE_F32 };

/* Runs a launch with the C references (device memory is host memory). */
static CUresult fk_LaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
				unsigned bz, unsigned shared, CUstream s, void **params, void **extra)
{
	ENTER_CTX(F_LaunchKernel);
	struct fk_kernel *fn = (struct fk_kernel *)(void *)f;
	if (!fn || fn->magic != FK_FN || !params || extra || (s && !obj_ok(s, FK_STREAM)))
		OUT(CUDA_ERROR_INVALID_VALUE);
	if (!gx || !gy || !gz || !bx || !by || !bz || bx * by * bz > 1024)
		OUT(CUDA_ERROR_INVALID_VALUE);
	struct fk_launch *L = &fk.launch;
	memset(L, 0, sizeof(*L));
	snprintf(L->name, sizeof(L->name), "%s", fn->name);
	L->grid[0] = gx, L->grid[1] = gy, L->grid[2] = gz;
	L->block[0] = bx, L->block[1] = by, L->block[2] = bz;
	L->shared = shared;
	L->stream = s;
	fk.launches++;
	if (!strncmp(fn->name, "vk_cast_", 8)) {
		uint64_t src = *(uint64_t *)params[0], dst = *(uint64_t *)params[1], n = *(uint64_t *)params[2];
		uint32_t flags = *(uint32_t *)params[3];
		L->a[0] = src, L->a[1] = dst, L->a[2] = n, L->a[3] = flags;
		for (int a = 0; a < 5; a++)
			for (int b = 0; b < 5; b++) {
				const char *nm = vk_cast_kernel_name(fk_dtypes[a], fk_dtypes[b]);
				if (!nm || strcmp(nm, fn->name))
					continue;
				size_t sb = n * vram_dtype_bits(fk_dtypes[a]) / 8, db = n * vram_dtype_bits(fk_dtypes[b]) / 8;
				if (!dev_range_ok(src, sb) || !dev_range_ok(dst, db))
					OUT(CUDA_ERROR_ILLEGAL_ADDRESS);
				vk_cast_flags((void *)(uintptr_t)src, fk_dtypes[a], (void *)(uintptr_t)dst, fk_dtypes[b], n,
					      flags);
			}
	} else {
		uint64_t w = *(uint64_t *)params[0], up = *(uint64_t *)params[1], down = *(uint64_t *)params[2];
		uint32_t rows = *(uint32_t *)params[3], cols = *(uint32_t *)params[4], rank = *(uint32_t *)params[5];
		float scale = *(float *)params[6];
		uint64_t seed = *(uint64_t *)params[7];
		L->a[0] = w, L->a[1] = up, L->a[2] = down, L->a[3] = rows, L->a[4] = cols, L->a[5] = rank;
		memcpy(&L->a[6], &scale, sizeof(scale));
		L->a[7] = seed;
		/* The kernel does nothing with another block shape. */
		if (bx != VK_LORA_BLOCK_X || by != VK_LORA_BLOCK_Y || bz != 1)
			OUT(CUDA_SUCCESS);
		for (int a = 0; a < 5; a++)
			if (!strcmp(vk_lora_kernel_name(fk_dtypes[a]), fn->name)) {
				size_t wb = (size_t)rows * cols * vram_dtype_bits(fk_dtypes[a]) / 8;
				if (!dev_range_ok(w, wb) || !dev_range_ok(up, (size_t)rows * rank * 4) ||
				    !dev_range_ok(down, (size_t)rank * cols * 4))
					OUT(CUDA_ERROR_ILLEGAL_ADDRESS);
				vk_lora_merge((void *)(uintptr_t)w, fk_dtypes[a], (const float *)(uintptr_t)up,
					      (const float *)(uintptr_t)down, rows, cols, rank, scale, seed);
			}
	}
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemAllocManaged(CUdeviceptr *p, size_t n, unsigned flags)
{
	ENTER_CTX(F_MemAllocManaged);
	if (!n || flags != CU_MEM_ATTACH_GLOBAL)
		OUT(CUDA_ERROR_INVALID_VALUE);
	for (int i = 0; i < FK_MAX; i++)
		if (!fk.managed[i].va) {
			void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (m == MAP_FAILED)
				OUT(CUDA_ERROR_OUT_OF_MEMORY);
			fk.managed[i] = (struct fk_managed){ m, n, ctx_dev(ctx_stack[ctx_depth - 1]) };
			*p = (CUdeviceptr)(uintptr_t)m;
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_OUT_OF_MEMORY);
}

static CUresult fk_MemFree(CUdeviceptr p)
{
	ENTER_CTX(F_MemFree);
	for (int i = 0; i < FK_MAX; i++)
		if (p && fk.managed[i].va == (char *)(uintptr_t)p) {
			munmap(fk.managed[i].va, fk.managed[i].size);
			memset(&fk.managed[i], 0, sizeof(fk.managed[i]));
			OUT(CUDA_SUCCESS);
		}
	OUT(CUDA_ERROR_INVALID_VALUE);
}

static int managed_ok(CUdeviceptr p, size_t n)
{
	char *va = (char *)(uintptr_t)p;
	for (int i = 0; i < FK_MAX; i++)
		if (fk.managed[i].va && va >= fk.managed[i].va && n && va + n <= fk.managed[i].va + fk.managed[i].size)
			return 1;
	return 0;
}

static void ucall_log(int f, CUdeviceptr p, size_t n, int advice, CUmemLocation loc, CUstream s)
{
	if (fk.nucall < ARRAY_SIZE(fk.ucall))
		fk.ucall[fk.nucall++] = (struct fk_uvm_call){ f, p, n, advice, (int)loc.type, loc.id, s };
}

static CUresult fk_MemAdvise(CUdeviceptr p, size_t n, CUmem_advise advice, CUmemLocation loc)
{
	ENTER_CTX(F_MemAdvise);
	if (!managed_ok(p, n))
		OUT(CUDA_ERROR_INVALID_VALUE);
	if (loc.type == CU_MEM_LOCATION_TYPE_DEVICE ? phys(loc.id) < 0
	    : !(loc.type == CU_MEM_LOCATION_TYPE_HOST && advice == CU_MEM_ADVISE_SET_PREFERRED_LOCATION))
		OUT(CUDA_ERROR_INVALID_DEVICE);
	ucall_log(F_MemAdvise, p, n, (int)advice, loc, NULL);
	OUT(CUDA_SUCCESS);
}

static CUresult fk_MemPrefetchAsync(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned flags, CUstream s)
{
	ENTER_CTX(F_MemPrefetchAsync);
	if (!managed_ok(p, n) || flags || !obj_ok(s, FK_STREAM))
		OUT(CUDA_ERROR_INVALID_VALUE);
	struct fk_dev *x = loc.type == CU_MEM_LOCATION_TYPE_DEVICE ? dev_of(loc.id) : NULL;
	if (loc.type != CU_MEM_LOCATION_TYPE_HOST && (!x || !x->cma))
		OUT(CUDA_ERROR_INVALID_DEVICE);
	ucall_log(F_MemPrefetchAsync, p, n, 0, loc, s);
	OUT(CUDA_SUCCESS);
}

const struct cuda_api fake_api = {
	.Init = fk_Init,
	.DriverGetVersion = fk_DriverGetVersion,
	.GetErrorName = fk_GetErrorName,
	.GetErrorString = fk_GetErrorString,
	.DeviceGetCount = fk_DeviceGetCount,
	.DeviceGet = fk_DeviceGet,
	.DeviceGetName = fk_DeviceGetName,
	.DeviceGetUuid = fk_DeviceGetUuid,
	.DeviceTotalMem = fk_DeviceTotalMem,
	.DeviceGetAttribute = fk_DeviceGetAttribute,
	.DevicePrimaryCtxRetain = fk_DevicePrimaryCtxRetain,
	.DevicePrimaryCtxRelease = fk_DevicePrimaryCtxRelease,
	.CtxPushCurrent = fk_CtxPushCurrent,
	.CtxPopCurrent = fk_CtxPopCurrent,
	.CtxSynchronize = fk_CtxSynchronize,
	.MemGetInfo = fk_MemGetInfo,
	.MemGetAllocationGranularity = fk_MemGetAllocationGranularity,
	.MemCreate = fk_MemCreate,
	.MemRelease = fk_MemRelease,
	.MemExportToShareableHandle = fk_MemExportToShareableHandle,
	.MemImportFromShareableHandle = fk_MemImportFromShareableHandle,
	.MemGetAllocationPropertiesFromHandle = fk_MemGetAllocationPropertiesFromHandle,
	.MemAddressReserve = fk_MemAddressReserve,
	.MemAddressFree = fk_MemAddressFree,
	.MemMap = fk_MemMap,
	.MemUnmap = fk_MemUnmap,
	.MemSetAccess = fk_MemSetAccess,
	.MemsetD8 = fk_MemsetD8,
	.MemcpyHtoD = fk_MemcpyHtoD,
	.MemcpyDtoH = fk_MemcpyDtoH,
	.MemcpyHtoDAsync = fk_MemcpyHtoDAsync,
	.MemcpyDtoHAsync = fk_MemcpyDtoHAsync,
	.MemcpyDtoDAsync = fk_MemcpyDtoDAsync,
	.MemHostRegister = fk_MemHostRegister,
	.MemHostUnregister = fk_MemHostUnregister,
	.StreamCreate = fk_StreamCreate,
	.StreamDestroy = fk_StreamDestroy,
	.StreamSynchronize = fk_StreamSynchronize,
	.EventCreate = fk_EventCreate,
	.EventDestroy = fk_EventDestroy,
	.EventRecord = fk_EventRecord,
	.EventSynchronize = fk_EventSynchronize,
	.EventQuery = fk_EventQuery,
	.StreamWaitEvent = fk_StreamWaitEvent,
	.ModuleLoadData = fk_ModuleLoadData,
	.ModuleUnload = fk_ModuleUnload,
	.ModuleGetFunction = fk_ModuleGetFunction,
	.LaunchKernel = fk_LaunchKernel,
	.MemAllocManaged = fk_MemAllocManaged,
	.MemFree = fk_MemFree,
	.MemAdvise = fk_MemAdvise,
	.MemPrefetchAsync = fk_MemPrefetchAsync,
};

/* Entry points by enum fk_fn, in struct order (the table and the enum agree). */
const char *const fk_fn_names[F_COUNT] = {
	"cuInit", "cuDriverGetVersion", "cuGetErrorName", "cuGetErrorString", "cuDeviceGetCount",
	"cuDeviceGet", "cuDeviceGetName", "cuDeviceGetUuid", "cuDeviceTotalMem", "cuDeviceGetAttribute",
	"cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRelease", "cuCtxPushCurrent", "cuCtxPopCurrent",
	"cuCtxSynchronize", "cuMemGetInfo", "cuMemGetAllocationGranularity", "cuMemCreate", "cuMemRelease",
	"cuMemExportToShareableHandle", "cuMemImportFromShareableHandle", "cuMemGetAllocationPropertiesFromHandle",
	"cuMemAddressReserve",
	"cuMemAddressFree", "cuMemMap", "cuMemUnmap", "cuMemSetAccess", "cuMemsetD8", "cuMemcpyHtoD",
	"cuMemcpyDtoH", "cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync", "cuMemcpyDtoDAsync", "cuMemHostRegister",
	"cuMemHostUnregister", "cuStreamCreate", "cuStreamDestroy", "cuStreamSynchronize", "cuEventCreate",
	"cuEventDestroy", "cuEventRecord", "cuEventSynchronize", "cuEventQuery", "cuStreamWaitEvent",
	"cuModuleLoadData", "cuModuleUnload",
	"cuModuleGetFunction", "cuLaunchKernel", "cuMemAllocManaged", "cuMemFree", "cuMemAdvise",
	"cuMemPrefetchAsync",
};
_Static_assert(sizeof(struct cuda_api) == F_COUNT * sizeof(void (*)(void)), "enum fk_fn covers the table");

static void fake_dev_init(int p, const char *name, size_t total)
{
	struct fk_dev *d = &fk.dev[p];
	snprintf(d->name, sizeof(d->name), "%s", name);
	for (int i = 0; i < 16; i++)
		d->uuid[i] = (uint8_t)(0x10 * (p + 1) + i);
	d->total = total;
	d->free = total - 256 * MiB; /* what a context takes */
	d->gran = 2 * MiB;
	d->vmm = 1;
	d->posix_fd = 1;
	d->numa = p;
	d->cma = 1;
}

/* ======================================================================
 * The controls
 * ====================================================================== */

static int fk_ready; /* fk has been reset once (recycle_fd is meaningful) */

/* Forgets every export (a test's end; their files may still be open). */
static void fake_close_exports(void)
{
	memset(fk.exp, 0, sizeof(fk.exp));
	if (fk.ctl > 0)
		close(fk.ctl);
	fk.ctl = -1;
}

void fake_reset(int ndev)
{
	if (fk_ready)
		fake_close_exports();
	if (fk_ready && fk.recycle_fd >= 0)
		close(fk.recycle_fd);
	fk_ready = 1;
	memset(&fk, 0, sizeof(fk));
	fk_objs = NULL; /* a test's leftovers are its own */
	fk.recycle_fd = -1;
	fk.fail_fn = -1;
	fk.ctl = memfd_create("fake-nvidiactl", MFD_CLOEXEC);
	ck_assert_int_ge(fk.ctl, 0);
	fk.ndev = ndev;
	fk.nvisible = ndev;
	for (int p = 0; p < ndev; p++) {
		char name[32];
		snprintf(name, sizeof(name), "Fake GPU %d", p);
		fake_dev_init(p, name, 16 * GiB);
		fk.perm[p] = p;
	}
	ctx_depth = 0;
	fk_image_names = NULL;
	fk_image_len = 0;
	cuda_api_set_override(&fake_api);
}

void fake_teardown(void)
{
	fake_close_exports();
	fake_drop_recycled();
	cuda_api_set_override(NULL);
}

void fake_fail(enum fk_fn f, unsigned nth, CUresult code)
{
	pthread_mutex_lock(&fk_lock);
	fk.fail_fn = (int)f;
	fk.fail_nth = nth;
	fk.fail_seen = 0;
	fk.fail_code = code;
	pthread_mutex_unlock(&fk_lock);
}

void fake_nofail(void)
{
	pthread_mutex_lock(&fk_lock);
	fk.fail_fn = -1;
	fk.fail_nth = 0;
	fk.fail_seen = 0;
	fk.fail_code = CUDA_SUCCESS;
	pthread_mutex_unlock(&fk_lock);
}

/* How many of what live.  Lock held. */
static int fake_count_locked(enum fk_what what)
{
	int n = 0;
	fk_reap();
	for (int i = 0; i < FK_MAX; i++) {
		switch (what) {
		case FK_ALLOCS: n += fk.alloc[i].live; break;
		case FK_HANDLES: n += fk.handle[i].id != 0; break;
		case FK_RESV: n += fk.resv[i].va != NULL; break;
		case FK_MAPS: n += fk.map[i].va != NULL; break;
		case FK_REGS: n += fk.reg[i].p != NULL; break;
		case FK_EXPORTS: n += fk.exp[i].live; break;
		}
	}
	return n;
}

int fake_count(enum fk_what what)
{
	pthread_mutex_lock(&fk_lock);
	int n = fake_count_locked(what);
	pthread_mutex_unlock(&fk_lock);
	return n;
}

void fake_assert_clean(void)
{
	pthread_mutex_lock(&fk_lock);
	int allocs = fake_count_locked(FK_ALLOCS), handles = fake_count_locked(FK_HANDLES),
	    resv = fake_count_locked(FK_RESV), maps = fake_count_locked(FK_MAPS), regs = fake_count_locked(FK_REGS),
	    exps = fake_count_locked(FK_EXPORTS);
	pthread_mutex_unlock(&fk_lock);
	ck_assert_int_eq(allocs, 0);
	ck_assert_int_eq(handles, 0);
	ck_assert_int_eq(resv, 0);
	ck_assert_int_eq(maps, 0);
	ck_assert_int_eq(regs, 0);
	ck_assert_int_eq(exps, 0);
	ck_assert_int_eq(fk.streams, 0);
	ck_assert_int_eq(fk.events, 0);
	ck_assert_int_eq(fk.modules, 0);
	for (int i = 0; i < FK_MAX; i++)
		ck_assert_ptr_null(fk.managed[i].va);
	for (int p = 0; p < fk.ndev; p++) {
		ck_assert_int_eq(fk.dev[p].ctx_refs, 0);
		ck_assert_uint_eq(fk.dev[p].free, fk.dev[p].total - 256 * MiB);
	}
	ck_assert_int_eq(ctx_depth, 0);
}

int fake_ctx_depth(void)
{
	return ctx_depth;
}

int fake_export(int p, size_t size, CUmemGenericAllocationHandle *ret_h)
{
	CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
				     .requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
				     .location = { CU_MEM_LOCATION_TYPE_DEVICE, p } };
	int fd = -1, saved = fk.inited;
	fk.inited = 1;
	ck_assert_int_eq(fk_MemCreate(ret_h, size, &prop, 0), CUDA_SUCCESS);
	ck_assert_int_eq(fk_MemExportToShareableHandle(&fd, *ret_h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
			 CUDA_SUCCESS);
	fk.inited = saved;
	return fd;
}

void fake_release(CUmemGenericAllocationHandle h)
{
	int saved = fk.inited;
	fk.inited = 1;
	ck_assert_int_eq(fk_MemRelease(h), CUDA_SUCCESS);
	fk.inited = saved;
}

int fake_memfd_of(int fd)
{
	pthread_mutex_lock(&fk_lock);
	int e = export_of(fd), m = e >= 0 ? fk.alloc[fk.exp[e].alloc].memfd : -1;
	pthread_mutex_unlock(&fk_lock);
	return m;
}

void fake_drop_stranded(void)
{
	pthread_mutex_lock(&fk_lock);
	for (int k = 0; k < FK_MAX; k++)
		if (fk.resv[k].va)
			munmap(fk.resv[k].va, fk.resv[k].size); /* its mappings with it */
	memset(fk.resv, 0, sizeof(fk.resv));
	for (int k = 0; k < FK_MAX; k++)
		if (fk.map[k].va) {
			int a = fk.map[k].alloc;
			fk.map[k] = (struct fk_map){ 0 };
			fk.alloc[a].maps--;
			alloc_put(a);
		}
	pthread_mutex_unlock(&fk_lock);
}

void fake_drop_recycled(void)
{
	if (fk.recycle_fd >= 0)
		close(fk.recycle_fd);
	fk.recycle_fd = -1;
}

CUstream fake_stream_new(int p)
{
	pthread_mutex_lock(&fk_lock);
	struct fk_obj *o = malloc(sizeof(*o));
	ck_assert_ptr_nonnull(o);
	*o = (struct fk_obj){ .magic = FK_STREAM, .dev = p, .next = fk_objs };
	fk_objs = o;
	fk.streams++;
	pthread_mutex_unlock(&fk_lock);
	return (CUstream)(void *)o;
}

void fake_stream_free(CUstream s)
{
	pthread_mutex_lock(&fk_lock);
	ck_assert(obj_ok(s, FK_STREAM));
	fk_obj_free(s, &fk.streams);
	pthread_mutex_unlock(&fk_lock);
}

void fake_stream_hold(CUstream s)
{
	pthread_mutex_lock(&fk_lock);
	ck_assert(obj_ok(s, FK_STREAM));
	((struct fk_obj *)(void *)s)->held = 1;
	pthread_mutex_unlock(&fk_lock);
}

void fake_complete(void)
{
	pthread_mutex_lock(&fk_lock);
	for (struct fk_obj *o = fk_objs; o; o = o->next)
		o->held = o->pending = 0;
	pthread_cond_broadcast(&fk_cv);
	pthread_mutex_unlock(&fk_lock);
}

int fake_sync_waiters(void)
{
	pthread_mutex_lock(&fk_lock);
	int n = fk.sync_waiters;
	pthread_mutex_unlock(&fk_lock);
	return n;
}

void fake_set_image(const char *names, size_t len)
{
	pthread_mutex_lock(&fk_lock);
	fk_image_names = names;
	fk_image_len = names ? len : 0;
	pthread_mutex_unlock(&fk_lock);
}
