/* SPDX-License-Identifier: MIT */
/*
 * Copies to and from CUDA grants, and pinning of host memory.
 *
 * A copier is one non-blocking stream (it never waits for, or holds up, the
 * legacy default stream PyTorch may use) and one event per staging slot.
 * copy() queues cuMemcpyHtoDAsync and records the slot's event after it, so
 * wait(slot) blocks only on the copies out of that slot, in stream order; the
 * streaming engine keeps reading into the other slots meanwhile.  The copy is
 * DMA (and truly asynchronous) when the source is pinned: staging slots and
 * cpu-pool grants pinned with cuda_pin().
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/cuda-copy.h"
#include "runtime/cuda-kernels.h"
#include "runtime/dtype.h"

struct cuda_copier {
	struct cuda_dev *d;
	const struct cuda_api *cu;
	CUstream stream;
	uint32_t nslots;
	CUevent *ev;
	bool *pending;          /* slot has copies not waited for */
	struct cuda_kernels *k; /* taken at the first conversion */
};

/* ======================================================================
 * Copier
 * ====================================================================== */

static void copier_destroy(struct cuda_copier *cp, bool pushed)
{
	const struct cuda_api *cu = cp->cu;
	if (cp->stream)
		cu->StreamSynchronize(cp->stream);
	for (uint32_t i = 0; cp->ev && i < cp->nslots; i++)
		if (cp->ev[i])
			cu->EventDestroy(cp->ev[i]);
	if (cp->stream)
		cu->StreamDestroy(cp->stream);
	if (pushed)
		cuda_dev_pop(cp->d);
	cuda_kernels_put(cp->k); /* its kernels ran on the stream synchronised above */
	cuda_dev_put(cp->d);
	free(cp->ev);
	free(cp->pending);
	free(cp);
}

int cuda_copier_new(struct vram_client *c, uint32_t device, uint32_t nslots, struct cuda_copier **ret)
{
	CUresult cr;
	int r;

	if (nslots == 0 || nslots > CUDA_COPIER_MAX_SLOTS)
		return rt_error(-EINVAL, "copier with %u slots (1..%u)", nslots, CUDA_COPIER_MAX_SLOTS);
	struct cuda_copier *cp = calloc(1, sizeof(*cp));
	if (!cp)
		return rt_error(-ENOMEM, "out of memory");
	cp->nslots = nslots;
	cp->ev = calloc(nslots, sizeof(*cp->ev));
	cp->pending = calloc(nslots, sizeof(*cp->pending));
	if (!cp->ev || !cp->pending) {
		free(cp->ev);
		free(cp->pending);
		free(cp);
		return rt_error(-ENOMEM, "out of memory");
	}
	r = cuda_dev_get(c, device, &cp->d);
	if (r < 0) {
		free(cp->ev);
		free(cp->pending);
		free(cp);
		return r;
	}
	cp->cu = cuda_dev_api(cp->d);
	if ((r = cuda_dev_push(cp->d)) < 0) {
		copier_destroy(cp, false);
		return r;
	}
	cr = cp->cu->StreamCreate(&cp->stream, CU_STREAM_NON_BLOCKING);
	if (cr != CUDA_SUCCESS) {
		cp->stream = NULL;
		r = cuda_dev_error(cp->d, cr, "cuStreamCreate", "copier on %s", c->dev[device].name);
		copier_destroy(cp, true);
		return r;
	}
	for (uint32_t i = 0; i < nslots; i++) {
		cr = cp->cu->EventCreate(&cp->ev[i], CU_EVENT_DISABLE_TIMING);
		if (cr != CUDA_SUCCESS) {
			cp->ev[i] = NULL;
			r = cuda_dev_error(cp->d, cr, "cuEventCreate", "copier on %s", c->dev[device].name);
			copier_destroy(cp, true);
			return r;
		}
	}
	cuda_dev_pop(cp->d);
	*ret = cp;
	return 0;
}

void cuda_copier_free(struct cuda_copier *cp)
{
	if (!cp)
		return;
	copier_destroy(cp, cuda_dev_push(cp->d) == 0);
}

