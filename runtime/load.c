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
 * is placed on its own at a TENSOR_ALIGN boundary instead: files need not
 * align tensors to their elements, and GPU kernels (ours and PyTorch's)
 * need that alignment.  cpu-pool grants are written directly (HOST
 * requests; warm, through the memfd: stream.h STREAM_REQ_FD).
 *
 * Conversion (cast_to): a converted tensor is a run of its own, in a region
 * of its converted size (TENSOR_ALIGN-aligned), and always goes through
 * staging: the sink converts (kernels/ C references into host-visible
 * memory, through a table for 8- and 16-bit sources; for CUDA, an H2D copy
 * into one device scratch buffer and the cast kernel from there, both on
 * the copy stream).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/client.h"
#include "runtime/cuda-copy.h"
#include "runtime/dtype.h"
#include "runtime/load.h"
#include "runtime/model.h"
#include "runtime/stream.h"
#include "kernels/kernels.h"

/* Alignment of a tensor that is placed on its own (converted ones, and
 * every tensor on a GPU): any element, and vectorised kernels. */
#define TENSOR_ALIGN 256u
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
	bool solo;               /* one tensor, TENSOR_ALIGN-aligned (staged) */
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

/* Device of each tensor: its layer's, from the plan (matched to the
 * broker's devices by name), or the default device. */
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
	for (uint32_t li = 0; li < m->nlayers; li++) {
		const struct model_layer *L = &m->layers[li];
		uint32_t d = def;
		if (plan) {
			int pd = vram_plan_layer_device(plan, li);
			if (pd < 0 || (uint32_t)pd >= vram_plan_device_count(plan) || map[pd] == UINT32_MAX)
				return rt_error(-EINVAL, "the plan has no device for layer \"%s\"", L->name);
			d = map[pd];
		}
		for (uint32_t t = L->first; t < L->first + L->count; t++)
			ret_dev[t] = d;
	}
	return 0;
}

