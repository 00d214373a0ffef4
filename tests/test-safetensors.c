/* SPDX-License-Identifier: MIT */
/*
 * The safetensors reader and the model API.  Fixtures come from
 * tests/gen_fixtures.py (reference writer for valid files, bytes for
 * invalid ones, each checked against the reference) and
 * tests/make_checkpoint.py, run once by main() into a temp directory under
 * $TMPDIR (or /tmp) that main() removes.  Needs $VRAM_PYTHON (default
 * .venv/bin/python) with safetensors and numpy; skips (77) without it.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runtime/dtype.h"
#include "runtime/model.h"
#include "runtime/vram.h"
#include "tests/testlib-fixtures.h"

static char fixdir[1024];

/* Open fds of this process. */
static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the DIR's own */
}

static const char *fx(char *buf, const char *sub, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/%s/%s.safetensors", fixdir, sub, name);
	return buf;
}

static vram_model *open_ok(const char *sub, const char *name)
{
	char p[PATH_MAX];
	vram_model *m = NULL;
	int r = vram_model_open(fx(p, sub, name), &m);

	ck_assert_msg(r == 0, "%s/%s: %d %s", sub, name, r, vram_last_error());
	ck_assert_ptr_nonnull(m);
	return m;
}

/* ======================================================================
 * Invalid files: one rule each, the reason asserted
 * ====================================================================== */

static const struct {
	const char *file;
	const char *reason;      /* substring of what follows "invalid safetensors: " */
} invalid[] = {
	{ "short", "file is 5 bytes, too short for the 8-byte header length" },
	{ "n_zero", "header length is 0" },
	{ "n_too_large", "header length 100000001 exceeds the limit of 100000000 bytes" },
	{ "n_past_eof", "header length 100 runs past the end of the file (8 + 100 > 50 bytes)" },
	{ "bom", "header starts with a UTF-8 byte order mark" },
	{ "utf8_invalid", "header is not valid UTF-8 (byte 2: 0xff)" },
	{ "utf8_overlong", "header is not valid UTF-8 (byte 2: 0xc0)" },
	{ "utf8_surrogate", "header is not valid UTF-8 (byte 2: 0xed)" },
	{ "utf8_truncated", "header is not valid UTF-8" },
	{ "ws_only", "header is only whitespace" },
	{ "top_array", "header is an array, not a JSON object" },
	{ "top_string", "header is a string, not a JSON object" },
	{ "top_number", "header is a number, not a JSON object" },
	{ "top_null", "header is null, not a JSON object" },
	{ "top_garbage", "header does not start with a JSON object (byte 0 is 'x')" },
	{ "nul_padding", "header is padded with NUL bytes" },
	{ "nul_padding_ws", "header is padded with NUL bytes" },
	{ "trailing_junk", "trailing data after the JSON object" },
	{ "trailing_object", "trailing data after the JSON object" },
	{ "trailing_formfeed", "trailing data after the JSON object" },
	{ "comment", "header is not valid JSON" },
	{ "nan", "tensor \"a\": header is not valid JSON: invalid token" },
	{ "unterminated", "header is not valid JSON" },
	{ "control_char", "header is not valid JSON: control character" },
	{ "lone_surrogate", "header is not valid JSON: invalid Unicode" },
	{ "too_deep", "header nests objects and arrays deeper than 127 levels" },
	{ "real_overflow", "header is not valid JSON: real number overflow" },
	{ "nul_after_number", "tensor \"t\": header is not valid JSON: NUL byte (byte 29)" },
	{ "nul_after_offset", "tensor \"t\": header is not valid JSON: NUL byte (byte 50)" },
	{ "nul_after_real", "tensor \"t\": header is not valid JSON: NUL byte (byte 61)" },
	{ "nul_after_literal", "tensor \"t\": header is not valid JSON: NUL byte (byte 60)" },
	{ "nul_after_negzero", "tensor \"t\": header is not valid JSON: NUL byte (byte 59)" },
	{ "nul_in_metadata", "header is not valid JSON: NUL byte (byte 24)" },
	{ "nul_between", "header is not valid JSON: NUL byte (byte 53)" },
	{ "nul_in_string", "tensor \"t\": header is not valid JSON: NUL byte (byte 17)" },
	{ "meta_array", "__metadata__ is an array, not an object of strings or null" },
	{ "meta_string", "__metadata__ is a string, not an object of strings or null" },
	{ "meta_value_int", "__metadata__ \"a\" is an integer, not a string" },
	{ "meta_value_object", "__metadata__ \"a\" is an object, not a string" },
	{ "meta_value_null", "__metadata__ \"a\" is null, not a string" },
	{ "meta_twice", "\"__metadata__\" appears twice" },
	{ "meta_dup_key", "__metadata__: duplicate key \"a\"" },
	{ "meta_nul_value", "__metadata__ \"a\": value contains a NUL character (unsupported)" },
	{ "meta_nul_key", "__metadata__ key \"a\\u0000\" contains a NUL character (unsupported)" },
	{ "entry_null", "tensor \"t\": entry is null, not an object" },
	{ "entry_array", "tensor \"t\": entry is an array, not an object" },
	{ "entry_string", "tensor \"t\": entry is a string, not an object" },
	{ "missing_dtype", "tensor \"t\": missing \"dtype\"" },
	{ "missing_shape", "tensor \"t\": missing \"shape\"" },
	{ "missing_offsets", "tensor \"t\": missing \"data_offsets\"" },
	{ "dtype_int", "tensor \"t\": dtype is an integer, not a string" },
	{ "dtype_lower", "tensor \"t\": unknown dtype \"f16\" (dtypes are case-sensitive: F16)" },
	{ "dtype_unknown", "tensor \"t\": unknown dtype \"F8_E4M3FN\"" },
	{ "dtype_empty", "tensor \"t\": unknown dtype \"\"" },
	{ "shape_null", "tensor \"t\": shape is null, not an array" },
	{ "shape_object", "tensor \"t\": shape is an object, not an array" },
	{ "shape_real", "tensor \"t\": shape[0] is a real number, not a non-negative integer" },
	{ "shape_exp", "tensor \"t\": shape[0] is a real number, not a non-negative integer" },
	{ "shape_string", "tensor \"t\": shape[0] is a string, not a non-negative integer" },
	{ "shape_negative", "tensor \"t\": shape[1] is -2, not a non-negative integer" },
	{ "shape_negzero", "tensor \"t\": shape[0] is -0, not a non-negative integer" },
	{ "shape_nested", "tensor \"t\": shape[0] is an array, not a non-negative integer" },
	{ "shape_bool", "tensor \"t\": shape[0] is true, not a non-negative integer" },
	{ "offsets_object", "tensor \"t\": data_offsets is an object, not an array" },
	{ "offsets_one", "tensor \"t\": data_offsets has 1 element, not 2" },
	{ "offsets_three", "tensor \"t\": data_offsets has 3 elements, not 2" },
	{ "offsets_real", "tensor \"t\": data_offsets[1] is a real number, not a non-negative integer" },
	{ "offsets_negative", "tensor \"t\": data_offsets[0] is -1, not a non-negative integer" },
	{ "offsets_negzero", "tensor \"t\": data_offsets[0] is -0, not a non-negative integer" },
	{ "offsets_string", "tensor \"t\": data_offsets[0] is a string, not a non-negative integer" },
	{ "offsets_reversed", "tensor \"t\": data_offsets [4, 0] end before they begin" },
	{ "dup_field", "tensor \"t\": duplicate field \"dtype\"" },
	{ "dup_tensor", "duplicate tensor name \"t\" (vramd rejects duplicate keys)" },
	{ "dup_in_extra", "tensor \"t\": duplicate key \"k\" inside field \"x\" (vramd rejects duplicate keys)" },
	{ "dup_extra_field", "tensor \"t\": duplicate field \"x\" (vramd rejects duplicate keys)" },
	{ "dup_field_escaped", "tensor \"t\": duplicate field \"dt\\u0079pe\"" },
	{ "meta_dup_escaped", "__metadata__: duplicate key \"a\" (vramd rejects duplicate keys)" },
	{ "meta_twice_escaped", "\"__metadata__\" appears twice" },
	{ "nul_name", "tensor name \"a\\u0000\" contains a NUL character (unsupported)" },
	{ "nul_extra_key", "tensor \"t\": key \"\\u0000\" contains a NUL character (unsupported)" },
	{ "bigint_shape", "tensor \"t\": \"shape\" holds an integer outside the signed 64-bit range" },
	{ "bigint_extra", "tensor \"t\": \"x\" holds an integer outside the signed 64-bit range" },
	{ "elem_overflow", "tensor \"t\": shape [1099511627776, 1099511627776, 0] has more than 2^64 elements" },
	{ "bits_overflow", "tensor \"t\": U64 [288230376151711744] is 2^64 bits or more" },
	{ "f4_odd", "tensor \"t\": F4 [3] is 12 bits, not a whole number of bytes" },
	{ "f6_odd", "tensor \"t\": F6_E3M2 [3] is 18 bits, not a whole number of bytes" },
	{ "size_mismatch", "tensor \"x.weight\": data_offsets [0, 12] hold 12 bytes but F16 [2, 4] needs 16" },
	{ "scalar_mismatch", "tensor \"s\": data_offsets [0, 8] hold 8 bytes but F32 [] needs 4" },
	{ "first_not_zero", "tensor \"t\": data_offsets [4, 8] leave a gap: the first tensor must begin at 0" },
	{ "gap", "tensor \"b\": data_offsets [8, 12] leave a gap of 4 bytes after tensor \"a\" [0, 4]" },
	{ "overlap", "tensor \"b\": data_offsets [4, 12] overlap tensor \"a\" [0, 8]" },
	{ "shared_range", "tensor \"b\": data_offsets [0, 4] overlap tensor \"a\" [0, 4]" },
	{ "trailing_bytes", "3 bytes follow the last tensor (data ends at byte " },
	{ "empty_trailing", "1 byte follows the last tensor (data ends at byte 10, the file has 11)" },
	{ "truncated", "file is truncated: tensors need data up to byte " },
};

