/* SPDX-License-Identifier: MIT */
/*
 * The loader: a parsed checkpoint plus a placement plan become broker
 * grants filled from the file by the streaming engine.
 *
 * Layout.  For every (device, component) pair the tensors placed there are
 * sorted by file offset and cut into runs that are contiguous in the file.
 * Each run gets its own region of one grant, laid out as a window of the
 * file: the region starts on a 4 KiB boundary and the run begins at the same
 * offset modulo 4 KiB as in the file, with the slack before and after it
 * inside the region.  So an O_DIRECT read of the run's aligned superset can
 * land straight in host memory (no bounce copy), and tensors keep the
 * alignment they have in the file (8 bytes or better for files written by
 * the reference library).  The cost is at most 8 KiB per run.
 *
 * That layout is for host memory.  On GPUs (simulated or CUDA), which are
 * reached through a ring of staging buffers taken from the cpu pool and an
 * onward copy (memcpy for simulated GPUs, async H2D for CUDA), every tensor
 * is placed on its own at a LAYOUT_TENSOR_ALIGN boundary instead: files need not
 * align tensors to their elements, and GPU kernels (ours and PyTorch's)
 * need that alignment.  cpu-pool grants are written directly (HOST
 * requests; warm, through the memfd: stream.h STREAM_REQ_FD).
 *
 * Conversion (cast_to): a converted tensor is a run of its own, in a region
 * of its converted size (LAYOUT_TENSOR_ALIGN-aligned), and always goes through
 * staging: the sink converts (kernels/ C references into host-visible
 * memory, through a table for 8- and 16-bit sources; for CUDA, an H2D copy
 * into one device scratch buffer and the cast kernel from there, both on
 * the copy stream).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/cleanup.h"
#include "common/layout.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
#include "runtime/cuda-kernels.h"
#include "runtime/dtype.h"
#include "runtime/load.h"
#include "runtime/model.h"
#include "runtime/stream.h"
#include "kernels/kernels.h"

void vram_load_options_init(struct vram_load_options *o)
{
	memset(o, 0, sizeof(*o));
	o->struct_size = sizeof(*o);
	o->io_mode = VRAM_IO_AUTO;
}

struct run {
	uint64_t file_off, len;
	uint32_t first, count;   /* into the bucket's tensor list */
	uint64_t region;         /* region offset in the grant */
	bool solo;               /* one tensor, LAYOUT_TENSOR_ALIGN-aligned (staged) */
};

/* Tensors ordered by bucket (device, component, chunk), then file offset:
 * each bucket becomes one grant, laid out in file order. */
struct bucket_key {
	const uint32_t *dev, *comp, *chunk;
	const uint64_t *off;
};

static int cmp_bucket(const void *a, const void *b, void *arg)
{
	const struct bucket_key *k = arg;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	if (k->dev[x] != k->dev[y])
		return k->dev[x] < k->dev[y] ? -1 : 1;
	if (k->comp[x] != k->comp[y])
		return k->comp[x] < k->comp[y] ? -1 : 1;
	if (k->chunk[x] != k->chunk[y])
		return k->chunk[x] < k->chunk[y] ? -1 : 1;
	return k->off[x] < k->off[y] ? -1 : k->off[x] > k->off[y];
}

/* Onward copy for simulated GPUs: the grant is host memory in disguise. */
static int sim_copy(void *user, uint64_t dst, const void *src, uint64_t len, uint32_t slot)
{
	memcpy((void *)(uintptr_t)dst, src, len);
	return 0;
}

/* Onward copies for a load that may hold host-visible (cpu, simulated)
 * and CUDA destinations: addresses inside a host-visible grant are
 * memcpy'd (or converted there), the rest go to the CUDA sink (async H2D
 * on a copy stream, one event per staging slot). */
struct mixed_sink {
	struct stream_sink cuda;   /* .copy NULL: no CUDA destination */
	uint32_t nhost;
	struct { uint64_t lo, hi; } *host;
	/* host conversions from 8- and 16-bit dtypes: a table of every source
	 * pattern converted by the C reference (so bit for bit the same), one
	 * per source dtype (the target is the load's cast_to) */
	void *lut[VRAM_DTYPE_COUNT];
};

/* n elements of src_dtype to dst_dtype in host memory: through a table
 * for 8- and 16-bit sources (a lookup instead of a decode and an encode
 * per element), by the reference for F32.  0 or -errno. */
static int host_cast(struct mixed_sink *ms, void *dst, uint32_t dst_dtype, const void *src, uint32_t src_dtype,
		     uint64_t n)
{
	uint32_t sb = vram_dtype_bits(src_dtype), db = dtype_size(dst_dtype);
	if (sb > 16 || src_dtype == dst_dtype)
		return vk_cast(src, src_dtype, dst, dst_dtype, n);
	if (src_dtype >= VRAM_DTYPE_COUNT)
		return -EINVAL;
	if (!ms->lut[src_dtype]) {
		uint32_t np = 1u << sb;
		uint8_t *pat = malloc((size_t)np * (sb / 8));
		void *lut = malloc((size_t)np * db);
		int r = pat && lut ? 0 : -ENOMEM;
		for (uint32_t i = 0; r == 0 && i < np; i++) /* pattern i, little-endian */
			for (uint32_t k = 0; k < sb / 8; k++)
				pat[i * (sb / 8) + k] = (uint8_t)(i >> (8 * k));
		if (r == 0)
			r = vk_cast(pat, src_dtype, lut, dst_dtype, np);
		free(pat);
		if (r < 0) {
			free(lut);
			return r;
		}
		ms->lut[src_dtype] = lut;
	}
	const uint8_t *s = src, *t = ms->lut[src_dtype];
	uint8_t *d = dst;
	for (uint64_t i = 0; i < n; i++) {
		uint32_t x = sb == 8 ? s[i] : (uint32_t)s[2 * i] | (uint32_t)s[2 * i + 1] << 8;
		if (db == 1)
			d[i] = t[x];
		else if (db == 2)
			memcpy(d + 2 * i, t + 2 * x, 2);
		else
			memcpy(d + 4 * i, t + 4 * x, 4);
	}
	return 0;
}

