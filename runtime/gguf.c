/* SPDX-License-Identifier: MIT */
/*
 * The strict GGUF reader (gguf.h): the header, the metadata and the tensor
 * infos are read through a window of the file (or straight from a memory
 * buffer, for fuzzing); the tensor data is never read.  Every count,
 * length and size is checked against the bytes the file has before it is
 * used, and every product for overflow.  docs/formats.md has the rules.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "runtime/gguf.h"
#include "runtime/internal.h"
#include "runtime/vram.h"

/* ======================================================================
 * Types
 * ====================================================================== */

/* ggml's tensor types as gguf-py 0.19 lists them (GGML_QUANT_SIZES). */
static const struct gguf_type_info types[GGUF_TYPE_COUNT] = {
	[0] = { "F32", 1, 4 },         [1] = { "F16", 1, 2 },
	[2] = { "Q4_0", 32, 18 },      [3] = { "Q4_1", 32, 20 },
	[4] = { "Q4_2", 0, 0 },        [5] = { "Q4_3", 0, 0 },
	[6] = { "Q5_0", 32, 22 },      [7] = { "Q5_1", 32, 24 },
	[8] = { "Q8_0", 32, 34 },      [9] = { "Q8_1", 32, 40 },
	[10] = { "Q2_K", 256, 84 },    [11] = { "Q3_K", 256, 110 },
	[12] = { "Q4_K", 256, 144 },   [13] = { "Q5_K", 256, 176 },
	[14] = { "Q6_K", 256, 210 },   [15] = { "Q8_K", 256, 292 },
	[16] = { "IQ2_XXS", 256, 66 }, [17] = { "IQ2_XS", 256, 74 },
	[18] = { "IQ3_XXS", 256, 98 }, [19] = { "IQ1_S", 256, 50 },
	[20] = { "IQ4_NL", 32, 18 },   [21] = { "IQ3_S", 256, 110 },
	[22] = { "IQ2_S", 256, 82 },   [23] = { "IQ4_XS", 256, 136 },
	[24] = { "I8", 1, 1 },         [25] = { "I16", 1, 2 },
	[26] = { "I32", 1, 4 },        [27] = { "I64", 1, 8 },
	[28] = { "F64", 1, 8 },        [29] = { "IQ1_M", 256, 56 },
	[30] = { "BF16", 1, 2 },
	[31] = { "Q4_0_4_4", 0, 0 },   [32] = { "Q4_0_4_8", 0, 0 },
	[33] = { "Q4_0_8_8", 0, 0 },
	[34] = { "TQ1_0", 256, 54 },   [35] = { "TQ2_0", 256, 66 },
	[36] = { "IQ4_NL_4_4", 0, 0 }, [37] = { "IQ4_NL_4_8", 0, 0 },
	[38] = { "IQ4_NL_8_8", 0, 0 },
	[39] = { "MXFP4", 32, 17 },    [40] = { "NVFP4", 64, 36 },
	[41] = { "Q1_0", 128, 18 },
};

/* The type of ggml id type (gguf.h). */
const struct gguf_type_info *gguf_type(uint32_t type)
{
	return type < GGUF_TYPE_COUNT ? &types[type] : NULL;
}

/* ggml ids of VRAM_DTYPE_Q4_0 .. VRAM_DTYPE_Q1_0, in the enum's order. */
static const uint8_t qtypes[] = { 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
				  21, 22, 23, 29, 34, 35, 39, 40, 41 };
_Static_assert(ARRAY_SIZE(qtypes) == VRAM_DTYPE_COUNT - VRAM_DTYPE_Q4_0, "one ggml type per quantised dtype");

/* The vramd dtype of ggml type `type` (gguf.h). */
uint32_t gguf_vram_dtype(uint32_t type)
{
	switch (type) {
	case 0: return VRAM_DTYPE_F32;
	case 1: return VRAM_DTYPE_F16;
	case 24: return VRAM_DTYPE_I8;
	case 25: return VRAM_DTYPE_I16;
	case 26: return VRAM_DTYPE_I32;
	case 27: return VRAM_DTYPE_I64;
	case 28: return VRAM_DTYPE_F64;
	case 30: return VRAM_DTYPE_BF16;
	default: break;
	}
	for (uint32_t i = 0; i < ARRAY_SIZE(qtypes); i++)
		if (qtypes[i] == type)
			return VRAM_DTYPE_Q4_0 + i;
	return VRAM_DTYPE_COUNT;
}