START_TEST(test_invalid)
{
	char p[PATH_MAX];
	vram_model *m = (vram_model *)(uintptr_t)0x5a5a;

	fx(p, "invalid", invalid[_i].file);
	tf_check_refusal(invalid[_i].file, p, vram_model_open(p, &m), -EINVAL, "safetensors", invalid[_i].reason);
	ck_assert_ptr_eq(m, (vram_model *)(uintptr_t)0x5a5a); /* untouched on failure */
}
END_TEST

/* The example of the brief, to the byte. */
START_TEST(test_invalid_exact_message)
{
	char p[PATH_MAX], want[PATH_MAX + 256];
	vram_model *m = NULL;

	fx(p, "invalid", "size_mismatch");
	ck_assert_int_eq(vram_model_open(p, &m), -EINVAL);
	snprintf(want, sizeof(want), "%s: invalid safetensors: tensor \"x.weight\": data_offsets [0, 12] "
		 "hold 12 bytes but F16 [2, 4] needs 16", p);
	ck_assert_str_eq(vram_last_error(), want);
}
END_TEST

/* A duplicate field the reference rejects too is not called a deviation;
 * one it ignores (an extra field, kept last there) is. */
START_TEST(test_duplicate_field_messages)
{
	static const struct {
		const char *file, *reason;
	} cases[] = {
		{ "dup_field", "tensor \"t\": duplicate field \"dtype\"" },
		{ "dup_field_escaped", "tensor \"t\": duplicate field \"dt\\u0079pe\"" },
		{ "dup_extra_field", "tensor \"t\": duplicate field \"x\" (vramd rejects duplicate keys)" },
	};
	char p[PATH_MAX], want[PATH_MAX + 256];
	vram_model *m = NULL;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fx(p, "invalid", cases[i].file);
		ck_assert_int_eq(vram_model_open(p, &m), -EINVAL);
		snprintf(want, sizeof(want), "%s: invalid safetensors: %s", p, cases[i].reason);
		ck_assert_str_eq(vram_last_error(), want);
	}
}
END_TEST

START_TEST(test_io_errors)
{
	tf_check_open_errors(fixdir, "does-not-exist.safetensors");
}
END_TEST

/* ======================================================================
 * Valid edge cases
 * ====================================================================== */

