/* SPDX-License-Identifier: MIT */
/*
 * CUDA in the runtime: device handles and the import of broker grants.
 *
 * A broker CUDA device is found in this process by UUID (the broker's
 * ordinals mean nothing here when CUDA_VISIBLE_DEVICES differs), and its
 * primary context, the one the CUDA runtime and so PyTorch use, is retained
 * for as long as anything of ours lives on the device: imported grants,
 * copiers, pinned ranges.  The last reference releases it, and the driver
 * table is dropped when no device is held (libcuda itself stays open).
 *
 * Import: the grant's POSIX fd becomes an allocation handle
 * (cuMemImportFromShareableHandle; the fd is left open and usable, and the
 * client keeps it to re-register the grant after a broker restart), mapped
 * at a fresh VA reservation with read-write access for its device.  The VA
 * is in the process's unified address space, so PyTorch may wrap it (e.g.
 * through __cuda_array_interface__ or DLPack) as memory of that device.
 * Unimport synchronizes the context first (as cudaFree does), so that no
 * queued kernel touches memory that is going away, then unmaps, frees the
 * VA and releases the handle.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cuda-api.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"

struct cuda_dev {
	uint8_t uuid[16];
	char name[32];          /* broker's name, for messages */
	CUdevice dev;
	int ordinal;            /* in this process */
	CUcontext ctx;          /* primary context, retained */
	unsigned refs;
	struct cuda_dev *next;
};

struct cuda_import {
	struct cuda_dev *d;
	CUmemGenericAllocationHandle h;
	CUdeviceptr va;
	size_t size;
};

static pthread_mutex_t cuda_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cuda_api cu_api;          /* valid while devs != NULL */
static struct cuda_dev *devs;

/* ======================================================================
 * Devices
 * ====================================================================== */

int cuda_dev_error(const struct cuda_dev *d, CUresult cr, const char *call, const char *fmt, ...)
{
	char prefix[512], e[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	int r = cuda_api_errno(cr);
	if (r == 0)
		r = -EIO;
	return rt_error(r, "%s: %s: %s", prefix, call, cuda_api_strerror(&cu_api, cr, e, sizeof(e)));
}

/* Finds the ordinal whose UUID is uuid.  Called with cuda_lock held. */
static int find_ordinal(const uint8_t uuid[16], const char *name, CUdevice *ret_dev)
{
	char u[48];
	int count = 0;
	CUresult cr = cu_api.DeviceGetCount(&count);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(NULL, cr, "cuDeviceGetCount", "%s", name);
	for (int i = 0; i < count; i++) {
		CUdevice dev;
		CUuuid cu;
		if (cu_api.DeviceGet(&dev, i) != CUDA_SUCCESS || cu_api.DeviceGetUuid(&cu, dev) != CUDA_SUCCESS)
			continue;
		if (!memcmp(cu.bytes, uuid, 16)) {
			*ret_dev = dev;
			return i;
		}
	}
	return rt_error(-ENODEV, "%s (%s) is not among the %d CUDA device%s visible to this process "
			"(CUDA_VISIBLE_DEVICES?)", name, cuda_uuid_format(uuid, u, sizeof(u)), count,
			count == 1 ? "" : "s");
}

int cuda_dev_get(const struct vram_client *c, uint32_t device, struct cuda_dev **ret)
{
	char err[256];
	int r;

	if (device >= c->ndev)
		return rt_error(-ENODEV, "no device %u", device);
	const struct vram_device_info *info = &c->dev[device];
	if (info->backend != VRAM_BACKEND_CUDA)
		return rt_error(-EINVAL, "%s is not a CUDA device", info->name);

	pthread_mutex_lock(&cuda_lock);
	for (struct cuda_dev *d = devs; d; d = d->next) {
		if (!memcmp(d->uuid, info->uuid, 16)) {
			d->refs++;
			pthread_mutex_unlock(&cuda_lock);
			*ret = d;
			return 0;
		}
	}
	if (!devs) {
		r = cuda_api_load(&cu_api, err, sizeof(err));
		if (r < 0) {
			pthread_mutex_unlock(&cuda_lock);
			return rt_error(r, "%s: %s", info->name, err);
		}
		/* cuInit is idempotent; the process may have called it already. */
		CUresult cr = cu_api.Init(0);
		if (cr != CUDA_SUCCESS) {
			r = cuda_dev_error(NULL, cr, "cuInit", "%s", info->name);
			goto fail;
		}
	}
	struct cuda_dev *d = calloc(1, sizeof(*d));
	if (!d) {
		r = rt_error(-ENOMEM, "out of memory");
		goto fail;
	}
	memcpy(d->uuid, info->uuid, 16);
	snprintf(d->name, sizeof(d->name), "%s", info->name);
	r = find_ordinal(info->uuid, info->name, &d->dev);
	if (r < 0) {
		free(d);
		goto fail;
	}
	d->ordinal = r;
	CUresult cr = cu_api.DevicePrimaryCtxRetain(&d->ctx, d->dev);
	if (cr != CUDA_SUCCESS) {
		r = cuda_dev_error(NULL, cr, "cuDevicePrimaryCtxRetain", "%s", info->name);
		free(d);
		goto fail;
	}
	d->refs = 1;
	d->next = devs;
	devs = d;
	pthread_mutex_unlock(&cuda_lock);
	*ret = d;
	return 0;
fail:
	if (!devs)
		memset(&cu_api, 0, sizeof(cu_api));
	pthread_mutex_unlock(&cuda_lock);
	return r;
}

void cuda_dev_put(struct cuda_dev *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&cuda_lock);
	if (--d->refs == 0) {
		for (struct cuda_dev **pp = &devs; *pp; pp = &(*pp)->next)
			if (*pp == d) {
				*pp = d->next;
				break;
			}
		cu_api.DevicePrimaryCtxRelease(d->dev);
		free(d);
		if (!devs)
			memset(&cu_api, 0, sizeof(cu_api));
	}
	pthread_mutex_unlock(&cuda_lock);
}

