/* SPDX-License-Identifier: MIT */
/*
 * libvram's kernel launches (not installed): the fatbin of kernels/ loaded
 * into a device's primary context with cuModuleLoadData, its functions
 * looked up by the names kernels/ exports, and launchers for the dtype casts
 * and LoRA merges.
 *
 * The module belongs to a per-device kernels handle, counted: the first
 * cuda_kernels_get for a device makes the handle (nothing loaded yet),
 * the first launch loads the module, the last put unloads it (in the
 * device's context, which the caller still holds).  Every function that can
 * fail returns 0 or a negative errno with vram_last_error() set.
 */
#ifndef VRAM_RUNTIME_CUDA_KERNELS_H
#define VRAM_RUNTIME_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/cuda-api.h"
#include "runtime/cuda-copy.h"

struct cuda_kernels;

/* The kernels handle of d (made on first use; counted: one put per get).
 * d must be held (cuda_dev_get) until the matching put.  -ENOMEM. */
int cuda_kernels_get(struct cuda_dev *d, struct cuda_kernels **ret_k);
/* Drops a reference; the last one unloads the module (cuModuleUnload in d's
 * context) and frees the handle.  NULL is fine. */
void cuda_kernels_put(struct cuda_kernels *k);

/* Queues vk_cast_<S>_<D>(src, dst, n, flags) on stream s (NULL: the legacy
 * default stream) of d's primary context, with block (VK_CAST_BLOCK, 1, 1)
 * and grid (vk_cast_grid(n), 1, 1); equal dtypes queue cuMemcpyDtoDAsync of
 * the bytes instead.  Loads the module on first use.  d must have a kernels
 * handle (cuda_kernels_get), else -EINVAL.  n == 0 queues nothing.
 * -EINVAL for an unsupported pair (vk_cast_supported), unknown flag bits,
 * or a zero address with n > 0; -EOVERFLOW when n elements do not fit in
 * the address space; -ENOTSUP when libvram was built without nvcc; CUDA
 * errors as their errno (cuModuleLoadData's CUDA_ERROR_NO_BINARY_FOR_GPU,
 * ..._INVALID_PTX: -EIO, with the call named).  The caller's current
 * context is restored. */
int cuda_cast_launch(struct cuda_dev *d, CUstream s, CUdeviceptr dst, uint32_t dst_dtype,
		     CUdeviceptr src, uint32_t src_dtype, uint64_t n, uint32_t flags);

/* Queues vk_lora_merge_<W>(w, up, down, rows, cols, rank, scale, seed) on
 * stream s of d's context: w (rows x cols, w_dtype) += scale * (up @ down),
 * up rows x rank and down rank x cols in f32, all device memory; block
 * (VK_LORA_BLOCK_X, VK_LORA_BLOCK_Y, 1), grid from vk_lora_grid.  rows or
 * cols 0 queues nothing.  -EINVAL for an unsupported w_dtype, rank 0, a
 * non-finite scale, a zero address with work to do; otherwise as
 * cuda_cast_launch. */
int cuda_lora_launch(struct cuda_dev *d, CUstream s, CUdeviceptr w, uint32_t w_dtype, CUdeviceptr up,
		     CUdeviceptr down, uint32_t rows, uint32_t cols, uint32_t rank, float scale,
		     uint64_t seed);

/* Copies n bytes from src to dst, both device memory of broker CUDA device
 * `device`, on the context's legacy default stream, and waits.  0 or the
 * CUDA error's errno with the message set. */
int cuda_copy_bytes(vram_client *c, uint32_t device, uint64_t dst, uint64_t src, uint64_t n);

/* Replaces the image handed to cuModuleLoadData (NULL: vk_fatbin again;
 * size 0: as a build without nvcc).  For tests only; affects modules
 * loaded afterwards. */
void cuda_kernels_set_image(const void *image, size_t size);

#endif