static const char *const valid[] = {
	"empty", "ref_empty", "zero_share", "ref_zero_share", "scalar", "f4_pair", "f6_quad", "unaligned",
	"whitespace", "meta_null", "metadata", "extra_fields", "deep_ok", "escaped_keys", "big_zero_dim",
	"all_dtypes",
};

START_TEST(test_valid)
{
	vram_model *m = open_ok("valid", valid[_i]);
	uint64_t sum = 0;
	int n = vram_model_tensor_count(m);

	ck_assert_int_ge(n, 0);
	ck_assert_str_eq(vram_model_format(m), "safetensors");
	ck_assert_uint_eq(vram_model_data_offset(m), 8 + vram_model_header_size(m));
	ck_assert_uint_eq(vram_model_data_offset(m) + vram_model_data_size(m), vram_model_file_size(m));
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info t = { .struct_size = sizeof(t) };
		ck_assert_int_eq(vram_model_tensor(m, (uint32_t)i, &t), 0);
		ck_assert_int_eq(vram_model_find_tensor(m, t.name), i);
		sum += t.nbytes;
	}
	ck_assert_uint_eq(sum, vram_model_data_size(m));
	vram_model_close(m);
}
END_TEST

static struct vram_tensor_info tensor_named(vram_model *m, const char *name)
{
	struct vram_tensor_info t = { .struct_size = sizeof(t) };
	int i = vram_model_find_tensor(m, name);

	ck_assert_msg(i >= 0, "no tensor %s: %s", name, vram_last_error());
	ck_assert_int_eq(vram_model_tensor(m, (uint32_t)i, &t), 0);
	return t;
}

START_TEST(test_valid_details)
{
	struct vram_tensor_info t;
	const char *k, *v;
	vram_model *m;

	m = open_ok("valid", "empty");
	ck_assert_int_eq(vram_model_tensor_count(m), 0);
	ck_assert_int_eq(vram_model_layer_count(m), 0);
	ck_assert_int_eq(vram_model_metadata_count(m), 0);
	ck_assert_uint_eq(vram_model_header_size(m), 2);
	ck_assert_uint_eq(vram_model_data_size(m), 0);
	vram_model_close(m);

	m = open_ok("valid", "zero_share");
	ck_assert_int_eq(vram_model_tensor_count(m), 4);
	t = tensor_named(m, "a");
	ck_assert_uint_eq(t.nbytes, 0);
	ck_assert_uint_eq(t.file_offset, vram_model_data_offset(m));
	t = tensor_named(m, "c");
	ck_assert_uint_eq(t.ndim, 2);
	ck_assert_uint_eq(t.shape[0], 0);
	ck_assert_uint_eq(t.shape[1], 3);
	t = tensor_named(m, "d");
	ck_assert_uint_eq(t.file_offset, vram_model_data_offset(m) + 2);
	vram_model_close(m);

	m = open_ok("valid", "scalar");
	t = tensor_named(m, "s");
	ck_assert_uint_eq(t.ndim, 0);
	ck_assert_uint_eq(t.nbytes, 4);
	ck_assert_uint_eq(t.dtype, VRAM_DTYPE_F32);
	vram_model_close(m);

	m = open_ok("valid", "f4_pair");
	t = tensor_named(m, "t");
	ck_assert_uint_eq(t.dtype, VRAM_DTYPE_F4);
	ck_assert_uint_eq(t.nbytes, 1);
	vram_model_close(m);

	m = open_ok("valid", "f6_quad");
	t = tensor_named(m, "t");
	ck_assert_uint_eq(t.dtype, VRAM_DTYPE_F6_E2M3);
	ck_assert_uint_eq(t.nbytes, 3);
	vram_model_close(m);

	m = open_ok("valid", "unaligned");
	ck_assert_uint_eq(vram_model_data_offset(m) % 8, 5);
	t = tensor_named(m, "t");
	ck_assert_uint_eq(t.file_offset, vram_model_data_offset(m));
	ck_assert_uint_eq(t.nbytes, 3);
	vram_model_close(m);

	m = open_ok("valid", "whitespace");
	ck_assert_int_eq(vram_model_tensor_count(m), 1);
	vram_model_close(m);

	m = open_ok("valid", "meta_null");
	ck_assert_int_eq(vram_model_metadata_count(m), 0);
	ck_assert_int_eq(vram_model_tensor_count(m), 1);
	vram_model_close(m);

	m = open_ok("valid", "metadata");
	ck_assert_int_eq(vram_model_metadata_count(m), 3);
	for (uint32_t i = 0; i < 3; i++) {
		ck_assert_int_eq(vram_model_metadata(m, i, &k, &v), 0);
		if (!strcmp(k, "format"))
			ck_assert_str_eq(v, "pt");
		else if (!strcmp(k, "title"))
			ck_assert_str_eq(v, "t\xc3\xa9st");
		else {
			ck_assert_str_eq(k, "empty");
			ck_assert_str_eq(v, "");
		}
	}
	ck_assert_int_eq(vram_model_metadata(m, 3, &k, &v), -EINVAL);
	vram_model_close(m);

	m = open_ok("valid", "escaped_keys");
	t = tensor_named(m, "\xc3\xa9t\xc3\xa9");
	ck_assert_uint_eq(t.nbytes, 1);
	tensor_named(m, "\xc3\xbc" "ber");
	vram_model_close(m);

	m = open_ok("valid", "big_zero_dim");
	t = tensor_named(m, "t");
	ck_assert_uint_eq(t.shape[1], INT64_MAX);
	vram_model_close(m);

	m = open_ok("valid", "all_dtypes");
	ck_assert_int_eq(vram_model_tensor_count(m), DTYPE_ST_COUNT);
	for (uint32_t d = 0; d < DTYPE_ST_COUNT; d++) {
		char name[32];
		snprintf(name, sizeof(name), "t%02u_%s", d, vram_dtype_name(d));
		t = tensor_named(m, name);
		ck_assert_uint_eq(t.dtype, d);
	}
	vram_model_close(m);
}
END_TEST

/* ======================================================================
 * Against the reference: every tensor the same
 * ====================================================================== */

