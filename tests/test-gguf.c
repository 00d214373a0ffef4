/* SPDX-License-Identifier: MIT */
/*
 * The GGUF reader (runtime/gguf.c).  Fixtures come from tests/gen_gguf.py:
 * valid files from gguf-py's GGUFWriter with what gguf-py's GGUFReader
 * sees in them (manifest.txt: every tensor's type, shape, offset, size and
 * the CRC-32 of its bytes, every metadata value), invalid files as bytes,
 * one broken rule each.  main() runs it once into a temp directory under
 * $TMPDIR (or /tmp) that it removes.  Needs $VRAM_PYTHON (default
 * .venv/bin/python) with gguf and numpy; skips (77) without it.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "runtime/gguf.h"
#include "runtime/model.h"
#include "runtime/reader.h"
#include "runtime/vram.h"
#include "tests/testlib-fixtures.h"

static char fixdir[1024];

static const char *fx(char *buf, const char *sub, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/%s/%s.gguf", fixdir, sub, name);
	return buf;
}

TF_DEFINE_PARSERS(struct gguf_file, gguf_parse, fx, fixdir)

/* ======================================================================
 * Invalid files
 * ====================================================================== */

static const struct {
	const char *file;
	int err;
	const char *reason;      /* substring of what follows "invalid GGUF: " */
} invalid[] = {
	{ "short", -EINVAL, "file is 2 bytes, too short for the magic" },
	{ "magic", -EINVAL, "no GGUF magic (the file starts with 47 47 4d 4c)" },
	{ "header_short", -EINVAL, "file is 16 bytes, too short for the 24-byte header" },
	{ "big_endian", -ENOTSUP, "version field 0x03000000: a big-endian file" },
	{ "version1", -ENOTSUP, "version 1 (obsolete" },
	{ "version4", -ENOTSUP, "version 4 (versions 2 and 3 are read)" },
	{ "nkv_huge", -EINVAL, "4611686018427387904 metadata keys cannot fit in a 32-byte file" },
	{ "ntensors_huge", -EINVAL, "1099511627776 tensors cannot fit in a 32-byte file" },
	{ "key_empty", -EINVAL, "key 0 has an empty name" },
	{ "key_long", -EINVAL, "key 0's name is 65536 bytes long (the limit is 65535)" },
	{ "key_nul", -EINVAL, "key 0's name \"a\\x00b\" contains a NUL byte" },
	{ "key_utf8", -EINVAL, "key 0's name \"a\\xff\" is not valid UTF-8" },
	{ "value_type_past_eof", -EINVAL, "file is truncated: a value type at byte 37 needs 4 bytes, the file has 37" },
	{ "key_past_eof", -EINVAL, "file is truncated: key 0's name at byte 32 needs 100 bytes, the file has 53" },
	{ "vtype_unknown", -EINVAL, "key \"a\": unknown value type 13" },
	{ "bool_2", -EINVAL, "key \"a\": bool value 2 is not 0 or 1" },
	{ "bool_arr_2", -EINVAL, "key \"a\": bool value 3 is not 0 or 1" },
	{ "string_past_eof", -EINVAL, "key \"a\": a string of 1099511627776 bytes at byte 45 runs past the end" },
	{ "nested_array", -EINVAL, "key \"a\": arrays of arrays are not supported (ggml rejects them)" },
	{ "array_type_unknown", -EINVAL, "key \"a\": unknown array element type 77" },
	{ "array_past_eof", -EINVAL, "key \"a\": an array of 2305843009213693952 UINT64 values at byte 49 runs past" },
	{ "array_str_past_eof", -EINVAL, "key \"a\": a string of 2 bytes at byte 66 runs past the end of the file (67 bytes)" },
	{ "dup_key", -EINVAL, "duplicate key \"a\"" },
	{ "align_type", -EINVAL, "general.alignment is UINT64, not UINT32" },
	{ "align_zero", -EINVAL, "general.alignment 0 is not a power of 2" },
	{ "align_odd", -EINVAL, "general.alignment 48 is not a power of 2" },
	{ "name_empty", -EINVAL, "tensor 0 has an empty name" },
	{ "name_nul", -EINVAL, "tensor 0's name \"a\\x00\" contains a NUL byte" },
	{ "name_utf8", -EINVAL, "tensor 0's name \"\\xc0\\x80\" is not valid UTF-8" },
	{ "dup_tensor", -EINVAL, "duplicate tensor name \"a\"" },
	{ "ndim5", -EINVAL, "tensor \"t\" has 5 dimensions (at most 4)" },
	{ "dim_neg", -EINVAL, "tensor \"t\": ne[0] is 9223372036854775808, more than 2^63 - 1" },
	{ "elem_overflow", -EINVAL, "tensor \"t\": ne [4294967296, 4294967296] has 2^63 elements or more" },
	{ "bytes_overflow", -EINVAL, "tensor \"t\": F64 ne [4611686018427387904, 1] is 2^64 bytes or more" },
	{ "type_unknown", -EINVAL, "tensor \"t\": unknown type 99" },
	{ "type_gap", -EINVAL, "tensor \"t\": unknown type 42" },
	{ "type_removed", -EINVAL, "tensor \"t\": type 4 (Q4_2) was removed from GGUF files" },
	{ "type_removed_repack", -EINVAL, "tensor \"t\": type 31 (Q4_0_4_4) was removed from GGUF files" },
	{ "block_row", -EINVAL, "tensor \"t\": Q8_0 rows of 48 elements are not a whole number of 32-element blocks" },
	{ "offset_unaligned", -EINVAL, "tensor \"t\": offset 8, expected 0 (tensors follow each other in the order "
				       "of their infos, each padded to the alignment of 32)" },
	{ "offset_gap", -EINVAL, "tensor \"b\": offset 64, expected 32" },
	{ "offset_order", -EINVAL, "tensor \"a\": offset 32, expected 0" },
	{ "overlap", -EINVAL, "tensor \"b\": offset 32, expected 64" },
	{ "truncated", -EINVAL, "file is truncated: tensor \"t\" needs data up to byte 80, the file has 79" },
	{ "truncated_header", -EINVAL, "file is truncated: a tensor offset at byte 49 needs 8 bytes, the file has 53" },
	{ "no_padding_before_data", -EINVAL, "file is truncated: tensor \"a\" needs data up to byte 80, the file has 73" },
	{ "trailing", -EINVAL, "17 bytes follow the data (the last tensor's padding ends at byte 96, the file has 113)" },
	{ "trailing_no_tensors", -EINVAL, "32 bytes follow the header (it ends at byte 41, padded to 64, and the file "
					  "has no tensors)" },
	{ "ti_past_eof", -EINVAL, "1 tensors cannot fit in a 32-byte file" },
};

