/* SPDX-License-Identifier: MIT */
/*
 * The strict safetensors reader: the rules of the reference implementation
 * 0.8 (facts.md §3), with duplicate keys rejected.  JSON is parsed by
 * jansson; the checks done here before it (lengths, BOM, UTF-8, NUL
 * padding, nesting depth) exist to name the reason better than a parser
 * error would, and one covers for jansson: a NUL byte anywhere is refused
 * (jansson drops one that ends a number or a literal).  The header is read
 * with pread from the fd the model opened (model.c): nothing is mapped, and
 * the path is not opened again.
 *
 * docs/safetensors.md lists every rejection reason and the deviations.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "common/cleanup.h"
#include "runtime/dtype.h"
#include "runtime/internal.h"
#include "runtime/model.h"
#include "runtime/reader.h"

/* ======================================================================
 * Messages
 * ====================================================================== */

struct st {
	const char *path;
	const char *text;        /* the header, len bytes, not NUL-terminated */
	size_t len;
	json_t **negzero;        /* "-0" numbers, sorted by address */
	size_t nnegzero;
};

/* Sets "PATH: invalid safetensors: REASON" and returns -EINVAL. */
static int st_invalid(const struct st *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int st_invalid(const struct st *st, const char *fmt, ...)
{
	char reason[896];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	return rt_error(-EINVAL, "%s: invalid safetensors: %s", st->path, reason);
}

/* A NUL-terminated name quoted for a message (reader.h's qname). */
static const char *quote(struct qname *b, const char *s)
{
	return qname(b, s, strlen(s));
}

static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a real number";
	case JSON_TRUE: return "true";
	case JSON_FALSE: return "false";
	case JSON_NULL: return "null";
	}
	return "a value";
}

/* ======================================================================
 * Checks on the raw header
 * ====================================================================== */

static bool is_ws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * A structural scan of the header text: strings are skipped, brackets
 * counted, object keys told from values, number tokens counted.  Not a
 * parser (jansson validates); it finds what jansson does not report:
 * nesting deeper than the reference allows, numbers written "-0" (jansson
 * reads them as the integer 0, the reference as -0.0, a float), and, at a
 * jansson error's position, which tensor and field it is in.
 */
struct scan {
	size_t too_deep_at;      /* offset of the bracket past ST_MAX_DEPTH, or SIZE_MAX */
	size_t nnumbers;
	size_t *negzero;         /* indices (among number tokens) of "-0" */
	size_t nnegzero, negzero_cap;
	/* state where the scan stopped */
	unsigned depth;
	size_t key_off[3], key_len[3]; /* current key at depth 1 and 2 (raw) */
	size_t last_key_off, last_key_len;
	unsigned last_key_depth;
};

static void scan_done(struct scan *sc)
{
	free(sc->negzero);
}

static int scan_header(const char *s, size_t stop, struct scan *sc)
{
	bool is_obj[ST_MAX_DEPTH + 2] = { false };
	bool expect_key[ST_MAX_DEPTH + 2] = { false };
	unsigned d = 0;
	size_t i = 0;

	sc->too_deep_at = SIZE_MAX;
	while (i < stop) {
		char c = s[i];

		switch (c) {
		case '{':
		case '[':
			if (d == ST_MAX_DEPTH) {
				sc->too_deep_at = i;
				sc->depth = d;
				return 0;
			}
			d++;
			is_obj[d] = c == '{';
			expect_key[d] = c == '{';
			i++;
			break;
		case '}':
		case ']':
			if (d > 0)
				d--;
			i++;
			break;
		case ',':
			if (is_obj[d])
				expect_key[d] = true;
			i++;
			break;
		case ':':
			expect_key[d] = false;
			i++;
			break;
		case '"': {
			size_t start = ++i;
			while (i < stop && s[i] != '"')
				i += s[i] == '\\' ? 2 : 1;
			if (i > stop)
				i = stop;
			if (d > 0 && is_obj[d] && expect_key[d]) {
				if (d <= 2) {
					sc->key_off[d] = start;
					sc->key_len[d] = i - start;
				}
				sc->last_key_off = start;
				sc->last_key_len = i - start;
				sc->last_key_depth = d;
			}
			if (i < stop)
				i++;
			break;
		}
		case '-':
		case '0' ... '9': {
			size_t start = i;
			while (i < stop && (s[i] == '-' || s[i] == '+' || s[i] == '.' || s[i] == 'e' ||
					    s[i] == 'E' || (s[i] >= '0' && s[i] <= '9')))
				i++;
			if (i - start == 2 && s[start] == '-' && s[start + 1] == '0') {
				if (sc->nnegzero == sc->negzero_cap) {
					size_t cap = sc->negzero_cap ? sc->negzero_cap * 2 : 8;
					size_t *p = realloc(sc->negzero, cap * sizeof(*p));
					if (!p)
						return -ENOMEM;
					sc->negzero = p;
					sc->negzero_cap = cap;
				}
				sc->negzero[sc->nnegzero++] = sc->nnumbers;
			}
			sc->nnumbers++;
			break;
		}
		default:
			i++;
			break;
		}
	}
	sc->depth = d;
	return 0;
}

