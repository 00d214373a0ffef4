/* SPDX-License-Identifier: MIT */
/*
 * CUDA pools: one per GPU, grants are CUDA VMM allocations exported as POSIX
 * file descriptors.
 *
 * Discovery loads the Driver API with dlopen (common/cuda-api.c), so vramd
 * runs on machines without a driver; the broker's note then says why no
 * CUDA device is listed.  A device is used when it supports the VMM calls
 * and POSIX-fd handles; otherwise it is skipped and the note says why.
 *
 * Context: the broker works in each device's primary context (retained at
 * discovery, released when the pool is destroyed), pushed around every use
 * and popped after, so the thread's current context is left as it was.
 *
 * A grant is one cuMemCreate of the (granularity-rounded) size, pinned on
 * the device, with POSIX-fd export requested.  It is cleared before it is
 * handed out: the broker maps it for the moment (reserve VA, map, set access,
 * cuMemsetD8, synchronize), unmaps it and frees the VA again, then exports
 * it.  The broker keeps no mapping, only the allocation handle, which
 * ops->release gives back with cuMemRelease; the physical memory goes when
 * the client has unmapped and released its imported handle too (or exits).
 *
 * After a broker restart a grant comes back (ops->adopt) as its exported fd,
 * from the client's REGISTER or from systemd's fd store: the broker imports
 * it, checks what the driver can tell (device, type, handle type, and the
 * size by probing mappings), and keeps the imported handle like a grant's.
 * Every export is a file of the driver's control device, so the broker tells
 * grants apart by open file description, not inode (ops->fd_identity).
 *
 * Capacity: the device's free memory when the broker starts (after its own
 * context exists; memory other processes hold is not counted), minus a
 * reserve for the CUDA contexts and library workspaces of client processes
 * (each a few hundred MiB), rounded down to the granularity.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/log.h"
#include "broker/pool.h"
#include "common/cleanup.h"
#include "common/cuda-api.h"
#include "common/util.h"

/* Memory left out of a pool for clients' own contexts: the larger of this and
 * total/POOL_CUDA_RESERVE_DIV. */
#define POOL_CUDA_RESERVE_MIN (1ull << 30)
#define POOL_CUDA_RESERVE_DIV 32

_Static_assert(sizeof(void *) >= sizeof(CUmemGenericAllocationHandle),
	       "a grant's allocation handle travels in the broker's void * handle");

/* The driver table, shared by the pools of one discovery. */
struct cuda_shared {
	struct cuda_api api;
	unsigned refs;
};

struct cuda_pool {
	struct cuda_shared *sh;
	CUdevice dev;
	int ordinal;            /* location id for VMM calls */
	size_t va_align;        /* cuMemAddressReserve alignment: the granularity
				   (a power of two), else 0 (the driver's) */
	CUcontext ctx;          /* primary context, retained */
	char why[160];          /* reason of the last failed grant */
};

static void shared_put(struct cuda_shared *sh)
{
	if (sh && --sh->refs == 0)
		free(sh);
}

/* Formats "call: CUDA_ERROR_X (text)" into buf; returns the errno for cr. */
static int cu_why(const struct cuda_api *cu, CUresult cr, const char *call, char *buf, size_t len)
{
	char e[128];
	snprintf(buf, len, "%s: %s", call, cuda_api_strerror(cu, cr, e, sizeof(e)));
	int r = cuda_api_errno(cr);
	return r ? r : -EIO;
}

/* ======================================================================
 * Grants
 * ====================================================================== */

static void alloc_prop(CUmemAllocationProp *prop, int ordinal)
{
	memset(prop, 0, sizeof(*prop));
	prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop->requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
	prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop->location.id = ordinal;
}

/* Maps h for the moment and fills it with zeros.  0 or -errno with cp->why. */
static int clear_allocation(struct cuda_pool *cp, CUmemGenericAllocationHandle h, size_t size)
{
	const struct cuda_api *cu = &cp->sh->api;
	CUdeviceptr va = 0;
	CUresult cr;
	int r = 0;

	cr = cu->MemAddressReserve(&va, size, cp->va_align, 0, 0);
	if (cr != CUDA_SUCCESS)
		return cu_why(cu, cr, "cuMemAddressReserve", cp->why, sizeof(cp->why));
	cr = cu->MemMap(va, size, 0, h, 0);
	if (cr != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemMap", cp->why, sizeof(cp->why));
		goto free_va;
	}
	CUmemAccessDesc acc = {
		.location = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = cp->ordinal },
		.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
	};
	cr = cu->MemSetAccess(va, size, &acc, 1);
	if (cr != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemSetAccess", cp->why, sizeof(cp->why));
		goto unmap;
	}
	cr = cu->MemsetD8(va, 0, size);
	if (cr != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemsetD8", cp->why, sizeof(cp->why));
		goto unmap;
	}
	/* cuMemsetD8 may return before the device has written: the memory must
	 * be clear before anyone else can see it. */
	cr = cu->CtxSynchronize();
	if (cr != CUDA_SUCCESS)
		r = cu_why(cu, cr, "cuCtxSynchronize", cp->why, sizeof(cp->why));