/* Records slot's event after what was just queued. */
static int record(struct cuda_copier *cp, uint32_t slot)
{
	CUresult cr = cp->cu->EventRecord(cp->ev[slot], cp->stream);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(cp->d, cr, "cuEventRecord", "copy slot %u", slot);
	cp->pending[slot] = true;
	return 0;
}

static int check_slot(const struct cuda_copier *cp, uint32_t slot, uint64_t len)
{
	if (slot >= cp->nslots)
		return rt_error(-EINVAL, "copy slot %u of %u", slot, cp->nslots);
	if (len > SIZE_MAX)
		return rt_error(-EOVERFLOW, "copy of %llu bytes", (unsigned long long)len);
	return 0;
}

int cuda_copier_copy(void *user, uint64_t dst_addr, const void *src, uint64_t len, uint32_t slot)
{
	struct cuda_copier *cp = user;
	int r = check_slot(cp, slot, len);
	if (r < 0 || len == 0)
		return r;
	if ((r = cuda_dev_push(cp->d)) < 0)
		return r;
	CUresult cr = cp->cu->MemcpyHtoDAsync((CUdeviceptr)dst_addr, src, (size_t)len, cp->stream);
	if (cr != CUDA_SUCCESS)
		r = cuda_dev_error(cp->d, cr, "cuMemcpyHtoDAsync", "copy of %llu bytes to 0x%llx",
				   (unsigned long long)len, (unsigned long long)dst_addr);
	else
		r = record(cp, slot);
	cuda_dev_pop(cp->d);
	return r;
}

int cuda_copier_dtod(struct cuda_copier *cp, uint64_t dst_addr, uint64_t src_addr, uint64_t len,
		     uint32_t slot)
{
	int r = check_slot(cp, slot, len);
	if (r < 0 || len == 0)
		return r;
	if ((r = cuda_dev_push(cp->d)) < 0)
		return r;
	CUresult cr = cp->cu->MemcpyDtoDAsync((CUdeviceptr)dst_addr, (CUdeviceptr)src_addr, (size_t)len, cp->stream);
	if (cr != CUDA_SUCCESS)
		r = cuda_dev_error(cp->d, cr, "cuMemcpyDtoDAsync", "copy of %llu bytes 0x%llx -> 0x%llx",
				   (unsigned long long)len, (unsigned long long)src_addr,
				   (unsigned long long)dst_addr);
	else
		r = record(cp, slot);
	cuda_dev_pop(cp->d);
	return r;
}

int cuda_copier_cast(struct cuda_copier *cp, uint64_t dst, uint32_t dst_dtype, uint64_t scratch,
		     const void *src, uint32_t src_dtype, uint64_t n, uint32_t slot)
{
	uint64_t len = n * (dtype_size(src_dtype));
	int r = check_slot(cp, slot, len);
	if (r < 0 || n == 0)
		return r;
	/* the copier keeps the kernels loaded while it lives: a load need not
	 * have prepared the device (vram_device_prepare) to convert on it */
	if (!cp->k && (r = cuda_kernels_get(cp->d, &cp->k)) < 0)
		return r;
	if ((r = cuda_dev_push(cp->d)) < 0)
		return r;
	CUresult cr = cp->cu->MemcpyHtoDAsync((CUdeviceptr)scratch, src, (size_t)len, cp->stream);
	if (cr != CUDA_SUCCESS)
		r = cuda_dev_error(cp->d, cr, "cuMemcpyHtoDAsync", "copy of %llu bytes to scratch 0x%llx",
				   (unsigned long long)len, (unsigned long long)scratch);
	else if ((r = cuda_cast_launch(cp->d, cp->stream, dst, dst_dtype, scratch, src_dtype, n, 0)) == 0)
		r = record(cp, slot);
	else
		record(cp, slot); /* the copy was queued: wait(slot) must cover it */
	cuda_dev_pop(cp->d);
	return r;
}