int vram_load(vram_client *c, const vram_model *m, const vram_plan *plan, uint32_t default_device,
	      const struct vram_load_options *o, vram_loaded **ret)
{
	struct vram_load_options opt;
	int r;
	rt_error_clear();
	if (!c || !m || !ret)
		return rt_error(-EINVAL, "vram_load: NULL argument");
	vram_load_options_init(&opt);
	if (o && (r = rt_struct_in(&opt, o, sizeof(opt), offsetof(struct vram_load_options, cast_to),
				   "vram_load options")) < 0)
		return r;
	o = &opt;
	if (o->io_mode > VRAM_IO_BUFFERED)
		return rt_error(-EINVAL, "unknown io_mode %u", o->io_mode);
	if (o->flags & ~VRAM_LOAD_RECLAIMABLE)
		return rt_error(-EINVAL, "unknown load flags 0x%x", o->flags);
	if (o->chunk_size > STREAM_MAX_CHUNK)
		return rt_error(-EINVAL, "chunk_size %llu out of range (at most %llu)",
				(unsigned long long)o->chunk_size, STREAM_MAX_CHUNK);
	if (o->staging_slots > STREAM_MAX_NSTAGING || o->reserved)
		return rt_error(-EINVAL, "staging_slots %u out of range (at most %u), or reserved not 0",
				o->staging_slots, STREAM_MAX_NSTAGING);
	uint32_t nstaging = o->staging_slots ? o->staging_slots : STREAM_DEFAULT_NSTAGING;
	uint32_t cast_from;
	if ((r = dtype_cast_check(o->cast_to, o->cast_from, &cast_from)) < 0)
		return r;

	int n = vram_model_tensor_count(m);
	if (n < 0)
		return n;
	uint64_t t0 = now_ns();
	struct timespec c0;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);

	vram_loaded *l = calloc(1, sizeof(*l));
	_cleanup_free_ uint32_t *dev = calloc((size_t)n + 1, sizeof(*dev));
	_cleanup_free_ uint32_t *order = calloc((size_t)n + 1, sizeof(*order));
	_cleanup_free_ uint64_t *off = calloc((size_t)n + 1, sizeof(*off));
	_cleanup_free_ uint64_t *len = calloc((size_t)n + 1, sizeof(*len));
	_cleanup_free_ uint32_t *comp = calloc((size_t)n + 1, sizeof(*comp));
	_cleanup_free_ uint32_t *dtype = calloc((size_t)n + 1, sizeof(*dtype)); /* the file's */
	_cleanup_free_ bool *conv = calloc((size_t)n + 1, sizeof(*conv));
	_cleanup_free_ uint64_t *olen = calloc((size_t)n + 1, sizeof(*olen));
	_cleanup_free_ struct run *runs = calloc((size_t)n + 1, sizeof(*runs));
	_cleanup_free_ struct stream_req *reqs = calloc((size_t)n + 1, sizeof(*reqs));
	_cleanup_free_ uint32_t *tchunk = calloc((size_t)n + 1, sizeof(*tchunk)); /* chunk of each tensor */
	vram_grant *staging = NULL;
	struct cuda_sink *csink = NULL;
	struct cuda_pin *pin = NULL;
	struct mixed_sink msink = { 0 };
	struct stream_sink sink = { .copy = mixed_copy, .wait = mixed_wait, .user = &msink, .cast = mixed_cast };
	if (!l || !dev || !order || !off || !len || !comp || !dtype || !conv || !olen || !runs || !reqs || !tchunk) {
		r = rt_error(-ENOMEM, "out of memory");
		goto fail;
	}
	l->client = c;
	l->model = m;
	l->ntensors = (uint32_t)n;
	l->tensors = calloc((size_t)n + 1, sizeof(*l->tensors));
	l->grants = calloc((size_t)n + VRAMD_MAX_DEVICES * VRAM_COMP_COUNT, sizeof(*l->grants));
	if (!l->tensors || !l->grants) {
		r = rt_error(-ENOMEM, "out of memory");
		goto fail;
	}
	if ((r = tensor_devices(c, m, plan, default_device, dev)) < 0)
		goto fail;
	for (int i = 0; i < n; i++) { /* the model's own array: one pass, no copies */
		const struct model_tensor *t = &m->tensors[i];
		off[i] = m->data_offset + t->begin;
		len[i] = t->end - t->begin;
		comp[i] = t->component;
		dtype[i] = t->dtype;
		olen[i] = dtype_cast_nbytes(t->dtype, len[i], o->cast_to, cast_from);
		conv[i] = dtype_casts(t->dtype, o->cast_to, cast_from);
		l->converted += conv[i];
	}

	/* Chunks: consecutive layers of one (device, component) share a grant
	 * of about LOAD_CHUNK_TARGET bytes, so that reclaim can give back part
	 * of a model (a chunk) rather than all or nothing. */
	uint32_t nchunks[VRAMD_MAX_DEVICES][VRAM_COMP_COUNT];
	uint64_t acc[VRAMD_MAX_DEVICES][VRAM_COMP_COUNT];
	memset(nchunks, 0, sizeof(nchunks));
	memset(acc, 0, sizeof(acc));
	for (uint32_t li = 0; li < m->nlayers; li++) {
		const struct model_layer *L = &m->layers[li];
		if (!L->count)
			continue;
		uint32_t d = dev[L->first], k = L->component; /* a layer is on one device */
		if (nchunks[d][k] == 0)
			nchunks[d][k] = 1;
		if (acc[d][k] && acc[d][k] + L->nbytes > LOAD_CHUNK_TARGET) {
			nchunks[d][k]++;
			acc[d][k] = 0;
		}
		acc[d][k] += L->nbytes;
		for (uint32_t t = L->first; t < L->first + L->count; t++)
			tchunk[t] = nchunks[d][k] - 1;
	}

	/* Which tensors take a staged path: GPU destinations and conversions. */
	bool need_staging = false, has_cuda = false;
	for (int i = 0; i < n; i++) {
		if (len[i] && (backend_of(c, dev[i]) != VRAM_BACKEND_CPU || conv[i]))
			need_staging = true;
		if (len[i] && backend_of(c, dev[i]) == VRAM_BACKEND_CUDA)
			has_cuda = true;
	}

	/* Buckets (device, component, chunk): one sort, then each bucket is
	 * cut into runs contiguous in the file and becomes one grant. */
	struct bucket_key bkey = { dev, comp, tchunk, off };
	for (int i = 0; i < n; i++)
		order[i] = (uint32_t)i;
	qsort_r(order, (size_t)n, sizeof(*order), cmp_bucket, &bkey);
	size_t nreq = 0;
	for (uint32_t b0 = 0, b1; b0 < (uint32_t)n; b0 = b1) {
		uint32_t tf = order[b0], d = dev[tf], k = comp[tf], ch = tchunk[tf];
		for (b1 = b0 + 1; b1 < (uint32_t)n; b1++) {
			uint32_t t = order[b1];
			if (dev[t] != d || comp[t] != k || tchunk[t] != ch)
				break;
		}
		const uint32_t *bo = order + b0; /* this bucket's tensors, in file order */
		uint32_t cnt = b1 - b0;
		uint32_t nruns = 0;
		uint64_t cursor = 0;
		/* Tensors on a GPU are staged anyway: each is placed on its
		 * own, aligned for any element and for vectorised kernels
		 * (files need not align them: an F32 may sit at offset 6).
		 * Host tensors keep the file's layout, for direct landing. */
		bool gpu = backend_of(c, d) != VRAM_BACKEND_CPU;
		for (uint32_t j = 0; j < cnt; j++) {
			uint32_t t = bo[j];
			bool solo = gpu || conv[t];
			if (nruns && !solo && !runs[nruns - 1].solo &&
			    runs[nruns - 1].file_off + runs[nruns - 1].len == off[t]) {
				runs[nruns - 1].len += len[t];
				runs[nruns - 1].count++;
				continue;
			}
			runs[nruns++] = (struct run){ .file_off = off[t], .len = len[t], .first = j, .count = 1,
						      .solo = solo };
		}
		for (uint32_t j = 0; j < nruns; j++) {
			struct run *ru = &runs[j];
			if (ru->solo) {
				cursor = (cursor + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
				ru->region = cursor;
				cursor += olen[bo[ru->first]];
				continue;
			}
			uint64_t head = ru->file_off % STREAM_ALIGN;
			uint64_t span = (head + ru->len + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN;
			cursor = (cursor + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN;
			ru->region = cursor;
			cursor += span ? span : STREAM_ALIGN;
		}
		cursor = cursor ? (cursor + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN : STREAM_ALIGN;
		/* With a pager every chunk can be given back: resident ones
		 * are demoted to the donor, donor ones dropped (the file is
		 * the donor of last resort). */
		uint32_t flags = (o->flags & VRAM_LOAD_RECLAIMABLE) ? VRAM_ALLOC_RECLAIMABLE : 0;
		struct loaded_grant *lg = &l->grants[l->ngrants];
		r = vram_alloc(c, d, cursor, flags, &lg->grant);
		if (r < 0) {
			char s1[32];
			r = rt_error(r, "allocating %s on %s for %s: %s", size_format(cursor, s1, sizeof(s1)),
				     c->dev[d].name, vram_component_name(k), vram_last_error());
			goto fail;
		}
		lg->device = d;
		lg->component = k;
		l->ngrants++;
		uint8_t *host = vram_grant_host_ptr(lg->grant);
		uint64_t dbase = host ? (uint64_t)(uintptr_t)host : vram_grant_device_ptr(lg->grant);
		for (uint32_t j = 0; j < nruns; j++) {
			struct run *ru = &runs[j];
			uint64_t at = ru->solo ? ru->region : ru->region + ru->file_off % STREAM_ALIGN;
			for (uint32_t q = ru->first; q < ru->first + ru->count; q++) {
				uint32_t t = bo[q];
				l->tensors[t].grant = l->ngrants - 1;
				l->tensors[t].offset = at + (off[t] - ru->file_off);
				l->tensors[t].dtype = conv[t] ? o->cast_to : dtype[t];
				l->tensors[t].nbytes = olen[t];
			}
			if (!ru->len)
				continue;
			struct stream_req *rq = &reqs[nreq++];
			rq->file_off = ru->file_off;
			rq->len = ru->len;
			if (ru->solo) {
				rq->kind = STREAM_DST_STAGED;
				rq->dst_addr = dbase + at;
				if (conv[bo[ru->first]]) {
					rq->cast_from = dtype[bo[ru->first]];
					rq->cast_to = o->cast_to;
				}
			} else { /* host memory: lands in place */
				rq->kind = STREAM_DST_HOST;
				rq->dst = host + at;
				rq->flags = STREAM_REQ_SLACK;
				/* a memfd grant: a warm load copies the page
				 * cache into the file, faulting nothing in */
				if (lg->grant->fd >= 0) {
					rq->flags |= STREAM_REQ_FD;
					rq->dst_fd = lg->grant->fd;
					rq->dst_fd_off = at;
				}
			}
		}
	}

	/* The bytes come from the fd the model was parsed from, never from the
	 * path again; a model whose file changed in place, or whose path names
	 * another file now, is refused (stale: the caller meant that path). */
	if ((r = model_check_unchanged(m)) < 0 || (r = model_check_path(m)) < 0)
		goto fail;

	struct stream_opts so;
	memset(&so, 0, sizeof(so));
	so.io_mode = o->io_mode;
	so.chunk = o->chunk_size;
	so.depth = o->queue_depth;
	so.nstaging = nstaging;
	so.progress = o->progress;
	so.user = o->user;
	if (need_staging) {
		msink.host = calloc(l->ngrants + 1, sizeof(*msink.host));
		if (!msink.host) {
			r = rt_error(-ENOMEM, "out of memory");
			goto fail;
		}
		for (uint32_t gi = 0; gi < l->ngrants; gi++) {
			vram_grant *g = l->grants[gi].grant;
			if (backend_of(c, l->grants[gi].device) != VRAM_BACKEND_CUDA && vram_grant_host_ptr(g)) {
				uint64_t lo = (uint64_t)(uintptr_t)vram_grant_host_ptr(g);
				msink.host[msink.nhost].lo = lo;
				msink.host[msink.nhost].hi = lo + vram_grant_size(g);
				msink.nhost++;
			}
		}
		uint64_t chunk = stream_chunk(so.chunk);
		if (has_cuda) {
			/* Converting on a CUDA device takes device scratch of one
			 * staging ring (taken at the first conversion). */
			if ((r = cuda_sink_new(c, nstaging, &csink)) < 0)
				goto fail;
			if (l->converted)
				cuda_sink_cast_scratch(csink, chunk);
			for (uint32_t gi = 0; gi < l->ngrants; gi++)
				if (backend_of(c, l->grants[gi].device) == VRAM_BACKEND_CUDA &&
				    (r = cuda_sink_add_grant(csink, l->grants[gi].grant)) < 0)
					goto fail;
			cuda_sink_get(csink, &msink.cuda);
		}
		so.sink = &sink;
		/* The staging ring comes from the pinned host pool when it has
		 * room; otherwise the engine maps its own. */
		int cpu = vram_device_find(c, "cpu");
		if (cpu >= 0 && vram_alloc(c, (uint32_t)cpu, chunk * nstaging, 0, &staging) == 0) {
			so.staging = vram_grant_host_ptr(staging);
			so.nstaging = nstaging;
			so.staging_size = chunk;
			/* Page-locked, so that H2D copies from it are DMA. */
			if (has_cuda) {
				uint32_t cdev = 0;
				for (uint32_t gi = 0; gi < l->ngrants; gi++)
					if (backend_of(c, l->grants[gi].device) == VRAM_BACKEND_CUDA)
						cdev = l->grants[gi].device;
				if (cuda_pin(c, cdev, so.staging, chunk * nstaging, chunk, &pin) < 0)
					pin = NULL; /* pageable: slower, still correct */
			}
		}
		rt_error_clear();
	}
	struct stream_result res;
	r = stream_file(vram_model_path(m), m->fd, reqs, nreq, &so, &res);
	cuda_sink_free(csink); /* waits for the last copies */
	csink = NULL;
	cuda_unpin(pin);
	pin = NULL;
	free(msink.host);
	msink.host = NULL;
	mixed_sink_free_luts(&msink);
	if (r < 0)
		goto fail;
	vram_free(c, staging);
	staging = NULL;

	struct timespec c1;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	l->stats.struct_size = sizeof(l->stats);
	l->stats.io_mode_used = res.io_mode_used;
	l->stats.bytes = res.bytes;
	l->stats.ns = now_ns() - t0;
	l->stats.cpu_ns = (uint64_t)(c1.tv_sec - c0.tv_sec) * 1000000000ull + (uint64_t)(c1.tv_nsec - c0.tv_nsec);
	l->stats.grants = l->ngrants;
	l->stats.converted = l->converted;
	*ret = l;
	return 0;
fail:
	cuda_sink_free(csink);
	cuda_unpin(pin);
	free(msink.host);
	mixed_sink_free_luts(&msink);
	if (staging) {
		struct rt_saved_error e;
		rt_error_save(&e);
		vram_free(c, staging);
		rt_error_restore(&e);
	}
	vram_unload(l);
	return r;
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