static bool in_host(const struct mixed_sink *ms, uint64_t dst, uint64_t len)
{
	for (uint32_t i = 0; i < ms->nhost; i++)
		if (dst >= ms->host[i].lo && dst + len <= ms->host[i].hi)
			return true;
	return false;
}

static void mixed_sink_free_luts(struct mixed_sink *ms)
{
	for (uint32_t i = 0; i < VRAM_DTYPE_COUNT; i++) {
		free(ms->lut[i]);
		ms->lut[i] = NULL;
	}
}

static int mixed_copy(void *user, uint64_t dst, const void *src, uint64_t len, uint32_t slot)
{
	struct mixed_sink *ms = user;
	if (in_host(ms, dst, len))
		return sim_copy(NULL, dst, src, len, slot);
	if (!ms->cuda.copy)
		return rt_error(-EFAULT, "copy to 0x%llx: not inside a grant of this load", (unsigned long long)dst);
	return ms->cuda.copy(ms->cuda.user, dst, src, len, slot);
}

static int mixed_cast(void *user, uint64_t dst, uint32_t dst_dtype, const void *src, uint32_t src_dtype,
		      uint64_t n, uint64_t slot_off, uint32_t slot)
{
	struct mixed_sink *ms = user;
	if (in_host(ms, dst, n * (dtype_size(dst_dtype)))) {
		int r = host_cast(ms, (void *)(uintptr_t)dst, dst_dtype, src, src_dtype, n);
		return r < 0 ? rt_error(r, "converting %llu %s elements to %s", (unsigned long long)n,
					vram_dtype_name(src_dtype), vram_dtype_name(dst_dtype)) : 0;
	}
	if (!ms->cuda.cast)
		return rt_error(-EFAULT, "conversion to 0x%llx: not inside a grant of this load",
				(unsigned long long)dst);
	return ms->cuda.cast(ms->cuda.user, dst, dst_dtype, src, src_dtype, n, slot_off, slot);
}

static int mixed_wait(void *user, uint32_t slot)
{
	struct mixed_sink *ms = user;
	return ms->cuda.wait ? ms->cuda.wait(ms->cuda.user, slot) : 0;
}

static uint32_t backend_of(const vram_client *c, uint32_t dev)
{
	return c->dev[dev].backend;
}

void vram_unload(vram_loaded *l)
{
	struct rt_saved_error e;
	if (!l)
		return;
	rt_error_save(&e);
	for (uint32_t i = 0; i < l->ngrants; i++)
		if (l->grants[i].grant)
			vram_free(l->client, l->grants[i].grant);
	free(l->grants);
	free(l->tensors);
	free(l);
	rt_error_restore(&e);
}

/* Device of each tensor: the plan's (matched to the broker's devices by
 * name; a plan places modules, so a layer may span two devices), or the
 * default device. */
static int tensor_devices(vram_client *c, const vram_model *m, const vram_plan *plan, uint32_t def,
			  uint32_t *ret_dev)
{
	uint32_t map[64];
	if (plan) {
		uint32_t np = vram_plan_device_count(plan);
		if (np > 64)
			return rt_error(-EINVAL, "plan has too many devices");
		for (uint32_t i = 0; i < np; i++) {
			const char *name = vram_plan_device_name(plan, i);
			bool used = false;
			for (uint32_t comp = 0; comp < VRAM_COMP_COUNT; comp++)
				used = used || vram_plan_bytes(plan, comp, i) > 0;
			int d = vram_device_find(c, name);
			if (d < 0 && used)
				return rt_error(-ENODEV, "the plan places bytes on %s, which this broker does not have",
						name);
			map[i] = d < 0 ? UINT32_MAX : (uint32_t)d;
		}
	} else if (def >= c->ndev) {
		return rt_error(-ENODEV, "no device %u", def);
	}
	/* a plan of a model with more tensors is not this model's either */
	if (plan && m->ntensors < UINT32_MAX && vram_plan_tensor_device(plan, m->ntensors) >= 0)
		return rt_error(-EINVAL, "the plan is not one of this model (it has more tensors)");
	for (uint32_t t = 0; t < m->ntensors; t++) {
		uint32_t d = def;
		if (plan) {
			int pd = vram_plan_tensor_device(plan, t);
			if (pd < 0)
				return rt_error(-EINVAL, "the plan is not one of this model (it has no tensor \"%s\")",
						m->tensors[t].name);
			if ((uint32_t)pd >= vram_plan_device_count(plan) || map[pd] == UINT32_MAX)
				return rt_error(-EINVAL, "the plan has no device for tensor \"%s\"", m->tensors[t].name);
			d = map[pd];
		}
		ret_dev[t] = d;
	}
	return 0;
}