START_TEST(test_invalid)
{
	struct gguf_file g = { 0 };
	char p[PATH_MAX];

	fx(p, "invalid", invalid[_i].file);
	tf_check_refusal(invalid[_i].file, p, parse_path(p, &g), invalid[_i].err, "GGUF", invalid[_i].reason);
	ck_assert_ptr_null(g.tensors); /* nothing left on failure */
	ck_assert_ptr_null(g.kv);
}
END_TEST

START_TEST(test_io_errors)
{
	/* Opening is vram_model_open's: the file is opened once, there; then
	 * a file that ends before the size fstat gave: it shrank. */
	check_io_errors("nope.gguf", "all_types");
}
END_TEST

/* ======================================================================
 * The reference's view (manifest.txt)
 * ====================================================================== */

static void check_kv(const char *file, const struct gguf_file *g, char *line)
{
	char *key = line + 2, *type = strchr(key, '\t'), *val;
	const struct gguf_kv *kv;

	ck_assert_ptr_nonnull(type);
	*type++ = '\0';
	val = strchr(type, '\t');
	ck_assert_ptr_nonnull(val);
	*val++ = '\0';
	val[strcspn(val, "\n")] = '\0';
	kv = gguf_find_kv(g, key);
	ck_assert_msg(kv != NULL, "%s: no key %s", file, key);
	ck_assert_uint_eq(kv->type, (uint32_t)atoi(type));
	if (kv->type == GGUF_VT_ARRAY)
		ck_assert_uint_eq(kv->arr_len, strtoull(val, NULL, 10));
	else if (kv->type == GGUF_VT_FLOAT32 || kv->type == GGUF_VT_FLOAT64)
		ck_assert_msg(strtod(kv->value, NULL) == strtod(val, NULL), "%s: %s = %s, reference %s", file, key,
			      kv->value, val);
	else
		ck_assert_msg(!strcmp(kv->value, val), "%s: %s = \"%s\", reference \"%s\"", file, key, kv->value, val);
}