/* Collects, in document order, the jansson values of the number tokens the
 * scan flagged as "-0".  Object members iterate in insertion order (jansson
 * >= 2.8) and duplicates are rejected, so that is the text's order. */
static void collect_negzero(json_t *v, const struct scan *sc, size_t *counter, size_t *next, json_t **out)
{
	if (*next == sc->nnegzero)
		return;
	if (json_is_number(v)) {
		if (*counter == sc->negzero[*next])
			out[(*next)++] = v;
		(*counter)++;
	} else if (json_is_object(v)) {
		const char *k;
		json_t *e;
		json_object_foreach(v, k, e)
			collect_negzero(e, sc, counter, next, out);
	} else if (json_is_array(v)) {
		size_t i;
		json_t *e;
		json_array_foreach(v, i, e)
			collect_negzero(e, sc, counter, next, out);
	}
}

static int ptr_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)*(json_t *const *)a, y = (uintptr_t)*(json_t *const *)b;
	return x < y ? -1 : x > y;
}

static bool is_negzero(const struct st *st, json_t *v)
{
	return st->nnegzero && bsearch(&v, st->negzero, st->nnegzero, sizeof(*st->negzero), ptr_cmp);
}

/* Whether the key text at off (len bytes between the quotes, escapes not
 * decoded: the scan's view) is want once decoded ("__metad\u0061ta__"). */
static bool raw_key_is(const struct st *st, size_t off, size_t len, const char *want)
{
	char buf[6 * 16 + 2];
	json_t *s;
	bool eq;

	if (len == strlen(want) && !memcmp(st->text + off, want, len))
		return true;
	if (len + 2 > sizeof(buf) || !memchr(st->text + off, '\\', len))
		return false;
	buf[0] = '"';
	memcpy(buf + 1, st->text + off, len);
	buf[len + 1] = '"';
	s = json_loadb(buf, len + 2, JSON_DECODE_ANY, NULL);
	eq = json_is_string(s) && json_string_length(s) == strlen(want) && !strcmp(json_string_value(s), want);
	json_decref(s);
	return eq;
}

static bool scan_in_meta(const struct st *st, const struct scan *sc)
{
	return sc->depth >= 1 && raw_key_is(st, sc->key_off[1], sc->key_len[1], "__metadata__");
}

/* "header is not valid JSON: TEXT (byte POS)", after `tensor "NAME": ` when
 * the scan up to pos (sc) stopped inside a tensor entry. */
static int st_syntax_error(const struct st *st, const struct scan *sc, size_t pos, const char *text)
{
	struct qname q;

	if (sc->depth >= 2 && !scan_in_meta(st, sc))
		return st_invalid(st, "tensor %s: header is not valid JSON: %s (byte %zu)",
				  qname_json(&q, st->text + sc->key_off[1], sc->key_len[1]), text, pos);
	return st_invalid(st, "header is not valid JSON: %s (byte %zu)", text, pos);
}

/* A NUL byte at pos (not the padding after the object, reported before).
 * JSON allows none, but jansson loses one that ends a number or a literal
 * ("[1\0]" reads as "[1]"), so every one is refused before it runs. */