/* ======================================================================
 * vram_load, in phases over one load context
 * ====================================================================== */

/* What one vram_load works with.  Arrays have one entry per tensor, in
 * model order; the context owns them, and l until the load succeeds. */
struct load_ctx {
	vram_client *c;
	struct client_watch watch; /* reclaimable: RECLAIMs answered while it runs */
	const vram_model *m;
	struct vram_load_options o; /* checked */
	uint32_t nstaging;
	uint32_t cast_from;      /* the effective set */
	uint32_t n;              /* tensors */
	vram_loaded *l;

	uint32_t *dev;           /* broker device */
	uint32_t *comp;
	uint32_t *dtype;         /* the file's */
	uint32_t *chunk;         /* chunk of (device, component) */
	uint32_t *order;         /* by bucket, then file offset */
	uint64_t *off, *len;     /* in the file */
	uint64_t *olen;          /* as loaded (converted size) */
	bool *conv;
	struct run *runs;        /* scratch for one bucket */
	struct layout_run *lruns; /* its runs as common/layout.h lays them out */
	uint64_t *regions;
	struct stream_req *reqs;
	size_t nreq;
	bool need_staging;       /* GPU destinations or conversions */
	uint64_t first_alloc_ns, max_alloc_ns; /* ALLOC answer times */
	bool has_cuda;

	/* staging: what stream_file is given, and what backs it */
	struct stream_opts so;
	vram_grant *staging;
	struct cuda_sink *csink;
	struct cuda_pin *pin;
	struct mixed_sink msink;
	struct stream_sink sink;
};

/* Frees what a finished load no longer needs: the sinks (waiting for the
 * last copies), the pin, the tables.  Keeps staging (freed apart). */
static void load_sinks_free(struct load_ctx *x)
{
	cuda_sink_free(x->csink);
	x->csink = NULL;
	cuda_unpin(x->pin);
	x->pin = NULL;
	free(x->msink.host);
	x->msink.host = NULL;
	mixed_sink_free_luts(&x->msink);
}

/* Releases everything the context still owns (a failed load: l too),
 * keeping the thread's error message. */
static void load_ctx_done(struct load_ctx *x)
{
	struct rt_saved_error e;

	rt_error_save(&e);
	client_watch_stop(&x->watch);
	load_sinks_free(x);
	if (x->staging)
		vram_free(x->c, x->staging);
	vram_unload(x->l);
	free(x->dev);
	free(x->comp);
	free(x->dtype);
	free(x->chunk);
	free(x->order);
	free(x->off);
	free(x->len);
	free(x->olen);
	free(x->conv);
	free(x->runs);
	free(x->lruns);
	free(x->regions);
	free(x->reqs);
	rt_error_restore(&e);
}

/* Copies the caller's options (o may be NULL) into *ret and checks them;
 * fills *ret_nstaging and *ret_from.  0 or -EINVAL naming the field. */
static int load_options(const struct vram_load_options *o, struct vram_load_options *ret, uint32_t *ret_nstaging,
			uint32_t *ret_from)
{
	int r;

	vram_load_options_init(ret);
	if (o && (r = rt_struct_in(ret, o, sizeof(*ret), offsetof(struct vram_load_options, cast_to),
				   "vram_load options")) < 0)
		return r;
	if (ret->io_mode > VRAM_IO_BUFFERED)
		return rt_error(-EINVAL, "unknown io_mode %u", ret->io_mode);
	if (ret->flags & ~(VRAM_LOAD_RECLAIMABLE | VRAM_LOAD_SHARED))
		return rt_error(-EINVAL, "unknown load flags 0x%x", ret->flags);
	if (ret->chunk_size > STREAM_MAX_CHUNK)
		return rt_error(-EINVAL, "chunk_size %llu out of range (at most %llu)",
				(unsigned long long)ret->chunk_size, STREAM_MAX_CHUNK);
	if (ret->staging_slots > STREAM_MAX_NSTAGING || ret->reserved)
		return rt_error(-EINVAL, "staging_slots %u out of range (at most %u), or reserved not 0",
				ret->staging_slots, STREAM_MAX_NSTAGING);
	*ret_nstaging = ret->staging_slots ? ret->staging_slots : STREAM_DEFAULT_NSTAGING;
	return dtype_cast_check(ret->cast_to, ret->cast_from, ret_from);
}

