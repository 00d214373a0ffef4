/* SPDX-License-Identifier: MIT */
/*
 * PyTorch zip checkpoints (torchzip.h): the zip layer here, the pickle in
 * pickle.c.  Only the end of the file (the directory), the local headers,
 * data.pkl and byteorder are read; tensor bytes are described, never read.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "runtime/internal.h"
#include "runtime/torchzip.h"

/* The legacy format's first pickle: protocol 2, LONG1 of 10 bytes, the
 * magic number 0x1950a86a20f9469cfc6c. */
static const uint8_t legacy_magic[] = { 0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
					0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19 };

/* What the first bytes say (torchzip.h). */
enum tz_kind tz_sniff(const uint8_t *head, size_t n)
{
	if (n >= 4 && !memcmp(head, "PK\3\4", 4))
		return TZ_ZIP;
	if (n >= 4 && !memcmp(head, legacy_magic, 4))
		return TZ_LEGACY;
	if (n >= 2 && head[0] == 0x80 && head[1] <= 5)
		return TZ_PICKLE;
	return TZ_OTHER;
}

struct tz_entry {
	const char *name;        /* in the central directory copy */
	uint32_t name_len;
	uint16_t flags, method;
	uint32_t crc;
	uint64_t size, csize;
	uint64_t header;         /* local header offset */
	uint64_t data;           /* first data byte */
};

struct tz {
	const struct src *s;
	struct torch_file *t;
	uint8_t *central;        /* the central directory's bytes */
	struct tz_entry *e;      /* sorted by name */
	uint32_t n;
	uint64_t cd_off, cd_size, cd_end; /* cd_end: where the end records begin */
};

