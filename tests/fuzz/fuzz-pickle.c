/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the PyTorch checkpoint reader, in two modes picked by
 * the input's first bytes.
 *
 * - A zip ("PK\3\4"): the whole file, read from memory by torch_parse()
 *   (runtime/torchzip.c: the zip, then data.pkl through the unpickler).
 * - Anything else: a pickle, run by pk_load() (runtime/pickle.c) as the
 *   data.pkl of a checkpoint; one it accepts is then wrapped in the zip
 *   torch.save would write around it (archive/data.pkl, archive/byteorder,
 *   a zero-filled archive/data/KEY of each storage's size) and read again
 *   with torch_parse(), which must accept it and agree.
 * Every file torch_parse() accepts is also opened with vram_model_open()
 * (through a memfd), which must give the same tensors and pass the model
 * checks of fuzz-model.h.
 *
 * Properties checked beyond the sanitizers: a refusal is -EINVAL "PATH:
 * invalid PyTorch checkpoint: ..." or -ENOTSUP "PATH: unsupported PyTorch
 * checkpoint: ..." (or -ENOMEM), the result left zeroed; in an accepted
 * state dict, names are non-empty, without NUL and unique, storage keys are
 * record names (no '/', unique), every tensor's dtype has a name, its
 * elements make exactly its bytes, and its bytes lie inside its storage;
 * in an accepted file, every tensor's bytes lie inside the file, inside the
 * data span, and never over data.pkl's bytes.
 */
#include <errno.h>
#include <string.h>

#include "runtime/pickle.h"
#include "runtime/reader.h"
#include "runtime/torchzip.h"
#include "tests/fuzz/fuzz-model.h"

#define PT_PATH "fuzz.pt"
#define PT_ARCHIVE "archive"
#define MAX_WRAPPED (1u << 20)   /* storage bytes a wrapped pickle may have */

static void check_refusal(int r, const char *msg)
{
	static const char inv[] = PT_PATH ": invalid PyTorch checkpoint: ";
	static const char uns[] = PT_PATH ": unsupported PyTorch checkpoint: ";

	FUZZ_ASSERT(r == -EINVAL || r == -ENOTSUP || r == -ENOMEM, "returned %d: %s", r, msg);
	FUZZ_ASSERT(r == -ENOMEM || !strncmp(msg, r == -EINVAL ? inv : uns, strlen(r == -EINVAL ? inv : uns)),
		    "returned %d with message \"%s\"", r, msg);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void check_unique(const char **v, uint32_t n, const char *what)
{
	qsort(v, n, sizeof(*v), cmp_str);
	for (uint32_t i = 1; i < n; i++)
		FUZZ_ASSERT(strcmp(v[i - 1], v[i]), "duplicate %s \"%s\"", what, v[i]);
}

/* The state dict pk_load() returned. */
static void check_state_dict(const struct pk_state_dict *sd)
{
	const char **v = malloc(((size_t)sd->ntensors + sd->nstorages + 1) * sizeof(*v));

	FUZZ_ASSERT(v, "out of memory");
	FUZZ_ASSERT(sd->root, "no root");
	for (uint32_t i = 0; i < sd->nstorages; i++) {
		const struct pk_storage *s = &sd->storages[i];
		uint64_t es = s->dtype == PK_UNTYPED ? 1 : vram_dtype_bits(s->dtype) / 8;
		FUZZ_ASSERT(s->key && *s->key && !strchr(s->key, '/'), "storage %u key", i);
		FUZZ_ASSERT(s->dtype == PK_UNTYPED || vram_dtype_name(s->dtype), "storage %s dtype", s->key);
		FUZZ_ASSERT(es && s->nbytes / es == s->numel && s->nbytes % es == 0, "storage %s: %llu bytes", s->key,
			    (unsigned long long)s->nbytes);
		v[i] = s->key;
	}
	check_unique(v, sd->nstorages, "storage key");
	for (uint32_t i = 0; i < sd->ntensors; i++) {
		const struct pk_tensor *t = &sd->tensors[i];
		FUZZ_ASSERT(t->name && t->name_len && strlen(t->name) == t->name_len, "tensor %u name", i);
		FUZZ_ASSERT(t->storage < sd->nstorages, "tensor \"%s\": storage %u", t->name, t->storage);
		FUZZ_ASSERT(t->ndim <= PK_MAX_DIMS && (t->ndim == 0 || t->shape), "tensor \"%s\": %u dims", t->name,
			    t->ndim);
		FUZZ_ASSERT(vram_dtype_name(t->dtype) && fuzz_size_matches(t->dtype, t->shape, t->ndim, t->nbytes),
			    "tensor \"%s\": dtype %u, %llu bytes", t->name, t->dtype, (unsigned long long)t->nbytes);
		FUZZ_ASSERT(t->offset <= sd->storages[t->storage].nbytes &&
			    t->nbytes <= sd->storages[t->storage].nbytes - t->offset,
			    "tensor \"%s\": [%llu, +%llu) outside its storage of %llu bytes", t->name,
			    (unsigned long long)t->offset, (unsigned long long)t->nbytes,
			    (unsigned long long)sd->storages[t->storage].nbytes);
		v[i] = t->name;
	}
	check_unique(v, sd->ntensors, "tensor name");
	free(v);
}

/* The checkpoint torch_parse() returned, of a size-byte file. */
static void check_torch(const struct torch_file *t, size_t size)
{
	FUZZ_ASSERT(t->file_size == size && t->archive, "file");
	FUZZ_ASSERT(t->pickle_offset <= size && t->pickle_size <= size - t->pickle_offset, "data.pkl outside the file");
	FUZZ_ASSERT(t->ntensors == t->sd.ntensors, "tensor counts");
	FUZZ_ASSERT(t->data_begin <= t->data_end && t->data_end <= size, "data [%llu, %llu) outside the file",
		    (unsigned long long)t->data_begin, (unsigned long long)t->data_end);
	check_state_dict(&t->sd);
	for (uint32_t i = 0; i < t->ntensors; i++) {
		const struct tz_tensor *x = &t->tensors[i];
		FUZZ_ASSERT(!strcmp(x->name, t->sd.tensors[i].name) && x->nbytes == t->sd.tensors[i].nbytes,
			    "tensor %u differs from the state dict's", i);
		FUZZ_ASSERT(x->file_offset >= t->data_begin && x->file_offset <= t->data_end &&
			    x->nbytes <= t->data_end - x->file_offset, "tensor \"%s\": [%llu, +%llu) outside the data",
			    x->name, (unsigned long long)x->file_offset, (unsigned long long)x->nbytes);
		FUZZ_ASSERT(!x->nbytes || x->file_offset >= t->pickle_offset + t->pickle_size ||
			    x->file_offset + x->nbytes <= t->pickle_offset, "tensor \"%s\" over data.pkl", x->name);
	}
}

/* The model of the file holds torch_parse()'s tensors. */
static void check_same_model(const struct torch_file *t, const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	vram_model *m = NULL;
	int r = vram_model_open(path, &m);

	FUZZ_ASSERT(r == 0, "torch_parse accepts, vram_model_open returns %d: %s", r, vram_last_error());
	FUZZ_ASSERT(!strcmp(vram_model_format(m), "pytorch"), "format %s", vram_model_format(m));
	FUZZ_ASSERT(vram_model_tensor_count(m) == (int)t->ntensors, "tensor count");
	for (uint32_t i = 0; i < t->ntensors; i++) {
		const struct tz_tensor *x = &t->tensors[i];
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		int k = vram_model_find_tensor(m, x->name);

		FUZZ_ASSERT(k >= 0 && vram_model_tensor(m, (uint32_t)k, &ti) == 0, "tensor \"%s\" missing", x->name);
		FUZZ_ASSERT(ti.dtype == x->dtype && ti.ndim == x->ndim && ti.nbytes == x->nbytes &&
			    ti.file_offset == x->file_offset &&
			    (!x->ndim || !memcmp(ti.shape, x->shape, x->ndim * sizeof(*x->shape))),
			    "tensor \"%s\" differs", x->name);
	}
	fuzz_check_model(m, path, size);
	vram_model_close(m);
}

/* ---- a stored zip, as torch.save writes one --------------------------- */

struct zbuf {
	uint8_t *p;
	size_t n, cap;
};

static void zput(struct zbuf *b, const void *data, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		FUZZ_ASSERT(b->p, "out of memory");
	}
	if (n)
		memcpy(b->p + b->n, data, n);
	b->n += n;
}

static void zzero(struct zbuf *b, size_t n)
{
	zput(b, NULL, 0);
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		FUZZ_ASSERT(b->p, "out of memory");
	}
	memset(b->p + b->n, 0, n);
	b->n += n;
}