static int crosscheck_file(const char *base)
{
	char p[PATH_MAX], line[4096];
	vram_model *m = open_ok("random", base);
	FILE *f;
	int n = 0;

	snprintf(p, sizeof(p), "%s/random/%s.txt", fixdir, base);
	f = fopen(p, "r");
	ck_assert_msg(f != NULL, "%s: %s", p, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		char *fld[5], *s = line, *save = NULL;
		struct vram_tensor_info t;
		uint32_t d = 0;

		/* name, dtype, d0,d1,..., begin, end; the shape may be empty. */
		line[strcspn(line, "\n")] = '\0';
		for (int i = 0; i < 5; i++) {
			fld[i] = s;
			s = strchr(s, '\t');
			if (i < 4) {
				ck_assert_msg(s != NULL, "%s: bad dump line", p);
				*s++ = '\0';
			}
		}
		t = tensor_named(m, fld[0]);
		ck_assert_msg(!strcmp(vram_dtype_name(t.dtype), fld[1]), "%s: %s: dtype %s, reference %s", base,
			      fld[0], vram_dtype_name(t.dtype), fld[1]);
		for (char *tok = strtok_r(fld[2], ",", &save); tok; tok = strtok_r(NULL, ",", &save), d++) {
			ck_assert_uint_lt(d, t.ndim);
			ck_assert_uint_eq(t.shape[d], strtoull(tok, NULL, 10));
		}
		ck_assert_msg(d == t.ndim, "%s: %s: ndim %u, reference %u", base, fld[0], t.ndim, d);
		ck_assert_uint_eq(t.file_offset - vram_model_data_offset(m), strtoull(fld[3], NULL, 10));
		ck_assert_uint_eq(t.nbytes, strtoull(fld[4], NULL, 10) - strtoull(fld[3], NULL, 10));
		n++;
	}
	fclose(f);
	ck_assert_int_eq(vram_model_tensor_count(m), n);
	vram_model_close(m);
	return n;
}

/* Model order: components unet, clip, vae, other; layers in natural order
 * within one; each layer's tensors contiguous and in natural order;
 * summaries add up. */
static void check_order(vram_model *m)
{
	struct vram_layer_info prev = { 0 };
	uint64_t comp_bytes[VRAM_COMP_COUNT] = { 0 }, total = 0;
	uint32_t comp_tensors[VRAM_COMP_COUNT] = { 0 }, comp_layers[VRAM_COMP_COUNT] = { 0 };
	uint32_t next = 0;
	int nl = vram_model_layer_count(m);

	for (int l = 0; l < nl; l++) {
		struct vram_layer_info li = { .struct_size = sizeof(li) };
		uint64_t bytes = 0;

		ck_assert_int_eq(vram_model_layer(m, (uint32_t)l, &li), 0);
		ck_assert_uint_eq(li.first_tensor, next);
		ck_assert_uint_gt(li.ntensors, 0);
		if (l > 0) {
			ck_assert_uint_ge(li.component, prev.component);
			if (li.component == prev.component)
				ck_assert_msg(model_natcmp(prev.name, strlen(prev.name), li.name, strlen(li.name)) < 0,
					      "layer %s before %s", prev.name, li.name);
		}
		for (uint32_t i = li.first_tensor; i < li.first_tensor + li.ntensors; i++) {
			struct vram_tensor_info t = { .struct_size = sizeof(t) }, u = { .struct_size = sizeof(u) };
			ck_assert_int_eq(vram_model_tensor(m, i, &t), 0);
			ck_assert_uint_eq(t.layer, (uint32_t)l);
			ck_assert_uint_eq(t.component, li.component);
			ck_assert_msg(!strncmp(t.name, li.name, strlen(li.name)), "%s not in layer %s", t.name, li.name);
			if (i > li.first_tensor) {
				ck_assert_int_eq(vram_model_tensor(m, i - 1, &u), 0);
				ck_assert_msg(model_natcmp(u.name, strlen(u.name), t.name, strlen(t.name)) < 0,
					      "tensor %s before %s", u.name, t.name);
			}
			bytes += t.nbytes;
		}
		ck_assert_uint_eq(bytes, li.nbytes);
		comp_bytes[li.component] += bytes;
		comp_tensors[li.component] += li.ntensors;
		comp_layers[li.component]++;
		next += li.ntensors;
		prev = li;
	}
	ck_assert_int_eq((int)next, vram_model_tensor_count(m));
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++) {
		struct vram_component_info ci = { .struct_size = sizeof(ci) };
		ck_assert_int_eq(vram_model_component(m, c, &ci), 0);
		ck_assert_uint_eq(ci.nbytes, comp_bytes[c]);
		ck_assert_uint_eq(ci.ntensors, comp_tensors[c]);
		ck_assert_uint_eq(ci.nlayers, comp_layers[c]);
		total += ci.nbytes;
	}
	ck_assert_uint_eq(total, vram_model_data_size(m));
}

START_TEST(test_reference_crosscheck)
{
	char base[16];
	int total = 0;

	for (int i = 0; i < 24; i++) {
		snprintf(base, sizeof(base), "%02d", i);
		total += crosscheck_file(base);
	}
	ck_assert_int_eq(crosscheck_file("all_dtypes"), DTYPE_ST_COUNT);
	ck_assert_int_gt(total, 200);
	for (int i = 0; i < 24; i++) {
		vram_model *m;
		snprintf(base, sizeof(base), "%02d", i);
		m = open_ok("random", base);
		check_order(m);
		vram_model_close(m);
	}
}
END_TEST

/* ======================================================================
 * Components and layers
 * ====================================================================== */

static void expect(vram_model *m, const char *tensor, uint32_t comp, const char *layer, uint32_t flags)
{
	struct vram_tensor_info t = tensor_named(m, tensor);
	struct vram_layer_info l = { .struct_size = sizeof(l) };

	ck_assert_msg(t.component == comp, "%s: component %s, want %s", tensor, vram_component_name(t.component),
		      vram_component_name(comp));
	ck_assert_int_eq(vram_model_layer(m, t.layer, &l), 0);
	ck_assert_msg(!strcmp(l.name, layer), "%s: layer \"%s\", want \"%s\"", tensor, l.name, layer);
	ck_assert_uint_eq(l.component, comp);
	ck_assert_msg(l.flags == flags, "%s: layer flags %#x, want %#x", tensor, l.flags, flags);
}

static uint32_t layer_of(vram_model *m, const char *tensor)
{
	return tensor_named(m, tensor).layer;
}

#define U "model.diffusion_model."
#define C0 "conditioner.embedders.0.transformer.text_model."
#define C1 "conditioner.embedders.1.model."

