/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the GGUF reader (runtime/gguf.c) on a whole .gguf file
 * (the input), parsed from memory with gguf_parse(); a file it accepts is
 * then opened with vram_model_open() (through a memfd) and must give the
 * same tensors.
 *
 * Properties checked beyond the sanitizers:
 * - a refusal is -EINVAL "PATH: invalid GGUF: ..." or -ENOTSUP
 *   "PATH: unsupported GGUF: ..." (or -ENOMEM), and leaves the result zeroed;
 * - an accepted file: version 2 or 3, a power-of-2 alignment, the data
 *   starting at the end of the infos rounded up to it; metadata keys and
 *   tensor names non-empty, without NUL, unique; each tensor has at most 4
 *   dimensions (1 past ndim), a known type, rows of whole blocks,
 *   elements = the product of ne and bytes = elements / block * block
 *   bytes; offsets aligned, in info order, never overlapping, and every
 *   tensor's bytes inside the file;
 * - the model of an accepted file is the "gguf" model of the same tensors
 *   (name, shape reversed, dtype, file offset = data start + offset,
 *   size) and passes every model check of fuzz-model.h.
 */
#include <errno.h>
#include <string.h>

#include "runtime/gguf.h"
#include "runtime/reader.h"
#include "tests/fuzz/fuzz-model.h"

#define GGUF_PATH "fuzz.gguf"

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The n strings at v, sorted in place, are all different. */
static void check_unique(const char **v, uint64_t n, const char *what)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_str);
	for (uint64_t i = 1; i < n; i++)
		FUZZ_ASSERT(strcmp(v[i - 1], v[i]), "duplicate %s \"%s\"", what, v[i]);
}

static void check_tensor(const struct gguf_file *g, const struct gguf_tensor *t, uint64_t expect)
{
	const struct gguf_type_info *ti = gguf_type(t->type);
	unsigned __int128 n = 1;

	FUZZ_ASSERT(t->name && t->name_len && strlen(t->name) == t->name_len, "tensor name");
	FUZZ_ASSERT(t->ndim <= GGUF_MAX_DIMS, "tensor \"%s\": %u dims", t->name, t->ndim);
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
		FUZZ_ASSERT(d < t->ndim || t->ne[d] == 1, "tensor \"%s\": ne[%u] past ndim", t->name, d);
		n *= t->ne[d]; /* at most 4 factors below 2^63: fits */
	}
	FUZZ_ASSERT(n == t->nelem, "tensor \"%s\": %llu elements", t->name, (unsigned long long)t->nelem);
	FUZZ_ASSERT(ti && ti->name && ti->block, "tensor \"%s\": type %u", t->name, t->type);
	FUZZ_ASSERT(t->ne[0] % ti->block == 0, "tensor \"%s\": rows of %llu in %s", t->name,
		    (unsigned long long)t->ne[0], ti->name);
	FUZZ_ASSERT(n / ti->block * ti->bytes == t->nbytes, "tensor \"%s\": %llu bytes", t->name,
		    (unsigned long long)t->nbytes);
	FUZZ_ASSERT(gguf_vram_dtype(t->type) < VRAM_DTYPE_COUNT, "tensor \"%s\": type %u has no dtype", t->name,
		    t->type);
	FUZZ_ASSERT(t->offset % g->alignment == 0 && t->offset >= expect, "tensor \"%s\": offset %llu (after %llu)",
		    t->name, (unsigned long long)t->offset, (unsigned long long)expect);
	FUZZ_ASSERT(t->offset <= g->file_size - g->data_offset && t->nbytes <= g->file_size - g->data_offset - t->offset,
		    "tensor \"%s\": [%llu, +%llu) past the end", t->name, (unsigned long long)t->offset,
		    (unsigned long long)t->nbytes);
}