static void zle(struct zbuf *b, uint64_t v, unsigned n)
{
	uint8_t x[8];
	for (unsigned i = 0; i < n; i++)
		x[i] = (uint8_t)(v >> (8 * i));
	zput(b, x, n);
}

/* A stored entry: its local header and data into z, its central
 * directory entry into cd; data NULL: n zero bytes. */
static void zentry(struct zbuf *z, struct zbuf *cd, const char *name, const void *data, size_t n)
{
	size_t nl = strlen(name), at = z->n;
	uint32_t crc = 0;

	if (data) {
		crc = crc32_update(0, data, n);
	} else {
		static const uint8_t zero[4096];
		for (size_t o = 0; o < n; o += sizeof(zero))
			crc = crc32_update(crc, zero, n - o < sizeof(zero) ? n - o : sizeof(zero));
	}
	zle(z, 0x04034b50, 4);
	zle(z, 20, 2);                          /* version needed */
	zle(z, 0, 2);                           /* flags */
	zle(z, 0, 2);                           /* stored */
	zle(z, 0, 4);                           /* time, date */
	zle(z, crc, 4);
	zle(z, n, 4);
	zle(z, n, 4);
	zle(z, nl, 2);
	zle(z, 0, 2);
	zput(z, name, nl);
	if (data)
		zput(z, data, n);
	else
		zzero(z, n);
	zle(cd, 0x02014b50, 4);
	zle(cd, 20, 2);                         /* made by */
	zle(cd, 20, 2);
	zle(cd, 0, 2);
	zle(cd, 0, 2);
	zle(cd, 0, 4);
	zle(cd, crc, 4);
	zle(cd, n, 4);
	zle(cd, n, 4);
	zle(cd, nl, 2);
	zle(cd, 0, 2);                          /* extra */
	zle(cd, 0, 2);                          /* comment */
	zle(cd, 0, 2);                          /* disk */
	zle(cd, 0, 2);                          /* internal attributes */
	zle(cd, 0, 4);                          /* external attributes */
	zle(cd, at, 4);
	zput(cd, name, nl);
}