START_TEST(test_sdxl)
{
	vram_model *m = open_ok("names", "sdxl");
	struct vram_component_info ci = { .struct_size = sizeof(ci) };

	expect(m, U "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", VRAM_COMP_UNET, U "input_blocks.4", 0);
	expect(m, U "input_blocks.1.0.in_layers.0.weight", VRAM_COMP_UNET, U "input_blocks.1", 0);
	expect(m, U "time_embed.0.weight", VRAM_COMP_UNET, U "time_embed.0", 0);
	expect(m, U "label_emb.0.0.weight", VRAM_COMP_UNET, U "label_emb.0", 0);
	expect(m, U "out.2.bias", VRAM_COMP_UNET, U "out.2", 0);
	expect(m, C0 "encoder.layers.10.mlp.fc1.weight", VRAM_COMP_CLIP, C0 "encoder.layers.10", 0);
	expect(m, C0 "embeddings.token_embedding.weight", VRAM_COMP_CLIP, C0 "embeddings.token_embedding",
	       VRAM_LAYER_EMBEDDING);
	expect(m, C0 "embeddings.position_embedding.weight", VRAM_COMP_CLIP, C0 "embeddings.position_embedding",
	       VRAM_LAYER_EMBEDDING);
	expect(m, C0 "embeddings.position_ids", VRAM_COMP_CLIP, C0 "embeddings", VRAM_LAYER_EMBEDDING);
	expect(m, C0 "final_layer_norm.weight", VRAM_COMP_CLIP, C0 "final_layer_norm", 0);
	expect(m, C1 "transformer.resblocks.7.attn.in_proj_weight", VRAM_COMP_CLIP, C1 "transformer.resblocks.7", 0);
	expect(m, C1 "transformer.resblocks.7.mlp.c_fc.bias", VRAM_COMP_CLIP, C1 "transformer.resblocks.7", 0);
	expect(m, C1 "token_embedding.weight", VRAM_COMP_CLIP, C1 "token_embedding", VRAM_LAYER_EMBEDDING);
	expect(m, C1 "logit_scale", VRAM_COMP_CLIP, "conditioner.embedders.1.model", 0);
	expect(m, "first_stage_model.encoder.down.0.block.1.conv1.weight", VRAM_COMP_VAE,
	       "first_stage_model.encoder.down.0", 0);
	expect(m, "first_stage_model.encoder.mid.attn_1.q.weight", VRAM_COMP_VAE,
	       "first_stage_model.encoder.mid.attn_1.q", 0);
	expect(m, "first_stage_model.decoder.up.3.upsample.conv.weight", VRAM_COMP_VAE,
	       "first_stage_model.decoder.up.3", 0);
	expect(m, "denoiser.sigmas", VRAM_COMP_OTHER, "denoiser", 0);

	/* Natural order: 2 < 10 < 11, in layers and in the tensor order. */
	ck_assert_uint_lt(layer_of(m, U "input_blocks.2.0.in_layers.0.weight"),
			  layer_of(m, U "input_blocks.10.0.in_layers.0.weight"));
	ck_assert_uint_lt(layer_of(m, U "input_blocks.10.0.in_layers.0.weight"),
			  layer_of(m, U "input_blocks.11.0.in_layers.0.weight"));
	ck_assert_uint_lt(layer_of(m, U "output_blocks.2.1.conv.weight"),
			  layer_of(m, U "output_blocks.10.0.skip_connection.weight"));
	ck_assert_int_lt(vram_model_find_tensor(m, C1 "transformer.resblocks.7.attn.in_proj_weight"),
			 vram_model_find_tensor(m, C1 "transformer.resblocks.31.attn.in_proj_weight"));
	ck_assert_uint_lt(layer_of(m, C0 "encoder.layers.2.mlp.fc1.weight"),
			  layer_of(m, C0 "encoder.layers.10.mlp.fc1.weight"));
	/* Components in order unet, clip, vae, other. */
	ck_assert_uint_lt(layer_of(m, U "time_embed.2.bias"), layer_of(m, C0 "encoder.layers.0.mlp.fc1.weight"));
	ck_assert_uint_lt(layer_of(m, C1 "transformer.resblocks.31.attn.in_proj_weight"),
			  layer_of(m, "first_stage_model.quant_conv.weight"));
	ck_assert_uint_lt(layer_of(m, "first_stage_model.quant_conv.weight"), layer_of(m, "denoiser.sigmas"));
	/* The first layer is unet's input_blocks.0 (natural order of names). */
	ck_assert_uint_eq(layer_of(m, U "input_blocks.0.0.weight"), 0);

	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_OTHER, &ci), 0);
	ck_assert_uint_eq(ci.ntensors, 1);
	ck_assert_uint_eq(ci.nlayers, 1);
	check_order(m);
	vram_model_close(m);
}
END_TEST

START_TEST(test_sd15)
{
	vram_model *m = open_ok("names", "sd15");
	const char *c = "cond_stage_model.transformer.text_model.";
	char a[256], b[256];
	struct vram_component_info ci = { .struct_size = sizeof(ci) };

	snprintf(a, sizeof(a), "%sencoder.layers.5.mlp.fc1.weight", c);
	snprintf(b, sizeof(b), "%sencoder.layers.5", c);
	expect(m, a, VRAM_COMP_CLIP, b, 0);
	snprintf(a, sizeof(a), "%sembeddings.token_embedding.weight", c);
	snprintf(b, sizeof(b), "%sembeddings.token_embedding", c);
	expect(m, a, VRAM_COMP_CLIP, b, VRAM_LAYER_EMBEDDING);
	expect(m, U "input_blocks.11.0.in_layers.2.weight", VRAM_COMP_UNET, U "input_blocks.11", 0);
	expect(m, U "middle_block.2.in_layers.0.bias", VRAM_COMP_UNET, U "middle_block.2", 0);
	expect(m, "first_stage_model.decoder.conv_in.weight", VRAM_COMP_VAE, "first_stage_model.decoder.conv_in", 0);
	expect(m, "alphas_cumprod", VRAM_COMP_OTHER, "alphas_cumprod", 0);
	expect(m, "model_ema.decay", VRAM_COMP_OTHER, "model_ema", 0);
	expect(m, "model_ema.num_updates", VRAM_COMP_OTHER, "model_ema", 0);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_OTHER, &ci), 0);
	ck_assert_uint_eq(ci.ntensors, 3);
	ck_assert_uint_eq(ci.nlayers, 2);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_CLIP, &ci), 0);
	ck_assert_uint_eq(ci.ntensors, 5);
	check_order(m);
	vram_model_close(m);
}
END_TEST