int cuda_copier_dtoh(struct cuda_copier *cp, void *dst, uint64_t src_addr, uint64_t len, uint32_t slot)
{
	int r = check_slot(cp, slot, len);
	if (r < 0 || len == 0)
		return r;
	if ((r = cuda_dev_push(cp->d)) < 0)
		return r;
	CUresult cr = cp->cu->MemcpyDtoHAsync(dst, (CUdeviceptr)src_addr, (size_t)len, cp->stream);
	if (cr != CUDA_SUCCESS)
		r = cuda_dev_error(cp->d, cr, "cuMemcpyDtoHAsync", "copy of %llu bytes from 0x%llx",
				   (unsigned long long)len, (unsigned long long)src_addr);
	else
		r = record(cp, slot);
	cuda_dev_pop(cp->d);
	return r;
}

int cuda_copier_wait(void *user, uint32_t slot)
{
	struct cuda_copier *cp = user;
	if (slot >= cp->nslots)
		return rt_error(-EINVAL, "copy slot %u of %u", slot, cp->nslots);
	if (!cp->pending[slot])
		return 0;
	/* Cleared first: a failed copy is reported once, not at every wait. */
	cp->pending[slot] = false;
	CUresult cr = cp->cu->EventSynchronize(cp->ev[slot]);
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(cp->d, cr, "cuEventSynchronize", "waiting for copy slot %u", slot);
	return 0;
}

int cuda_copier_sync(struct cuda_copier *cp)
{
	CUresult cr = cp->cu->StreamSynchronize(cp->stream);
	for (uint32_t i = 0; i < cp->nslots; i++)
		cp->pending[i] = false;
	if (cr != CUDA_SUCCESS)
		return cuda_dev_error(cp->d, cr, "cuStreamSynchronize", "copier");
	return 0;
}

CUstream cuda_copier_stream(const struct cuda_copier *cp)
{
	return cp->stream;
}

uint32_t cuda_copier_slots(const struct cuda_copier *cp)
{
	return cp->nslots;
}

void cuda_copier_sink(struct cuda_copier *cp, struct stream_sink *ret)
{
	ret->copy = cuda_copier_copy;
	ret->wait = cuda_copier_wait;
	ret->user = cp;
	ret->cast = NULL;
}

/* ======================================================================
 * Sink over several devices
 * ====================================================================== */

struct sink_range {
	uint64_t start, end;
	uint32_t device;
};

struct cuda_sink {
	struct vram_client *c;
	uint32_t nslots;
	struct cuda_copier *cp[VRAMD_MAX_DEVICES];
	uint32_t *used;          /* per slot: bit d = copier d has copies in it */
	struct sink_range *ranges;
	size_t nranges, cap;
	size_t last;             /* range of the previous copy (copies come in runs) */
	uint64_t slot_size;      /* conversion scratch per device; 0: no conversions */
	struct vram_grant *scratch[VRAMD_MAX_DEVICES];
};

_Static_assert(VRAMD_MAX_DEVICES <= 32, "device mask fits a uint32_t");

int cuda_sink_new(struct vram_client *c, uint32_t nslots, struct cuda_sink **ret)
{
	if (nslots == 0 || nslots > CUDA_COPIER_MAX_SLOTS)
		return rt_error(-EINVAL, "sink with %u slots (1..%u)", nslots, CUDA_COPIER_MAX_SLOTS);
	struct cuda_sink *s = calloc(1, sizeof(*s));
	if (!s)
		return rt_error(-ENOMEM, "out of memory");
	s->used = calloc(nslots, sizeof(*s->used));
	if (!s->used) {
		free(s);
		return rt_error(-ENOMEM, "out of memory");
	}
	s->c = c;
	s->nslots = nslots;
	*ret = s;
	return 0;
}

int cuda_sink_add_grant(struct cuda_sink *s, const struct vram_grant *g)
{
	int r;
	if (!g->cuda || !g->dptr || g->device >= VRAMD_MAX_DEVICES)
		return rt_error(-EINVAL, "grant %llu is not an imported CUDA grant", (unsigned long long)g->id);
	if (!s->cp[g->device]) {
		r = cuda_copier_new(s->c, g->device, s->nslots, &s->cp[g->device]);
		if (r < 0)
			return r;
	}
	if (s->nranges == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 16;
		struct sink_range *n = realloc(s->ranges, ncap * sizeof(*n));
		if (!n)
			return rt_error(-ENOMEM, "out of memory");
		s->ranges = n;
		s->cap = ncap;
	}
	s->ranges[s->nranges++] = (struct sink_range){ g->dptr, g->dptr + g->size, g->device };
	return 0;
}