/* The context's arrays and the loaded handle.  0 or -ENOMEM. */
static int load_ctx_alloc(struct load_ctx *x)
{
	size_t n = (size_t)x->n + 1;

	x->l = calloc(1, sizeof(*x->l));
	x->dev = calloc(n, sizeof(*x->dev));
	x->comp = calloc(n, sizeof(*x->comp));
	x->dtype = calloc(n, sizeof(*x->dtype));
	x->chunk = calloc(n, sizeof(*x->chunk));
	x->order = calloc(n, sizeof(*x->order));
	x->off = calloc(n, sizeof(*x->off));
	x->len = calloc(n, sizeof(*x->len));
	x->olen = calloc(n, sizeof(*x->olen));
	x->conv = calloc(n, sizeof(*x->conv));
	x->runs = calloc(n, sizeof(*x->runs));
	x->lruns = calloc(n, sizeof(*x->lruns));
	x->regions = calloc(n, sizeof(*x->regions));
	x->reqs = calloc(n, sizeof(*x->reqs));
	if (!x->l || !x->dev || !x->comp || !x->dtype || !x->chunk || !x->order || !x->off || !x->len ||
	    !x->olen || !x->conv || !x->runs || !x->lruns || !x->regions || !x->reqs)
		return rt_error(-ENOMEM, "out of memory");
	x->l->client = x->c;
	x->l->model = x->m;
	x->l->ntensors = x->n;
	x->l->tensors = calloc(n, sizeof(*x->l->tensors));
	x->l->grants = calloc((size_t)x->n + VRAMD_MAX_DEVICES * VRAM_COMP_COUNT, sizeof(*x->l->grants));
	if (!x->l->tensors || !x->l->grants)
		return rt_error(-ENOMEM, "out of memory");
	return 0;
}

/* Per tensor, from the model's own array (one pass, no getter copies):
 * where it is in the file, its dtype, whether and to what size it is
 * converted. */
static void load_tensors(struct load_ctx *x)
{
	for (uint32_t i = 0; i < x->n; i++) {
		const struct model_tensor *t = &x->m->tensors[i];
		x->off[i] = x->m->data_offset + t->begin;
		x->len[i] = t->end - t->begin;
		x->comp[i] = t->component;
		x->dtype[i] = t->dtype;
		x->olen[i] = dtype_cast_nbytes(t->dtype, x->len[i], x->o.cast_to, x->cast_from);
		x->conv[i] = dtype_casts(t->dtype, x->o.cast_to, x->cast_from);
		x->l->converted += x->conv[i];
	}
}

/* The size chunks on device d aim at (load.h). */
static uint64_t chunk_target(const struct load_ctx *x, uint32_t d)
{
	if (!(x->o.flags & VRAM_LOAD_RECLAIMABLE))
		return LOAD_CHUNK_TARGET;
	uint64_t floor = MAX(LOAD_CHUNK_MIN, 4 * x->c->dev[d].granularity);
	return MAX(MIN(x->c->dev[d].total / 32, LOAD_CHUNK_TARGET), floor);
}

/* Chunks: consecutive layers of one (device, component) share a grant of
 * about chunk_target() bytes, so that reclaim can give back part of a
 * model (a chunk) rather than all or nothing, and of at most
 * VRAMD_SHARE_RUNS_MAX tensors, so that every chunk can be described to
 * the broker as a shared copy (converted tensors are a run each; a layer
 * of more tensors than that is a chunk of its own, loaded privately when
 * it cannot be shared).  A layer the plan splits between devices has a
 * part in a chunk of each, each part whole.  Also notes which tensors
 * take a staged path (GPU destinations and conversions). */
static void load_chunks(struct load_ctx *x)
{
	uint32_t nchunks[VRAMD_MAX_DEVICES][VRAM_COMP_COUNT] = { { 0 } };
	uint64_t acc[VRAMD_MAX_DEVICES][VRAM_COMP_COUNT] = { { 0 } };
	uint32_t cnt[VRAMD_MAX_DEVICES][VRAM_COMP_COUNT] = { { 0 } };

	for (uint32_t li = 0; li < x->m->nlayers; li++) {
		const struct model_layer *L = &x->m->layers[li];
		uint32_t k = L->component, end = L->first + L->count;
		uint64_t part[VRAMD_MAX_DEVICES] = { 0 };
		uint32_t npart[VRAMD_MAX_DEVICES] = { 0 };
		/* the layer's bytes on each device, then each part in order of
		 * its first tensor */
		for (uint32_t t = L->first; t < end; t++) {
			part[x->dev[t]] += x->m->tensors[t].end - x->m->tensors[t].begin;
			npart[x->dev[t]]++;
		}
		bool done[VRAMD_MAX_DEVICES] = { false };
		for (uint32_t t0 = L->first; t0 < end; t0++) {
			uint32_t d = x->dev[t0];
			if (done[d])
				continue;
			done[d] = true;
			if (nchunks[d][k] == 0)
				nchunks[d][k] = 1;
			if (cnt[d][k] && (acc[d][k] + part[d] > chunk_target(x, d) ||
					  cnt[d][k] + npart[d] > VRAMD_SHARE_RUNS_MAX)) {
				nchunks[d][k]++;
				acc[d][k] = 0;
				cnt[d][k] = 0;
			}
			acc[d][k] += part[d];
			cnt[d][k] += npart[d];
			for (uint32_t t = t0; t < end; t++)
				if (x->dev[t] == d)
					x->chunk[t] = nchunks[d][k] - 1;
		}
	}
	for (uint32_t i = 0; i < x->n; i++) {
		uint32_t backend = backend_of(x->c, x->dev[i]);
		if (x->len[i] && (backend != VRAM_BACKEND_CPU || x->conv[i]))
			x->need_staging = true;
		if (x->len[i] && backend == VRAM_BACKEND_CUDA)
			x->has_cuda = true;
	}
}

/* Cuts the cnt tensors bo[] of one bucket (file order) into runs
 * contiguous in the file and gives each its region; returns the grant
 * size the bucket needs and the number of runs in *ret_nruns.  Tensors on
 * a GPU are staged anyway: each is placed on its own, aligned for any
 * element and for vectorised kernels (files need not align them: an F32
 * may sit at offset 6); so are converted ones.  Host tensors keep the
 * file's layout, for direct landing. */