START_TEST(test_flux_sd3)
{
	vram_model *m = open_ok("names", "flux");
	const char *t5 = "text_encoders.t5xxl.transformer.encoder.block.5.layer.1.DenseReluDense.wi_0.weight";

	expect(m, U "double_blocks.3.img_attn.qkv.weight", VRAM_COMP_UNET, U "double_blocks.3", 0);
	expect(m, U "single_blocks.37.linear1.weight", VRAM_COMP_UNET, U "single_blocks.37", 0);
	expect(m, U "img_in.weight", VRAM_COMP_UNET, U "img_in", 0);
	ck_assert_uint_lt(layer_of(m, U "double_blocks.3.img_attn.qkv.weight"),
			  layer_of(m, U "double_blocks.18.txt_mlp.0.weight"));
	expect(m, t5, VRAM_COMP_CLIP, "text_encoders.t5xxl.transformer.encoder.block.5", 0);
	expect(m, "text_encoders.t5xxl.transformer.shared.weight", VRAM_COMP_CLIP, "text_encoders.t5xxl.transformer.shared", 0);
	expect(m, "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight", VRAM_COMP_CLIP,
	       "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding", VRAM_LAYER_EMBEDDING);
	expect(m, "text_encoders.clip_l.transformer.text_model.encoder.layers.3.mlp.fc2.weight", VRAM_COMP_CLIP,
	       "text_encoders.clip_l.transformer.text_model.encoder.layers.3", 0);
	expect(m, "vae.decoder.up.0.block.2.conv2.weight", VRAM_COMP_VAE, "vae.decoder.up.0", 0);
	check_order(m);
	vram_model_close(m);

	m = open_ok("names", "sd3");
	expect(m, U "joint_blocks.0.context_block.attn.qkv.weight", VRAM_COMP_UNET, U "joint_blocks.0", 0);
	expect(m, "text_encoders.clip_g.transformer.text_model.encoder.layers.31.mlp.fc1.weight", VRAM_COMP_CLIP,
	       "text_encoders.clip_g.transformer.text_model.encoder.layers.31", 0);
	expect(m, "text_encoders.clip_g.transformer.text_projection.weight", VRAM_COMP_CLIP,
	       "text_encoders.clip_g.transformer.text_projection", 0);
	expect(m, "first_stage_model.encoder.down.1.downsample.conv.weight", VRAM_COMP_VAE,
	       "first_stage_model.encoder.down.1", 0);
	expect(m, "model.model.extra.weight", VRAM_COMP_UNET, "model.model.extra", 0);
	expect(m, "net.blocks.2.weight", VRAM_COMP_UNET, "net.blocks.2", 0);
	expect(m, "vae.post.weight", VRAM_COMP_VAE, "vae.post", 0);
	check_order(m);
	vram_model_close(m);
}
END_TEST