/* The added grant that holds [dst_addr, dst_addr + len), or NULL. */
static const struct sink_range *sink_find(struct cuda_sink *s, uint64_t dst_addr, uint64_t len)
{
	const struct sink_range *rg = NULL;
	if (s->last < s->nranges && dst_addr >= s->ranges[s->last].start && dst_addr < s->ranges[s->last].end)
		rg = &s->ranges[s->last];
	for (size_t i = 0; !rg && i < s->nranges; i++)
		if (dst_addr >= s->ranges[i].start && dst_addr < s->ranges[i].end) {
			rg = &s->ranges[i];
			s->last = i;
		}
	return rg && len <= rg->end - dst_addr ? rg : NULL;
}

static int sink_copy(void *user, uint64_t dst_addr, const void *src, uint64_t len, uint32_t slot)
{
	struct cuda_sink *s = user;
	if (slot >= s->nslots)
		return rt_error(-EINVAL, "copy slot %u of %u", slot, s->nslots);
	const struct sink_range *rg = sink_find(s, dst_addr, len);
	if (!rg)
		return rt_error(-EFAULT, "copy of %llu bytes to 0x%llx: not inside a CUDA grant of this load",
				(unsigned long long)len, (unsigned long long)dst_addr);
	int r = cuda_copier_copy(s->cp[rg->device], dst_addr, src, len, slot);
	if (r == 0 && len)
		s->used[slot] |= 1u << rg->device;
	return r;
}

static int sink_cast(void *user, uint64_t dst_addr, uint32_t dst_dtype, const void *src, uint32_t src_dtype,
		     uint64_t n, uint64_t slot_off, uint32_t slot)
{
	struct cuda_sink *s = user;
	uint64_t sb = n * (dtype_size(src_dtype)), db = n * (dtype_size(dst_dtype));
	if (slot >= s->nslots)
		return rt_error(-EINVAL, "copy slot %u of %u", slot, s->nslots);
	if (!s->slot_size || slot_off > s->slot_size || sb > s->slot_size - slot_off)
		return rt_error(-EINVAL, "conversion of %llu bytes at %llu into slot %u: %s",
				(unsigned long long)sb, (unsigned long long)slot_off, slot,
				s->slot_size ? "past the scratch" : "the sink has no scratch");
	const struct sink_range *rg = sink_find(s, dst_addr, db);
	if (!rg)
		return rt_error(-EFAULT, "conversion of %llu elements to 0x%llx: not inside a CUDA grant of this load",
				(unsigned long long)n, (unsigned long long)dst_addr);
	uint32_t d = rg->device;
	if (!s->scratch[d]) {
		int r = vram_alloc(s->c, d, s->slot_size, 0, &s->scratch[d]);
		if (r < 0)
			return rt_error(r, "device scratch for conversions on %s: %s", s->c->dev[d].name,
					vram_last_error());
	}
	/* One scratch buffer per device serves every conversion: the copy
	 * into it and the kernel out of it run in the order of the copier's
	 * stream, so the next copy starts after the last kernel has read it.
	 * Its start is aligned for any element, whatever the file offset. */
	uint64_t scratch = vram_grant_device_ptr(s->scratch[d]);
	int r = cuda_copier_cast(s->cp[d], dst_addr, dst_dtype, scratch, src, src_dtype, n, slot);
	if (n)
		s->used[slot] |= 1u << d; /* also after a failure: the copy may be queued */
	return r;
}

static int sink_wait(void *user, uint32_t slot)
{
	struct cuda_sink *s = user;
	int ret = 0;
	if (slot >= s->nslots)
		return rt_error(-EINVAL, "copy slot %u of %u", slot, s->nslots);
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		if (!(s->used[slot] & (1u << d)))
			continue;
		int r = cuda_copier_wait(s->cp[d], slot);
		if (r < 0 && ret == 0)
			ret = r;
	}
	s->used[slot] = 0;
	return ret;
}

void cuda_sink_get(struct cuda_sink *s, struct stream_sink *ret)
{
	ret->copy = sink_copy;
	ret->wait = sink_wait;
	ret->user = s;
	ret->cast = s->slot_size ? sink_cast : NULL;
}