/* The checkpoint of pickle pkl whose state dict is sd; false when it
 * would be too large to be worth building. */
static bool wrap(const uint8_t *pkl, size_t len, const struct pk_state_dict *sd, struct zbuf *z)
{
	struct zbuf cd = { 0 };
	uint64_t total = 0;
	char name[600];
	uint32_t n = 3;

	for (uint32_t i = 0; i < sd->nstorages; i++) {
		total += sd->storages[i].nbytes;
		if (total > MAX_WRAPPED || strlen(sd->storages[i].key) > 256 || sd->nstorages > 4096)
			return false;
	}
	zentry(z, &cd, PT_ARCHIVE "/data.pkl", pkl, len);
	zentry(z, &cd, PT_ARCHIVE "/byteorder", "little", 6);
	for (uint32_t i = 0; i < sd->nstorages; i++) {
		snprintf(name, sizeof(name), PT_ARCHIVE "/data/%s", sd->storages[i].key);
		zentry(z, &cd, name, NULL, (size_t)sd->storages[i].nbytes);
		n++;
	}
	zentry(z, &cd, PT_ARCHIVE "/version", "3\n", 2);
	{
		size_t cd_off = z->n;
		zput(z, cd.p, cd.n);
		zle(z, 0x06054b50, 4);
		zle(z, 0, 2);
		zle(z, 0, 2);
		zle(z, n, 2);
		zle(z, n, 2);
		zle(z, cd.n, 4);
		zle(z, cd_off, 4);
		zle(z, 0, 2);
	}
	free(cd.p);
	return true;
}

/* A pickle: pk_load, then the checkpoint around it. */
static void fuzz_pickle(const uint8_t *data, size_t size)
{
	struct pk_state_dict sd;
	struct torch_file t;
	struct zbuf z = { 0 };
	struct src s;
	int r;

	memset(&sd, 0, sizeof(sd));
	r = pk_load(data, size, PT_PATH, PT_ARCHIVE "/data.pkl", &sd);
	if (r < 0) {
		check_refusal(r, vram_last_error());
		FUZZ_ASSERT(!sd.tensors && !sd.storages && !sd.arena.head, "result not freed");
		return;
	}
	check_state_dict(&sd);
	if (sd.nstorages < 65535 - 3 && wrap(data, size, &sd, &z)) {
		memset(&t, 0, sizeof(t));
		s = src_mem(z.p, z.n, PT_PATH);
		r = torch_parse(&s, &t);
		FUZZ_ASSERT(r == 0, "pk_load accepts data.pkl, torch_parse its zip returns %d: %s", r,
			    vram_last_error());
		check_torch(&t, z.n);
		FUZZ_ASSERT(t.ntensors == sd.ntensors && t.sd.nstorages == sd.nstorages, "the zip's state dict");
		check_same_model(&t, z.p, z.n);
		torch_free(&t);
	}
	free(z.p);
	pk_free(&sd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct torch_file t;
	struct src s;
	int r;

	if (size < 4 || memcmp(data, "PK\3\4", 4)) {
		fuzz_pickle(data, size);
		return 0;
	}
	memset(&t, 0, sizeof(t));
	s = src_mem(data, size, PT_PATH);
	r = torch_parse(&s, &t);
	if (r < 0) {
		check_refusal(r, vram_last_error());
		FUZZ_ASSERT(!t.tensors && !t.archive && !t.arena.head, "result not freed");
		return 0;
	}
	check_torch(&t, size);
	check_same_model(&t, data, size);
	torch_free(&t);
	return 0;
}