/* Every tensor and key the reference saw, the bytes by CRC-32. */
START_TEST(test_reference)
{
	char p[PATH_MAX], line[4096], file[256] = "", path[PATH_MAX];
	struct gguf_file g = { 0 };
	uint64_t ti = 0;
	unsigned nfiles = 0, ntensors = 0;
	FILE *f;

	snprintf(p, sizeof(p), "%s/manifest.txt", fixdir);
	f = fopen(p, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == 'F') {
			ck_assert_uint_eq(ti, g.ntensors); /* the previous file had no more */
			gguf_free(&g);
			sscanf(line, "F %255s", file);
			parse_ok(file, &g);
			fx(path, "valid", file);
			ti = 0;
			nfiles++;
		} else if (line[0] == 'D') {
			uint64_t off, align;
			ck_assert_int_eq(sscanf(line, "D %" SCNu64 " %" SCNu64, &off, &align), 2);
			ck_assert_uint_eq(g.data_offset, off);
			ck_assert_uint_eq(g.alignment, align);
		} else if (line[0] == 'T') {
			char name[1024];
			unsigned type, ndim;
			uint64_t ne[4], off, nb;
			unsigned long crc;
			const struct gguf_tensor *t = &g.tensors[ti];
			ck_assert_int_eq(sscanf(line, "T %1023s %u %u %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
						" %" SCNu64 " %" SCNu64 " %lu", name, &type, &ndim, &ne[0], &ne[1], &ne[2],
						&ne[3], &off, &nb, &crc), 10);
			ck_assert_uint_lt(ti, g.ntensors);
			ck_assert_str_eq(t->name, name);
			ck_assert_uint_eq(t->type, type);
			ck_assert_uint_eq(t->ndim, ndim);
			for (int j = 0; j < 4; j++)
				ck_assert_uint_eq(t->ne[j], ne[j]);
			ck_assert_uint_eq(g.data_offset + t->offset, off);
			ck_assert_uint_eq(t->nbytes, nb);
			{
				size_t len;
				uint8_t *b = tf_slurp(path, &len);
				ck_assert_uint_le(off + nb, len);
				ck_assert_uint_eq(crc32_update(0, b + off, nb), crc);
				free(b);
			}
			ti++;
			ntensors++;
		} else if (line[0] == 'K') {
			check_kv(file, &g, line);
		}
	}
	ck_assert_uint_eq(ti, g.ntensors);
	gguf_free(&g);
	fclose(f);
	ck_assert_uint_ge(nfiles, 12);
	ck_assert_uint_ge(ntensors, 100);
}
END_TEST

/* ======================================================================
 * Details
 * ====================================================================== */

