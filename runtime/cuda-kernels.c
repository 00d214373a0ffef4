/* SPDX-License-Identifier: MIT */
/*
 * Kernel launches on CUDA devices: the fatbin of kernels/ (vk_fatbin) loaded
 * once per device into its primary context, functions looked up by name and
 * cached, and launchers with the geometry and parameter layout kernels.h
 * describes.  Also the synchronous public calls vram_gpu_cast and
 * vram_gpu_lora_merge.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "runtime/cuda-kernels.h"
#include "runtime/dtype.h"
#include "runtime/internal.h"

#define NFMT 5 /* VK_FMT_* formats the kernels handle */

struct cuda_kernels {
	struct cuda_dev *d;
	const struct cuda_api *cu;
	unsigned refs;
	bool loaded;
	CUmodule mod;
	CUfunction cast[NFMT][NFMT];
	CUfunction lora[NFMT];
	struct cuda_kernels *next;
};

static pthread_mutex_t k_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cuda_kernels *k_list;
static const void *k_image;   /* test override of vk_fatbin */
static size_t k_image_size;
static bool k_image_set;

void cuda_kernels_set_image(const void *image, size_t size)
{
	pthread_mutex_lock(&k_lock);
	k_image_set = image != NULL;
	k_image = image;
	k_image_size = size;
	pthread_mutex_unlock(&k_lock);
}

int cuda_kernels_get(struct cuda_dev *d, struct cuda_kernels **ret)
{
	pthread_mutex_lock(&k_lock);
	for (struct cuda_kernels *k = k_list; k; k = k->next)
		if (k->d == d) {
			k->refs++;
			pthread_mutex_unlock(&k_lock);
			*ret = k;
			return 0;
		}
	struct cuda_kernels *k = calloc(1, sizeof(*k));
	if (!k) {
		pthread_mutex_unlock(&k_lock);
		return rt_error(-ENOMEM, "out of memory");
	}
	k->d = d;
	k->cu = cuda_dev_api(d);
	k->refs = 1;
	k->next = k_list;
	k_list = k;
	pthread_mutex_unlock(&k_lock);
	*ret = k;
	return 0;
}

void cuda_kernels_put(struct cuda_kernels *k)
{
	if (!k)
		return;
	pthread_mutex_lock(&k_lock);
	if (--k->refs == 0) {
		for (struct cuda_kernels **pp = &k_list; *pp; pp = &(*pp)->next)
			if (*pp == k) {
				*pp = k->next;
				break;
			}
		if (k->loaded && cuda_dev_push(k->d) == 0) {
			/* Nothing to retry on failure; the context's end frees it. */
			k->cu->ModuleUnload(k->mod);
			cuda_dev_pop(k->d);
		}
		free(k);
	}
	pthread_mutex_unlock(&k_lock);
}

/* d's handle, or NULL.  Called with k_lock held. */
static struct cuda_kernels *find(const struct cuda_dev *d)
{
	for (struct cuda_kernels *k = k_list; k; k = k->next)
		if (k->d == d)
			return k;
	return NULL;
}

/* The function called name of d's module, loading the module first if
 * needed; *slot caches it.  Called with d's context current. */
static int lookup(struct cuda_dev *d, const char *name, int fmt_a, int fmt_b, CUfunction *ret)
{
	int ord = cuda_dev_ordinal(d);
	int r = 0;

	pthread_mutex_lock(&k_lock);
	struct cuda_kernels *k = find(d);
	if (!k) {
		r = rt_error(-EINVAL, "CUDA device %d: launch without a kernels handle", ord);
		goto out;
	}
	CUfunction *slot = fmt_b < 0 ? &k->lora[fmt_a] : &k->cast[fmt_a][fmt_b];
	if (*slot) {
		*ret = *slot;
		goto out;
	}
	if (!k->loaded) {
		const void *img = k_image_set ? k_image : vk_fatbin;
		size_t size = k_image_set ? k_image_size : vk_fatbin_size;
		if (size == 0) {
			r = rt_error(-ENOTSUP, "CUDA device %d: libvram was built without nvcc: "
					"no GPU kernels (use the CPU references)", ord);
			goto out;
		}
		CUresult cr = k->cu->ModuleLoadData(&k->mod, img);
		if (cr != CUDA_SUCCESS) {
			r = cuda_dev_error(d, cr, "cuModuleLoadData", "CUDA device %d: loading the kernels (%s)",
					   ord, vk_fatbin_nvcc[0] ? vk_fatbin_nvcc : "no nvcc");
			goto out;
		}
		k->loaded = true;
	}
	CUresult cr = k->cu->ModuleGetFunction(slot, k->mod, name);
	if (cr != CUDA_SUCCESS) {
		*slot = NULL;
		r = cuda_dev_error(d, cr, "cuModuleGetFunction", "CUDA device %d: kernel %s", ord, name);
		goto out;
	}
	*ret = *slot;
out:
	pthread_mutex_unlock(&k_lock);
	return r;
}

