/* SPDX-License-Identifier: MIT */
/*
 * The CUDA Driver API as vramd uses it: a table of function pointers filled
 * from libcuda.so.1 with dlopen/dlsym at run time (no link-time dependency on
 * the driver), shared by the broker (broker/pool-cuda.c) and the runtime
 * (runtime/cuda.c, runtime/cuda-copy.c).
 *
 * Members are named after the Driver API call without its "cu" prefix
 * (api->MemCreate is cuMemCreate): cuda.h #defines many of the plain names to
 * their versioned symbols (cuMemGetInfo -> cuMemGetInfo_v2), which would
 * otherwise rename struct members behind our back.  The loader resolves the
 * versioned symbols explicitly (cuMemGetInfo_v2, cuDeviceTotalMem_v2,
 * cuMemcpyHtoDAsync_v2, ...): those are the ABI the cuda.h prototypes describe.
 *
 * Tests install a fake driver with cuda_api_set_override(); every later
 * cuda_api_load() copies that table instead of opening libcuda.
 *
 * Built without cuda.h (no CUDA toolkit), this header declares the handful of
 * types, enums and constants vramd needs itself, with the values and layouts
 * of the CUDA 10.2+ ABI (stable since; checked against cuda.h by
 * tests/test-cuda-fake.c when cuda.h is present).
 */
#ifndef VRAM_COMMON_CUDA_API_H
#define VRAM_COMMON_CUDA_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef VRAM_HAVE_CUDA_H
#include <cuda.h>
#else
/* ---- minimal Driver API declarations (no cuda.h) ------------------------- */
typedef int CUresult;
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_DEINITIALIZED 4
#define CUDA_ERROR_STUB_LIBRARY 34
#define CUDA_ERROR_NO_DEVICE 100
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_IMAGE 200
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_ALREADY_MAPPED 208
#define CUDA_ERROR_NO_BINARY_FOR_GPU 209
#define CUDA_ERROR_INVALID_PTX 218
#define CUDA_ERROR_OPERATING_SYSTEM 304
#define CUDA_ERROR_INVALID_HANDLE 400
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_NOT_READY 600
#define CUDA_ERROR_ILLEGAL_ADDRESS 700
#define CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES 701
#define CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED 712
#define CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED 713
#define CUDA_ERROR_NOT_PERMITTED 800
#define CUDA_ERROR_NOT_SUPPORTED 801
#define CUDA_ERROR_SYSTEM_NOT_READY 802
#define CUDA_ERROR_SYSTEM_DRIVER_MISMATCH 803
#define CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE 804
#define CUDA_ERROR_UNKNOWN 999

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUuuid_st {
	char bytes[16];
} CUuuid;

typedef int CUdevice_attribute;
#define CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED 102
#define CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED 103
#define CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID 134
#define CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY 83
#define CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS 89
#define CU_DEVICE_ATTRIBUTE_COMPUTE_MODE 20
#define CU_COMPUTEMODE_DEFAULT 0

typedef enum CUmemAllocationType_enum {
	CU_MEM_ALLOCATION_TYPE_INVALID = 0x0,
	CU_MEM_ALLOCATION_TYPE_PINNED = 0x1,
} CUmemAllocationType;
typedef enum CUmemAllocationHandleType_enum {
	CU_MEM_HANDLE_TYPE_NONE = 0x0,
	CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 0x1,
} CUmemAllocationHandleType;
typedef enum CUmemLocationType_enum {
	CU_MEM_LOCATION_TYPE_INVALID = 0x0,
	CU_MEM_LOCATION_TYPE_DEVICE = 0x1,
	CU_MEM_LOCATION_TYPE_HOST = 0x2,
} CUmemLocationType;
typedef enum CUmemAccess_flags_enum {
	CU_MEM_ACCESS_FLAGS_PROT_NONE = 0x0,
	CU_MEM_ACCESS_FLAGS_PROT_READ = 0x1,
	CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 0x3,
} CUmemAccess_flags;
typedef enum CUmemAllocationGranularity_flags_enum {
	CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0x0,
	CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 0x1,
} CUmemAllocationGranularity_flags;

typedef struct CUmemLocation_st {
	CUmemLocationType type;
	int id;
} CUmemLocation;
typedef struct CUmemAllocationProp_st {
	CUmemAllocationType type;
	CUmemAllocationHandleType requestedHandleTypes;
	CUmemLocation location;
	void *win32HandleMetaData;
	struct {
		unsigned char compressionType;
		unsigned char gpuDirectRDMACapable;
		unsigned short usage;
		unsigned char reserved[4];
	} allocFlags;
} CUmemAllocationProp;
typedef struct CUmemAccessDesc_st {
	CUmemLocation location;
	CUmemAccess_flags flags;
} CUmemAccessDesc;