START_TEST(test_types)
{
	static const struct {
		uint32_t id;
		const char *name;
		uint32_t block, bytes;
	} want[] = {
		{ 0, "F32", 1, 4 }, { 1, "F16", 1, 2 }, { 2, "Q4_0", 32, 18 }, { 8, "Q8_0", 32, 34 },
		{ 10, "Q2_K", 256, 84 }, { 12, "Q4_K", 256, 144 }, { 14, "Q6_K", 256, 210 }, { 23, "IQ4_XS", 256, 136 },
		{ 30, "BF16", 1, 2 }, { 35, "TQ2_0", 256, 66 }, { 39, "MXFP4", 32, 17 }, { 41, "Q1_0", 128, 18 },
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const struct gguf_type_info *t = gguf_type(want[i].id);
		ck_assert_ptr_nonnull(t);
		ck_assert_str_eq(t->name, want[i].name);
		ck_assert_uint_eq(t->block, want[i].block);
		ck_assert_uint_eq(t->bytes, want[i].bytes);
	}
	ck_assert_uint_eq(gguf_type(4)->block, 0);
	ck_assert_ptr_null(gguf_type(GGUF_TYPE_COUNT));
	/* dtype.c's table of the quantised dtypes and ggml's agree, both ways. */
	for (uint32_t d = VRAM_DTYPE_Q4_0; d < VRAM_DTYPE_COUNT; d++) {
		uint32_t id = gguf_ggml_type(d), e, b;
		ck_assert_uint_lt(id, GGUF_TYPE_COUNT);
		ck_assert_uint_eq(gguf_vram_dtype(id), d);
		ck_assert_str_eq(vram_dtype_name(d), gguf_type(id)->name);
		ck_assert_int_eq(vram_dtype_block(d, &e, &b), 0);
		ck_assert_uint_eq(e, gguf_type(id)->block);
		ck_assert_uint_eq(b, gguf_type(id)->bytes);
		ck_assert_uint_eq(vram_dtype_bits(d), 0);
	}
	for (uint32_t id = 0; id < GGUF_TYPE_COUNT; id++) {
		uint32_t d = gguf_vram_dtype(id), e, b;
		if (d == VRAM_DTYPE_COUNT) {
			ck_assert_uint_eq(gguf_type(id)->block, 0); /* removed from GGUF */
			continue;
		}
		ck_assert_int_eq(vram_dtype_block(d, &e, &b), 0);
		ck_assert_uint_eq(e * gguf_type(id)->bytes, b * gguf_type(id)->block);
	}
	ck_assert_str_eq(gguf_file_type_name(15), "Q4_K_M");
	ck_assert_str_eq(gguf_file_type_name(7), "Q8_0");
	ck_assert_str_eq(gguf_file_type_name(0), "ALL_F32");
	ck_assert_ptr_null(gguf_file_type_name(4));
	ck_assert_ptr_null(gguf_file_type_name(999));
	ck_assert_str_eq(gguf_vtype_name(GGUF_VT_UINT32), "UINT32");
	ck_assert_str_eq(gguf_vtype_name(99), "?");
}
END_TEST

static const char *kv_value(const struct gguf_file *g, const char *key)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);

	ck_assert_msg(kv != NULL, "no key %s", key);
	return kv->value;
}