static int st_nul_error(const struct st *st, size_t pos)
{
	_cleanup_(scan_done) struct scan sc = { 0 };
	int r = scan_header(st->text, pos, &sc);

	if (r < 0)
		return rt_error(r, "%s: out of memory", st->path);
	return st_syntax_error(st, &sc, pos, "NUL byte");
}

/* Turns a jansson failure into a reason that names the tensor and field. */
static int st_json_error(const struct st *st, const json_error_t *err)
{
	_cleanup_(scan_done) struct scan sc = { 0 };
	size_t pos = err->position > 0 ? (size_t)err->position : 0;
	struct qname q1, q2, q3;
	const char *k1, *key;
	bool in_meta;
	int r;

	if (pos > st->len)
		pos = st->len;
	r = scan_header(st->text, pos, &sc);
	if (r < 0)
		return rt_error(r, "%s: out of memory", st->path);

	k1 = sc.depth >= 1 ? qname_json(&q1, st->text + sc.key_off[1], sc.key_len[1]) : "";
	in_meta = scan_in_meta(st, &sc);
	key = qname_json(&q2, st->text + sc.last_key_off, sc.last_key_len);

	switch (json_error_code(err)) {
	case json_error_duplicate_key:
		if (sc.last_key_depth == 1 && in_meta)
			return st_invalid(st, "\"__metadata__\" appears twice");
		if (sc.last_key_depth == 1)
			return st_invalid(st, "duplicate tensor name %s (vramd rejects duplicate keys)", key);
		if (in_meta)
			return st_invalid(st, "__metadata__: duplicate key %s (vramd rejects duplicate keys)", key);
		/* The reference rejects a second dtype, shape or data_offsets,
		 * and keeps the last of other fields (which it ignores). */
		if (sc.last_key_depth == 2 && (raw_key_is(st, sc.last_key_off, sc.last_key_len, "dtype") ||
					       raw_key_is(st, sc.last_key_off, sc.last_key_len, "shape") ||
					       raw_key_is(st, sc.last_key_off, sc.last_key_len, "data_offsets")))
			return st_invalid(st, "tensor %s: duplicate field %s", k1, key);
		if (sc.last_key_depth == 2)
			return st_invalid(st, "tensor %s: duplicate field %s (vramd rejects duplicate keys)", k1, key);
		return st_invalid(st, "tensor %s: duplicate key %s inside field %s (vramd rejects duplicate keys)",
				  k1, key, qname_json(&q3, st->text + sc.key_off[2], sc.key_len[2]));
	case json_error_null_byte_in_key:
		if (sc.last_key_depth == 1)
			return st_invalid(st, "tensor name %s contains a NUL character (unsupported)", key);
		if (in_meta)
			return st_invalid(st, "__metadata__ key %s contains a NUL character (unsupported)", key);
		return st_invalid(st, "tensor %s: key %s contains a NUL character (unsupported)", k1, key);
	case json_error_numeric_overflow:
		if (strstr(err->text, "integer")) {
			if (sc.depth >= 2 && !in_meta)
				return st_invalid(st, "tensor %s: %s holds an integer outside the signed 64-bit range, "
						  "which vramd cannot represent (byte %zu)",
						  k1, qname_json(&q3, st->text + sc.key_off[2], sc.key_len[2]), pos);
			return st_invalid(st, "integer outside the signed 64-bit range, which vramd cannot "
					  "represent (byte %zu)", pos);
		}
		break;
	case json_error_end_of_input_expected:
		return st_invalid(st, "trailing data after the JSON object (byte %zu)", pos);
	default:
		break;
	}
	return st_syntax_error(st, &sc, pos, err->text);
}