/* Unified memory (cuMemAdvise_v2 / cuMemPrefetchAsync_v2, CUDA 12.2+; the
 * CUDA 13 cuda.h names them cuMemAdvise / cuMemPrefetchAsync). */
typedef enum CUmem_advise_enum {
	CU_MEM_ADVISE_SET_READ_MOSTLY = 1,
	CU_MEM_ADVISE_UNSET_READ_MOSTLY = 2,
	CU_MEM_ADVISE_SET_PREFERRED_LOCATION = 3,
	CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION = 4,
	CU_MEM_ADVISE_SET_ACCESSED_BY = 5,
	CU_MEM_ADVISE_UNSET_ACCESSED_BY = 6,
} CUmem_advise;
#define CU_MEM_ATTACH_GLOBAL 0x1

#define CU_STREAM_NON_BLOCKING 0x1
#define CU_EVENT_DISABLE_TIMING 0x2
#define CU_MEMHOSTREGISTER_PORTABLE 0x01
#endif /* VRAM_HAVE_CUDA_H */

/* The entry points vramd calls.  Every member is required (cuda_api_load()
 * fails naming the first one missing) except the two marked optional: the
 * unified-memory calls with a CUmemLocation exist from CUDA 12.2 on, and
 * are NULL with an older driver (the UVM pager then says -ENOTSUP). */
struct cuda_api {
	CUresult (*Init)(unsigned int flags);
	CUresult (*DriverGetVersion)(int *version);
	CUresult (*GetErrorName)(CUresult err, const char **str);
	CUresult (*GetErrorString)(CUresult err, const char **str);

	CUresult (*DeviceGetCount)(int *count);
	CUresult (*DeviceGet)(CUdevice *dev, int ordinal);
	CUresult (*DeviceGetName)(char *name, int len, CUdevice dev);
	CUresult (*DeviceGetUuid)(CUuuid *uuid, CUdevice dev);             /* _v2, else v1 */
	CUresult (*DeviceTotalMem)(size_t *bytes, CUdevice dev);           /* _v2 */
	CUresult (*DeviceGetAttribute)(int *value, CUdevice_attribute attr, CUdevice dev);