START_TEST(test_metadata)
{
	struct gguf_file g;

	parse_ok("meta_all", &g);
	ck_assert_str_eq(kv_value(&g, "general.architecture"), "test");
	ck_assert_str_eq(kv_value(&g, "general.license"), "cc-by-nc-4.0");
	ck_assert_str_eq(kv_value(&g, "general.file_type"), "15");
	ck_assert_uint_eq(gguf_find_kv(&g, "general.file_type")->u, 15);
	ck_assert_str_eq(kv_value(&g, "v.u8"), "200");
	ck_assert_str_eq(kv_value(&g, "v.i8"), "-5");
	ck_assert_str_eq(kv_value(&g, "v.i16"), "-300");
	ck_assert_str_eq(kv_value(&g, "v.u32"), "4000000000");
	ck_assert_str_eq(kv_value(&g, "v.i32"), "-70000");
	ck_assert_str_eq(kv_value(&g, "v.f32"), "0.5");
	ck_assert_str_eq(kv_value(&g, "v.bool"), "true");
	ck_assert_str_eq(kv_value(&g, "v.u64"), "9223372036854775813");
	ck_assert_str_eq(kv_value(&g, "v.i64"), "-1099511627776");
	ck_assert_str_eq(kv_value(&g, "v.f64"), "1.25");
	ck_assert_str_eq(kv_value(&g, "v.str_empty"), "");
	ck_assert_str_eq(kv_value(&g, "v.utf8"), "Gr\xc3\xbc\xc3\x9f" "e \xe2\x9c\x93");
	ck_assert_str_eq(kv_value(&g, "v.arr_i32"), "[1, -2, 3]");
	ck_assert_str_eq(kv_value(&g, "v.arr_str"), "<array of 3 STRING>");
	ck_assert_str_eq(kv_value(&g, "v.arr_long"), "<array of 40 INT32>");
	ck_assert_str_eq(kv_value(&g, "v.arr_f32"), "[0.25, 1.5]");
	ck_assert_str_eq(kv_value(&g, "v.arr_bool"), "[true, false]");
	ck_assert_ptr_null(gguf_find_kv(&g, "v.none"));
	gguf_free(&g);
	gguf_free(&g); /* twice is fine */
}
END_TEST

START_TEST(test_layouts)
{
	struct gguf_file g;

	parse_ok("no_tensors", &g);
	ck_assert_uint_eq(g.ntensors, 0);
	ck_assert_uint_eq(g.data_size, 0);
	ck_assert_uint_eq(g.data_offset % 32, 0);
	gguf_free(&g);

	parse_ok("zero_dim", &g);
	ck_assert_uint_eq(g.tensors[0].nbytes, 0);
	ck_assert_uint_eq(g.tensors[0].nelem, 0);
	ck_assert_uint_eq(g.tensors[1].offset, 0); /* an empty tensor takes no room */
	gguf_free(&g);

	parse_ok("scalar", &g);
	ck_assert_uint_eq(g.tensors[0].ndim, 0);
	ck_assert_uint_eq(g.tensors[0].nelem, 1);
	ck_assert_uint_eq(g.tensors[0].nbytes, 4);
	gguf_free(&g);

	parse_ok("align64", &g);
	ck_assert_uint_eq(g.alignment, 64);
	ck_assert_uint_eq(g.data_offset % 64, 0);
	ck_assert_uint_eq(g.tensors[1].offset, 64);
	gguf_free(&g);

	parse_ok("v2", &g);
	ck_assert_uint_eq(g.version, 2);
	gguf_free(&g);

	parse_ok("dims4", &g);
	ck_assert_uint_eq(g.tensors[1].ndim, 4);
	ck_assert_uint_eq(g.tensors[1].nbytes, 2 * 3 * 2 * 18);
	gguf_free(&g);
}
END_TEST

/* ======================================================================
 * Hostile input: every prefix and single-byte changes, from memory
 * ====================================================================== */

static const char *const small[] = { "all_types", "meta_all", "align64", "align1", "zero_dim", "dims4", "t5_q" };

/* The invariants of a parse that succeeded. */
static void check_sane(const struct gguf_file *g, uint64_t size)
{
	uint64_t expect = 0;

	ck_assert_uint_le(g->info_end, size);
	ck_assert_uint_eq(g->data_offset % g->alignment, 0);
	for (uint64_t i = 0; i < g->ntensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];
		ck_assert_uint_eq(t->offset, expect);
		ck_assert_uint_le(g->data_offset + t->offset + t->nbytes, size);
		ck_assert_uint_eq(strlen(t->name), t->name_len);
		expect += (t->nbytes + g->alignment - 1) / g->alignment * g->alignment;
	}
	for (uint64_t i = 0; i < g->nkv; i++)
		ck_assert_ptr_nonnull(g->kv[i].value);
}