/* The checks before jansson sees the header. */
static int check_raw(const struct st *st)
{
	const unsigned char *s = (const unsigned char *)st->text;
	const unsigned char *nul;
	size_t n = st->len, a = 0, z = n, bad;

	if (n >= 3 && s[0] == 0xef && s[1] == 0xbb && s[2] == 0xbf)
		return st_invalid(st, "header starts with a UTF-8 byte order mark");
	bad = utf8_invalid_at((const uint8_t *)s, n);
	if (bad != SIZE_MAX)
		return st_invalid(st, "header is not valid UTF-8 (byte %zu: 0x%02x)", bad, s[bad]);
	while (a < n && is_ws(s[a]))
		a++;
	if (a == n)
		return st_invalid(st, "header is only whitespace");
	if (s[a] != '{') {
		const char *what;
		switch (s[a]) {
		case '[': what = "an array"; break;
		case '"': what = "a string"; break;
		case '-': case '0' ... '9': what = "a number"; break;
		case 't': case 'f': what = "a boolean"; break;
		case 'n': what = "null"; break;
		default: what = NULL; break;
		}
		if (what)
			return st_invalid(st, "header is %s, not a JSON object", what);
		if (s[a] >= 0x20 && s[a] < 0x7f)
			return st_invalid(st, "header does not start with a JSON object (byte %zu is '%c')", a, s[a]);
		return st_invalid(st, "header does not start with a JSON object (byte %zu is 0x%02x)", a, s[a]);
	}
	while (z > a && is_ws(s[z - 1]))
		z--;
	if (s[z - 1] == '\0')
		return st_invalid(st, "header is padded with NUL bytes (only spaces, tabs, CR and LF "
				  "may follow the JSON object)");
	nul = memchr(s, '\0', z);
	if (nul)
		return st_nul_error(st, (size_t)(nul - s));
	return 0;
}

/* ======================================================================
 * Tensor entries
 * ====================================================================== */

/* A non-negative integer from a shape or data_offsets element. */
static int get_uint(const struct st *st, const char *tname, const char *field, size_t idx,
		    json_t *v, uint64_t *ret)
{
	struct qname q;

	if (json_is_integer(v)) {
		json_int_t x = json_integer_value(v);
		if (x < 0)
			return st_invalid(st, "tensor %s: %s[%zu] is %" JSON_INTEGER_FORMAT
					  ", not a non-negative integer", quote(&q, tname), field, idx, x);
		if (x == 0 && is_negzero(st, v))
			return st_invalid(st, "tensor %s: %s[%zu] is -0, not a non-negative integer",
					  quote(&q, tname), field, idx);
		*ret = (uint64_t)x;
		return 0;
	}
	if (json_is_real(v))
		return st_invalid(st, "tensor %s: %s[%zu] is a real number, not a non-negative integer",
				  quote(&q, tname), field, idx);
	return st_invalid(st, "tensor %s: %s[%zu] is %s, not a non-negative integer",
			  quote(&q, tname), field, idx, json_kind(v));
}

static json_t *get_field(const struct st *st, const char *tname, json_t *obj, const char *field,
			 json_type type, const char *want, int *r)
{
	json_t *v = json_object_get(obj, field);
	struct qname q;

	if (!v) {
		*r = st_invalid(st, "tensor %s: missing \"%s\"", quote(&q, tname), field);
		return NULL;
	}
	if (json_typeof(v) != type) {
		*r = st_invalid(st, "tensor %s: %s is %s, not %s", quote(&q, tname), field, json_kind(v), want);
		return NULL;
	}
	return v;
}

static int parse_dtype(const struct st *st, const char *tname, const char *s, size_t n, uint32_t *ret)
{
	struct qname q1, q2;
	int d = dtype_find(s, n);

	if (d >= 0) {
		*ret = (uint32_t)d;
		return 0;
	}
	d = dtype_find_nocase(s, n);
	if (d >= 0)
		return st_invalid(st, "tensor %s: unknown dtype %s (dtypes are case-sensitive: %s)",
				  quote(&q1, tname), qname(&q2, s, n), vram_dtype_name((uint32_t)d));
	return st_invalid(st, "tensor %s: unknown dtype %s", quote(&q1, tname), qname(&q2, s, n));
}