const struct cuda_api *cuda_dev_api(const struct cuda_dev *d)
{
	return &cu_api;
}

int cuda_dev_ordinal(const struct cuda_dev *d)
{
	return d->ordinal;
}

int cuda_dev_push(struct cuda_dev *d)
{
	CUresult cr = cu_api.CtxPushCurrent(d->ctx);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(d, cr, "cuCtxPushCurrent", "%s", d->name);
	return 0;
}

void cuda_dev_pop(struct cuda_dev *d)
{
	CUcontext popped;
	cu_api.CtxPopCurrent(&popped);
}

/* ======================================================================
 * Import
 * ====================================================================== */

int cuda_grant_import(struct vram_client *c, struct vram_grant *g, int fd)
{
	struct cuda_dev *d;
	CUresult cr;
	int r;

	if (g->size > SIZE_MAX)
		return rt_error(-EOVERFLOW, "grant %llu does not fit size_t", (unsigned long long)g->id);
	r = cuda_dev_get(c, g->device, &d);
	if (r < 0)
		return r;
	struct cuda_import *imp = calloc(1, sizeof(*imp));
	if (!imp) {
		cuda_dev_put(d);
		return rt_error(-ENOMEM, "out of memory");
	}
	imp->d = d;
	imp->size = (size_t)g->size;
	if ((r = cuda_dev_push(d)) < 0)
		goto free_imp;

#define FAIL(call) (r = cuda_dev_error(d, cr, call, "importing grant %llu (%llu bytes) on %s", \
					 (unsigned long long)g->id, (unsigned long long)g->size, d->name))
	cr = cu_api.MemImportFromShareableHandle(&imp->h, (void *)(uintptr_t)fd,
						 CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
	if (cr != CUDA_SUCCESS) {
		FAIL("cuMemImportFromShareableHandle");
		goto pop;
	}
	/* mappings start on a granule, as cuMemMap requires */
	uint64_t gran = c->dev[g->device].granularity;
	cr = cu_api.MemAddressReserve(&imp->va, imp->size, (gran & (gran - 1)) == 0 ? (size_t)gran : 0, 0, 0);
	if (cr != CUDA_SUCCESS) {
		FAIL("cuMemAddressReserve");
		goto release;
	}
	cr = cu_api.MemMap(imp->va, imp->size, 0, imp->h, 0);
	if (cr != CUDA_SUCCESS) {
		FAIL("cuMemMap");
		goto free_va;
	}
	CUmemAccessDesc acc = {
		.location = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = d->ordinal },
		/* a shared copy is read-only to us: others map the same bytes */
		.flags = g->shared ? CU_MEM_ACCESS_FLAGS_PROT_READ : CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
	};
	cr = cu_api.MemSetAccess(imp->va, imp->size, &acc, 1);
	if (cr != CUDA_SUCCESS) {
		FAIL("cuMemSetAccess");
		goto unmap;
	}
#undef FAIL
	cuda_dev_pop(d);
	g->dptr = (uint64_t)imp->va;
	g->cuda = imp;
	return 0;

unmap:
	cu_api.MemUnmap(imp->va, imp->size);
free_va:
	cu_api.MemAddressFree(imp->va, imp->size);
release:
	cu_api.MemRelease(imp->h);
pop:
	cuda_dev_pop(d);
free_imp:
	free(imp);
	cuda_dev_put(d);
	return r;
}

void cuda_grant_unimport(struct vram_grant *g)
{
	struct cuda_import *imp = g->cuda;
	if (!imp)
		return;
	struct cuda_dev *d = imp->d;
	bool pushed = cuda_dev_push(d) == 0;
	if (pushed) {
		/* Work queued by anyone in this context may still use the memory. */
		cu_api.CtxSynchronize();
	}
	/* Failures here leave nothing we could retry; the process's exit frees
	 * what remains. */
	cu_api.MemUnmap(imp->va, imp->size);
	cu_api.MemAddressFree(imp->va, imp->size);
	cu_api.MemRelease(imp->h);
	if (pushed)
		cuda_dev_pop(d);
	cuda_dev_put(d);
	free(imp);
	g->cuda = NULL;
	g->dptr = 0;
}