/* The rules on bare strings (model.h). */
START_TEST(test_layer_rules)
{
	static const struct {
		const char *name;
		uint32_t comp;
		const char *layer;
	} cases[] = {
		{ U "input_blocks.1.0.in_layers.0.weight", VRAM_COMP_UNET, U "input_blocks.1" },
		{ U "double_blocks.3.img_attn.qkv.weight", VRAM_COMP_UNET, U "double_blocks.3" },
		{ U "weight", VRAM_COMP_UNET, "model.diffusion_model" },
		{ U "blocks.007.w", VRAM_COMP_UNET, U "blocks.007" },
		{ U "blocks.7a.w", VRAM_COMP_UNET, U "blocks.7a" },
		{ U "blocks..w", VRAM_COMP_UNET, U "blocks." },
		{ "model.model.layers.4.x", VRAM_COMP_UNET, "model.model.layers.4" },
		{ "net.0.w", VRAM_COMP_UNET, "net.0" },
		{ "net.", VRAM_COMP_UNET, "net" },
		{ "cond_stage_model.transformer.text_model.encoder.layers.5.mlp.fc1.weight", VRAM_COMP_CLIP,
		  "cond_stage_model.transformer.text_model.encoder.layers.5" },
		{ C1 "transformer.resblocks.7.attn.in_proj_weight", VRAM_COMP_CLIP, C1 "transformer.resblocks.7" },
		{ "conditioner.embedders.12.x.3.y", VRAM_COMP_CLIP, "conditioner.embedders.12.x.3" },
		{ "conditioner.embedders.1.w", VRAM_COMP_CLIP, "conditioner.embedders.1" },
		{ "conditioner.embedders.x.3.y", VRAM_COMP_OTHER, "conditioner.embedders.x.3" },
		{ "conditioner.embedders.1", VRAM_COMP_OTHER, "conditioner.embedders.1" },
		{ "text_encoders.clip_l.3.w", VRAM_COMP_CLIP, "text_encoders.clip_l.3" },
		{ "text_encoders.t5xxl.shared.weight", VRAM_COMP_CLIP, "text_encoders.t5xxl.shared" },
		{ "text_encoders.x", VRAM_COMP_CLIP, "text_encoders" },
		{ "first_stage_model.decoder.up.3.block.0.conv1.weight", VRAM_COMP_VAE, "first_stage_model.decoder.up.3" },
		{ "vae.encoder.conv_in.bias", VRAM_COMP_VAE, "vae.encoder.conv_in" },
		{ "model.diffusion_mode.x", VRAM_COMP_OTHER, "model.diffusion_mode" },
		{ "alphas_cumprod", VRAM_COMP_OTHER, "alphas_cumprod" },
		{ "12.weight", VRAM_COMP_OTHER, "12" },
		{ "", VRAM_COMP_OTHER, "" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t plen, len;
		uint32_t c = model_component(cases[i].name, &plen);

		ck_assert_msg(c == cases[i].comp, "%s: component %u, want %u", cases[i].name, c, cases[i].comp);
		len = model_layer_len(cases[i].name, plen);
		ck_assert_msg(len == strlen(cases[i].layer) && !strncmp(cases[i].name, cases[i].layer, len),
			      "%s: layer \"%.*s\", want \"%s\"", cases[i].name, (int)len, cases[i].name, cases[i].layer);
	}
}
END_TEST

static int nat(const char *a, const char *b)
{
	int r = model_natcmp(a, strlen(a), b, strlen(b));
	return r < 0 ? -1 : r > 0;
}

START_TEST(test_natcmp)
{
	ck_assert_int_eq(nat("input_blocks.2", "input_blocks.10"), -1);
	ck_assert_int_eq(nat("input_blocks.10", "input_blocks.2"), 1);
	ck_assert_int_eq(nat("a.10.b", "a.10.b"), 0);
	ck_assert_int_eq(nat("a.9.z", "a.10.a"), -1);
	ck_assert_int_eq(nat("a1", "a01"), 1);        /* equal as numbers: bytes decide */
	ck_assert_int_eq(nat("a01", "a1"), -1);
	ck_assert_int_eq(nat("a0", "a00"), -1);
	ck_assert_int_eq(nat("a", "a.0"), -1);
	ck_assert_int_eq(nat("layers.1", "layers.1.x"), -1);
	ck_assert_int_eq(nat("x99999999999999999999999", "x100000000000000000000000"), -1);
	ck_assert_int_eq(nat("b", "a10"), 1);
	ck_assert_int_eq(nat("\xc3\xa9", "z"), 1);     /* bytes unsigned */
	ck_assert_int_eq(nat("", "a"), -1);
	ck_assert_int_eq(nat("", ""), 0);
}
END_TEST

/* ======================================================================
 * API contracts
 * ====================================================================== */

START_TEST(test_api)
{
	vram_model *m = open_ok("names", "sdxl");
	struct vram_tensor_info t = { .struct_size = sizeof(t) };
	struct vram_layer_info l = { .struct_size = sizeof(l) };
	struct vram_component_info ci = { .struct_size = sizeof(ci) };
	struct vram_tensor_info old;
	int n = vram_model_tensor_count(m);
	char p[PATH_MAX];

	ck_assert_str_eq(vram_model_path(m), fx(p, "names", "sdxl"));
	ck_assert_int_eq(vram_model_tensor(m, (uint32_t)n, &t), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "out of range"));
	ck_assert_int_eq(vram_model_layer(m, (uint32_t)vram_model_layer_count(m), &l), -EINVAL);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_COUNT, &ci), -EINVAL);
	ck_assert_int_eq(vram_model_tensor(NULL, 0, &t), -EINVAL);
	ck_assert_int_eq(vram_model_tensor(m, 0, NULL), -EINVAL);
	ck_assert_int_eq(vram_model_tensor_count(NULL), -EINVAL);
	ck_assert_int_eq(vram_model_layer_count(NULL), -EINVAL);
	ck_assert_int_eq(vram_model_metadata_count(NULL), -EINVAL);
	ck_assert_int_eq(vram_model_find_tensor(m, "nope"), -ENOENT);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "no tensor called \"nope\""));
	ck_assert_int_eq(vram_model_find_tensor(m, NULL), -EINVAL);
	ck_assert_ptr_null(vram_model_path(NULL));
	ck_assert_uint_eq(vram_model_file_size(NULL), 0);
	vram_model_close(NULL);

	/* struct_size: 0 is refused; a smaller (older) struct gets its prefix. */
	memset(&t, 0, sizeof(t));
	ck_assert_int_eq(vram_model_tensor(m, 0, &t), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "struct_size"));
	memset(&old, 0xee, sizeof(old));
	old.struct_size = offsetof(struct vram_tensor_info, file_offset);
	ck_assert_int_eq(vram_model_tensor(m, 0, &old), 0);
	ck_assert_uint_eq(old.struct_size, offsetof(struct vram_tensor_info, file_offset));
	ck_assert_ptr_nonnull(old.name);
	ck_assert_uint_eq(old.file_offset, 0xeeeeeeeeeeeeeeeeULL);
	ck_assert_uint_eq(old.nbytes, 0xeeeeeeeeeeeeeeeeULL);
	vram_model_close(m);

	for (uint32_t d = 0; d < VRAM_DTYPE_COUNT; d++) {
		uint32_t e = 0, b = 0;
		ck_assert_ptr_nonnull(vram_dtype_name(d));
		ck_assert_int_eq(vram_dtype_block(d, &e, &b), 0);
		if (d < DTYPE_ST_COUNT)
			ck_assert_uint_eq(e * vram_dtype_bits(d), 8 * b); /* whole bytes */
		else
			ck_assert_uint_eq(vram_dtype_bits(d), 0); /* GGUF's blocks */
	}
	ck_assert_str_eq(vram_dtype_name(VRAM_DTYPE_BOOL), "BOOL");
	ck_assert_str_eq(vram_dtype_name(VRAM_DTYPE_F8_E4M3FNUZ), "F8_E4M3FNUZ");
	ck_assert_str_eq(vram_dtype_name(VRAM_DTYPE_U64), "U64");
	ck_assert_uint_eq(vram_dtype_bits(VRAM_DTYPE_F4), 4);
	ck_assert_uint_eq(vram_dtype_bits(VRAM_DTYPE_F6_E3M2), 6);
	ck_assert_uint_eq(vram_dtype_bits(VRAM_DTYPE_BF16), 16);
	ck_assert_uint_eq(vram_dtype_bits(VRAM_DTYPE_C64), 64);
	ck_assert_ptr_null(vram_dtype_name(VRAM_DTYPE_COUNT));
	ck_assert_uint_eq(vram_dtype_bits(VRAM_DTYPE_COUNT), 0);
	{
		uint32_t e = 7, b = 7;
		ck_assert_int_eq(vram_dtype_block(VRAM_DTYPE_COUNT, &e, &b), -EINVAL);
		ck_assert_uint_eq(e, 7);
		ck_assert_int_eq(vram_dtype_block(VRAM_DTYPE_F4, &e, &b), 0);
		ck_assert_uint_eq(e, 2);
		ck_assert_uint_eq(b, 1);
		ck_assert_int_eq(vram_dtype_block(VRAM_DTYPE_F6_E2M3, &e, &b), 0);
		ck_assert_uint_eq(e, 4);
		ck_assert_uint_eq(b, 3);
		ck_assert_int_eq(vram_dtype_block(VRAM_DTYPE_Q4_K, &e, &b), 0);
		ck_assert_uint_eq(e, 256);
		ck_assert_uint_eq(b, 144);
		ck_assert_str_eq(vram_dtype_name(VRAM_DTYPE_Q8_0), "Q8_0");
		ck_assert_str_eq(vram_dtype_name(VRAM_DTYPE_Q1_0), "Q1_0");
	}
	ck_assert_str_eq(vram_component_name(VRAM_COMP_UNET), "unet");
	ck_assert_str_eq(vram_component_name(VRAM_COMP_CLIP), "clip");
	ck_assert_str_eq(vram_component_name(VRAM_COMP_VAE), "vae");
	ck_assert_str_eq(vram_component_name(VRAM_COMP_OTHER), "other");
	ck_assert_ptr_null(vram_component_name(VRAM_COMP_COUNT));
}
END_TEST