/* Validates one tensor entry and fills t (name and shape storage given). */
static int parse_tensor(const struct st *st, const char *tname, json_t *v, struct model_tensor *t,
			uint64_t *dims)
{
	struct qname q;
	json_t *dt, *shape, *offs, *e;
	uint64_t nel = 1, nbits, off[2];
	char sbuf[256];
	size_t i;
	int r = 0;

	if (!json_is_object(v))
		return st_invalid(st, "tensor %s: entry is %s, not an object with dtype, shape and data_offsets",
				  quote(&q, tname), json_kind(v));

	dt = get_field(st, tname, v, "dtype", JSON_STRING, "a string", &r);
	if (!dt)
		return r;
	r = parse_dtype(st, tname, json_string_value(dt), json_string_length(dt), &t->dtype);
	if (r < 0)
		return r;

	shape = get_field(st, tname, v, "shape", JSON_ARRAY, "an array", &r);
	if (!shape)
		return r;
	t->ndim = (uint32_t)json_array_size(shape);
	t->shape = t->ndim ? dims : NULL;
	json_array_foreach(shape, i, e) {
		r = get_uint(st, tname, "shape", i, e, &dims[i]);
		if (r < 0)
			return r;
	}

	offs = get_field(st, tname, v, "data_offsets", JSON_ARRAY, "an array", &r);
	if (!offs)
		return r;
	if (json_array_size(offs) != 2)
		return st_invalid(st, "tensor %s: data_offsets has %zu element%s, not 2", quote(&q, tname),
				  json_array_size(offs), json_array_size(offs) == 1 ? "" : "s");
	json_array_foreach(offs, i, e) {
		r = get_uint(st, tname, "data_offsets", i, e, &off[i]);
		if (r < 0)
			return r;
	}
	if (off[1] < off[0])
		return st_invalid(st, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
				  quote(&q, tname), off[0], off[1]);
	t->begin = off[0];
	t->end = off[1];

	/* In shape order, as the reference folds it: [2^40, 2^40, 0]
	 * overflows before the 0 is reached. */
	for (i = 0; i < t->ndim; i++) {
		if (__builtin_mul_overflow(nel, dims[i], &nel))
			return st_invalid(st, "tensor %s: shape %s has more than 2^64 elements", quote(&q, tname),
					  fmt_shape(sbuf, sizeof(sbuf), dims, t->ndim));
	}
	if (__builtin_mul_overflow(nel, (uint64_t)vram_dtype_bits(t->dtype), &nbits))
		return st_invalid(st, "tensor %s: %s %s is 2^64 bits or more", quote(&q, tname),
				  vram_dtype_name(t->dtype), fmt_shape(sbuf, sizeof(sbuf), dims, t->ndim));
	if (nbits % 8)
		return st_invalid(st, "tensor %s: %s %s is %" PRIu64 " bits, not a whole number of bytes",
				  quote(&q, tname), vram_dtype_name(t->dtype),
				  fmt_shape(sbuf, sizeof(sbuf), dims, t->ndim), nbits);
	if (off[1] - off[0] != nbits / 8)
		return st_invalid(st, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
				  " bytes but %s %s needs %" PRIu64,
				  quote(&q, tname), off[0], off[1], off[1] - off[0], vram_dtype_name(t->dtype),
				  fmt_shape(sbuf, sizeof(sbuf), dims, t->ndim), nbits / 8);
	return 0;
}

static int metadata_check(const struct st *st, json_t *meta)
{
	struct qname q;
	const char *k;
	json_t *v;

	if (json_is_null(meta))
		return 0;
	if (!json_is_object(meta))
		return st_invalid(st, "__metadata__ is %s, not an object of strings or null", json_kind(meta));
	json_object_foreach(meta, k, v) {
		if (!json_is_string(v))
			return st_invalid(st, "__metadata__ %s is %s, not a string", quote(&q, k), json_kind(v));
		if (strlen(json_string_value(v)) != json_string_length(v))
			return st_invalid(st, "__metadata__ %s: value contains a NUL character (unsupported)",
					  quote(&q, k));
	}
	return 0;
}

