/* SPDX-License-Identifier: MIT */
/*
 * The model-level properties the checkpoint targets share (fuzz-safetensors,
 * fuzz-gguf, fuzz-pickle): every accessor of a model vram_model_open()
 * accepted, whatever its format, and what a refusal must look like.
 *
 * For every format: each tensor has a dtype with a name, its elements in
 * that dtype make exactly its bytes (whole blocks for the quantised ones),
 * its bytes lie in the data region and in the file, its name finds it, it
 * sits in its layer; layers are contiguous and, with the components,
 * account for every tensor and byte; metadata are strings.  Per format:
 * safetensors tensors tile the data exactly after the 8 + header bytes;
 * GGUF tensors never overlap and the data runs to the end of the file;
 * PyTorch tensors may overlap (storages are shared) but stay inside the
 * data span.
 */
#ifndef VRAM_TESTS_FUZZ_MODEL_H
#define VRAM_TESTS_FUZZ_MODEL_H

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/vram.h"
#include "tests/fuzz/fuzz.h"

/* Whether the elements of shape[0, ndim) in dtype make exactly nbytes. */
static inline bool fuzz_size_matches(uint32_t dtype, const uint64_t *shape, uint32_t ndim, uint64_t nbytes)
{
	uint32_t elems = 0, bytes = 0;
	unsigned __int128 n = 1;

	if (vram_dtype_block(dtype, &elems, &bytes) < 0 || !elems || !bytes)
		return false;
	for (uint32_t d = 0; d < ndim; d++)
		if (shape[d] == 0)
			return nbytes == 0; /* whatever the other dimensions */
	for (uint32_t d = 0; d < ndim; d++) {
		/* more elements than bits in the file cannot be right */
		if (__builtin_mul_overflow(n, shape[d], &n) || n > ((unsigned __int128)1 << 70))
			return false;
	}
	return n % elems == 0 && n / elems * bytes == nbytes;
}

struct fuzz_span {
	uint64_t begin, end;
};

static inline int fuzz_span_cmp(const void *a, const void *b)
{
	const struct fuzz_span *x = a, *y = b;
	return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Every tensor, one at a time; the byte ranges go to spans[0, n). */
static inline uint64_t fuzz_check_tensors(const vram_model *m, struct fuzz_span *spans)
{
	int n = vram_model_tensor_count(m), nl = vram_model_layer_count(m);
	uint64_t lo = vram_model_data_offset(m), hi = lo + vram_model_data_size(m), total = 0;

	FUZZ_ASSERT(n >= 0 && nl >= 0, "counts %d %d", n, nl);
	FUZZ_ASSERT(hi >= lo && hi <= vram_model_file_size(m), "data [%llu, %llu) outside the file",
		    (unsigned long long)lo, (unsigned long long)hi);
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		struct vram_layer_info li = { .struct_size = sizeof(li) };

		FUZZ_ASSERT(vram_model_tensor(m, (uint32_t)i, &ti) == 0, "tensor %d", i);
		FUZZ_ASSERT(ti.name && vram_dtype_name(ti.dtype) && ti.component < VRAM_COMP_COUNT, "tensor %d", i);
		FUZZ_ASSERT(vram_model_find_tensor(m, ti.name) == i, "find \"%s\" (%d)", ti.name, i);
		FUZZ_ASSERT(ti.ndim == 0 || ti.shape, "tensor \"%s\": no shape", ti.name);
		FUZZ_ASSERT(fuzz_size_matches(ti.dtype, ti.shape, ti.ndim, ti.nbytes),
			    "tensor \"%s\": %s, %u dims, %llu bytes", ti.name, vram_dtype_name(ti.dtype), ti.ndim,
			    (unsigned long long)ti.nbytes);
		FUZZ_ASSERT(ti.file_offset >= lo && ti.nbytes <= hi - lo && ti.file_offset - lo <= hi - lo - ti.nbytes,
			    "tensor \"%s\": [%llu, +%llu) outside the data [%llu, %llu)", ti.name,
			    (unsigned long long)ti.file_offset, (unsigned long long)ti.nbytes,
			    (unsigned long long)lo, (unsigned long long)hi);
		FUZZ_ASSERT(ti.layer < (uint32_t)nl, "tensor \"%s\": layer %u", ti.name, ti.layer);
		FUZZ_ASSERT(vram_model_layer(m, ti.layer, &li) == 0, "layer %u", ti.layer);
		FUZZ_ASSERT((uint32_t)i >= li.first_tensor && (uint32_t)i - li.first_tensor < li.ntensors &&
			    li.component == ti.component, "tensor \"%s\" not in its layer", ti.name);
		spans[i] = (struct fuzz_span){ ti.file_offset, ti.file_offset + ti.nbytes };
		total += ti.nbytes;
	}
	FUZZ_ASSERT(vram_model_tensor(m, (uint32_t)n, &(struct vram_tensor_info){ .struct_size = 8 }) == -EINVAL,
		    "tensor past the end");
	return total;
}