	CUresult (*DevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
	CUresult (*DevicePrimaryCtxRelease)(CUdevice dev);                 /* _v2 */
	CUresult (*CtxPushCurrent)(CUcontext ctx);                         /* _v2 */
	CUresult (*CtxPopCurrent)(CUcontext *ctx);                         /* _v2 */
	CUresult (*CtxSynchronize)(void);

	CUresult (*MemGetInfo)(size_t *free_bytes, size_t *total_bytes);   /* _v2 */
	CUresult (*MemGetAllocationGranularity)(size_t *gran, const CUmemAllocationProp *prop,
						CUmemAllocationGranularity_flags option);
	CUresult (*MemCreate)(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
			      unsigned long long flags);
	CUresult (*MemRelease)(CUmemGenericAllocationHandle handle);
	CUresult (*MemExportToShareableHandle)(void *shareable, CUmemGenericAllocationHandle handle,
					       CUmemAllocationHandleType type, unsigned long long flags);
	CUresult (*MemImportFromShareableHandle)(CUmemGenericAllocationHandle *handle, void *os_handle,
						 CUmemAllocationHandleType type);
	CUresult (*MemGetAllocationPropertiesFromHandle)(CUmemAllocationProp *prop,
							 CUmemGenericAllocationHandle handle);
	CUresult (*MemAddressReserve)(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
				      unsigned long long flags);
	CUresult (*MemAddressFree)(CUdeviceptr ptr, size_t size);
	CUresult (*MemMap)(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
			   unsigned long long flags);
	CUresult (*MemUnmap)(CUdeviceptr ptr, size_t size);
	CUresult (*MemSetAccess)(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count);

	CUresult (*MemsetD8)(CUdeviceptr dst, unsigned char value, size_t n);                 /* _v2 */
	CUresult (*MemcpyHtoD)(CUdeviceptr dst, const void *src, size_t n);                  /* _v2 */
	CUresult (*MemcpyDtoH)(void *dst, CUdeviceptr src, size_t n);                        /* _v2 */
	CUresult (*MemcpyHtoDAsync)(CUdeviceptr dst, const void *src, size_t n, CUstream s); /* _v2 */
	CUresult (*MemcpyDtoHAsync)(void *dst, CUdeviceptr src, size_t n, CUstream s);       /* _v2 */
	CUresult (*MemcpyDtoDAsync)(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s); /* _v2 */
	CUresult (*MemHostRegister)(void *p, size_t n, unsigned int flags);                   /* _v2 */
	CUresult (*MemHostUnregister)(void *p);

	CUresult (*StreamCreate)(CUstream *s, unsigned int flags);
	CUresult (*StreamDestroy)(CUstream s);                             /* _v2 */
	CUresult (*StreamSynchronize)(CUstream s);
	CUresult (*EventCreate)(CUevent *e, unsigned int flags);
	CUresult (*EventDestroy)(CUevent e);                               /* _v2 */
	CUresult (*EventRecord)(CUevent e, CUstream s);
	CUresult (*EventSynchronize)(CUevent e);
	CUresult (*EventQuery)(CUevent e);
	CUresult (*StreamWaitEvent)(CUstream s, CUevent e, unsigned int flags);

	/* Kernels (runtime/cuda-kernels.c). */
	CUresult (*ModuleLoadData)(CUmodule *mod, const void *image);
	CUresult (*ModuleUnload)(CUmodule mod);
	CUresult (*ModuleGetFunction)(CUfunction *fn, CUmodule mod, const char *name);
	CUresult (*LaunchKernel)(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
				 unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream s,
				 void **params, void **extra);             /* legacy stream, not _ptsz */

	/* Unified memory (runtime/uvm.c). */
	CUresult (*MemAllocManaged)(CUdeviceptr *ptr, size_t size, unsigned int flags);
	CUresult (*MemFree)(CUdeviceptr ptr);                              /* _v2 */
	CUresult (*MemAdvise)(CUdeviceptr ptr, size_t n, CUmem_advise advice,
			      CUmemLocation loc);                          /* _v2, optional (12.2+) */
	CUresult (*MemPrefetchAsync)(CUdeviceptr ptr, size_t n, CUmemLocation loc, unsigned int flags,
				     CUstream s);                          /* _v2, optional (12.2+) */
};

/* Fills *api with the Driver API: from the fake table installed with
 * cuda_api_set_override() if any, else from libcuda.so.1 (opened once per
 * process with dlopen and never closed: the driver does not survive being
 * unloaded).  Does not call cuInit.  Returns 0, or
 *   -ENOENT  libcuda.so.1 cannot be opened; err = "NVIDIA driver not found
 *            (<dlerror>)";
 *   -ENOSYS  a required entry point is missing; err names it.
 * Optional entry points (MemAdvise, MemPrefetchAsync) are left NULL when
 * the driver lacks them.
 * *api is zeroed on failure.  Thread-safe. */
int cuda_api_load(struct cuda_api *api, char *err, size_t errlen);

/* Makes cuda_api_load() copy *fake (NULL: use libcuda.so.1 again).  The
 * table is copied at each load, so the caller may change or free it once
 * the loads it meant to affect are done.  For tests only. */
void cuda_api_set_override(const struct cuda_api *fake);

/* Writes "CUDA_ERROR_NAME (description)" for r into buf and returns buf.
 * Falls back to "CUDA error N" when the driver does not know r. */
const char *cuda_api_strerror(const struct cuda_api *api, CUresult r, char *buf, size_t len);

/* Maps a CUresult to a negative errno: OUT_OF_MEMORY -ENOMEM, NO_DEVICE /
 * INVALID_DEVICE -ENODEV, NOT_SUPPORTED -ENOTSUP, NOT_PERMITTED -EPERM,
 * INVALID_VALUE / INVALID_HANDLE / HOST_MEMORY_NOT_REGISTERED -EINVAL,
 * NOT_READY -EAGAIN, HOST_MEMORY_ALREADY_REGISTERED -EBUSY, anything else
 * -EIO.  CUDA_SUCCESS is 0. */
int cuda_api_errno(CUresult r);

/* Formats a 16-byte UUID as nvidia-smi does: "GPU-xxxxxxxx-xxxx-xxxx-xxxx-
 * xxxxxxxxxxxx" (41 bytes with the NUL).  Returns buf. */
char *cuda_uuid_format(const uint8_t uuid[16], char *buf, size_t len);

#endif /* VRAM_COMMON_CUDA_API_H */