static uint64_t bucket_layout(struct load_ctx *x, const uint32_t *bo, uint32_t cnt, bool gpu, uint32_t *ret_nruns)
{
	struct run *runs = x->runs;
	uint32_t nruns = 0;

	for (uint32_t j = 0; j < cnt; j++) {
		uint32_t t = bo[j];
		bool solo = gpu || x->conv[t];
		if (nruns && !solo && !runs[nruns - 1].solo &&
		    runs[nruns - 1].file_off + runs[nruns - 1].len == x->off[t]) {
			runs[nruns - 1].len += x->len[t];
			runs[nruns - 1].count++;
			continue;
		}
		runs[nruns++] = (struct run){ .file_off = x->off[t], .len = x->len[t], .first = j, .count = 1,
					      .solo = solo };
	}
	for (uint32_t j = 0; j < nruns; j++)
		x->lruns[j] = (struct layout_run){ runs[j].file_off, runs[j].len,
						   runs[j].solo ? x->olen[bo[runs[j].first]] : runs[j].len, runs[j].solo };
	uint64_t size = layout_regions(x->lruns, nruns, x->regions);
	for (uint32_t j = 0; j < nruns; j++)
		runs[j].region = x->regions[j];
	*ret_nruns = nruns;
	return size;
}

/* Where run j's tensors (bo[] of its bucket) sit in grant or copy gi: the
 * same layout for both (common/layout.h).  Returns the run's data offset. */
static uint64_t run_place(struct load_ctx *x, const uint32_t *bo, uint32_t j, uint32_t gi)
{
	const struct run *ru = &x->runs[j];
	uint64_t at = layout_data(&x->lruns[j], ru->region);
	for (uint32_t q = ru->first; q < ru->first + ru->count; q++) {
		uint32_t t = bo[q];
		x->l->tensors[t].grant = gi;
		x->l->tensors[t].offset = at + (x->off[t] - ru->file_off);
		x->l->tensors[t].dtype = x->conv[t] ? x->o.cast_to : x->dtype[t];
		x->l->tensors[t].nbytes = x->olen[t];
	}
	return at;
}

/* Places the bucket's tensors in grant lg (its runs laid out by
 * bucket_layout) and adds a stream request per run with bytes. */
static void bucket_requests(struct load_ctx *x, const uint32_t *bo, uint32_t nruns, uint32_t gi)
{
	struct loaded_grant *lg = &x->l->grants[gi];
	uint8_t *host = vram_grant_host_ptr(lg->grant);
	uint64_t dbase = host ? (uint64_t)(uintptr_t)host : vram_grant_device_ptr(lg->grant);

	for (uint32_t j = 0; j < nruns; j++) {
		const struct run *ru = &x->runs[j];
		uint64_t at = run_place(x, bo, j, gi);
		if (!ru->len)
			continue;
		struct stream_req *rq = &x->reqs[x->nreq++];
		rq->file_off = ru->file_off;
		rq->len = ru->len;
		if (ru->solo) {
			rq->kind = STREAM_DST_STAGED;
			rq->dst_addr = dbase + at;
			if (x->conv[bo[ru->first]]) {
				rq->cast_from = x->dtype[bo[ru->first]];
				rq->cast_to = x->o.cast_to;
			}
		} else { /* host memory: lands in place */
			rq->kind = STREAM_DST_HOST;
			rq->dst = host + at;
			rq->flags = STREAM_REQ_SLACK;
			/* a memfd grant: a warm load copies the page cache
			 * into the file, faulting nothing in */
			if (lg->grant->fd >= 0) {
				rq->flags |= STREAM_REQ_FD;
				rq->dst_fd = lg->grant->fd;
				rq->dst_fd_off = at;
			}
		}
	}
}

/* The private grant of one bucket (cnt tensors bo[] of component k
 * planned on device d, laid out for d's memory in size bytes by
 * bucket_layout), into lg.  A reclaimable load is pageable: when d refuses
 * the grant (-ENOMEM: past this client's fair share, or full; -EDQUOT: a
 * ceiling) it goes to the cpu pool instead, laid out again for host
 * memory, to be paged from there.  0 or the allocation's error, naming the
 * device and component. */
static int bucket_grant(struct load_ctx *x, const uint32_t *bo, uint32_t cnt, uint32_t d, uint32_t k,
			uint32_t flags, uint64_t size, uint32_t *ret_nruns, struct loaded_grant *lg)
{
	char s1[32];
	uint64_t t0 = now_ns();
	int r = vram_alloc(x->c, d, size, flags, &lg->grant);
	uint64_t dt = MAX(now_ns() - t0, 1);
	if (!x->first_alloc_ns)
		x->first_alloc_ns = dt;
	x->max_alloc_ns = MAX(x->max_alloc_ns, dt);
	struct rt_saved_error e;
	rt_error_save(&e); /* the first refusal is the one to report */
	int cpu = (r == -ENOMEM || r == -EDQUOT) && (flags & VRAM_ALLOC_RECLAIMABLE) ? vram_device_find(x->c, "cpu") : -1;
	rt_error_restore(&e);
	if (r < 0 && cpu >= 0 && (uint32_t)cpu != d) {
		uint64_t hsize = bucket_layout(x, bo, cnt, false, ret_nruns);
		if (vram_alloc(x->c, (uint32_t)cpu, hsize, flags, &lg->grant) == 0) {
			d = (uint32_t)cpu;
			r = 0;
		} else {
			rt_error_restore(&e);
			bucket_layout(x, bo, cnt, backend_of(x->c, d) != VRAM_BACKEND_CPU, ret_nruns);
		}
	}
	if (r < 0)
		return rt_error(r, "allocating %s on %s for %s: %s", size_format(size, s1, sizeof(s1)),
				x->c->dev[d].name, vram_component_name(k), vram_last_error());
	lg->device = d;
	lg->component = k;
	return 0;
}