int cuda_cast_launch(struct cuda_dev *d, CUstream s, CUdeviceptr dst, uint32_t dst_dtype,
		     CUdeviceptr src, uint32_t src_dtype, uint64_t n, uint32_t flags)
{
	const struct cuda_api *cu = cuda_dev_api(d);
	CUresult cr;
	int r;

	if (!vk_cast_supported(src_dtype, dst_dtype))
		return rt_error(-EINVAL, "no cast from %s to %s on the GPU", vram_dtype_name(src_dtype) ?: "?",
				vram_dtype_name(dst_dtype) ?: "?");
	if (flags & ~VK_CAST_FLAGS_MASK)
		return rt_error(-EINVAL, "unknown cast flags %#x", flags);
	if (n == 0)
		return 0;
	if (!dst || !src)
		return rt_error(-EINVAL, "cast of %llu elements with a NULL address", (unsigned long long)n);
	/* The kernels load and store whole elements: a misaligned address
	 * would fault, and a fault poisons the context (PyTorch's too). */
	if (src % (dtype_size(src_dtype)) || dst % (dtype_size(dst_dtype)))
		return rt_error(-EINVAL, "cast 0x%llx (%s) -> 0x%llx (%s): address not aligned to its element",
				(unsigned long long)src, vram_dtype_name(src_dtype), (unsigned long long)dst,
				vram_dtype_name(dst_dtype));
	uint32_t wbits = vram_dtype_bits(src_dtype) > vram_dtype_bits(dst_dtype) ? vram_dtype_bits(src_dtype)
										   : vram_dtype_bits(dst_dtype);
	if (n > SIZE_MAX / (wbits / 8))
		return rt_error(-EOVERFLOW, "cast of %llu elements", (unsigned long long)n);
	if ((r = cuda_dev_push(d)) < 0)
		return r;
	if (src_dtype == dst_dtype) {
		cr = cu->MemcpyDtoDAsync(dst, src, (size_t)n * (wbits / 8), s);
		if (cr != CUDA_SUCCESS)
			r = cuda_dev_error(d, cr, "cuMemcpyDtoDAsync", "cast (copy) of %llu elements",
					   (unsigned long long)n);
		goto pop;
	}
	const char *name = vk_cast_kernel_name(src_dtype, dst_dtype);
	CUfunction f;
	r = lookup(d, name, vk_dtype_fmt(src_dtype), vk_dtype_fmt(dst_dtype), &f);
	if (r < 0)
		goto pop;
	struct vk_cast_params p = { .src = src, .dst = dst, .n = n, .flags = flags };
	void *args[] = { &p.src, &p.dst, &p.n, &p.flags };
	cr = cu->LaunchKernel(f, vk_cast_grid(n), 1, 1, VK_CAST_BLOCK, 1, 1, 0, s, args, NULL);
	if (cr != CUDA_SUCCESS)
		r = cuda_dev_error(d, cr, "cuLaunchKernel", "%s of %llu elements", name, (unsigned long long)n);
pop:
	cuda_dev_pop(d);
	return r;
}

int cuda_lora_launch(struct cuda_dev *d, CUstream s, CUdeviceptr w, uint32_t w_dtype, CUdeviceptr up,
		     CUdeviceptr down, uint32_t rows, uint32_t cols, uint32_t rank, float scale,
		     uint64_t seed)
{
	const struct cuda_api *cu = cuda_dev_api(d);
	int r;

	const char *name = vk_lora_kernel_name(w_dtype);
	if (!name)
		return rt_error(-EINVAL, "no LoRA merge into %s weights on the GPU",
				vram_dtype_name(w_dtype) ?: "?");
	if (rank == 0 || !isfinite(scale))
		return rt_error(-EINVAL, "LoRA merge with rank %u, scale %g", rank, (double)scale);
	if (rows == 0 || cols == 0)
		return 0;
	if (!w || !up || !down)
		return rt_error(-EINVAL, "LoRA merge with a NULL address");
	if (w % (dtype_size(w_dtype)) || up % 4 || down % 4)
		return rt_error(-EINVAL, "LoRA merge: an address not aligned to its element (w 0x%llx, up 0x%llx, "
				"down 0x%llx)", (unsigned long long)w, (unsigned long long)up, (unsigned long long)down);
	if ((r = cuda_dev_push(d)) < 0)
		return r;
	CUfunction f;
	r = lookup(d, name, vk_dtype_fmt(w_dtype), -1, &f);
	if (r < 0)
		goto pop;
	struct vk_lora_params q = { .w = w, .up = up, .down = down, .rows = rows, .cols = cols,
				    .rank = rank, .scale = scale, .seed = seed };
	void *args[] = { &q.w, &q.up, &q.down, &q.rows, &q.cols, &q.rank, &q.scale, &q.seed };
	uint32_t gx, gy;
	vk_lora_grid(rows, cols, &gx, &gy);
	CUresult cr = cu->LaunchKernel(f, gx, gy, 1, VK_LORA_BLOCK_X, VK_LORA_BLOCK_Y, 1, 0, s, args, NULL);
	if (cr != CUDA_SUCCESS)
		r = cuda_dev_error(d, cr, "cuLaunchKernel", "%s of %ux%u (rank %u)", name, rows, cols, rank);
pop:
	cuda_dev_pop(d);
	return r;
}