static int tile_cmp(const void *a, const void *b, void *arg)
{
	const struct model_tensor *t = arg;
	const struct model_tensor *x = &t[*(const uint32_t *)a], *y = &t[*(const uint32_t *)b];

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* Sorted by offsets, the tensors must tile [0, data size) exactly. */
static int check_tiling(const struct st *st, struct vram_model *m)
{
	_cleanup_free_ uint32_t *order = NULL;
	const struct model_tensor *prev = NULL; /* last tensor with bytes */
	struct qname q1, q2;
	uint64_t pos = 0, data_end;

	if (m->ntensors) {
		order = malloc(m->ntensors * sizeof(*order));
		if (!order)
			return rt_error(-ENOMEM, "%s: out of memory", st->path);
		for (uint32_t i = 0; i < m->ntensors; i++)
			order[i] = i;
		qsort_r(order, m->ntensors, sizeof(*order), tile_cmp, m->tensors);
	}
	for (uint32_t i = 0; i < m->ntensors; i++) {
		const struct model_tensor *t = &m->tensors[order[i]];

		if (t->begin > pos && !prev)
			return st_invalid(st, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] leave a gap: "
					  "the first tensor must begin at 0", quote(&q1, t->name), t->begin, t->end);
		if (t->begin > pos)
			return st_invalid(st, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] leave a gap of %"
					  PRIu64 " bytes after tensor %s [%" PRIu64 ", %" PRIu64 "]",
					  quote(&q1, t->name), t->begin, t->end, t->begin - pos,
					  quote(&q2, prev->name), prev->begin, prev->end);
		if (t->begin < pos)
			return st_invalid(st, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor %s [%"
					  PRIu64 ", %" PRIu64 "]", quote(&q1, t->name), t->begin, t->end,
					  quote(&q2, prev->name), prev->begin, prev->end);
		if (t->end > t->begin)
			prev = t;
		pos = t->end;
	}
	/* pos < 2^63 and data_offset <= 8 + 10^8: no overflow. */
	data_end = m->data_offset + pos;
	if (data_end < m->file_size)
		return st_invalid(st, "%" PRIu64 " %s the last tensor (data ends at byte %" PRIu64
				  ", the file has %" PRIu64 ")", m->file_size - data_end,
				  m->file_size - data_end == 1 ? "byte follows" : "bytes follow", data_end,
				  m->file_size);
	if (data_end > m->file_size)
		return st_invalid(st, "file is truncated: tensors need data up to byte %" PRIu64
				  ", the file has %" PRIu64, data_end, m->file_size);
	return 0;
}

/* ======================================================================
 * Reading
 * ====================================================================== */

static int read_header(struct vram_model *m, const struct st *st0, char **ret_text)
{
	_cleanup_free_ char *text = NULL;
	unsigned char lenbuf[8];
	uint64_t n = 0;
	int r;

	struct src s;

	m->file_size = (uint64_t)m->st.st_size;
	s = src_fd(m->fd, m->file_size, m->path);
	if (m->file_size < 8)
		return st_invalid(st0, "file is %" PRIu64 " bytes, too short for the 8-byte header length",
				  m->file_size);
	r = src_read(&s, lenbuf, 8, 0, "the header length");
	if (r < 0)
		return r;
	for (int i = 7; i >= 0; i--)
		n = n << 8 | lenbuf[i];
	if (n == 0)
		return st_invalid(st0, "header length is 0");
	if (n > ST_MAX_HEADER)
		return st_invalid(st0, "header length %" PRIu64 " exceeds the limit of %llu bytes", n,
				  ST_MAX_HEADER);
	if (n > m->file_size - 8)
		return st_invalid(st0, "header length %" PRIu64 " runs past the end of the file (8 + %" PRIu64
				  " > %" PRIu64 " bytes)", n, n, m->file_size);
	m->header_size = n;
	m->data_offset = 8 + n;
	m->data_size = m->file_size - m->data_offset;

	text = malloc(n);
	if (!text)
		return rt_error(-ENOMEM, "%s: out of memory for a %" PRIu64 "-byte header", m->path, n);
	r = src_read(&s, text, n, 8, "the header");
	if (r < 0)
		return r;
	*ret_text = TAKE_PTR(text);
	return 0;
}

/* Reads and validates the file open at m->fd into m (model.h): 0 or -errno
 * with the message set; partial allocations are left for model_free(). */