/* The ggml type of vramd dtype `dtype` (gguf.h). */
uint32_t gguf_ggml_type(uint32_t dtype)
{
	for (uint32_t t = 0; t < GGUF_TYPE_COUNT; t++)
		if (types[t].block && gguf_vram_dtype(t) == dtype)
			return t;
	return UINT32_MAX;
}

static const char *const vtype_names[GGUF_VT_COUNT] = {
	"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL",
	"STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
};
/* Bytes of a scalar of each type; 0 for STRING and ARRAY. */
static const uint8_t vtype_size[GGUF_VT_COUNT] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };

/* Name of a metadata value type (gguf.h). */
const char *gguf_vtype_name(uint32_t t)
{
	return t < GGUF_VT_COUNT ? vtype_names[t] : "?";
}

/* llama.cpp's LlamaFileType, without MOSTLY_ (gguf.h). */
const char *gguf_file_type_name(uint64_t ftype)
{
	static const char *const names[] = {
		[0] = "ALL_F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [7] = "Q8_0", [8] = "Q5_0",
		[9] = "Q5_1", [10] = "Q2_K", [11] = "Q3_K_S", [12] = "Q3_K_M", [13] = "Q3_K_L",
		[14] = "Q4_K_S", [15] = "Q4_K_M", [16] = "Q5_K_S", [17] = "Q5_K_M", [18] = "Q6_K",
		[19] = "IQ2_XXS", [20] = "IQ2_XS", [21] = "Q2_K_S", [22] = "IQ3_XS", [23] = "IQ3_XXS",
		[24] = "IQ1_S", [25] = "IQ4_NL", [26] = "IQ3_S", [27] = "IQ3_M", [28] = "IQ2_S",
		[29] = "IQ2_M", [30] = "IQ4_XS", [31] = "IQ1_M", [32] = "BF16", [36] = "TQ1_0",
		[37] = "TQ2_0", [38] = "MXFP4_MOE", [39] = "NVFP4", [40] = "Q1_0",
	};

	if (ftype == 1024)
		return "GUESSED";
	return ftype < ARRAY_SIZE(names) ? names[ftype] : NULL;
}

/* ======================================================================
 * Cursor and messages
 * ====================================================================== */

/* Bytes read from a file at a time (a memory source needs none). */
#define GG_WINDOW (1u << 20)

struct gg {
	const struct src *s;
	struct gguf_file *g;
	uint64_t pos;            /* file offset of the next byte */
	const uint8_t *win;      /* file bytes [win_off, win_off + win_len) */
	uint64_t win_off;
	size_t win_len;
	uint8_t *buf;            /* the window's storage (file sources) */
	size_t buf_cap;
};