static void check_parse(const struct gguf_file *g, size_t size)
{
	const char **names = malloc((size_t)(g->nkv + g->ntensors + 1) * sizeof(*names));
	uint64_t expect = 0;

	FUZZ_ASSERT(names, "out of memory");
	FUZZ_ASSERT(g->version == 2 || g->version == 3, "version %u", g->version);
	FUZZ_ASSERT(g->alignment && !(g->alignment & (g->alignment - 1)), "alignment %u", g->alignment);
	FUZZ_ASSERT(g->file_size == size, "file size");
	FUZZ_ASSERT(g->info_end >= 24 && g->info_end <= size, "infos end at %llu", (unsigned long long)g->info_end);
	FUZZ_ASSERT(g->data_offset >= g->info_end && g->data_offset - g->info_end < g->alignment &&
		    g->data_offset % g->alignment == 0, "data at %llu", (unsigned long long)g->data_offset);
	for (uint64_t i = 0; i < g->nkv; i++) {
		const struct gguf_kv *kv = &g->kv[i];
		FUZZ_ASSERT(kv->key && *kv->key && kv->value && kv->type < GGUF_VT_COUNT, "key %llu",
			    (unsigned long long)i);
		(void)strlen(kv->value);
		names[i] = kv->key;
	}
	check_unique(names, g->nkv, "key");
	if (g->ntensors)
		FUZZ_ASSERT(g->data_offset <= size, "data at %llu past the end", (unsigned long long)g->data_offset);
	for (uint64_t i = 0; i < g->ntensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];
		check_tensor(g, t, expect);
		expect = t->offset + t->nbytes;
		names[i] = t->name;
	}
	check_unique(names, g->ntensors, "tensor name");
	free(names);
}

/* The model of the same bytes holds the parse's tensors. */
static void check_same_model(const struct gguf_file *g, const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	vram_model *m = NULL;
	int r = vram_model_open(path, &m);

	FUZZ_ASSERT(r == 0, "gguf_parse accepts, vram_model_open returns %d: %s", r, vram_last_error());
	FUZZ_ASSERT(!strcmp(vram_model_format(m), "gguf"), "format %s", vram_model_format(m));
	FUZZ_ASSERT(vram_model_tensor_count(m) == (int)g->ntensors, "tensor count");
	FUZZ_ASSERT(vram_model_metadata_count(m) == (int)g->nkv, "metadata count");
	for (uint64_t i = 0; i < g->ntensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		int k = vram_model_find_tensor(m, t->name);

		FUZZ_ASSERT(k >= 0 && vram_model_tensor(m, (uint32_t)k, &ti) == 0, "tensor \"%s\" missing", t->name);
		FUZZ_ASSERT(ti.dtype == gguf_vram_dtype(t->type) && ti.ndim == t->ndim && ti.nbytes == t->nbytes &&
			    ti.file_offset == g->data_offset + t->offset, "tensor \"%s\" differs", t->name);
		for (uint32_t d = 0; d < t->ndim; d++)
			FUZZ_ASSERT(ti.shape[d] == t->ne[t->ndim - 1 - d], "tensor \"%s\": shape", t->name);
	}
	fuzz_check_model(m, path, size);
	vram_model_close(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct src s = src_mem(data, size, GGUF_PATH);
	struct gguf_file g;
	int r;

	memset(&g, 0, sizeof(g));
	r = gguf_parse(&s, &g);
	if (r < 0) {
		const char *msg = vram_last_error();
		FUZZ_ASSERT(r == -EINVAL || r == -ENOTSUP || r == -ENOMEM, "returned %d: %s", r, msg);
		FUZZ_ASSERT(!strncmp(msg, GGUF_PATH ": invalid GGUF: ", strlen(GGUF_PATH ": invalid GGUF: ")) ||
			    !strncmp(msg, GGUF_PATH ": unsupported GGUF: ", strlen(GGUF_PATH ": unsupported GGUF: ")) ||
			    r == -ENOMEM, "message \"%s\"", msg);
		FUZZ_ASSERT(!g.kv && !g.tensors && !g.arena.head, "result not freed");
		return 0;
	}
	check_parse(&g, size);
	check_same_model(&g, data, size);
	gguf_free(&g);
	return 0;
}