START_TEST(test_prefixes)
{
	char p[PATH_MAX];
	size_t len;
	uint8_t *b = tf_slurp(fx(p, "valid", small[_i]), &len);
	struct gguf_file g = { 0 };

	/* the whole file from memory: as from the fd */
	struct src s = src_mem(b, len, "mem");
	ck_assert_int_eq(gguf_parse(&s, &g), 0);
	check_sane(&g, len);
	/* The last tensor's padding may be missing; nothing else may. */
	const struct gguf_tensor *last = g.ntensors ? &g.tensors[g.ntensors - 1] : NULL;
	uint64_t need = last ? g.data_offset + last->offset + last->nbytes : g.info_end;
	gguf_free(&g);
	for (size_t n = 0; n < len; n++) {
		uint8_t *c = tf_cut(b, n);
		s = src_mem(c, n, "mem");
		int r = gguf_parse(&s, &g);
		if (n >= need) {
			ck_assert_msg(r == 0, "%s cut at %zu: %d %s", small[_i], n, r, vram_last_error());
			gguf_free(&g);
		} else {
			ck_assert_msg(r == -EINVAL, "%s cut at %zu: %d %s", small[_i], n, r, vram_last_error());
			ck_assert_msg(!strncmp(vram_last_error(), "mem: invalid GGUF: ", 19), "%s", vram_last_error());
		}
		free(c);
	}
	free(b);
}
END_TEST

START_TEST(test_mutations)
{
	char p[PATH_MAX];
	size_t len;
	uint8_t *b = tf_slurp(fx(p, "valid", small[_i]), &len);
	uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)_i;
	struct gguf_file g = { 0 };
	unsigned ok = 0;

	for (int k = 0; k < 3000; k++) {
		uint8_t *c = tf_mutant(b, len, k, &x, 0, MIN(len, 2048)); /* the header's bytes */
		struct src s = src_mem(c, len, "mem");
		int r = gguf_parse(&s, &g);
		if (r == 0) {
			check_sane(&g, len);
			ok++;
			gguf_free(&g);
		} else {
			ck_assert_msg(r == -EINVAL || r == -ENOTSUP, "%d %s", r, vram_last_error());
		}
		free(c);
	}
	free(b);
	printf("test-gguf: %s: %u of 3000 mutations still parse\n", small[_i], ok);
}
END_TEST


/* ======================================================================
 * The model API over GGUF (vram_model_open)
 * ====================================================================== */

static vram_model *model_ok(const char *name)
{
	char p[PATH_MAX];
	vram_model *m = NULL;
	int r = vram_model_open(fx(p, "valid", name), &m);

	ck_assert_msg(r == 0, "%s: %d %s", name, r, vram_last_error());
	return m;
}

static const char *meta(vram_model *m, const char *key)
{
	for (int i = 0; i < vram_model_metadata_count(m); i++) {
		const char *k, *v;
		ck_assert_int_eq(vram_model_metadata(m, (uint32_t)i, &k, &v), 0);
		if (!strcmp(k, key))
			return v;
	}
	return NULL;
}

/* Every tensor as the reader saw it: shape reversed into row-major
 * order, dtype mapped, offsets absolute. */