int st_read(struct vram_model *m)
{
	_cleanup_free_ char *text = NULL;
	_cleanup_free_ json_t **negzero = NULL;
	json_auto_t *root = NULL;
	struct st st = { .path = m->path };
	_cleanup_(scan_done) struct scan sc = { 0 };
	json_error_t jerr;
	json_t *meta = NULL, *v;
	const char *k;
	size_t nstr = 0, ndims = 0, nmeta = 0, ntensors = 0;
	char *sp;
	uint64_t *dp;
	uint32_t ti = 0, mi = 0;
	int r;

	r = read_header(m, &st, &text);
	if (r < 0)
		return r;
	st.text = text;
	st.len = m->header_size;

	r = check_raw(&st);
	if (r < 0)
		return r;
	r = scan_header(st.text, st.len, &sc);
	if (r < 0)
		return rt_error(r, "%s: out of memory", m->path);
	if (sc.too_deep_at != SIZE_MAX)
		return st_invalid(&st, "header nests objects and arrays deeper than %u levels (byte %zu)",
				  ST_MAX_DEPTH, sc.too_deep_at);

	root = json_loadb(st.text, st.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
	if (!root)
		return st_json_error(&st, &jerr);
	/* check_raw saw '{' first, so jansson returned an object. */

	if (sc.nnegzero) {
		size_t counter = 0, next = 0;
		negzero = calloc(sc.nnegzero, sizeof(*negzero));
		if (!negzero)
			return rt_error(-ENOMEM, "%s: out of memory", m->path);
		collect_negzero(root, &sc, &counter, &next, negzero);
		st.negzero = negzero;
		st.nnegzero = next;
		qsort(negzero, next, sizeof(*negzero), ptr_cmp);
	}

	/* Sizes for one allocation of each kind. */
	json_object_foreach(root, k, v) {
		if (!strcmp(k, "__metadata__")) {
			meta = v;
			r = metadata_check(&st, meta);
			if (r < 0)
				return r;
			if (json_is_object(meta)) {
				const char *mk;
				json_t *mv;
				json_object_foreach(meta, mk, mv)
					nstr += strlen(mk) + 1 + json_string_length(mv) + 1;
				nmeta = json_object_size(meta);
			}
			continue;
		}
		ntensors++;
		nstr += strlen(k) + 1;
		if (json_is_object(v)) {
			json_t *shape = json_object_get(v, "shape");
			if (json_is_array(shape))
				ndims += json_array_size(shape);
		}
	}
	/* Tensor indices are uint32_t; a 10^8-byte header holds ~2.5M at most. */
	if (ntensors > INT32_MAX)
		return st_invalid(&st, "too many tensors (%zu)", ntensors);

	m->tensors = calloc(ntensors ? ntensors : 1, sizeof(*m->tensors));
	m->dims = malloc((ndims ? ndims : 1) * sizeof(*m->dims));
	m->strings = malloc(nstr ? nstr : 1);
	m->meta = malloc((nmeta ? 2 * nmeta : 1) * sizeof(*m->meta));
	if (!m->tensors || !m->dims || !m->strings || !m->meta)
		return rt_error(-ENOMEM, "%s: out of memory", m->path);

	sp = m->strings;
	dp = m->dims;
	json_object_foreach(root, k, v) {
		struct model_tensor *t;
		size_t n;

		if (!strcmp(k, "__metadata__"))
			continue;
		t = &m->tensors[ti++];
		m->ntensors = ti;
		n = strlen(k);
		memcpy(sp, k, n + 1);
		t->name = sp;
		t->name_len = (uint32_t)n;
		sp += n + 1;
		r = parse_tensor(&st, t->name, v, t, dp);
		if (r < 0)
			return r;
		dp += t->ndim;
	}
	if (json_is_object(meta)) {
		const char *mk;
		json_t *mv;
		json_object_foreach(meta, mk, mv) {
			size_t kn = strlen(mk), vn = json_string_length(mv);
			memcpy(sp, mk, kn + 1);
			m->meta[2 * mi] = sp;
			sp += kn + 1;
			memcpy(sp, json_string_value(mv), vn + 1);
			m->meta[2 * mi + 1] = sp;
			sp += vn + 1;
			mi++;
		}
	}
	m->nmeta = mi;

	return check_tiling(&st, m);
}