/* ======================================================================
 * Public, synchronous
 * ====================================================================== */

int vram_device_prepare(vram_client *c, uint32_t index)
{
	rt_error_clear();
	if (!c || index >= c->ndev)
		return rt_error(-ENODEV, "no device %u", index);
	if (c->dev[index].backend != VRAM_BACKEND_CUDA)
		return 0;
	pthread_mutex_lock(&c->lock);
	int r = 0;
	if (!c->prepared[index]) {
		struct cuda_dev *d;
		struct cuda_kernels *k;
		if ((r = cuda_dev_get(c, index, &d)) == 0) {
			if ((r = cuda_kernels_get(d, &k)) < 0) {
				cuda_dev_put(d);
			} else {
				c->prepared[index] = d;
				c->prepared_k[index] = k;
			}
		}
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

void client_prepared_release(struct vram_client *c)
{
	for (uint32_t i = 0; i < VRAMD_MAX_DEVICES; i++) {
		if (!c->prepared[i])
			continue;
		cuda_kernels_put(c->prepared_k[i]); /* unloads in the context still held */
		cuda_dev_put(c->prepared[i]);
		c->prepared[i] = NULL;
		c->prepared_k[i] = NULL;
	}
}

/* Device handle, kernels handle and pushed context for one public call. */
struct gpu_call {
	struct cuda_dev *d;
	struct cuda_kernels *k;
};

static int call_begin(vram_client *c, uint32_t device, struct gpu_call *g)
{
	int r = cuda_dev_get(c, device, &g->d);
	if (r < 0)
		return r;
	r = cuda_kernels_get(g->d, &g->k);
	if (r < 0) {
		cuda_dev_put(g->d);
		return r;
	}
	return 0;
}

/* Waits for the legacy default stream (what the launch went on), then
 * drops the handles.  r: the launch's result. */
static int call_end(struct gpu_call *g, int r, const char *what)
{
	if (r == 0 && (r = cuda_dev_push(g->d)) == 0) {
		CUresult cr = cuda_dev_api(g->d)->StreamSynchronize(NULL);
		if (cr != CUDA_SUCCESS)
			r = cuda_dev_error(g->d, cr, "cuStreamSynchronize", "%s", what);
		cuda_dev_pop(g->d);
	}
	cuda_kernels_put(g->k);
	cuda_dev_put(g->d);
	return r;
}

int vram_gpu_cast(vram_client *c, uint32_t device, uint64_t dst, uint32_t dst_dtype, uint64_t src,
		  uint32_t src_dtype, uint64_t n)
{
	struct gpu_call g;
	int r;

	rt_error_clear();
	if (!vk_cast_supported(src_dtype, dst_dtype))
		return rt_error(-EINVAL, "no cast from %s to %s on the GPU", vram_dtype_name(src_dtype) ?: "?",
				vram_dtype_name(dst_dtype) ?: "?");
	if (n == 0)
		return 0;
	if ((r = call_begin(c, device, &g)) < 0)
		return r;
	r = cuda_cast_launch(g.d, NULL, dst, dst_dtype, src, src_dtype, n, 0);
	return call_end(&g, r, "cast");
}

int vram_gpu_lora_merge(vram_client *c, uint32_t device, uint64_t w, uint32_t w_dtype, uint64_t up,
			uint64_t down, uint32_t rows, uint32_t cols, uint32_t rank, float scale, uint64_t seed)
{
	struct gpu_call g;
	int r;

	rt_error_clear();
	if (!vk_lora_kernel_name(w_dtype))
		return rt_error(-EINVAL, "no LoRA merge into %s weights on the GPU",
				vram_dtype_name(w_dtype) ?: "?");
	if (rank == 0 || !isfinite(scale))
		return rt_error(-EINVAL, "LoRA merge with rank %u, scale %g", rank, (double)scale);
	if (rows == 0 || cols == 0)
		return 0;
	if ((r = call_begin(c, device, &g)) < 0)
		return r;
	r = cuda_lora_launch(g.d, NULL, w, w_dtype, up, down, rows, cols, rank, scale, seed);
	return call_end(&g, r, "LoRA merge");
}

int cuda_copy_bytes(vram_client *c, uint32_t device, uint64_t dst, uint64_t src, uint64_t n)
{
	struct cuda_dev *d;
	int r = cuda_dev_get(c, device, &d);
	if (r < 0)
		return r;
	if (n && (r = cuda_dev_push(d)) == 0) {
		const struct cuda_api *cu = cuda_dev_api(d);
		CUresult cr = cu->MemcpyDtoDAsync(dst, src, (size_t)n, NULL);
		if (cr == CUDA_SUCCESS)
			cr = cu->StreamSynchronize(NULL);
		if (cr != CUDA_SUCCESS)
			r = cuda_dev_error(d, cr, "cuMemcpyDtoDAsync", "copy of %llu bytes", (unsigned long long)n);
		cuda_dev_pop(d);
	}
	cuda_dev_put(d);
	return r;
}