START_TEST(test_model_tensors)
{
	static const char *const files[] = { "flux_q", "wan_q", "t5_q", "all_types", "dims4", "zero_dim", "scalar" };
	for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
		struct gguf_file g;
		vram_model *m = model_ok(files[f]);
		parse_ok(files[f], &g);
		ck_assert_str_eq(vram_model_format(m), "gguf");
		ck_assert_int_eq(vram_model_tensor_count(m), (int)g.ntensors);
		ck_assert_uint_eq(vram_model_data_offset(m), g.data_offset);
		ck_assert_uint_eq(vram_model_header_size(m), g.info_end);
		for (uint64_t i = 0; i < g.ntensors; i++) {
			const struct gguf_tensor *gt = &g.tensors[i];
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			int idx = vram_model_find_tensor(m, gt->name);
			uint32_t e, b;
			ck_assert_int_ge(idx, 0);
			ck_assert_int_eq(vram_model_tensor(m, (uint32_t)idx, &ti), 0);
			ck_assert_uint_eq(ti.file_offset, g.data_offset + gt->offset);
			ck_assert_uint_eq(ti.nbytes, gt->nbytes);
			ck_assert_uint_eq(ti.ndim, gt->ndim);
			for (uint32_t j = 0; j < gt->ndim; j++)
				ck_assert_uint_eq(ti.shape[j], gt->ne[gt->ndim - 1 - j]);
			ck_assert_str_eq(vram_dtype_name(ti.dtype), gguf_type(gt->type)->name);
			ck_assert_uint_eq(gguf_ggml_type(ti.dtype), gt->type);
			ck_assert_int_eq(vram_dtype_block(ti.dtype, &e, &b), 0);
			ck_assert_uint_eq(gt->nelem / e * b, ti.nbytes); /* the size rule of vram.h */
		}
		gguf_free(&g);
		vram_model_close(m);
	}
}
END_TEST

START_TEST(test_model_components)
{
	vram_model *m = model_ok("flux_q");
	struct vram_component_info ci = { .struct_size = sizeof(ci) };
	struct vram_layer_info li = { .struct_size = sizeof(li) };
	struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
	int n = vram_model_tensor_count(m), nl = vram_model_layer_count(m);

	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_UNET, &ci), 0);
	ck_assert_int_eq((int)ci.ntensors, n); /* no prefixes: all the diffusion model */
	/* img_in, txt_in, time_in, final_layer.linear, 3 double, 12 single blocks */
	ck_assert_int_eq(nl, 4 + 3 + 12);
	ck_assert_int_eq(vram_model_layer(m, 0, &li), 0);
	ck_assert_str_eq(li.name, "double_blocks.0");
	ck_assert_int_eq(vram_model_layer(m, 3, &li), 0);
	ck_assert_str_eq(li.name, "final_layer.linear");
	ck_assert_int_eq(vram_model_layer(m, (uint32_t)nl - 1, &li), 0);
	ck_assert_str_eq(li.name, "txt_in");
	ck_assert_int_eq(vram_model_layer(m, 5, &li), 0);
	ck_assert_str_eq(li.name, "single_blocks.0");
	ck_assert_uint_eq(li.ntensors, 2);
	ck_assert_int_eq(vram_model_tensor(m, li.first_tensor + 1, &ti), 0);
	ck_assert_str_eq(ti.name, "single_blocks.0.linear1.weight");
	ck_assert_uint_eq(ti.dtype, VRAM_DTYPE_Q4_0);
	ck_assert_int_eq(vram_model_layer(m, 6, &li), 0);
	ck_assert_str_eq(li.name, "single_blocks.1");
	ck_assert_int_eq(vram_model_tensor(m, li.first_tensor + 1, &ti), 0);
	ck_assert_uint_eq(ti.dtype, VRAM_DTYPE_Q6_K);
	ck_assert_str_eq(meta(m, "general.architecture"), "flux");
	ck_assert_str_eq(meta(m, "general.license"), "flux-1-dev-non-commercial-license");
	ck_assert_str_eq(meta(m, "general.file_type"), "15 (Q4_K_M)");
	vram_model_close(m);

	m = model_ok("t5_q"); /* a text encoder by its architecture */
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_CLIP, &ci), 0);
	ck_assert_int_eq((int)ci.ntensors, vram_model_tensor_count(m));
	ck_assert_int_eq(vram_model_layer(m, 0, &li), 0);
	ck_assert_str_eq(li.name, "enc.blk.0");
	vram_model_close(m);

	m = model_ok("wan_q");
	ck_assert_int_eq(vram_model_layer(m, 0, &li), 0);
	ck_assert_str_eq(li.name, "blocks.0");
	ck_assert_str_eq(meta(m, "general.file_type"), "12 (Q3_K_M)");
	vram_model_close(m);
}
END_TEST