/* An fd for the broker to read the file through: the model's inode
 * reopened with O_DIRECT (cold files are read at the disk's speed), else
 * the model's own fd (-1 returned in *ret_own then: not to be closed). */
static int share_fd(struct load_ctx *x, bool *ret_own)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", x->m->fd);
	int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	*ret_own = fd >= 0;
	return fd >= 0 ? fd : x->m->fd;
}

/* Asks the broker for the bucket as a shared copy.  1 when it is one
 * (lg->grant set), 0 when the broker cannot share it (the caller loads
 * it privately; the reason is in the stats), or -errno. */
static int share_bucket(struct load_ctx *x, const uint32_t *bo, uint32_t nruns, uint32_t d, struct loaded_grant *lg)
{
	struct vram_load_stats *st = &x->l->stats;
	if (nruns > VRAMD_SHARE_RUNS_MAX) {
		st->share_refused++;
		snprintf(st->share_why, sizeof(st->share_why), "a chunk of %u tensors, more than a copy describes (%u)",
			 nruns, VRAMD_SHARE_RUNS_MAX);
		return 0;
	}
	_cleanup_free_ struct vramd_share_run *runs = calloc(nruns, sizeof(*runs));
	if (!runs)
		return rt_error(-ENOMEM, "out of memory");
	for (uint32_t j = 0; j < nruns; j++) {
		const struct run *ru = &x->runs[j];
		uint32_t t = bo[ru->first];
		runs[j].file_off = ru->file_off;
		runs[j].len = ru->len;
		if (ru->solo) {
			runs[j].flags = VRAMD_SHARE_RUN_SOLO;
			runs[j].src_dtype = x->dtype[t];
			runs[j].dst_dtype = x->conv[t] ? x->o.cast_to : x->dtype[t];
		}
	}
	bool own;
	int fd = share_fd(x, &own);
	uint32_t how = 0;
	int r = client_share(x->c, d, runs, nruns, fd, x->o.progress, x->o.user, &lg->grant, &how);
	if (own)
		close(fd);
	if (r == -EOPNOTSUPP || r == -ENOSPC || r == -ENOMEM || r == -EDQUOT || r == -EBADF) {
		st->share_refused++;
		str_copy(st->share_why, vram_last_error(), sizeof(st->share_why));
		rt_error_clear();
		return 0;
	}
	if (r < 0)
		return r;
	st->share_hits += how == VRAMD_SHARE_HIT;
	st->share_filled += how == VRAMD_SHARE_FILLED;
	st->share_waited += how == VRAMD_SHARE_WAITED;
	for (uint32_t j = 0; j < nruns; j++)
		st->shared_bytes += x->runs[j].len;
	return 1;
}

/* Buckets (device, component, chunk): one sort, then each bucket is laid
 * out, becomes one grant (or is served from a shared copy), and its runs
 * become stream requests.  0 or the allocation's error, naming the device
 * and component. */
static int load_grants(struct load_ctx *x)
{
	struct bucket_key bkey = { x->dev, x->comp, x->chunk, x->off };
	/* With a pager every chunk can be given back: resident ones are
	 * demoted to the donor, donor ones dropped (the file is the donor of
	 * last resort). */
	uint32_t flags = (x->o.flags & VRAM_LOAD_RECLAIMABLE) ? VRAM_ALLOC_RECLAIMABLE : 0;

	for (uint32_t i = 0; i < x->n; i++)
		x->order[i] = i;
	qsort_r(x->order, x->n, sizeof(*x->order), cmp_bucket, &bkey);
	for (uint32_t b0 = 0, b1; b0 < x->n; b0 = b1) {
		uint32_t tf = x->order[b0], d = x->dev[tf], k = x->comp[tf], ch = x->chunk[tf];
		for (b1 = b0 + 1; b1 < x->n; b1++) {
			uint32_t t = x->order[b1];
			if (x->dev[t] != d || x->comp[t] != k || x->chunk[t] != ch)
				break;
		}
		const uint32_t *bo = x->order + b0; /* this bucket's tensors, in file order */
		uint32_t nruns;
		uint64_t size = bucket_layout(x, bo, b1 - b0, backend_of(x->c, d) != VRAM_BACKEND_CPU, &nruns);
		struct loaded_grant *lg = &x->l->grants[x->l->ngrants];
		lg->device = d;
		lg->component = k;
		int r = 0;
		if ((x->o.flags & VRAM_LOAD_SHARED) && x->c->dev[d].cache_max &&
		    (r = share_bucket(x, bo, nruns, d, lg)) == 1) {
			/* a shared copy: placed the same way, nothing to stream */
			for (uint32_t j = 0; j < nruns; j++)
				run_place(x, bo, j, x->l->ngrants);
			x->l->ngrants++;
			continue;
		}
		if (r < 0)
			return rt_error(r, "a shared copy on %s for %s: %s", x->c->dev[d].name, vram_component_name(k),
					vram_last_error());
		r = bucket_grant(x, bo, b1 - b0, d, k, flags, size, &nruns, lg);
		if (r < 0)
			return r;
		x->l->ngrants++;
		bucket_requests(x, bo, nruns, x->l->ngrants - 1);
	}
	return 0;
}