unmap:
	cr = cu->MemUnmap(va, size);
	if (cr != CUDA_SUCCESS) {
		/* The VA stays reserved (it cannot be freed while mapped); the
		 * allocation itself is still released by the caller. */
		if (r == 0)
			r = cu_why(cu, cr, "cuMemUnmap", cp->why, sizeof(cp->why));
		broker_log(0, "cuda: cuMemUnmap of a grant's clearing mapping failed: %d", (int)cr);
		return r;
	}
free_va:
	cr = cu->MemAddressFree(va, size);
	if (cr != CUDA_SUCCESS) {
		if (r == 0)
			r = cu_why(cu, cr, "cuMemAddressFree", cp->why, sizeof(cp->why));
		broker_log(0, "cuda: cuMemAddressFree of a grant's clearing mapping failed: %d", (int)cr);
	}
	return r;
}

static int cuda_grant(struct pool *p, uint64_t size, int *ret_fd, void **ret_handle, const char **why)
{
	struct cuda_pool *cp = p->priv;
	const struct cuda_api *cu = &cp->sh->api;
	CUmemGenericAllocationHandle h = 0;
	CUmemAllocationProp prop;
	CUcontext popped;
	CUresult cr;
	int fd = -1, r;

	*why = cp->why;
	if (size > SIZE_MAX) {
		snprintf(cp->why, sizeof(cp->why), "size does not fit size_t");
		return -EOVERFLOW;
	}
	cr = cu->CtxPushCurrent(cp->ctx);
	if (cr != CUDA_SUCCESS)
		return cu_why(cu, cr, "cuCtxPushCurrent", cp->why, sizeof(cp->why));

	alloc_prop(&prop, cp->ordinal);
	cr = cu->MemCreate(&h, (size_t)size, &prop, 0);
	if (cr != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemCreate", cp->why, sizeof(cp->why));
		goto pop;
	}
	r = clear_allocation(cp, h, (size_t)size);
	if (r < 0)
		goto release;
	cr = cu->MemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
	if (cr != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemExportToShareableHandle", cp->why, sizeof(cp->why));
		goto release;
	}
	if (fd < 0) {
		snprintf(cp->why, sizeof(cp->why), "cuMemExportToShareableHandle returned fd %d", fd);
		r = -EIO;
		goto release;
	}
	/* The driver does not promise close-on-exec; vramd's fds all are. */
	int fl = fcntl(fd, F_GETFD);
	if (fl >= 0)
		(void)fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
	cu->CtxPopCurrent(&popped);
	*ret_fd = fd;
	*ret_handle = (void *)(uintptr_t)h;
	return 0;

release:
	cr = cu->MemRelease(h);
	if (cr != CUDA_SUCCESS)
		broker_log(0, "cuda: %s: cuMemRelease after a failed grant failed: %d", p->name, (int)cr);
pop:
	cu->CtxPopCurrent(&popped);
	return r;
}

/* Whether allocation h has exactly size bytes.  The Driver API has no call
 * that gives an allocation's size, but cuMemMap does not map past its end:
 * a mapping of size bytes succeeds only if the allocation has at least
 * that many, and one of size + the minimum granularity (allocations are
 * whole minimum granules) only if it has more.  The probe mappings get no
 * access rights (no cuMemSetAccess), so the broker never can touch the
 * bytes, and both are undone before returning.  Context pushed.  0, or
 * -EINVAL (not that size) / -errno (the probe itself failed) with cp->why. */