/* Layers, components and metadata account for the tensors' bytes. */
static inline void fuzz_check_groups(const vram_model *m, uint64_t bytes)
{
	uint64_t lbytes = 0, cbytes = 0;
	uint32_t ltensors = 0, ctensors = 0, clayers = 0;
	int n = vram_model_tensor_count(m), nl = vram_model_layer_count(m), nm;

	for (int i = 0; i < nl; i++) {
		struct vram_layer_info li = { .struct_size = sizeof(li) };
		FUZZ_ASSERT(vram_model_layer(m, (uint32_t)i, &li) == 0 && li.name, "layer %d", i);
		FUZZ_ASSERT(li.first_tensor == ltensors && li.ntensors > 0, "layer %d: not contiguous", i);
		ltensors += li.ntensors;
		lbytes += li.nbytes;
	}
	FUZZ_ASSERT(ltensors == (uint32_t)n && lbytes == bytes, "layers account for the tensors");
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++) {
		struct vram_component_info ci = { .struct_size = sizeof(ci) };
		FUZZ_ASSERT(vram_model_component(m, c, &ci) == 0, "component %u", c);
		ctensors += ci.ntensors;
		clayers += ci.nlayers;
		cbytes += ci.nbytes;
	}
	FUZZ_ASSERT(ctensors == (uint32_t)n && clayers == (uint32_t)nl && cbytes == bytes,
		    "components account for the tensors");
	nm = vram_model_metadata_count(m);
	FUZZ_ASSERT(nm >= 0, "metadata count");
	for (int i = 0; i < nm; i++) {
		const char *k = NULL, *v = NULL;
		FUZZ_ASSERT(vram_model_metadata(m, (uint32_t)i, &k, &v) == 0 && k && v, "metadata %d", i);
		(void)strlen(k);
		(void)strlen(v);
	}
}

/* Every property above of the model m opened from path (size bytes). */
static inline void fuzz_check_model(const vram_model *m, const char *path, size_t size)
{
	const char *fmt = vram_model_format(m);
	int n = vram_model_tensor_count(m);
	struct fuzz_span *spans = malloc((n > 0 ? (size_t)n : 1) * sizeof(*spans));
	uint64_t bytes;

	FUZZ_ASSERT(spans, "out of memory");
	FUZZ_ASSERT(!strcmp(vram_model_path(m), path), "path");
	FUZZ_ASSERT(vram_model_file_size(m) == size, "file size");
	FUZZ_ASSERT(fmt, "no format");
	bytes = fuzz_check_tensors(m, spans);
	fuzz_check_groups(m, bytes);
	if (!strcmp(fmt, "safetensors")) {
		FUZZ_ASSERT(vram_model_data_offset(m) == 8 + vram_model_header_size(m) &&
			    vram_model_data_offset(m) + vram_model_data_size(m) == size, "layout");
		FUZZ_ASSERT(bytes == vram_model_data_size(m), "tensors hold %llu of %llu data bytes",
			    (unsigned long long)bytes, (unsigned long long)vram_model_data_size(m));
	} else if (!strcmp(fmt, "gguf")) {
		FUZZ_ASSERT(vram_model_data_offset(m) >= vram_model_header_size(m) &&
			    vram_model_data_offset(m) + vram_model_data_size(m) == size, "layout");
		uint64_t end = 0;
		qsort(spans, (size_t)n, sizeof(*spans), fuzz_span_cmp);
		for (int i = 0; i < n; i++) {
			if (spans[i].begin == spans[i].end)
				continue; /* empty tensors take no bytes */
			FUZZ_ASSERT(spans[i].begin >= end, "GGUF tensors overlap at %llu",
				    (unsigned long long)spans[i].begin);
			end = spans[i].end;
		}
	} else {
		FUZZ_ASSERT(!strcmp(fmt, "pytorch"), "format \"%s\"", fmt);
		FUZZ_ASSERT(vram_model_metadata_count(m) == 0, "PyTorch metadata");
	}
	free(spans);
}

/* A refusal of vram_model_open: a known errno, no model, a message that
 * starts with the path. */
static inline void fuzz_check_refusal(int r, const vram_model *m, const char *path)
{
	const char *msg = vram_last_error();

	FUZZ_ASSERT(r == -EINVAL || r == -ENOTSUP || r == -ENOMEM || r == -EFBIG || r == -EOVERFLOW,
		    "returned %d: %s", r, msg);
	FUZZ_ASSERT(m == NULL, "model set on failure");
	FUZZ_ASSERT(!strncmp(msg, path, strlen(path)) && msg[strlen(path)] == ':', "message \"%s\"", msg);
}

#endif