/* The onward-copy side of a load that stages: the host-visible grants the
 * mixed sink memcpy's into, the CUDA sink over the CUDA grants, and the
 * staging ring from the pinned host pool when it has room (else the
 * engine maps its own), page-locked for DMA when CUDA is involved (best
 * effort: pageable copies are slower, still correct).  0 or -errno. */
static int load_staging(struct load_ctx *x)
{
	vram_loaded *l = x->l;
	uint64_t chunk = stream_chunk(x->so.chunk);
	uint32_t cdev = 0;
	int r;

	x->msink.host = calloc(l->ngrants + 1, sizeof(*x->msink.host));
	if (!x->msink.host)
		return rt_error(-ENOMEM, "out of memory");
	for (uint32_t gi = 0; gi < l->ngrants; gi++) {
		vram_grant *g = l->grants[gi].grant;
		if (backend_of(x->c, l->grants[gi].device) != VRAM_BACKEND_CUDA && vram_grant_host_ptr(g)) {
			uint64_t lo = (uint64_t)(uintptr_t)vram_grant_host_ptr(g);
			x->msink.host[x->msink.nhost].lo = lo;
			x->msink.host[x->msink.nhost].hi = lo + vram_grant_size(g);
			x->msink.nhost++;
		}
	}
	if (x->has_cuda) {
		/* Converting on a CUDA device takes device scratch of one
		 * staging ring (taken at the first conversion). */
		if ((r = cuda_sink_new(x->c, x->nstaging, &x->csink)) < 0)
			return r;
		if (l->converted)
			cuda_sink_cast_scratch(x->csink, chunk);
		for (uint32_t gi = 0; gi < l->ngrants; gi++) {
			if (backend_of(x->c, l->grants[gi].device) != VRAM_BACKEND_CUDA)
				continue;
			if ((r = cuda_sink_add_grant(x->csink, l->grants[gi].grant)) < 0)
				return r;
			cdev = l->grants[gi].device;
		}
		cuda_sink_get(x->csink, &x->msink.cuda);
	}
	x->sink = (struct stream_sink){ .copy = mixed_copy, .wait = mixed_wait, .user = &x->msink, .cast = mixed_cast };
	x->so.sink = &x->sink;
	int cpu = vram_device_find(x->c, "cpu");
	if (cpu >= 0 && vram_alloc(x->c, (uint32_t)cpu, chunk * x->nstaging, 0, &x->staging) == 0) {
		x->so.staging = vram_grant_host_ptr(x->staging);
		x->so.nstaging = x->nstaging;
		x->so.staging_size = chunk;
		if (x->has_cuda && cuda_pin(x->c, cdev, x->so.staging, chunk * x->nstaging, chunk, &x->pin) < 0)
			x->pin = NULL;
	}
	rt_error_clear();
	return 0;
}

/* Streams the requests through the model's fd and fills the stats. */
static int load_stream(struct load_ctx *x, uint64_t t0, const struct timespec *c0)
{
	struct stream_result res;
	struct timespec c1;
	int r;

	x->so.io_mode = x->o.io_mode;
	x->so.chunk = x->o.chunk_size;
	x->so.depth = x->o.queue_depth;
	if (!x->need_staging && !x->o.chunk_size && !x->o.queue_depth) {
		x->so.chunk = LOAD_DIRECT_CHUNK;
		x->so.depth = LOAD_DIRECT_DEPTH;
	}
	x->so.nstaging = x->nstaging;
	x->so.progress = x->o.progress;
	x->so.user = x->o.user;
	if (x->need_staging && (r = load_staging(x)) < 0)
		return r;
	r = stream_file(vram_model_path(x->m), x->m->fd, x->reqs, x->nreq, &x->so, &res);
	load_sinks_free(x); /* waits for the last copies */
	if (r < 0)
		return r;
	vram_free(x->c, x->staging);
	x->staging = NULL;

	vram_loaded *l = x->l;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	l->stats.struct_size = sizeof(l->stats);
	l->stats.io_mode_used = res.io_mode_used;
	l->stats.bytes = res.bytes + l->stats.shared_bytes;
	l->stats.ns = now_ns() - t0;
	l->stats.cpu_ns = (uint64_t)(c1.tv_sec - c0->tv_sec) * 1000000000ull + (uint64_t)(c1.tv_nsec - c0->tv_nsec);
	l->stats.grants = l->ngrants;
	l->stats.converted = l->converted;
	l->stats.first_alloc_ns = x->first_alloc_ns;
	l->stats.max_alloc_ns = x->max_alloc_ns;
	return 0;
}

/* Loads m by plan (or onto default_device) into grants of c (vram.h): the
 * options checked, the tensors' devices and chunks decided, one grant per
 * bucket laid out like the file, then one stream through the model's fd.
 * On failure nothing stays allocated and *ret is untouched. */