static int gg_fail(const struct gg *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int gg_fail(const struct gg *c, int err, const char *fmt, ...)
{
	char reason[896];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	return rt_error(err, "%s: %s GGUF: %s", c->s->path, err == -ENOTSUP ? "unsupported" : "invalid",
			reason);
}
#define gg_invalid(c, ...) gg_fail(c, -EINVAL, __VA_ARGS__)

/* Makes the n bytes at the cursor readable at *ret (without moving it).
 * what names them in the message when the file ends first. */
static int gg_peek(struct gg *c, uint64_t n, const uint8_t **ret, const char *what)
{
	uint64_t size = c->s->size;
	size_t len;
	int r;

	if (n > size || c->pos > size - n)
		return gg_invalid(c, "file is truncated: %s at byte %" PRIu64 " needs %" PRIu64
				  " bytes, the file has %" PRIu64, what, c->pos, n, size);
	if (c->s->mem) {
		*ret = c->s->mem + c->pos;
		return 0;
	}
	if (c->win && c->pos >= c->win_off && c->pos - c->win_off + n <= c->win_len) {
		*ret = c->win + (c->pos - c->win_off);
		return 0;
	}
	/* n is at most GGUF_MAX_KEPT_STRING here (callers skip longer runs). */
	len = (size_t)MIN(MAX(n, (uint64_t)GG_WINDOW), size - c->pos);
	if (len > c->buf_cap) {
		uint8_t *b = realloc(c->buf, len);
		if (!b)
			return rt_error(-ENOMEM, "%s: out of memory", c->s->path);
		c->buf = b;
		c->buf_cap = len;
	}
	c->win = NULL;
	r = src_read(c->s, c->buf, len, c->pos, "the GGUF header");
	if (r < 0)
		return r;
	c->win = c->buf;
	c->win_off = c->pos;
	c->win_len = len;
	*ret = c->win;
	return 0;
}

/* Reads n bytes at the cursor and moves past them. */
static int gg_take(struct gg *c, uint64_t n, const uint8_t **ret, const char *what)
{
	int r = gg_peek(c, n, ret, what);
	if (r == 0)
		c->pos += n;
	return r;
}

/* Moves past n bytes that need not be read. */
static int gg_skip(struct gg *c, uint64_t n, const char *what)
{
	if (n > c->s->size || c->pos > c->s->size - n)
		return gg_invalid(c, "file is truncated: %s at byte %" PRIu64 " needs %" PRIu64
				  " bytes, the file has %" PRIu64, what, c->pos, n, c->s->size);
	c->pos += n;
	return 0;
}

static uint64_t le(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = n; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

static int gg_u32(struct gg *c, uint32_t *ret, const char *what)
{
	const uint8_t *p;
	int r = gg_take(c, 4, &p, what);

	if (r == 0)
		*ret = (uint32_t)le(p, 4);
	return r;
}

static int gg_u64(struct gg *c, uint64_t *ret, const char *what)
{
	const uint8_t *p;
	int r = gg_take(c, 8, &p, what);

	if (r == 0)
		*ret = le(p, 8);
	return r;
}

/* A key or tensor name: u64 length, then bytes that must be non-empty, at
 * most max long, UTF-8 and free of NUL.  label is "key 3" / "tensor 3". */
static int gg_name(struct gg *c, const char *label, uint64_t max, const char **ret, uint32_t *ret_len)
{
	const uint8_t *p;
	uint64_t n;
	struct qname q;
	char what[64];
	int r;

	snprintf(what, sizeof(what), "the length of %s's name", label);
	if ((r = gg_u64(c, &n, what)) < 0)
		return r;
	if (n == 0)
		return gg_invalid(c, "%s has an empty name", label);
	if (n > max)
		return gg_invalid(c, "%s's name is %" PRIu64 " bytes long (the limit is %" PRIu64 ")", label, n, max);
	snprintf(what, sizeof(what), "%s's name", label);
	if ((r = gg_take(c, n, &p, what)) < 0)
		return r;
	if (memchr(p, 0, n))
		return gg_invalid(c, "%s's name %s contains a NUL byte", label, qname(&q, (const char *)p, n));
	if (!utf8_valid(p, n))
		return gg_invalid(c, "%s's name %s is not valid UTF-8", label, qname(&q, (const char *)p, n));
	*ret = arena_strndup(&c->g->arena, (const char *)p, n);
	if (!*ret)
		return rt_error(-ENOMEM, "%s: out of memory", c->s->path);
	*ret_len = (uint32_t)n;
	return 0;
}

/* ======================================================================
 * Metadata
 * ====================================================================== */

/* One scalar of fixed size at p as text, into buf; its integer value (as
 * unsigned, sign-extended) in *ret_u. */
static void fmt_scalar(uint32_t type, const uint8_t *p, char *buf, size_t len, uint64_t *ret_u)
{
	uint64_t v = le(p, vtype_size[type]);
	union { uint32_t u; float f; } f32;
	union { uint64_t u; double d; } f64;

	switch (type) {
	case GGUF_VT_INT8: v = (uint64_t)(int64_t)(int8_t)v; break;
	case GGUF_VT_INT16: v = (uint64_t)(int64_t)(int16_t)v; break;
	case GGUF_VT_INT32: v = (uint64_t)(int64_t)(int32_t)v; break;
	default: break;
	}
	*ret_u = v;
	switch (type) {
	case GGUF_VT_INT8: case GGUF_VT_INT16: case GGUF_VT_INT32: case GGUF_VT_INT64:
		snprintf(buf, len, "%" PRId64, (int64_t)v);
		break;
	case GGUF_VT_FLOAT32:
		f32.u = (uint32_t)v;
		snprintf(buf, len, "%.9g", (double)f32.f);
		break;
	case GGUF_VT_FLOAT64:
		f64.u = v;
		snprintf(buf, len, "%.17g", f64.d);
		break;
	case GGUF_VT_BOOL:
		snprintf(buf, len, "%s", v ? "true" : "false");
		break;
	default:
		snprintf(buf, len, "%" PRIu64, v);
		break;
	}
}

/* Reads one scalar of fixed size (bools must be 0 or 1). */
static int kv_scalar(struct gg *c, struct gguf_kv *kv, uint32_t type, char *buf, size_t len, uint64_t *ret_u)
{
	struct qname q;
	const uint8_t *p;
	int r = gg_take(c, vtype_size[type], &p, "a metadata value");

	if (r < 0)
		return r;
	if (type == GGUF_VT_BOOL && *p > 1)
		return gg_invalid(c, "key %s: bool value %u is not 0 or 1", qname(&q, kv->key, strlen(kv->key)), *p);
	fmt_scalar(type, p, buf, len, ret_u);
	return 0;
}

/* A string value: kept when short enough, else described and skipped. */
static int kv_string(struct gg *c, struct gguf_kv *kv, bool keep, const char **ret)
{
	struct qname q;
	const uint8_t *p;
	uint64_t n;
	char desc[64];
	int r;

	if ((r = gg_u64(c, &n, "a string's length")) < 0)
		return r;
	if (n > c->s->size - c->pos)
		return gg_invalid(c, "key %s: a string of %" PRIu64 " bytes at byte %" PRIu64
				  " runs past the end of the file (%" PRIu64 " bytes)",
				  qname(&q, kv->key, strlen(kv->key)), n, c->pos, c->s->size);
	if (!keep)
		return gg_skip(c, n, "a string");
	if (n > GGUF_MAX_KEPT_STRING) {
		snprintf(desc, sizeof(desc), "<string of %" PRIu64 " bytes>", n);
		*ret = arena_strndup(&c->g->arena, desc, strlen(desc));
		if (!*ret)
			return rt_error(-ENOMEM, "%s: out of memory", c->s->path);
		return gg_skip(c, n, "a string");
	}
	if ((r = gg_take(c, n, &p, "a string")) < 0)
		return r;
	*ret = arena_strndup(&c->g->arena, (const char *)p, n);
	if (!*ret)
		return rt_error(-ENOMEM, "%s: out of memory", c->s->path);
	return 0;
}

/* An array value: elements checked (bools 0 or 1, strings within the
 * file), short numeric arrays formatted. */
static int kv_array(struct gg *c, struct gguf_kv *kv, char *text, size_t tlen)
{
	struct qname q;
	const char *k = kv->key;
	uint32_t t;
	uint64_t n, sz;
	size_t o = 0;
	int r;

	if ((r = gg_u32(c, &t, "an array's element type")) < 0 || (r = gg_u64(c, &n, "an array's length")) < 0)
		return r;
	if (t == GGUF_VT_ARRAY)
		return gg_invalid(c, "key %s: arrays of arrays are not supported (ggml rejects them)",
				  qname(&q, k, strlen(k)));
	if (t >= GGUF_VT_COUNT)
		return gg_invalid(c, "key %s: unknown array element type %u", qname(&q, k, strlen(k)), t);
	kv->arr_type = t;
	kv->arr_len = n;
	sz = t == GGUF_VT_STRING ? 8 : vtype_size[t];
	if (n > (c->s->size - c->pos) / sz)
		return gg_invalid(c, "key %s: an array of %" PRIu64 " %s values at byte %" PRIu64
				  " runs past the end of the file (%" PRIu64 " bytes)",
				  qname(&q, k, strlen(k)), n, vtype_names[t], c->pos, c->s->size);
	if (t == GGUF_VT_STRING) {
		for (uint64_t i = 0; i < n; i++)
			if ((r = kv_string(c, kv, false, NULL)) < 0)
				return r;
	} else if (t == GGUF_VT_BOOL || n <= 16) {
		for (uint64_t i = 0; i < n; i++) {
			char one[40];
			uint64_t u;
			if ((r = kv_scalar(c, kv, t, one, sizeof(one), &u)) < 0)
				return r;
			if (n <= 16 && o < tlen)
				o += (size_t)snprintf(text + o, tlen - o, "%s%s", i ? ", " : "[", one);
		}
	} else if ((r = gg_skip(c, n * sz, "an array")) < 0) {
		return r;
	}
	if (n <= 16 && t != GGUF_VT_STRING)
		snprintf(text + MIN(o, tlen), tlen - MIN(o, tlen), "%s", n ? "]" : "[]");
	else
		snprintf(text, tlen, "<array of %" PRIu64 " %s>", n, vtype_names[t]);
	return 0;
}

/* general.alignment: a UINT32 power of 2 (ggml and gguf-py insist on the
 * type too). */
static int check_alignment(struct gg *c, const struct gguf_kv *kv)
{
	if (kv->type != GGUF_VT_UINT32)
		return gg_invalid(c, "general.alignment is %s, not UINT32", vtype_names[kv->type]);
	if (kv->u == 0 || (kv->u & (kv->u - 1)))
		return gg_invalid(c, "general.alignment %" PRIu64 " is not a power of 2", kv->u);
	c->g->alignment = (uint32_t)kv->u;
	return 0;
}

/* Metadata entry i. */
static int parse_kv(struct gg *c, uint64_t i, struct gguf_kv *kv)
{
	struct qname q;
	char label[48], text[512];
	uint32_t len;
	int r;

	snprintf(label, sizeof(label), "key %" PRIu64, i);
	if ((r = gg_name(c, label, GGUF_MAX_KEY, &kv->key, &len)) < 0)
		return r;
	if ((r = gg_u32(c, &kv->type, "a value type")) < 0)
		return r;
	if (kv->type >= GGUF_VT_COUNT)
		return gg_invalid(c, "key %s: unknown value type %u", qname(&q, kv->key, len), kv->type);
	if (kv->type == GGUF_VT_STRING) {
		r = kv_string(c, kv, true, &kv->value);
	} else {
		if (kv->type == GGUF_VT_ARRAY)
			r = kv_array(c, kv, text, sizeof(text));
		else
			r = kv_scalar(c, kv, kv->type, text, sizeof(text), &kv->u);
		if (r == 0 && !(kv->value = arena_strndup(&c->g->arena, text, strlen(text))))
			r = rt_error(-ENOMEM, "%s: out of memory", c->s->path);
	}
	if (r < 0)
		return r;
	if (!strcmp(kv->key, "general.alignment"))
		return check_alignment(c, kv);
	return 0;
}

/* ======================================================================
 * Tensor infos
 * ====================================================================== */

/* Elements and bytes of t, overflow-checked: ggml's row-major byte count,
 * blocks per row times the other dimensions. */
static int tensor_sizes(struct gg *c, struct gguf_tensor *t)
{
	const struct gguf_type_info *ti = &types[t->type];
	struct qname q;
	char sbuf[160];
	uint64_t n = 1, nbytes;

	/* In shape order, as safetensors' reference folds it. */
	for (uint32_t j = 0; j < t->ndim; j++)
		if (__builtin_mul_overflow(n, t->ne[j], &n) || n > INT64_MAX)
			return gg_invalid(c, "tensor %s: ne %s has 2^63 elements or more",
					  qname(&q, t->name, t->name_len), fmt_shape(sbuf, sizeof(sbuf), t->ne, t->ndim));
	t->nelem = n;
	if (t->ne[0] % ti->block)
		return gg_invalid(c, "tensor %s: %s rows of %" PRIu64 " elements are not a whole number of %u-element "
				  "blocks", qname(&q, t->name, t->name_len), ti->name, t->ne[0], ti->block);
	nbytes = 0;
	if (n && __builtin_mul_overflow(n / ti->block, (uint64_t)ti->bytes, &nbytes))
		return gg_invalid(c, "tensor %s: %s ne %s is 2^64 bytes or more", qname(&q, t->name, t->name_len),
				  ti->name, fmt_shape(sbuf, sizeof(sbuf), t->ne, t->ndim));
	t->nbytes = nbytes;
	return 0;
}

/* Tensor info i. */
static int parse_tensor(struct gg *c, uint64_t i, struct gguf_tensor *t)
{
	struct qname q;
	char label[48];
	int r;

	snprintf(label, sizeof(label), "tensor %" PRIu64, i);
	if ((r = gg_name(c, label, GGUF_MAX_NAME, &t->name, &t->name_len)) < 0)
		return r;
	if ((r = gg_u32(c, &t->ndim, "a tensor's dimension count")) < 0)
		return r;
	if (t->ndim > GGUF_MAX_DIMS)
		return gg_invalid(c, "tensor %s has %u dimensions (at most %u)", qname(&q, t->name, t->name_len),
				  t->ndim, GGUF_MAX_DIMS);
	for (uint32_t j = 0; j < GGUF_MAX_DIMS; j++) {
		t->ne[j] = 1;
		if (j >= t->ndim)
			continue;
		if ((r = gg_u64(c, &t->ne[j], "a tensor dimension")) < 0)
			return r;
		if (t->ne[j] > INT64_MAX)
			return gg_invalid(c, "tensor %s: ne[%u] is %" PRIu64 ", more than 2^63 - 1",
					  qname(&q, t->name, t->name_len), j, t->ne[j]);
	}
	if ((r = gg_u32(c, &t->type, "a tensor type")) < 0)
		return r;
	if (t->type >= GGUF_TYPE_COUNT || !types[t->type].name)
		return gg_invalid(c, "tensor %s: unknown type %u", qname(&q, t->name, t->name_len), t->type);
	if (!types[t->type].block)
		return gg_invalid(c, "tensor %s: type %u (%s) was removed from GGUF files",
				  qname(&q, t->name, t->name_len), t->type, types[t->type].name);
	if ((r = gg_u64(c, &t->offset, "a tensor offset")) < 0)
		return r;
	return tensor_sizes(c, t);
}

/* ======================================================================
 * Whole-file checks
 * ====================================================================== */

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Names (the first member of n structs of size sz at base) must be
 * unique; what is "key" or "tensor name". */
static int check_unique(struct gg *c, const void *base, uint64_t n, size_t sz, const char *what)
{
	_cleanup_free_ const char **v = NULL;
	struct qname q;

	if (n < 2)
		return 0;
	v = malloc(n * sizeof(*v));
	if (!v)
		return rt_error(-ENOMEM, "%s: out of memory", c->s->path);
	for (uint64_t i = 0; i < n; i++)
		v[i] = *(const char *const *)((const char *)base + i * sz);
	qsort(v, n, sizeof(*v), str_cmp);
	for (uint64_t i = 1; i < n; i++)
		if (!strcmp(v[i - 1], v[i]))
			return gg_invalid(c, "duplicate %s %s", what, qname(&q, v[i], strlen(v[i])));
	return 0;
}

static bool pad_to(uint64_t x, uint64_t align, uint64_t *ret)
{
	if (x > UINT64_MAX - (align - 1))
		return false;
	*ret = (x + align - 1) & ~(align - 1);
	return true;
}

/* The data section: tensors one after the other in info order, each
 * padded to the alignment (ggml's rule), and within the file. */
static int check_layout(struct gg *c)
{
	struct gguf_file *g = c->g;
	const struct gguf_tensor *last = NULL;
	struct qname q;
	uint64_t expect = 0, a = g->alignment, end;

	if (!pad_to(g->info_end, a, &g->data_offset))
		return gg_invalid(c, "the data section's start overflows");
	for (uint64_t i = 0; i < g->ntensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];

		if (t->offset != expect)
			return gg_invalid(c, "tensor %s: offset %" PRIu64 ", expected %" PRIu64 " (tensors follow each "
					  "other in the order of their infos, each padded to the alignment of %" PRIu64 ")",
					  qname(&q, t->name, t->name_len), t->offset, expect, a);
		if (!pad_to(t->nbytes, a, &end) || end > UINT64_MAX - expect)
			return gg_invalid(c, "tensor %s: the data section's size overflows",
					  qname(&q, t->name, t->name_len));
		expect += end;
		last = t;
	}
	g->data_size = expect;
	if (!last) {
		/* No data: the file ends after the infos, padded or not. */
		if (g->file_size > g->data_offset)
			return gg_invalid(c, "%" PRIu64 " bytes follow the header (it ends at byte %" PRIu64
					  ", padded to %" PRIu64 ", and the file has no tensors)",
					  g->file_size - g->data_offset, g->info_end, g->data_offset);
		return 0;
	}
	/* offset + nbytes <= expect: no overflow there. */
	if (__builtin_add_overflow(g->data_offset, last->offset + last->nbytes, &end) || end > g->file_size)
		return gg_invalid(c, "file is truncated: tensor %s needs data up to byte %" PRIu64 ", the file has %"
				  PRIu64, qname(&q, last->name, last->name_len),
				  end < g->data_offset ? UINT64_MAX : end, g->file_size);
	if (g->file_size - g->data_offset > expect)
		return gg_invalid(c, "%" PRIu64 " bytes follow the data (the last tensor's padding ends at byte %"
				  PRIu64 ", the file has %" PRIu64 ")", g->file_size - g->data_offset - expect,
				  g->data_offset + expect, g->file_size);
	return 0;
}

/* ======================================================================
 * Parse
 * ====================================================================== */

/* Magic, version, counts. */
static int parse_header(struct gg *c)
{
	struct gguf_file *g = c->g;
	const uint8_t *p;
	int r;

	if (c->s->size < 4)
		return gg_invalid(c, "file is %" PRIu64 " bytes, too short for the magic", c->s->size);
	if ((r = gg_peek(c, 4, &p, "the magic")) < 0)
		return r;
	if (memcmp(p, "GGUF", 4))
		return gg_invalid(c, "no GGUF magic (the file starts with %02x %02x %02x %02x)", p[0], p[1], p[2],
				  p[3]);
	if (c->s->size < 24)
		return gg_invalid(c, "file is %" PRIu64 " bytes, too short for the 24-byte header", c->s->size);
	c->pos = 4;
	if ((r = gg_u32(c, &g->version, "the version")) < 0)
		return r;
	if ((g->version & 0xffff) == 0)
		return gg_fail(c, -ENOTSUP, "version field 0x%08x: a big-endian file (only little-endian "
			       "GGUF is read)", g->version);
	if (g->version == 1)
		return gg_fail(c, -ENOTSUP, "version 1 (obsolete; ggml and gguf-py read 2 and 3 only)");
	if (g->version != 2 && g->version != 3)
		return gg_fail(c, -ENOTSUP, "version %u (versions 2 and 3 are read)", g->version);
	if ((r = gg_u64(c, &g->ntensors, "the tensor count")) < 0 || (r = gg_u64(c, &g->nkv, "the key count")) < 0)
		return r;
	/* The smallest entries: a 1-byte key, type, 1-byte value (13); a
	 * 1-byte name, no dims, type, offset (25). */
	if (g->nkv > (c->s->size - c->pos) / 13)
		return gg_invalid(c, "%" PRIu64 " metadata keys cannot fit in a %" PRIu64 "-byte file", g->nkv,
				  c->s->size);
	if (g->ntensors > (c->s->size - c->pos) / 25 || g->ntensors > INT32_MAX)
		return gg_invalid(c, "%" PRIu64 " tensors cannot fit in a %" PRIu64 "-byte file", g->ntensors,
				  c->s->size);
	return 0;
}

static int parse_all(struct gg *c)
{
	struct gguf_file *g = c->g;
	int r;

	g->file_size = c->s->size;
	g->alignment = GGUF_DEFAULT_ALIGNMENT;
	if ((r = parse_header(c)) < 0)
		return r;
	g->kv = arena_alloc(&g->arena, (g->nkv ? g->nkv : 1) * sizeof(*g->kv));
	g->tensors = arena_alloc(&g->arena, (g->ntensors ? g->ntensors : 1) * sizeof(*g->tensors));
	if (!g->kv || !g->tensors)
		return rt_error(-ENOMEM, "%s: out of memory", c->s->path);
	for (uint64_t i = 0; i < g->nkv; i++)
		if ((r = parse_kv(c, i, &g->kv[i])) < 0)
			return r;
	if ((r = check_unique(c, g->kv, g->nkv, sizeof(*g->kv), "key")) < 0)
		return r;
	for (uint64_t i = 0; i < g->ntensors; i++)
		if ((r = parse_tensor(c, i, &g->tensors[i])) < 0)
			return r;
	if ((r = check_unique(c, g->tensors, g->ntensors, sizeof(*g->tensors), "tensor name")) < 0)
		return r;
	g->info_end = c->pos;
	return check_layout(c);
}

/* Parses s into *g (gguf.h). */
int gguf_parse(const struct src *s, struct gguf_file *g)
{
	struct gg c = { .s = s, .g = g };
	int r;

	r = parse_all(&c);
	free(c.buf);
	if (r < 0)
		gguf_free(g);
	return r;
}

/* Frees *g (gguf.h). */
void gguf_free(struct gguf_file *g)
{
	arena_free(&g->arena);
	*g = (struct gguf_file){ 0 };
}

/* The entry called key, or NULL (gguf.h). */
const struct gguf_kv *gguf_find_kv(const struct gguf_file *g, const char *key)
{
	for (uint64_t i = 0; i < g->nkv; i++)
		if (!strcmp(g->kv[i].key, key))
			return &g->kv[i];
	return NULL;
}