void cuda_sink_cast_scratch(struct cuda_sink *s, uint64_t slot_size)
{
	s->slot_size = slot_size;
}

void cuda_sink_free(struct cuda_sink *s)
{
	struct rt_saved_error e;
	if (!s)
		return;
	rt_error_save(&e);
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++)
		cuda_copier_free(s->cp[d]); /* waits for its stream */
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++)
		if (s->scratch[d])
			vram_free(s->c, s->scratch[d]);
	free(s->ranges);
	free(s->used);
	free(s);
	rt_error_restore(&e);
}

/* ======================================================================
 * Pinning
 * ====================================================================== */

struct cuda_pin {
	struct cuda_dev *d;
	char *host;
	uint64_t len;
	uint64_t chunk;
	uint64_t nchunks;
};

static size_t chunk_len(const struct cuda_pin *p, uint64_t i)
{
	uint64_t off = i * p->chunk;
	return (size_t)MIN(p->chunk, p->len - off);
}

/* Unregisters chunks [0, n).  Called with the context pushed. */
static void unregister_chunks(struct cuda_pin *p, uint64_t n)
{
	const struct cuda_api *cu = cuda_dev_api(p->d);
	for (uint64_t i = 0; i < n; i++)
		cu->MemHostUnregister(p->host + i * p->chunk);
}

int cuda_pin(struct vram_client *c, uint32_t device, void *host, uint64_t len, uint64_t chunk,
	     struct cuda_pin **ret)
{
	long page = sysconf(_SC_PAGESIZE);
	int r, overflow = 0;

	if (!host || len == 0 || (page > 0 && (uintptr_t)host % (uintptr_t)page))
		return rt_error(-EINVAL, "pinning %p (%llu bytes): not a page-aligned range", host,
				(unsigned long long)len);
	if (len > SIZE_MAX || (uintptr_t)host + len < (uintptr_t)host)
		return rt_error(-EOVERFLOW, "pinning %llu bytes", (unsigned long long)len);
	if (chunk == 0 || chunk >= len)
		chunk = len;
	else
		/* page-rounded only: a staging ring pinned one slot per chunk
		 * must not have registrations straddling slots (a copy that
		 * spans two registrations runs as pageable) */
		chunk = round_up_u64(chunk, page > 0 ? (uint64_t)page : 4096u, &overflow);
	if (overflow || chunk == 0 || chunk > len)
		chunk = len;
	struct cuda_pin *p = calloc(1, sizeof(*p));
	if (!p)
		return rt_error(-ENOMEM, "out of memory");
	p->host = host;
	p->len = len;
	p->chunk = chunk;
	p->nchunks = (len + chunk - 1) / chunk;
	r = cuda_dev_get(c, device, &p->d);
	if (r < 0) {
		free(p);
		return r;
	}
	if ((r = cuda_dev_push(p->d)) < 0) {
		cuda_dev_put(p->d);
		free(p);
		return r;
	}
	const struct cuda_api *cu = cuda_dev_api(p->d);
	for (uint64_t i = 0; i < p->nchunks; i++) {
		CUresult cr = cu->MemHostRegister(p->host + i * p->chunk, chunk_len(p, i), CU_MEMHOSTREGISTER_PORTABLE);
		if (cr != CUDA_SUCCESS) {
			r = cuda_dev_error(p->d, cr, "cuMemHostRegister", "pinning %llu bytes at %p (chunk %llu of %llu)",
					   (unsigned long long)len, host, (unsigned long long)i,
					   (unsigned long long)p->nchunks);
			unregister_chunks(p, i);
			cuda_dev_pop(p->d);
			cuda_dev_put(p->d);
			free(p);
			return r;
		}
	}
	cuda_dev_pop(p->d);
	*ret = p;
	return 0;
}

void cuda_unpin(struct cuda_pin *p)
{
	struct rt_saved_error e;
	if (!p)
		return;
	rt_error_save(&e);
	bool pushed = cuda_dev_push(p->d) == 0;
	unregister_chunks(p, p->nchunks);
	if (pushed)
		cuda_dev_pop(p->d);
	cuda_dev_put(p->d);
	free(p);
	rt_error_restore(&e);
}