static int check_size(struct cuda_pool *cp, CUmemGenericAllocationHandle h, size_t size, size_t step)
{
	const struct cuda_api *cu = &cp->sh->api;
	size_t span = size + step;
	CUdeviceptr va = 0;
	char e[128];
	int r = 0;

	CUresult cr = cu->MemAddressReserve(&va, span, cp->va_align, 0, 0);
	if (cr != CUDA_SUCCESS)
		return cu_why(cu, cr, "cuMemAddressReserve", cp->why, sizeof(cp->why));
	cr = cu->MemMap(va, size, 0, h, 0);
	if (cr == CUDA_ERROR_OUT_OF_MEMORY) {
		r = cu_why(cu, cr, "cuMemMap", cp->why, sizeof(cp->why));
		goto free_va;
	}
	if (cr != CUDA_SUCCESS) {
		snprintf(cp->why, sizeof(cp->why), "the allocation is smaller than the size claimed (cuMemMap: %s)",
			 cuda_api_strerror(cu, cr, e, sizeof(e)));
		r = -EINVAL;
		goto free_va;
	}
	cr = cu->MemUnmap(va, size);
	if (cr != CUDA_SUCCESS) {
		/* The VA stays reserved (it cannot be freed while mapped). */
		broker_log(0, "cuda: cuMemUnmap of a size probe failed: %d", (int)cr);
		return cu_why(cu, cr, "cuMemUnmap", cp->why, sizeof(cp->why));
	}
	/* Any failure here counts as "not larger": a driver that refuses the
	 * mapping for another reason can only make the broker believe the
	 * client's size, never count more than it claimed. */
	cr = cu->MemMap(va, span, 0, h, 0);
	if (cr == CUDA_SUCCESS) {
		snprintf(cp->why, sizeof(cp->why), "the allocation is larger than the size claimed");
		r = -EINVAL;
		cr = cu->MemUnmap(va, span);
		if (cr != CUDA_SUCCESS) {
			broker_log(0, "cuda: cuMemUnmap of a size probe failed: %d", (int)cr);
			return r;
		}
	}
free_va:
	cr = cu->MemAddressFree(va, span);
	if (cr != CUDA_SUCCESS)
		broker_log(0, "cuda: cuMemAddressFree of a size probe failed: %d", (int)cr);
	return r;
}

/* REGISTER after a restart, or an fd store entry: fd claims to be a grant of
 * size bytes on this device.  It is imported (the broker's own handle on the
 * allocation, which keeps it alive as the broker's cuMemCreate handle did),
 * and what the driver can tell is checked: pinned device memory of this
 * device, exportable as a POSIX fd, of exactly size bytes (check_size).
 * What cannot be checked: that this broker (or an earlier one) made it; a
 * client may register memory it created itself, which then only counts
 * against it, as a self-made sealed memfd does.  The memory is not cleared:
 * it holds the client's bytes. */
