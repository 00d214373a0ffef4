/* SPDX-License-Identifier: MIT */
/*
 * The unified-memory pager: donor layers in managed memory (one
 * cuMemAllocManaged per compute device), advised to stay on the CPU
 * (preferred location: host) and to be mapped for the compute device
 * (accessed-by), and migrated to the device ahead of use with
 * cuMemPrefetchAsync on one stream per device.  The driver pages them back
 * under memory pressure; no window of grants, no copy thread.  Within one
 * process only: managed memory is not shareable, so none of it comes from
 * the broker, and the pager refuses to ask for more than the card has free.
 *
 * Layout: each donor layer starts on a 2 MiB boundary (the UVM large-page
 * size, so that prefetching one layer does not move a neighbour's pages),
 * its tensors 256-byte aligned within it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "runtime/cuda-copy.h"
#include "runtime/internal.h"
#include "runtime/load.h"

#define LAYER_ALIGN (2ull << 20)
#define TENSOR_ALIGN 256ull
#define MAX_DEPTH 64u

struct udev {
	struct cuda_dev *d;
	const struct cuda_api *cu;
	CUstream stream;
	CUdeviceptr base;        /* managed allocation */
	uint64_t bytes;
	uint32_t bdev;           /* broker device index */
};

struct ulayer {
	bool managed;            /* donor layer, in managed memory */
	bool queued;             /* prefetch queued since the last release */
	int dev;                 /* udev index (managed), broker device index otherwise */
	uint64_t off;            /* in the device's allocation */
	uint64_t bytes;          /* packed size */
	uint32_t first, ntensors;
	CUevent ev;
	unsigned refs;
};

struct vram_uvm_pager {
	vram_loaded *l;
	uint32_t depth;
	uint32_t nlayers;
	struct ulayer *layers;
	uint64_t *toff;          /* tensor offset within its layer's managed part (UINT64_MAX: not managed) */
	uint32_t *tlayer;        /* tensor -> layer */
	uint32_t ndev;
	struct udev dev[VRAMD_MAX_DEVICES];
	pthread_mutex_t mu;
};

