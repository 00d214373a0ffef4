/* SPDX-License-Identifier: MIT */
/*
 * Stream-ordered releases (vram_pager_release_on_stream): a layer released
 * on a CUDA stream counts as released at once, but the memory its kernels
 * read (its window slot, or its resident chunk) is not reused, moved or
 * given back until an event recorded on that stream at release has
 * completed.  pick_slot and the reclaim code ask pager_fence_pending; an
 * acquire that finds nothing else waits for the oldest fence.
 *
 * The events are of the compute device's primary context (the one PyTorch
 * uses), made at a fence's first record and kept until the pager is freed.
 * Asking whether one has completed (cuEventQuery) and waiting for it
 * (cuEventSynchronize) need no current context.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/cuda-api.h"
#include "runtime/cuda-copy.h"
#include "runtime/pager.h"

/* Device dev's handle for fences (taken once per pager).  0 or -errno
 * with the message set.  mu held. */
static int fence_device(struct vram_pager *p, uint32_t dev, struct cuda_dev **ret)
{
	if (dev >= VRAMD_MAX_DEVICES)
		return rt_error(-EINVAL, "no device %u", dev);
	if (!p->fence_dev[dev]) {
		int r = cuda_dev_get(p->c, dev, &p->fence_dev[dev]);
		if (r < 0)
			return r;
	}
	*ret = p->fence_dev[dev];
	return 0;
}

/* Makes f's event one of dev (a fence moves with its slot's memory: a
 * slot re-cut on another device gets a new event).  mu held; dropped while
 * a waiter still holds the old event. */
static int fence_event(struct vram_pager *p, struct pfence *f, uint32_t dev, struct cuda_dev *d)
{
	const struct cuda_api *cu = cuda_dev_api(d);
	if (f->ev && f->dev == dev)
		return 0;
	while (f->waiters)
		pthread_cond_wait(&p->cv, &p->mu);
	if (f->ev && p->fence_dev[f->dev])
		cuda_dev_api(p->fence_dev[f->dev])->EventDestroy((CUevent)f->ev);
	f->ev = NULL;
	f->pending = false;
	CUevent ev;
	CUresult cr = cu->EventCreate(&ev, CU_EVENT_DISABLE_TIMING);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(d, cr, "cuEventCreate", "releasing on a stream of %s", p->c->dev[dev].name);
	f->ev = ev;
	f->dev = dev;
	return 0;
}

int pager_fence_record(struct vram_pager *p, struct pfence *f, uint32_t dev, void *stream)
{
	struct cuda_dev *d = NULL;
	int r = fence_device(p, dev, &d);
	if (r < 0)
		return r;
	const struct cuda_api *cu = cuda_dev_api(d);
	if ((r = cuda_dev_push(d)) < 0)
		return r;
	if ((r = fence_event(p, f, dev, d)) < 0) {
		cuda_dev_pop(d);
		return r;
	}
	CUresult cr = CUDA_SUCCESS;
	/* Still pending from another stream: this stream waits for it, so
	 * that the event recorded next completes after both. */
	if (pager_fence_pending(p, f) && f->stream != stream)
		cr = cu->StreamWaitEvent((CUstream)stream, (CUevent)f->ev, 0);
	if (cr != CUDA_SUCCESS)
		r = cuda_dev_error(d, cr, "cuStreamWaitEvent", "releasing on a stream of %s", p->c->dev[dev].name);
	else if ((cr = cu->EventRecord((CUevent)f->ev, (CUstream)stream)) != CUDA_SUCCESS)
		r = cuda_dev_error(d, cr, "cuEventRecord", "releasing on a stream of %s", p->c->dev[dev].name);
	cuda_dev_pop(d);
	if (r < 0)
		return r;
	f->pending = true;
	f->stream = stream;
	return 0;
}

bool pager_fence_pending(struct vram_pager *p, struct pfence *f)
{
	if (!f->pending)
		return false;
	if (!f->ev || !p->fence_dev[f->dev] ||
	    cuda_dev_api(p->fence_dev[f->dev])->EventQuery((CUevent)f->ev) != CUDA_ERROR_NOT_READY)
		f->pending = false; /* complete (or the context is gone: nothing runs) */
	return f->pending;
}

void pager_fence_wait(struct vram_pager *p, struct pfence *f)
{
	if (!pager_fence_pending(p, f))
		return;
	const struct cuda_api *cu = cuda_dev_api(p->fence_dev[f->dev]);
	CUevent ev = f->ev;
	f->waiters++;
	pthread_mutex_unlock(&p->mu);
	cu->EventSynchronize(ev); /* an error: pager_fence_pending says complete */
	pthread_mutex_lock(&p->mu);
	f->waiters--;
	pager_fence_pending(p, f);
	pthread_cond_broadcast(&p->cv);
}

/* Waits for f and destroys its event.  No thread running. */
static void fence_free(struct vram_pager *p, struct pfence *f)
{
	if (!f->ev || !p->fence_dev[f->dev])
		return;
	const struct cuda_api *cu = cuda_dev_api(p->fence_dev[f->dev]);
	if (f->pending)
		cu->EventSynchronize((CUevent)f->ev);
	cu->EventDestroy((CUevent)f->ev);
	f->ev = NULL;
	f->pending = false;
}

void pager_fences_free(struct vram_pager *p)
{
	for (uint32_t i = 0; i < MAX_SLOTS; i++)
		fence_free(p, &p->slot_fence[i]);
	for (uint32_t gi = 0; p->chunk_fence && gi < p->l->ngrants; gi++)
		fence_free(p, &p->chunk_fence[gi]);
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		cuda_dev_put(p->fence_dev[d]);
		p->fence_dev[d] = NULL;
	}
}