/* The model holds the file open, once: read-only and close-on-exec, the
 * inode the path named at open, closed by vram_model_close; a failed open
 * leaves nothing open. */
START_TEST(test_fd)
{
	char p[PATH_MAX];
	int fds0 = count_fds();
	vram_model *m = open_ok("names", "sdxl");
	int fd = vram_model_fd(m);
	struct stat a, b;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(count_fds(), fds0 + 1);
	ck_assert_int_eq(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	ck_assert_int_eq(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
	ck_assert_int_eq(fstat(fd, &a), 0);
	ck_assert_int_eq(stat(fx(p, "names", "sdxl"), &b), 0);
	ck_assert(a.st_dev == b.st_dev && a.st_ino == b.st_ino);
	ck_assert_uint_eq((uint64_t)a.st_size, vram_model_file_size(m));
	vram_model_close(m);
	ck_assert_int_eq(count_fds(), fds0);
	ck_assert_int_eq(vram_model_fd(NULL), -EINVAL);

	ck_assert_int_eq(vram_model_open(fx(p, "invalid", "size_mismatch"), &m), -EINVAL);
	ck_assert_int_eq(vram_model_open(fixdir, &m), -EISDIR);
	ck_assert_int_eq(vram_model_open("/dev/null", &m), -EINVAL);
	ck_assert_int_eq(count_fds(), fds0);
}
END_TEST

/* ======================================================================
 * A realistic checkpoint (make_checkpoint.py): shape and speed
 * ====================================================================== */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

START_TEST(test_checkpoint)
{
	char p[PATH_MAX];
	uint64_t ns[15];
	vram_model *m = open_ok("ckpt", "sdxl2500");
	struct vram_component_info u = { .struct_size = sizeof(u) }, c = u, v = u;
	double unet, clip, vae;

	ck_assert_int_eq(vram_model_tensor_count(m), 2500);
	ck_assert_uint_eq(vram_model_header_size(m) % 8, 0);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_UNET, &u), 0);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_CLIP, &c), 0);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_VAE, &v), 0);
	unet = (double)u.nbytes / (double)vram_model_data_size(m);
	clip = (double)c.nbytes / (double)vram_model_data_size(m);
	vae = (double)v.nbytes / (double)vram_model_data_size(m);
	ck_assert_msg(unet > 0.70 && unet < 0.80 && clip > 0.15 && clip < 0.25 && vae > 0.03 && vae < 0.08,
		      "unet %.3f clip %.3f vae %.3f", unet, clip, vae);
	ck_assert_uint_eq(u.ntensors + c.ntensors + v.ntensors, 2500);
	expect(m, C0 "embeddings.token_embedding.weight", VRAM_COMP_CLIP, C0 "embeddings.token_embedding",
	       VRAM_LAYER_EMBEDDING);
	check_order(m);
	vram_model_close(m);

	fx(p, "ckpt", "sdxl2500");
	for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		ck_assert_int_eq(vram_model_open(p, &m), 0);
		clock_gettime(CLOCK_MONOTONIC, &b);
		vram_model_close(m);
		ns[i] = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec;
	}
	qsort(ns, sizeof(ns) / sizeof(ns[0]), sizeof(ns[0]), cmp_u64);
	/* Reported, never asserted: timings on shared machines are noise (the
	 * goal, well under 50 ms, is checked by reading this line). */
	printf("test-safetensors: 2,500-tensor header: median %.2f ms, min %.2f ms\n", ns[7] / 1e6, ns[0] / 1e6);
}
END_TEST

/* ======================================================================
 * Fixtures and main
 * ====================================================================== */

static void add_tests(TCase *tc)
{
	TF_ADD_LOOP(tc, test_invalid, invalid);
	tcase_add_test(tc, test_invalid_exact_message);
	tcase_add_test(tc, test_duplicate_field_messages);
	tcase_add_test(tc, test_io_errors);
	TF_ADD_LOOP(tc, test_valid, valid);
	tcase_add_test(tc, test_valid_details);
	tcase_add_test(tc, test_reference_crosscheck);
	tcase_add_test(tc, test_sdxl);
	tcase_add_test(tc, test_sd15);
	tcase_add_test(tc, test_flux_sd3);
	tcase_add_test(tc, test_layer_rules);
	tcase_add_test(tc, test_natcmp);
	tcase_add_test(tc, test_api);
	tcase_add_test(tc, test_fd);
	tcase_add_test(tc, test_checkpoint);
}

int main(void)
{
	struct tf_gen g;
	char ckdir[PATH_MAX], out[PATH_MAX];
	int r = tf_prepare(&g, "test-safetensors", "gen_fixtures.py", NULL, fixdir, sizeof(fixdir));

	if (r || (r = tf_generate(&g, "gen_fixtures.py", (const char *const[]){ fixdir, NULL })))
		return r;
	snprintf(ckdir, sizeof(ckdir), "%s/ckpt", fixdir);
	mkdir(ckdir, 0755);
	fx(out, "ckpt", "sdxl2500");
	r = tf_generate(&g, "make_checkpoint.py",
			(const char *const[]){ "--out", out, "--size", "8000000", "--tensors", "2500", "--seed", "7",
					       "--verify", NULL });
	if (r)
		return r;
	r = tf_run("safetensors", "files", 60, add_tests);
	tf_rmtree(fixdir);
	return r ? 1 : 0;
}