static uint64_t align_to(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

void vram_uvm_pager_free(vram_uvm_pager *p)
{
	struct rt_saved_error e;
	if (!p)
		return;
	rt_error_save(&e);
	for (uint32_t i = 0; i < p->ndev; i++) {
		struct udev *u = &p->dev[i];
		bool pushed = cuda_dev_push(u->d) == 0;
		if (pushed && u->stream)
			u->cu->StreamSynchronize(u->stream);
		for (uint32_t li = 0; li < p->nlayers; li++)
			if (p->layers[li].managed && p->layers[li].dev == (int)i && p->layers[li].ev)
				u->cu->EventDestroy(p->layers[li].ev);
		if (u->stream)
			u->cu->StreamDestroy(u->stream);
		if (pushed && u->base)
			u->cu->MemFree(u->base);
		if (pushed)
			cuda_dev_pop(u->d);
		cuda_dev_put(u->d);
	}
	pthread_mutex_destroy(&p->mu);
	free(p->layers);
	free(p->toff);
	free(p->tlayer);
	free(p);
	rt_error_restore(&e);
}

/* udev index for broker device bdev, made (device handle, checks) on first
 * use. */
static int udev_get(vram_uvm_pager *p, uint32_t bdev)
{
	vram_client *c = p->l->client;
	for (uint32_t i = 0; i < p->ndev; i++)
		if (p->dev[i].bdev == bdev)
			return (int)i;
	struct udev *u = &p->dev[p->ndev];
	int r = cuda_dev_get(c, bdev, &u->d);
	if (r < 0)
		return r;
	p->ndev++;
	u->cu = cuda_dev_api(u->d);
	u->bdev = bdev;
	const char *name = c->dev[bdev].name;
	if (!u->cu->MemAdvise || !u->cu->MemPrefetchAsync)
		return rt_error(-ENOTSUP, "%s: the driver lacks %s (older than CUDA 12.2): no UVM pager", name,
				u->cu->MemAdvise ? "cuMemPrefetchAsync_v2" : "cuMemAdvise_v2");
	CUdevice dev;
	int cma = 0;
	CUresult cr = u->cu->DeviceGet(&dev, cuda_dev_ordinal(u->d));
	if (cr == CUDA_SUCCESS)
		cr = u->cu->DeviceGetAttribute(&cma, CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, dev);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(u->d, cr, "cuDeviceGetAttribute", "%s: managed memory support", name);
	if (!cma)
		return rt_error(-ENOTSUP, "%s has no concurrent managed access (needed to prefetch "
				"managed memory): no UVM pager", name);
	return (int)(p->ndev - 1);
}

/* Allocates, fills and advises device i's managed memory. */
static int udev_fill(vram_uvm_pager *p, uint32_t i)
{
	struct udev *u = &p->dev[i];
	const char *name = p->l->client->dev[u->bdev].name;
	char s1[32], s2[32];
	CUresult cr;
	int r;

	if ((r = cuda_dev_push(u->d)) < 0)
		return r;
#define FAIL(call) (r = cuda_dev_error(u->d, cr, call, "UVM pager on %s", name))
	size_t free_b = 0, total_b = 0;
	cr = u->cu->MemGetInfo(&free_b, &total_b);
	if (cr != CUDA_SUCCESS) {
		FAIL("cuMemGetInfo");
		goto pop;
	}
	if (u->bytes > free_b) {
		r = rt_error(-ENOMEM, "UVM pager: the donor layers computed on %s take %s of managed memory, "
			     "more than the %s the card has free", name, size_format(u->bytes, s1, sizeof(s1)),
			     size_format(free_b, s2, sizeof(s2)));
		goto pop;
	}
	if (u->bytes > SIZE_MAX) {
		r = rt_error(-EOVERFLOW, "UVM pager: %llu bytes", (unsigned long long)u->bytes);
		goto pop;
	}
	cr = u->cu->StreamCreate(&u->stream, CU_STREAM_NON_BLOCKING);
	if (cr != CUDA_SUCCESS) {
		u->stream = NULL;
		FAIL("cuStreamCreate");
		goto pop;
	}
	cr = u->cu->MemAllocManaged(&u->base, (size_t)u->bytes, CU_MEM_ATTACH_GLOBAL);
	if (cr != CUDA_SUCCESS) {
		u->base = 0;
		FAIL("cuMemAllocManaged");
		goto pop;
	}
	/* Advice before the first touch: the CPU's writes below then place
	 * the pages in host memory, where they are meant to live. */
	CUmemLocation host = { .type = CU_MEM_LOCATION_TYPE_HOST, .id = 0 };
	CUmemLocation gpu = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = cuda_dev_ordinal(u->d) };
	cr = u->cu->MemAdvise(u->base, (size_t)u->bytes, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, host);
	if (cr != CUDA_SUCCESS) {
		FAIL("cuMemAdvise(SET_PREFERRED_LOCATION)");
		goto pop;
	}
	cr = u->cu->MemAdvise(u->base, (size_t)u->bytes, CU_MEM_ADVISE_SET_ACCESSED_BY, gpu);
	if (cr != CUDA_SUCCESS) {
		FAIL("cuMemAdvise(SET_ACCESSED_BY)");
		goto pop;
	}
	for (uint32_t li = 0; li < p->nlayers; li++) {
		struct ulayer *L = &p->layers[li];
		if (!L->managed || L->dev != (int)i)
			continue;
		cr = u->cu->EventCreate(&L->ev, CU_EVENT_DISABLE_TIMING);
		if (cr != CUDA_SUCCESS) {
			L->ev = NULL;
			FAIL("cuEventCreate");
			goto pop;
		}
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++) {
			uint64_t nb = vram_loaded_tensor_nbytes(p->l, t);
			if (nb && p->toff[t] != UINT64_MAX)
				memcpy((char *)(uintptr_t)(u->base + L->off + p->toff[t]),
				       vram_loaded_tensor_host_ptr(p->l, t), (size_t)nb);
		}
	}