START_TEST(test_model_invalid)
{
	char p[PATH_MAX], want[PATH_MAX + 64];
	vram_model *m = (vram_model *)(uintptr_t)0x5a5a;

	ck_assert_int_eq(vram_model_open(fx(p, "invalid", "dup_tensor"), &m), -EINVAL);
	snprintf(want, sizeof(want), "%s: invalid GGUF: duplicate tensor name \"a\"", p);
	ck_assert_str_eq(vram_last_error(), want);
	ck_assert_ptr_eq(m, (vram_model *)(uintptr_t)0x5a5a);
	ck_assert_int_eq(vram_model_open(fx(p, "invalid", "big_endian"), &m), -ENOTSUP);
}
END_TEST

/* A file without tensors that ends inside the padding after its infos
 * (allowed: "padded or not") has its (empty) data at the end of the file,
 * not past it.  fuzz-gguf found the model reporting data_offset 64 for a
 * 50-byte file. */
START_TEST(test_model_short_padding)
{
	static const uint8_t file[50] = {
		'G', 'G', 'U', 'F', 3, 0, 0, 0,  /* version 3 */
		0, 0, 0, 0, 0, 0, 0, 0,          /* no tensors */
		1, 0, 0, 0, 0, 0, 0, 0,          /* one key */
		1, 0, 0, 0, 0, 0, 0, 0, 'a',     /* "a" */
		0, 0, 0, 0, 0,                   /* UINT8 0; infos end at 38, data at 64 */
	};
	char p[PATH_MAX];
	vram_model *m = NULL;
	struct gguf_file g = { 0 };
	struct src s = src_mem(file, sizeof(file), "short");
	FILE *f;

	ck_assert_int_eq(gguf_parse(&s, &g), 0);
	ck_assert_uint_eq(g.info_end, 38);
	ck_assert_uint_eq(g.data_offset, 64);
	gguf_free(&g);
	snprintf(p, sizeof(p), "%s/short_padding.gguf", fixdir);
	f = fopen(p, "wb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(file, 1, sizeof(file), f), sizeof(file));
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_msg(vram_model_open(p, &m) == 0, "%s", vram_last_error());
	ck_assert_uint_eq(vram_model_file_size(m), 50);
	ck_assert_uint_eq(vram_model_header_size(m), 38);
	ck_assert_uint_eq(vram_model_data_offset(m), 50);
	ck_assert_uint_eq(vram_model_data_size(m), 0);
	ck_assert_int_eq(vram_model_tensor_count(m), 0);
	vram_model_close(m);
}
END_TEST

/* ======================================================================
 * Fixtures and main
 * ====================================================================== */

static void add_tests(TCase *tc)
{
	TF_ADD_LOOP(tc, test_invalid, invalid);
	tcase_add_test(tc, test_io_errors);
	tcase_add_test(tc, test_reference);
	tcase_add_test(tc, test_types);
	tcase_add_test(tc, test_metadata);
	tcase_add_test(tc, test_layouts);
	TF_ADD_LOOP(tc, test_prefixes, small);
	TF_ADD_LOOP(tc, test_mutations, small);
	tcase_add_test(tc, test_model_tensors);
	tcase_add_test(tc, test_model_components);
	tcase_add_test(tc, test_model_invalid);
	tcase_add_test(tc, test_model_short_padding);
}

int main(void)
{
	struct tf_gen g;
	int r = tf_prepare(&g, "test-gguf", "gen_gguf.py", NULL, fixdir, sizeof(fixdir));

	if (r || (r = tf_generate(&g, "gen_gguf.py", (const char *const[]){ fixdir, NULL })))
		return r;
	r = tf_run("gguf", "reader", 120, add_tests);
	tf_rmtree(fixdir);
	return r ? 1 : 0;
}