static int tz_fail(const struct tz *z, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int tz_fail(const struct tz *z, int err, const char *fmt, ...)
{
	char reason[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	return rt_error(err, "%s: %s PyTorch checkpoint: %s", z->s->path,
			err == -ENOTSUP ? "unsupported" : "invalid", reason);
}
#define tz_invalid(z, ...) tz_fail(z, -EINVAL, __VA_ARGS__)

static uint64_t le(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = n; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

/* ======================================================================
 * The end of central directory (and its zip64 form)
 * ====================================================================== */

static int read_zip64(struct tz *z, uint64_t eocd)
{
	uint8_t loc[20], rec[56];
	uint64_t off;
	int r;

	if (eocd < 20)
		return tz_invalid(z, "zip: the end record asks for zip64, which has no locator");
	if ((r = src_read(z->s, loc, 20, eocd - 20, "the zip64 locator")) < 0)
		return r;
	if (le(loc, 4) != 0x07064b50)
		return tz_invalid(z, "zip: the end record asks for zip64, which has no locator");
	off = le(loc + 8, 8);
	if (le(loc + 4, 4) != 0 || le(loc + 16, 4) > 1)
		return tz_fail(z, -ENOTSUP, "zip: a multi-disk archive");
	if (off > eocd - 20 || eocd - 20 - off < 56)
		return tz_invalid(z, "zip: zip64 end record at %" PRIu64 " is out of place", off);
	if ((r = src_read(z->s, rec, 56, off, "the zip64 end record")) < 0)
		return r;
	if (le(rec, 4) != 0x06064b50)
		return tz_invalid(z, "zip: no zip64 end record at byte %" PRIu64, off);
	if (le(rec + 16, 4) != 0 || le(rec + 20, 4) != 0 || le(rec + 24, 8) != le(rec + 32, 8))
		return tz_fail(z, -ENOTSUP, "zip: a multi-disk archive");
	z->n = le(rec + 32, 8) > UINT32_MAX ? UINT32_MAX : (uint32_t)le(rec + 32, 8);
	z->cd_size = le(rec + 40, 8);
	z->cd_off = le(rec + 48, 8);
	z->cd_end = off;
	return 0;
}

/* Finds the end record: the last one whose comment reaches exactly to
 * the end of the file. */
static int read_eocd(struct tz *z)
{
	uint64_t size = z->s->size, tail = MIN(size, 22u + 65535u), base = size - tail, at = UINT64_MAX;
	_cleanup_free_ uint8_t *b = malloc(tail ? tail : 1);
	const uint8_t *e;
	int r;

	if (!b)
		return rt_error(-ENOMEM, "%s: out of memory", z->s->path);
	if (size < 22)
		return tz_invalid(z, "zip: file is %" PRIu64 " bytes, too short for a zip", size);
	if ((r = src_read(z->s, b, tail, base, "the zip's end")) < 0)
		return r;
	for (uint64_t i = tail - 22 + 1; i-- > 0;)
		if (le(b + i, 4) == 0x06054b50 && i + 22 + le(b + i + 20, 2) == tail) {
			at = i;
			break;
		}
	if (at == UINT64_MAX)
		return tz_invalid(z, "zip: no end of central directory record (a truncated file?)");
	e = b + at;
	if (le(e + 4, 2) != 0 || le(e + 6, 2) != 0 || le(e + 8, 2) != le(e + 10, 2))
		return tz_fail(z, -ENOTSUP, "zip: a multi-disk archive");
	z->n = (uint32_t)le(e + 10, 2);
	z->cd_size = le(e + 12, 4);
	z->cd_off = le(e + 16, 4);
	z->cd_end = base + at;
	if (z->n == 0xffff || z->cd_size == 0xffffffff || z->cd_off == 0xffffffff ||
	    (base + at >= 20 && at >= 20 && le(e - 20, 4) == 0x07064b50))
		return read_zip64(z, base + at);
	return 0;
}

/* ======================================================================
 * Entries
 * ====================================================================== */

/* The zip64 extra field of a central entry: the fields that are
 * 0xffffffff in the entry, in order. */
static int zip64_extra(struct tz *z, const uint8_t *x, size_t xlen, struct tz_entry *e, uint32_t i)
{
	uint64_t *want[3] = { e->size == 0xffffffff ? &e->size : NULL, e->csize == 0xffffffff ? &e->csize : NULL,
			      e->header == 0xffffffff ? &e->header : NULL };
	size_t o = 0;

	while (o + 4 <= xlen) {
		size_t id = (size_t)le(x + o, 2), n = (size_t)le(x + o + 2, 2), k = 0;
		if (o + 4 + n > xlen)
			break;
		if (id == 1) {
			for (int f = 0; f < 3; f++) {
				if (!want[f])
					continue;
				if (k + 8 > n)
					return tz_invalid(z, "zip: entry %u: zip64 field too short", i);
				*want[f] = le(x + o + 4 + k, 8);
				want[f] = NULL;
				k += 8;
			}
		}
		o += 4 + n;
	}
	for (int f = 0; f < 3; f++)
		if (want[f])
			return tz_invalid(z, "zip: entry %u: a size or offset is 0xffffffff without a zip64 field", i);
	return 0;
}

/* Central entry i at *o in the directory copy. */
static int parse_central(struct tz *z, size_t *o, uint32_t i)
{
	const uint8_t *c = z->central + *o;
	struct tz_entry *e = &z->e[i];
	size_t nlen, xlen, clen;
	int r;

	if (z->cd_size - *o < 46 || le(c, 4) != 0x02014b50)
		return tz_invalid(z, "zip: central directory entry %u is damaged", i);
	nlen = (size_t)le(c + 28, 2);
	xlen = (size_t)le(c + 30, 2);
	clen = (size_t)le(c + 32, 2);
	if (z->cd_size - *o - 46 < nlen + xlen + clen)
		return tz_invalid(z, "zip: central directory entry %u runs past the directory", i);
	e->flags = (uint16_t)le(c + 8, 2);
	e->method = (uint16_t)le(c + 10, 2);
	e->crc = (uint32_t)le(c + 16, 4);
	e->csize = le(c + 20, 4);
	e->size = le(c + 24, 4);
	e->header = le(c + 42, 4);
	e->name = (const char *)c + 46;
	e->name_len = (uint32_t)nlen;
	if (le(c + 34, 2) != 0 && le(c + 34, 2) != 0xffff)
		return tz_fail(z, -ENOTSUP, "zip: a multi-disk archive");
	if (!nlen || memchr(e->name, 0, nlen))
		return tz_invalid(z, "zip: entry %u's name is empty or holds a NUL byte", i);
	if ((r = zip64_extra(z, c + 46 + nlen, xlen, e, i)) < 0)
		return r;
	*o += 46 + nlen + xlen + clen;
	return 0;
}

/* Entry e's local header: the same name, the data's place. */
static int parse_local(struct tz *z, struct tz_entry *e)
{
	uint8_t h[30];
	struct qname q;
	uint64_t end;
	int r;

	if (e->header > z->cd_off || z->cd_off - e->header < 30)
		return tz_invalid(z, "zip: entry %s: local header at byte %" PRIu64 " is past the directory",
				  qname(&q, e->name, e->name_len), e->header);
	if ((r = src_read(z->s, h, 30, e->header, "a zip local header")) < 0)
		return r;
	if (le(h, 4) != 0x04034b50)
		return tz_invalid(z, "zip: entry %s: no local header at byte %" PRIu64, qname(&q, e->name, e->name_len),
				  e->header);
	e->data = e->header + 30 + le(h + 26, 2) + le(h + 28, 2);
	if (le(h + 26, 2) != e->name_len || __builtin_add_overflow(e->data, e->csize, &end) || end > z->cd_off)
		return tz_invalid(z, "zip: entry %s: its local header or data [%" PRIu64 ", +%" PRIu64
				  ") does not fit before the central directory at byte %" PRIu64,
				  qname(&q, e->name, e->name_len), e->data, e->csize, z->cd_off);
	{
		char name[256];
		size_t n = MIN((size_t)e->name_len, sizeof(name));
		if ((r = src_read(z->s, name, n, e->header + 30, "a zip local header")) < 0)
			return r;
		if (memcmp(name, e->name, n))
			return tz_invalid(z, "zip: entry %s: the local header names another file",
					  qname(&q, e->name, e->name_len));
	}
	return 0;
}

static int cmp_header(const void *a, const void *b)
{
	const struct tz_entry *x = a, *y = b;
	return x->header < y->header ? -1 : x->header > y->header;
}

static int cmp_entry_name(const void *a, const void *b)
{
	const struct tz_entry *x = a, *y = b;
	int r = memcmp(x->name, y->name, MIN(x->name_len, y->name_len));
	return r ? r : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Every entry's header and data before the next entry's header; names
 * unique.  Sorts the entries by name. */
static int check_entries(struct tz *z)
{
	struct qname q, q2;

	qsort(z->e, z->n, sizeof(*z->e), cmp_header);
	for (uint32_t i = 1; i < z->n; i++)
		if (z->e[i - 1].data + z->e[i - 1].csize > z->e[i].header)
			return tz_invalid(z, "zip: entries %s and %s overlap", qname(&q, z->e[i - 1].name,
					  z->e[i - 1].name_len), qname(&q2, z->e[i].name, z->e[i].name_len));
	qsort(z->e, z->n, sizeof(*z->e), cmp_entry_name);
	for (uint32_t i = 1; i < z->n; i++)
		if (!cmp_entry_name(&z->e[i - 1], &z->e[i]))
			return tz_invalid(z, "zip: entry %s appears twice", qname(&q, z->e[i].name, z->e[i].name_len));
	return 0;
}

static int read_central(struct tz *z)
{
	size_t o = 0;
	int r;

	if (z->cd_off > z->cd_end || z->cd_size > z->cd_end - z->cd_off)
		return tz_invalid(z, "zip: the central directory [%" PRIu64 ", +%" PRIu64 ") is out of place",
				  z->cd_off, z->cd_size);
	if (z->cd_size > TZ_MAX_CENTRAL)
		return tz_invalid(z, "zip: a central directory of %" PRIu64 " bytes (at most %u)", z->cd_size,
				  TZ_MAX_CENTRAL);
	if (z->n > z->cd_size / 46)
		return tz_invalid(z, "zip: %u entries cannot fit in a %" PRIu64 "-byte central directory", z->n,
				  z->cd_size);
	z->central = malloc(z->cd_size ? z->cd_size : 1);
	z->e = calloc(z->n ? z->n : 1, sizeof(*z->e));
	if (!z->central || !z->e)
		return rt_error(-ENOMEM, "%s: out of memory", z->s->path);
	if ((r = src_read(z->s, z->central, z->cd_size, z->cd_off, "the zip's central directory")) < 0)
		return r;
	for (uint32_t i = 0; i < z->n; i++)
		if ((r = parse_central(z, &o, i)) < 0 || (r = parse_local(z, &z->e[i])) < 0)
			return r;
	return check_entries(z);
}

/* ======================================================================
 * Records
 * ====================================================================== */

static const struct tz_entry *find(const struct tz *z, const char *name)
{
	struct tz_entry key = { .name = name, .name_len = (uint32_t)strlen(name) };

	return bsearch(&key, z->e, z->n, sizeof(*z->e), cmp_entry_name);
}

/* A record vramd reads or serves: stored, not encrypted. */
static int check_stored(struct tz *z, const struct tz_entry *e)
{
	struct qname q;

	if (e->flags & 1)
		return tz_fail(z, -ENOTSUP, "record %s is encrypted", qname(&q, e->name, e->name_len));
	if (e->method != 0)
		return tz_fail(z, -ENOTSUP, "record %s is compressed (method %u); vramd streams stored records only: "
			       "save it again with torch.save, or as safetensors", qname(&q, e->name, e->name_len),
			       e->method);
	if (e->csize != e->size)
		return tz_invalid(z, "record %s: stored with %" PRIu64 " bytes for %" PRIu64,
				  qname(&q, e->name, e->name_len), e->csize, e->size);
	return 0;
}

/* The record's bytes, CRC-checked, into a malloc'd buffer. */
static int read_record(struct tz *z, const struct tz_entry *e, uint8_t **ret)
{
	_cleanup_free_ uint8_t *b = NULL;
	char what[64];
	struct qname q;
	int r;

	if ((r = check_stored(z, e)) < 0)
		return r;
	if (e->size > PK_MAX_PICKLE)
		return tz_invalid(z, "record %s is %" PRIu64 " bytes (at most %u)", qname(&q, e->name, e->name_len),
				  e->size, PK_MAX_PICKLE);
	b = malloc(e->size ? e->size : 1);
	if (!b)
		return rt_error(-ENOMEM, "%s: out of memory", z->s->path);
	snprintf(what, sizeof(what), "record %.*s", (int)MIN(e->name_len, 40u), e->name);
	if ((r = src_read(z->s, b, e->size, e->data, what)) < 0)
		return r;
	if (crc32_update(0, b, e->size) != e->crc)
		return tz_invalid(z, "record %s: CRC-32 %08x, the directory says %08x", qname(&q, e->name, e->name_len),
				  crc32_update(0, b, e->size), e->crc);
	*ret = TAKE_PTR(b);
	return 0;
}

/* ARCHIVE/data.pkl: exactly one, at the top level. */
static int find_pickle(struct tz *z, const struct tz_entry **ret)
{
	const struct tz_entry *found = NULL;
	struct qname q, q2;

	for (uint32_t i = 0; i < z->n; i++) {
		const struct tz_entry *e = &z->e[i];
		const char *slash = memchr(e->name, '/', e->name_len);
		if (!slash || slash == e->name || e->name + e->name_len - slash != 9 || memcmp(slash, "/data.pkl", 9))
			continue;
		if (found)
			return tz_invalid(z, "two data.pkl records: %s and %s", qname(&q, found->name, found->name_len),
					  qname(&q2, e->name, e->name_len));
		found = e;
	}
	if (!found)
		return tz_invalid(z, "a zip without a top-level FOLDER/data.pkl record: not a torch.save file");
	z->t->archive = arena_strndup(&z->t->arena, found->name, found->name_len - 9);
	if (!z->t->archive)
		return rt_error(-ENOMEM, "%s: out of memory", z->s->path);
	*ret = found;
	return 0;
}

static int check_byteorder(struct tz *z)
{
	_cleanup_free_ uint8_t *b = NULL;
	char name[512];
	const struct tz_entry *e;
	int r;

	snprintf(name, sizeof(name), "%s/byteorder", z->t->archive);
	if (!(e = find(z, name)))
		return 0; /* older files: little-endian */
	if ((r = read_record(z, e, &b)) < 0)
		return r;
	if (e->size == 6 && !memcmp(b, "little", 6))
		return 0;
	return tz_fail(z, -ENOTSUP, "byteorder is \"%.*s\" (only little-endian files are read)",
		       (int)MIN(e->size, 16u), (const char *)b);
}

/* Every storage is a stored record ARCHIVE/data/KEY of its size; every
 * tensor a range of one. */
static int place_tensors(struct tz *z)
{
	struct torch_file *t = z->t;
	const struct pk_state_dict *sd = &t->sd;
	uint64_t *base = NULL;
	char name[600];
	struct qname q;
	int r;

	base = arena_alloc(&t->arena, (sd->nstorages ? sd->nstorages : 1) * sizeof(*base));
	t->tensors = arena_alloc(&t->arena, (sd->ntensors ? sd->ntensors : 1) * sizeof(*t->tensors));
	if (!base || !t->tensors)
		return rt_error(-ENOMEM, "%s: out of memory", z->s->path);
	for (uint32_t i = 0; i < sd->nstorages; i++) {
		const struct pk_storage *s = &sd->storages[i];
		const struct tz_entry *e;
		snprintf(name, sizeof(name), "%s/data/%s", t->archive, s->key);
		if (strlen(t->archive) + 6 + strlen(s->key) >= sizeof(name) || !(e = find(z, name)))
			return tz_invalid(z, "storage %s has no record %s", qname(&q, s->key, strlen(s->key)), name);
		if ((r = check_stored(z, e)) < 0)
			return r;
		if (e->size != s->nbytes)
			return tz_invalid(z, "record %s is %" PRIu64 " bytes, its storage %" PRIu64, name, e->size,
					  s->nbytes);
		base[i] = e->data;
	}
	t->data_begin = UINT64_MAX;
	for (uint32_t i = 0; i < sd->ntensors; i++) {
		const struct pk_tensor *p = &sd->tensors[i];
		struct tz_tensor *o = &t->tensors[i];
		*o = (struct tz_tensor){ .name = p->name, .name_len = p->name_len, .dtype = p->dtype, .ndim = p->ndim,
					 .storage = p->storage, .shape = p->shape, .file_offset = base[p->storage] + p->offset,
					 .nbytes = p->nbytes };
		t->data_begin = MIN(t->data_begin, o->file_offset);
		t->data_end = MAX(t->data_end, o->file_offset + o->nbytes);
	}
	if (!sd->ntensors)
		t->data_begin = 0;
	t->ntensors = sd->ntensors;
	return 0;
}

static int parse_zip(struct tz *z)
{
	_cleanup_free_ uint8_t *pkl = NULL;
	const struct tz_entry *pe = NULL;
	char what[300];
	int r;

	if ((r = read_eocd(z)) < 0 || (r = read_central(z)) < 0)
		return r;
	z->t->nentries = z->n;
	if ((r = find_pickle(z, &pe)) < 0 || (r = check_byteorder(z)) < 0 || (r = read_record(z, pe, &pkl)) < 0)
		return r;
	z->t->pickle_offset = pe->data;
	z->t->pickle_size = pe->size;
	snprintf(what, sizeof(what), "%.*s", (int)MIN(pe->name_len, 256u), pe->name);
	if ((r = pk_load(pkl, pe->size, z->s->path, what, &z->t->sd)) < 0)
		return r;
	return place_tensors(z);
}

/* Reads the checkpoint of s (torchzip.h). */
int torch_parse(const struct src *s, struct torch_file *t)
{
	struct tz z = { .s = s, .t = t };
	uint8_t head[16] = { 0 };
	size_t n = (size_t)MIN(s->size, sizeof(head));
	int r;

	t->file_size = s->size;
	if ((r = src_read(s, head, n, 0, "the first bytes")) < 0)
		return r;
	switch (tz_sniff(head, n)) {
	case TZ_ZIP:
		r = parse_zip(&z);
		break;
	case TZ_LEGACY:
		r = tz_fail(&z, -ENOTSUP, "the legacy format of torch.save before 1.6 (a bare pickle stream), which "
			    "cannot be read without unpickling it in Python: save it again with a current torch, "
			    "or as safetensors");
		break;
	case TZ_PICKLE:
		r = tz_fail(&z, -ENOTSUP, "a bare pickle, not a torch.save zip: nothing to serve tensors from");
		break;
	default:
		r = tz_invalid(&z, "not a zip file (the file starts with %02x %02x %02x %02x)", head[0], head[1],
			       head[2], head[3]);
		break;
	}
	free(z.central);
	free(z.e);
	if (r < 0)
		torch_free(t);
	return r;
}

/* Frees *t (torchzip.h). */
void torch_free(struct torch_file *t)
{
	pk_free(&t->sd);
	arena_free(&t->arena);
	*t = (struct torch_file){ 0 };
}