#undef FAIL
	r = 0;
pop:
	cuda_dev_pop(u->d);
	return r;
}

int vram_uvm_pager_create(vram_loaded *l, const vram_plan *plan, uint32_t depth, vram_uvm_pager **ret)
{
	int r;

	rt_error_clear();
	if (depth > MAX_DEPTH)
		return rt_error(-EINVAL, "prefetch depth %u is more than %u", depth, MAX_DEPTH);
	vram_uvm_pager *p = calloc(1, sizeof(*p));
	if (!p)
		return rt_error(-ENOMEM, "out of memory");
	pthread_mutex_init(&p->mu, NULL);
	p->l = l;
	p->depth = depth;
	int nl = vram_model_layer_count(l->model);
	p->nlayers = nl < 0 ? 0 : (uint32_t)nl;
	p->layers = calloc(p->nlayers + 1, sizeof(*p->layers));
	p->toff = calloc(l->ntensors + 1, sizeof(*p->toff));
	p->tlayer = calloc(l->ntensors + 1, sizeof(*p->tlayer));
	if (!p->layers || !p->toff || !p->tlayer) {
		vram_uvm_pager_free(p);
		return rt_error(-ENOMEM, "out of memory");
	}

	vram_client *c = l->client;
	int cdev[VRAM_COMP_COUNT];
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		int pd = vram_plan_compute_device(plan, k);
		cdev[k] = pd < 0 ? -1 : vram_device_find(c, vram_plan_device_name(plan, (uint32_t)pd));
		if (cdev[k] >= 0 && c->dev[cdev[k]].backend != VRAM_BACKEND_CUDA)
			cdev[k] = -1; /* CPU or simulated compute: nothing managed */
	}
	for (uint32_t li = 0; li < p->nlayers; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(l->model, li, &info);
		struct ulayer *L = &p->layers[li];
		L->first = info.first_tensor;
		L->ntensors = info.ntensors;
		int compute = cdev[info.component];
		/* A layer the plan split between devices (it places modules):
		 * its part off the compute device is managed, its part on it
		 * stays where it is (toff UINT64_MAX). */
		int home = L->ntensors ? vram_loaded_tensor_device(l, L->first) : -1;
		for (uint32_t t = L->first; home == compute && t < L->first + L->ntensors; t++)
			home = vram_loaded_tensor_device(l, t);
		uint64_t packed = 0;
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++) {
			p->tlayer[t] = li;
			p->toff[t] = UINT64_MAX;
			if (compute >= 0 && vram_loaded_tensor_device(l, t) == compute)
				continue;
			packed = align_to(packed, TENSOR_ALIGN);
			p->toff[t] = packed;
			packed += vram_loaded_tensor_nbytes(l, t); /* as loaded (maybe converted) */
		}
		L->bytes = packed;
		L->dev = home;
		if (compute < 0 || home == compute || !packed)
			continue;
		if (home < 0) {
			vram_uvm_pager_free(p);
			return rt_error(-EINVAL, "UVM pager: layer %s is in no memory (dropped by reclaim)", info.name);
		}
		for (uint32_t t = L->first; t < L->first + L->ntensors; t++)
			if (p->toff[t] != UINT64_MAX && !vram_loaded_tensor_host_ptr(l, t)) {
				struct vram_device_info di = { .struct_size = sizeof(di) };
				vram_device_info(c, (uint32_t)home, &di);
				vram_uvm_pager_free(p);
				return rt_error(-EINVAL, "UVM pager: donor layer %s is on %s, which is not "
						"host-mappable", info.name, di.name);
			}
		r = udev_get(p, (uint32_t)compute);
		if (r < 0) {
			vram_uvm_pager_free(p);
			return r;
		}
		struct udev *u = &p->dev[r];
		L->managed = true;
		L->dev = r;
		L->off = u->bytes;
		u->bytes = align_to(u->bytes + packed, LAYER_ALIGN);
	}
	for (uint32_t i = 0; i < p->ndev; i++) {
		r = udev_fill(p, i);
		if (r < 0) {
			vram_uvm_pager_free(p); /* keeps the message */
			return r;
		}
	}
	*ret = p;
	return 0;
}

