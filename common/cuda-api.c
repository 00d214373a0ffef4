/* SPDX-License-Identifier: MIT */
/*
 * Loading the CUDA Driver API with dlopen.  The library is opened once per
 * process and never closed (libcuda starts threads and registers handlers
 * that do not survive dlclose); each caller keeps its own copy of the table.
 *
 * Symbols are resolved with dlsym by their versioned names rather than with
 * cuGetProcAddress: every driver that has the VMM calls (CUDA 10.2+) exports
 * them, the names pin the ABI that the cuda.h prototypes describe, and dlsym
 * needs no driver call before cuInit.  The default-stream variants are the
 * legacy ones (not _ptds/_ptsz); vramd always names its streams.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common/cuda-api.h"

#define CUDA_LIB "libcuda.so.1"

static const struct entry {
	size_t off;
	const char *sym[2]; /* preferred name, fallback (or NULL) */
	int optional;       /* NULL when missing, not an error */
} entries[] = {
#define E(member, ...) { offsetof(struct cuda_api, member), { __VA_ARGS__ }, 0 }
#define O(member, name) { offsetof(struct cuda_api, member), { name, NULL }, 1 }
	E(Init, "cuInit"),
	E(DriverGetVersion, "cuDriverGetVersion"),
	E(GetErrorName, "cuGetErrorName"),
	E(GetErrorString, "cuGetErrorString"),
	E(DeviceGetCount, "cuDeviceGetCount"),
	E(DeviceGet, "cuDeviceGet"),
	E(DeviceGetName, "cuDeviceGetName"),
	/* _v2 reports MIG instances' own UUIDs; same signature as v1. */
	E(DeviceGetUuid, "cuDeviceGetUuid_v2", "cuDeviceGetUuid"),
	E(DeviceTotalMem, "cuDeviceTotalMem_v2"),
	E(DeviceGetAttribute, "cuDeviceGetAttribute"),
	E(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"),
	E(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"),
	E(CtxPushCurrent, "cuCtxPushCurrent_v2"),
	E(CtxPopCurrent, "cuCtxPopCurrent_v2"),
	E(CtxSynchronize, "cuCtxSynchronize"),
	E(MemGetInfo, "cuMemGetInfo_v2"),
	E(MemGetAllocationGranularity, "cuMemGetAllocationGranularity"),
	E(MemCreate, "cuMemCreate"),
	E(MemRelease, "cuMemRelease"),
	E(MemExportToShareableHandle, "cuMemExportToShareableHandle"),
	E(MemImportFromShareableHandle, "cuMemImportFromShareableHandle"),
	E(MemGetAllocationPropertiesFromHandle, "cuMemGetAllocationPropertiesFromHandle"),
	E(MemAddressReserve, "cuMemAddressReserve"),
	E(MemAddressFree, "cuMemAddressFree"),
	E(MemMap, "cuMemMap"),
	E(MemUnmap, "cuMemUnmap"),
	E(MemSetAccess, "cuMemSetAccess"),
	E(MemsetD8, "cuMemsetD8_v2"),
	E(MemcpyHtoD, "cuMemcpyHtoD_v2"),
	E(MemcpyDtoH, "cuMemcpyDtoH_v2"),
	E(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"),
	E(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"),
	E(MemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2"),
	E(MemHostRegister, "cuMemHostRegister_v2"),
	E(MemHostUnregister, "cuMemHostUnregister"),
	E(StreamCreate, "cuStreamCreate"),
	E(StreamDestroy, "cuStreamDestroy_v2"),
	E(StreamSynchronize, "cuStreamSynchronize"),
	E(EventCreate, "cuEventCreate"),
	E(EventDestroy, "cuEventDestroy_v2"),
	E(EventRecord, "cuEventRecord"),
	E(EventSynchronize, "cuEventSynchronize"),
	E(EventQuery, "cuEventQuery"),
	E(StreamWaitEvent, "cuStreamWaitEvent"),
	E(ModuleLoadData, "cuModuleLoadData"),
	E(ModuleUnload, "cuModuleUnload"),
	E(ModuleGetFunction, "cuModuleGetFunction"),
	E(LaunchKernel, "cuLaunchKernel"),
	E(MemAllocManaged, "cuMemAllocManaged"),
	E(MemFree, "cuMemFree_v2"),
	/* The CUmemLocation forms (CUDA 12.2+), which CUDA 13's cuda.h calls
	 * cuMemAdvise / cuMemPrefetchAsync.  The v1 symbols take a CUdevice
	 * instead: a different signature, so no fallback. */
	O(MemAdvise, "cuMemAdvise_v2"),
	O(MemPrefetchAsync, "cuMemPrefetchAsync_v2"),
#undef O
#undef E
};

_Static_assert(sizeof(struct cuda_api) == sizeof(entries) / sizeof(entries[0]) * sizeof(void (*)(void)),
	       "every struct cuda_api member has an entry");

static pthread_mutex_t lib_lock = PTHREAD_MUTEX_INITIALIZER;
static void *lib;                         /* libcuda, once opened */
static const struct cuda_api *override;   /* tests' fake driver */

void cuda_api_set_override(const struct cuda_api *fake)
{
	pthread_mutex_lock(&lib_lock);
	override = fake;
	pthread_mutex_unlock(&lib_lock);
}

typedef void (*fnptr)(void);

static fnptr *slot(struct cuda_api *api, size_t off)
{
	return (fnptr *)(void *)((char *)api + off);
}

int cuda_api_load(struct cuda_api *api, char *err, size_t errlen)
{
	struct cuda_api t;
	int fake;

	memset(&t, 0, sizeof(t));
	pthread_mutex_lock(&lib_lock);
	fake = override != NULL;
	if (fake) {
		t = *override;
	} else {
		if (!lib) {
			/* RTLD_LOCAL: the driver's symbols stay out of the global
			 * namespace, where they could shadow another copy. */
			lib = dlopen(CUDA_LIB, RTLD_NOW | RTLD_LOCAL);
			if (!lib) {
				const char *e = dlerror();
				snprintf(err, errlen, "NVIDIA driver not found (%s)", e ? e : CUDA_LIB ": not found");
				pthread_mutex_unlock(&lib_lock);
				memset(api, 0, sizeof(*api));
				return -ENOENT;
			}
		}
		for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
			fnptr f = NULL;
			for (int k = 0; k < 2 && !f && entries[i].sym[k]; k++) {
				/* dlsym returns void *; POSIX guarantees it converts
				 * to a function pointer. */
				void *p = dlsym(lib, entries[i].sym[k]);
				memcpy(&f, &p, sizeof(f));
			}
			*slot(&t, entries[i].off) = f;
		}
	}
	pthread_mutex_unlock(&lib_lock);

	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
		if (!*slot(&t, entries[i].off) && !entries[i].optional) {
			snprintf(err, errlen, "%s lacks %s (driver older than CUDA 10.2?)",
				 fake ? "the fake driver" : CUDA_LIB, entries[i].sym[0]);
			memset(api, 0, sizeof(*api));
			return -ENOSYS;
		}
	}
	*api = t;
	return 0;
}

const char *cuda_api_strerror(const struct cuda_api *api, CUresult r, char *buf, size_t len)
{
	const char *name = NULL, *desc = NULL;
	if (api && api->GetErrorName && api->GetErrorName(r, &name) != CUDA_SUCCESS)
		name = NULL;
	if (api && api->GetErrorString && api->GetErrorString(r, &desc) != CUDA_SUCCESS)
		desc = NULL;
	if (name && desc)
		snprintf(buf, len, "%s (%s)", name, desc);
	else if (name)
		snprintf(buf, len, "%s", name);
	else
		snprintf(buf, len, "CUDA error %d", (int)r);
	return buf;
}

int cuda_api_errno(CUresult r)
{
	switch ((int)r) {
	case CUDA_SUCCESS:
		return 0;
	case CUDA_ERROR_OUT_OF_MEMORY:
		return -ENOMEM;
	case CUDA_ERROR_NO_DEVICE:
	case CUDA_ERROR_INVALID_DEVICE:
		return -ENODEV;
	case CUDA_ERROR_NOT_SUPPORTED:
		return -ENOTSUP;
	case CUDA_ERROR_NOT_PERMITTED:
		return -EPERM;
	case CUDA_ERROR_INVALID_VALUE:
	case CUDA_ERROR_INVALID_HANDLE:
		return -EINVAL;
	case CUDA_ERROR_NOT_READY:
		return -EAGAIN;
	case CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
		return -EBUSY;
	case CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED:
		return -EINVAL;
	default:
		return -EIO;
	}
}

char *cuda_uuid_format(const uint8_t u[16], char *buf, size_t len)
{
	snprintf(buf, len,
		 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
		 u[15]);
	return buf;
}