static int cuda_adopt(struct pool *p, int fd, uint64_t size, void **ret_handle, const char **why)
{
	struct cuda_pool *cp = p->priv;
	const struct cuda_api *cu = &cp->sh->api;
	CUmemGenericAllocationHandle h = 0;
	CUmemAllocationProp prop, want;
	CUcontext popped;
	CUresult cr;
	size_t step = 0;
	char e[128];
	int r;

	*why = cp->why;
	if (!size || size % p->granularity || size > SIZE_MAX / 2) {
		snprintf(cp->why, sizeof(cp->why), "%llu bytes is not a grant size", (unsigned long long)size);
		return -EINVAL;
	}
	if (fd < 0) {
		snprintf(cp->why, sizeof(cp->why), "no fd");
		return -EBADF;
	}
	cr = cu->CtxPushCurrent(cp->ctx);
	if (cr != CUDA_SUCCESS)
		return cu_why(cu, cr, "cuCtxPushCurrent", cp->why, sizeof(cp->why));
	cr = cu->MemImportFromShareableHandle(&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
	if (cr != CUDA_SUCCESS) {
		/* Anything but a shortage means the fd is no CUDA export. */
		r = cr == CUDA_ERROR_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
		snprintf(cp->why, sizeof(cp->why), "not a CUDA allocation (cuMemImportFromShareableHandle: %s)",
			 cuda_api_strerror(cu, cr, e, sizeof(e)));
		goto pop;
	}
	memset(&prop, 0, sizeof(prop));
	cr = cu->MemGetAllocationPropertiesFromHandle(&prop, h);
	if (cr != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemGetAllocationPropertiesFromHandle", cp->why, sizeof(cp->why));
		goto release;
	}
	if (prop.location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop.location.id != cp->ordinal) {
		snprintf(cp->why, sizeof(cp->why),
			 "the allocation is not memory of this device (location type %d, id %d)",
			 (int)prop.location.type, prop.location.id);
		r = -EINVAL;
		goto release;
	}
	if (prop.type != CU_MEM_ALLOCATION_TYPE_PINNED ||
	    !(prop.requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)) {
		snprintf(cp->why, sizeof(cp->why), "the allocation is not pinned memory exportable as a POSIX fd");
		r = -EINVAL;
		goto release;
	}
	/* Allocations are made of minimum granules; the probe steps by one. */
	alloc_prop(&want, cp->ordinal);
	cr = cu->MemGetAllocationGranularity(&step, &want, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
	if (cr != CUDA_SUCCESS || step == 0 || p->granularity % step)
		step = (size_t)p->granularity;
	r = check_size(cp, h, (size_t)size, step);
	if (r < 0)
		goto release;
	cu->CtxPopCurrent(&popped);
	*ret_handle = (void *)(uintptr_t)h;
	return 0;

release:
	cr = cu->MemRelease(h);
	if (cr != CUDA_SUCCESS)
		broker_log(0, "cuda: %s: cuMemRelease after a refused REGISTER failed: %d", p->name, (int)cr);
pop:
	cu->CtxPopCurrent(&popped);
	return r;
}

static void cuda_release(struct pool *p, void *handle, uint64_t size)
{
	struct cuda_pool *cp = p->priv;
	const struct cuda_api *cu = &cp->sh->api;
	CUcontext popped;
	bool pushed = cu->CtxPushCurrent(cp->ctx) == CUDA_SUCCESS;
	CUresult cr = cu->MemRelease((CUmemGenericAllocationHandle)(uintptr_t)handle);
	if (cr != CUDA_SUCCESS) {
		char e[128];
		broker_log(0, "cuda: %s: cuMemRelease of a grant failed: %s", p->name,
			   cuda_api_strerror(cu, cr, e, sizeof(e)));
	}
	if (pushed)
		cu->CtxPopCurrent(&popped);
}

static void cuda_destroy(struct pool *p)
{
	struct cuda_pool *cp = p->priv;
	if (!cp)
		return;
	if (cp->ctx)
		cp->sh->api.DevicePrimaryCtxRelease(cp->dev);
	shared_put(cp->sh);
	free(cp);
}

/* ---- shared copies ---------------------------------------------------------- */

/* Writes len host bytes at off of allocation handle: a mapping for the
 * moment (reserve, map, read-write access), a synchronous copy, unmapped
 * again.  Any thread: the context is pushed around it. */
static int cuda_copy_write(struct pool *p, void *handle, uint64_t off, const void *src, uint64_t len,
			   const char **why)
{
	struct cuda_pool *cp = p->priv;
	const struct cuda_api *cu = &cp->sh->api;
	CUmemGenericAllocationHandle h = (CUmemGenericAllocationHandle)(uintptr_t)handle;
	static __thread char buf[160];
	CUdeviceptr va = 0;
	CUcontext popped;
	size_t gran = cp->va_align ? cp->va_align : (size_t)p->granularity;
	size_t start = (size_t)(off / gran * gran), span = (size_t)((off + len - start + gran - 1) / gran * gran);
	int r = 0;

	*why = buf;
	CUresult cr = cu->CtxPushCurrent(cp->ctx);
	if (cr != CUDA_SUCCESS)
		return cu_why(cu, cr, "cuCtxPushCurrent", buf, sizeof(buf));
	if ((cr = cu->MemAddressReserve(&va, span, cp->va_align, 0, 0)) != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemAddressReserve", buf, sizeof(buf));
		goto pop;
	}
	if ((cr = cu->MemMap(va, span, start, h, 0)) != CUDA_SUCCESS) {
		r = cu_why(cu, cr, "cuMemMap", buf, sizeof(buf));
		goto free_va;
	}
	CUmemAccessDesc acc = {
		.location = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = cp->ordinal },
		.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
	};
	if ((cr = cu->MemSetAccess(va, span, &acc, 1)) != CUDA_SUCCESS)
		r = cu_why(cu, cr, "cuMemSetAccess", buf, sizeof(buf));
	else if ((cr = cu->MemcpyHtoD(va + (off - start), src, (size_t)len)) != CUDA_SUCCESS)
		r = cu_why(cu, cr, "cuMemcpyHtoD", buf, sizeof(buf));
	if ((cr = cu->MemUnmap(va, span)) != CUDA_SUCCESS && r == 0)
		r = cu_why(cu, cr, "cuMemUnmap", buf, sizeof(buf));
free_va:
	cu->MemAddressFree(va, span);
pop:
	cu->CtxPopCurrent(&popped);
	return r;
}

/* A CUDA export cannot be made read-only: an importer chooses its own
 * access.  The fd clients get is the export itself. */
static int cuda_copy_seal(struct pool *p, void *handle, int fd, int *ret_ro_fd, const char **why)
{
	int ro = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (ro < 0) {
		*why = "duplicating the copy's export failed";
		return -errno;
	}
	*ret_ro_fd = ro;
	return 0;
}

static const struct pool_ops cuda_ops = {
	.name = "cuda",
	.grant = cuda_grant,
	.adopt = cuda_adopt,
	.release = cuda_release,
	.destroy = cuda_destroy,
	.fd_identity = true,
	.copy_create = cuda_grant,
	.copy_write = cuda_copy_write,
	.copy_seal = cuda_copy_seal,
	.copy_adopt = cuda_adopt,
	.copy_read_only = false,
};

/* ======================================================================
 * Discovery
 * ====================================================================== */

/* Appends "; " and the formatted text to note (truncating). */
static void note_add(char *note, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void note_add(char *note, size_t len, const char *fmt, ...)
{
	size_t n = strlen(note);
	va_list ap;
	if (n && n + 2 < len) {
		memcpy(note + n, "; ", 3);
		n += 2;
	}
	if (n + 1 >= len)
		return;
	va_start(ap, fmt);
	vsnprintf(note + n, len - n, fmt, ap);
	va_end(ap);
}

static uint64_t capacity_for(uint64_t free_bytes, uint64_t total_bytes, uint64_t gran)
{
	uint64_t reserve = MAX(POOL_CUDA_RESERVE_MIN, total_bytes / POOL_CUDA_RESERVE_DIV);
	if (free_bytes <= reserve)
		return 0;
	uint64_t cap = free_bytes - reserve;
	return cap - cap % gran;
}

/* Looks at device ordinal; returns a new pool, or NULL with the reason
 * written to why. */
static struct pool *probe_device(struct cuda_shared *sh, int ordinal, char *why, size_t whylen)
{
	const struct cuda_api *cu = &sh->api;
	char name[64] = "", what[64], s1[32];
	CUdevice dev;
	CUuuid uuid;
	size_t devmem = 0, gran = 0, free_b = 0, total_b = 0;
	int vmm = 0, posix_fd = 0, numa = -1;
	CUmemAllocationProp prop;
	CUcontext ctx = NULL, popped;
	CUresult cr;

	snprintf(what, sizeof(what), "cuda:%d", ordinal);
#define CALL(expr, call)                                                    \
	do {                                                                \
		cr = (expr);                                                \
		if (cr != CUDA_SUCCESS) {                                   \
			char e_[128];                                       \
			snprintf(why, whylen, "%s skipped: %s: %s", what, call, \
				 cuda_api_strerror(cu, cr, e_, sizeof(e_)));  \
			goto fail;                                          \
		}                                                           \
	} while (0)

	CALL(cu->DeviceGet(&dev, ordinal), "cuDeviceGet");
	CALL(cu->DeviceGetName(name, (int)sizeof(name) - 1, dev), "cuDeviceGetName");
	name[sizeof(name) - 1] = '\0';
	snprintf(what, sizeof(what), "cuda:%d (%.40s)", ordinal, name);
	CALL(cu->DeviceGetUuid(&uuid, dev), "cuDeviceGetUuid");
	CALL(cu->DeviceTotalMem(&devmem, dev), "cuDeviceTotalMem");
	CALL(cu->DeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev),
	     "cuDeviceGetAttribute(VMM)");
	if (!vmm) {
		snprintf(why, whylen, "%s skipped: no CUDA VMM support", what);
		return NULL;
	}
	CALL(cu->DeviceGetAttribute(&posix_fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev),
	     "cuDeviceGetAttribute(POSIX fd)");
	if (!posix_fd) {
		snprintf(why, whylen, "%s skipped: no POSIX-fd handle support", what);
		return NULL;
	}
	/* The broker keeps the device's primary context: in an exclusive
	 * compute mode that context would lock every client out (and in
	 * "prohibited" nobody may make one).  A failed query says nothing. */
	int mode = CU_COMPUTEMODE_DEFAULT;
	if (cu->DeviceGetAttribute(&mode, CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, dev) == CUDA_SUCCESS &&
	    mode != CU_COMPUTEMODE_DEFAULT) {
		snprintf(why, whylen, "%s skipped: compute mode not Default", what);
		return NULL;
	}
	/* Drivers before CUDA 12.2 do not know the attribute. */
	if (cu->DeviceGetAttribute(&numa, CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, dev) != CUDA_SUCCESS || numa < 0)
		numa = -1;
	alloc_prop(&prop, ordinal);
	CALL(cu->MemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
	     "cuMemGetAllocationGranularity");
	if (gran == 0) {
		snprintf(why, whylen, "%s skipped: allocation granularity 0", what);
		return NULL;
	}
	CALL(cu->DevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
	CALL(cu->CtxPushCurrent(ctx), "cuCtxPushCurrent");
	cr = cu->MemGetInfo(&free_b, &total_b);
	cu->CtxPopCurrent(&popped);
	CALL(cr, "cuMemGetInfo");
#undef CALL

	uint64_t cap = capacity_for(free_b, total_b ? total_b : devmem, gran);
	if (cap == 0) {
		snprintf(why, whylen, "%s skipped: only %s free", what, size_format(free_b, s1, sizeof(s1)));
		goto fail;
	}

	struct cuda_pool *cp = calloc(1, sizeof(*cp));
	char pname[32];
	snprintf(pname, sizeof(pname), "cuda:%d", ordinal);
	struct pool *p = cp ? pool_alloc(VRAMD_BACKEND_CUDA, pname, cap, gran, &cuda_ops, cp) : NULL;
	if (!p) {
		free(cp);
		snprintf(why, whylen, "%s skipped: out of memory", what);
		goto fail;
	}
	cp->sh = sh;
	sh->refs++;
	cp->dev = dev;
	cp->ordinal = ordinal;
	cp->va_align = (gran & (gran - 1)) == 0 ? gran : 0;
	cp->ctx = ctx;
	p->numa_node = numa;
	p->ordinal = ordinal;
	/* grants held across a restart were not free just now: they come
	 * back into the capacity as they are adopted, up to this */
	p->total_max = MAX(cap, capacity_for(total_b ? total_b : devmem, total_b ? total_b : devmem, gran));
	memcpy(p->uuid, uuid.bytes, 16);
	str_copy(p->label, name[0] ? name : "NVIDIA GPU", sizeof(p->label));
	return p;

fail:
	if (ctx)
		cu->DevicePrimaryCtxRelease(dev);
	return NULL;
}

int pool_cuda_discover(struct pool **out, uint32_t max, uint32_t first, char *note, size_t note_len)
{
	char e[128], why[160];
	int count = 0, version = 0;
	uint32_t n = 0;
	CUresult cr;

	note[0] = '\0';
	struct cuda_shared *sh = calloc(1, sizeof(*sh));
	if (!sh) {
		snprintf(note, note_len, "CUDA discovery: out of memory");
		return 0;
	}
	sh->refs = 1; /* discovery's own, dropped at the end */
	if (cuda_api_load(&sh->api, note, note_len) < 0)
		goto out;
	const struct cuda_api *cu = &sh->api;

	cr = cu->Init(0);
	if (cr == CUDA_ERROR_NO_DEVICE) {
		snprintf(note, note_len, "no CUDA devices");
		goto out;
	}
	if (cr != CUDA_SUCCESS) {
		snprintf(note, note_len, "cuInit failed: %s", cuda_api_strerror(cu, cr, e, sizeof(e)));
		goto out;
	}
	if (cu->DriverGetVersion(&version) != CUDA_SUCCESS)
		version = 0;
	cr = cu->DeviceGetCount(&count);
	if (cr != CUDA_SUCCESS) {
		snprintf(note, note_len, "cuDeviceGetCount failed: %s", cuda_api_strerror(cu, cr, e, sizeof(e)));
		goto out;
	}
	if (count <= 0) {
		snprintf(note, note_len, "no CUDA devices");
		goto out;
	}
	broker_log(1, "CUDA driver %d.%d, %d device%s", version / 1000, version % 1000 / 10, count,
		   count == 1 ? "" : "s");
	for (int i = 0; i < count; i++) {
		if (n >= max) {
			note_add(note, note_len, "cuda:%d and later not used: device limit reached", i);
			break;
		}
		why[0] = '\0';
		struct pool *p = probe_device(sh, i, why, sizeof(why));
		if (!p) {
			broker_log(1, "%s", why);
			note_add(note, note_len, "%s", why);
			continue;
		}
		p->index = first + n;
		out[n++] = p;
	}
out:
	shared_put(sh);
	return (int)n;
}