int vram_load(vram_client *c, const vram_model *m, const vram_plan *plan, uint32_t default_device,
	      const struct vram_load_options *o, vram_loaded **ret)
{
	_cleanup_(load_ctx_done) struct load_ctx x = { .c = c, .m = m };
	struct timespec c0;
	int r;

	rt_error_clear();
	if (!c || !m || !ret)
		return rt_error(-EINVAL, "vram_load: NULL argument");
	if ((r = load_options(o, &x.o, &x.nstaging, &x.cast_from)) < 0)
		return r;
	if (x.o.flags & VRAM_LOAD_RECLAIMABLE)
		client_watch_start(&x.watch, c, true);
	x.n = m->ntensors;
	uint64_t t0 = now_ns();
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);

	if ((r = load_ctx_alloc(&x)) < 0 || (r = tensor_devices(c, m, plan, default_device, x.dev)) < 0)
		return r;
	load_tensors(&x);
	load_chunks(&x);
	if ((r = load_grants(&x)) < 0)
		return r;
	/* The bytes come from the fd the model was parsed from, never from the
	 * path again; a model whose file changed in place, or whose path names
	 * another file now, is refused (stale: the caller meant that path). */
	if ((r = model_check_unchanged(m)) < 0 || (r = model_check_path(m)) < 0)
		return r;
	if ((r = load_stream(&x, t0, &c0)) < 0)
		return r;
	*ret = TAKE_PTR(x.l);
	return 0;
}

int vram_loaded_tensor_device(const vram_loaded *l, uint32_t t)
{
	if (t >= l->ntensors)
		return rt_error(-EINVAL, "no tensor %u", t);
	if (!l->grants[l->tensors[t].grant].grant)
		return rt_error(-ENODATA, "tensor %u was dropped by reclaim (it lives in the file only)", t);
	return (int)l->grants[l->tensors[t].grant].device;
}

void *vram_loaded_tensor_host_ptr(const vram_loaded *l, uint32_t t)
{
	if (t >= l->ntensors)
		return NULL;
	vram_grant *g = l->grants[l->tensors[t].grant].grant;
	uint8_t *h = g ? vram_grant_host_ptr(g) : NULL;
	return h ? h + l->tensors[t].offset : NULL;
}

uint64_t vram_loaded_tensor_device_ptr(const vram_loaded *l, uint32_t t)
{
	if (t >= l->ntensors)
		return 0;
	vram_grant *g = l->grants[l->tensors[t].grant].grant;
	uint64_t d = g ? vram_grant_device_ptr(g) : 0;
	return d ? d + l->tensors[t].offset : 0;
}

int vram_loaded_tensor_dtype(const vram_loaded *l, uint32_t t)
{
	if (!l || t >= l->ntensors)
		return rt_error(-EINVAL, "no tensor %u", t);
	return (int)l->tensors[t].dtype;
}

uint64_t vram_loaded_tensor_nbytes(const vram_loaded *l, uint32_t t)
{
	return l && t < l->ntensors ? l->tensors[t].nbytes : 0;
}

int vram_loaded_stats(const vram_loaded *l, struct vram_load_stats *ret)
{
	if (!l || !ret)
		return rt_error(-EINVAL, "vram_loaded_stats: NULL argument");
	return rt_struct_out(ret, &l->stats, sizeof(l->stats), "vram_loaded_stats");
}

int vram_loaded_tensor_shared(const vram_loaded *l, uint32_t t)
{
	if (!l || t >= l->ntensors)
		return rt_error(-EINVAL, "no tensor %u", t);
	const struct loaded_grant *lg = &l->grants[l->tensors[t].grant];
	return lg->grant && lg->grant->shared;
}

int vram_loaded_make_private(vram_loaded *l, uint32_t t)
{
	rt_error_clear();
	int r = vram_loaded_tensor_shared(l, t);
	if (r <= 0)
		return r;
	if (__atomic_load_n(&l->pagers, __ATOMIC_ACQUIRE))
		return rt_error(-EBUSY, "tensor %u: a pager serves this load (free it before making a tensor private)", t);
	struct loaded_tensor *lt = &l->tensors[t];
	const struct loaded_grant *from = &l->grants[lt->grant];
	struct loaded_grant *grown = realloc(l->grants, (l->ngrants + 1) * sizeof(*grown));
	if (!grown)
		return rt_error(-ENOMEM, "out of memory");
	l->grants = grown;
	from = &l->grants[lt->grant];
	struct loaded_grant *lg = &l->grants[l->ngrants];
	*lg = (struct loaded_grant){ NULL, from->device, from->component };
	if ((r = vram_alloc(l->client, lg->device, lt->nbytes ? lt->nbytes : 1, 0, &lg->grant)) < 0)
		return r;
	const vram_grant *src = from->grant;
	if (src->host)
		memcpy(lg->grant->host, (const uint8_t *)src->host + lt->offset, lt->nbytes);
	else
		r = cuda_copy_bytes(l->client, lg->device, lg->grant->dptr, src->dptr + lt->offset, lt->nbytes);
	if (r < 0) {
		vram_free(l->client, lg->grant);
		return r;
	}
	lt->grant = l->ngrants++;
	lt->offset = 0;
	return 0;
}