/* Queues layer li's prefetch unless it is queued.  Called with p->mu held
 * and the layer's device context current. */
static int queue(vram_uvm_pager *p, uint32_t li)
{
	struct ulayer *L = &p->layers[li];
	struct udev *u = &p->dev[L->dev];
	if (L->queued)
		return 0;
	CUmemLocation gpu = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = cuda_dev_ordinal(u->d) };
	CUresult cr = u->cu->MemPrefetchAsync(u->base + L->off, (size_t)L->bytes, gpu, 0, u->stream);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(u->d, cr, "cuMemPrefetchAsync", "prefetching layer %u", li);
	cr = u->cu->EventRecord(L->ev, u->stream);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(u->d, cr, "cuEventRecord", "prefetching layer %u", li);
	L->queued = true;
	return 0;
}

int vram_uvm_pager_acquire(vram_uvm_pager *p, uint32_t layer)
{
	int r = 0;

	rt_error_clear();
	if (layer >= p->nlayers)
		return rt_error(-EINVAL, "no layer %u", layer);
	pthread_mutex_lock(&p->mu);
	struct ulayer *L = &p->layers[layer];
	if (!L->managed) {
		L->refs++;
		goto out;
	}
	struct udev *u = &p->dev[L->dev];
	if ((r = cuda_dev_push(u->d)) < 0)
		goto out;
	if ((r = queue(p, layer)) < 0)
		goto pop;
	/* The next donor layers in layer order (wrapping: passes repeat), on
	 * whichever device each is computed. */
	uint32_t ahead = 0;
	for (uint32_t k = 1; k < p->nlayers && ahead < p->depth; k++) {
		uint32_t j = (layer + k) % p->nlayers;
		if (!p->layers[j].managed)
			continue;
		ahead++;
		struct udev *v = &p->dev[p->layers[j].dev];
		if (v != u && (r = cuda_dev_push(v->d)) < 0)
			goto pop;
		r = queue(p, j);
		if (v != u)
			cuda_dev_pop(v->d);
		if (r < 0)
			goto pop;
	}
	CUresult cr = u->cu->EventSynchronize(L->ev);
	if (cr != CUDA_SUCCESS) {
		r = cuda_dev_error(u->d, cr, "cuEventSynchronize", "prefetching layer %u", layer);
		goto pop;
	}
	L->refs++;
pop:
	cuda_dev_pop(u->d);
out:
	pthread_mutex_unlock(&p->mu);
	return r;
}

int vram_uvm_pager_release(vram_uvm_pager *p, uint32_t layer)
{
	rt_error_clear();
	if (layer >= p->nlayers)
		return rt_error(-EINVAL, "no layer %u", layer);
	pthread_mutex_lock(&p->mu);
	struct ulayer *L = &p->layers[layer];
	if (L->refs == 0) {
		pthread_mutex_unlock(&p->mu);
		return rt_error(-EINVAL, "layer %u is not acquired", layer);
	}
	/* Once released the driver may move the pages back to the host under
	 * pressure: the next acquire prefetches again (cheap when they stayed). */
	if (--L->refs == 0)
		L->queued = false;
	pthread_mutex_unlock(&p->mu);
	return 0;
}

uint64_t vram_uvm_tensor_device_ptr(const vram_uvm_pager *p, uint32_t tensor)
{
	if (tensor >= p->l->ntensors)
		return 0;
	const struct ulayer *L = &p->layers[p->tlayer[tensor]];
	if (L->refs == 0)
		return 0;
	if (!L->managed || p->toff[tensor] == UINT64_MAX)
		return vram_loaded_tensor_device_ptr(p->l, tensor);
	return p->dev[L->dev].base + L->off + p->toff[tensor];
}
