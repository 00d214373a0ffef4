/* SPDX-License-Identifier: MIT */
/*
 * PyTorch checkpoints (runtime/torchzip.c, runtime/pickle.c).  Fixtures
 * come from tests/gen_torch.py: torch.save files with what
 * torch.load(weights_only=True) returns for them (manifest.txt: every
 * tensor's dtype, shape and the CRC-32 of its bytes), files vramd cannot
 * serve, and broken or hostile ones: pickles that would run `touch MARKER`
 * through os.system, eval, INST, ..., or exhaust memory, and damaged zips.
 * The marker never appears.  main() runs the generator once into a temp
 * directory under $TMPDIR (or /tmp) that it removes.  Needs $VRAM_PYTHON
 * (default .venv/bin/python) with torch; skips (77) without it.
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
#include "runtime/pickle.h"
#include "runtime/reader.h"
#include "runtime/torchzip.h"
#include "runtime/vram.h"
#include "tests/testlib-fixtures.h"

static char fixdir[1024], marker[1100];

static const char *fx(char *buf, const char *sub, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/%s/%s.pt", fixdir, sub, name);
	return buf;
}

TF_DEFINE_PARSERS(struct torch_file, torch_parse, fx, fixdir)

static const struct tz_tensor *named(const struct torch_file *t, const char *name)
{
	for (uint32_t i = 0; i < t->ntensors; i++)
		if (!strcmp(t->tensors[i].name, name))
			return &t->tensors[i];
	ck_abort_msg("no tensor %s", name);
	return NULL;
}

/* ======================================================================
 * Refused files: unsupported, invalid, hostile
 * ====================================================================== */

static const struct {
	const char *sub, *file;
	int err;
	const char *reason;      /* substring of what follows "PyTorch checkpoint: " */
} refused[] = {
	{ "unsupported", "noncontig", -ENOTSUP, "tensor \"t\": shape [3, 4] is not contiguous (stride 1 is 3, not 1): "
						 "save tensor.contiguous()" },
	{ "unsupported", "strided", -ENOTSUP, "tensor \"t\": shape [4] is not contiguous (stride 0 is 3, not 1)" },
	{ "unsupported", "complex128", -ENOTSUP, "torch.ComplexDoubleStorage has no vramd dtype" },
	{ "unsupported", "legacy", -ENOTSUP, "the legacy format of torch.save before 1.6" },
	{ "unsupported", "bare_pickle", -ENOTSUP, "a bare pickle, not a torch.save zip" },
	{ "unsupported", "compressed", -ENOTSUP, "is compressed (method 8); vramd streams stored records only" },
	{ "unsupported", "big_endian", -ENOTSUP, "byteorder is \"big\" (only little-endian files are read)" },
	{ "invalid", "reduce_os_system", -EINVAL, "byte 2: global \"os\" \"system\" is not allowed" },
	{ "invalid", "reduce_posix_system", -EINVAL, "global \"posix\" \"system\" is not allowed" },
	{ "invalid", "global_eval", -EINVAL, "global \"builtins\" \"eval\" is not allowed" },
	{ "invalid", "inst", -EINVAL, "byte 54: opcode INST (0x69) is not allowed in a state dict" },
	{ "invalid", "obj", -EINVAL, "global \"os\" \"system\" is not allowed" },
	{ "invalid", "stack_global", -EINVAL, "global \"os\" \"system\" is not allowed" },
	{ "invalid", "newobj", -EINVAL, "global \"subprocess\" \"Popen\" is not allowed" },
	{ "invalid", "ext1", -EINVAL, "opcode EXT1 (0x82) is not allowed in a state dict" },
	{ "invalid", "persid_text", -EINVAL, "opcode PERSID (0x50) is not allowed in a state dict" },
	{ "invalid", "build_setstate", -EINVAL, "global \"os\" \"system\" is not allowed" },
	{ "invalid", "reduce_storage", -EINVAL, "REDUCE calls a storage type or dtype" },
	{ "invalid", "torch_load", -EINVAL, "global \"torch\" \"load\" is not allowed" },
	{ "invalid", "deep_lists", -EINVAL, "the pickle holds a list, not a dict of tensors" },
	{ "invalid", "deep_marks", -EINVAL, "STOP with 0 values on the stack and 200000 marks open" },
	{ "invalid", "huge_memo_put", -EINVAL, "LONG_BINPUT 4294967295: memo index out of range" },
	{ "invalid", "memo_get_missing", -EINVAL, "BINGET 5: no such memo entry" },
	{ "invalid", "long_huge", -EINVAL, "a 2147483647-byte integer (at most 8 bytes)" },
	{ "invalid", "string_huge", -EINVAL, "BINUNICODE of 2147483647 bytes runs past the end of the pickle" },
	{ "invalid", "frame_huge", -EINVAL, "FRAME of 281474976710655 bytes runs past the end of the pickle" },
	{ "invalid", "top_list", -EINVAL, "the pickle holds a list, not a dict of tensors" },
	{ "invalid", "trailing", -EINVAL, "byte 148: 1 byte follows STOP" },
	{ "invalid", "no_stop", -EINVAL, "the pickle ends without STOP" },
	{ "invalid", "stack_left", -EINVAL, "STOP with 2 values on the stack and 0 marks open (1 and 0)" },
	{ "invalid", "dup_name", -EINVAL, "tensor name \"w\" appears twice" },
	{ "invalid", "past_storage", -EINVAL, "tensor \"w\": bytes [8, 20) past its storage 0 of 16 bytes" },
	{ "invalid", "no_record", -EINVAL, "storage \"0\" has no record archive/data/0" },
	{ "invalid", "record_size", -EINVAL, "record archive/data/0 is 12 bytes, its storage 16" },
	{ "invalid", "two_types", -EINVAL, "storage \"0\" appears with two types or sizes" },
	{ "invalid", "key_path", -EINVAL, "storage key \"../x\" is not a record name" },
	{ "invalid", "int_key", -EINVAL, "a tensor's key is an int, not a str" },
	{ "invalid", "crc", -EINVAL, "record \"archive/data.pkl\": CRC-32 " },
	{ "invalid", "unhashable", -EINVAL, "SETITEMS with a key that is a list (unhashable)" },
	{ "invalid", "setitem_list", -EINVAL, "SETITEM to a list" },
	{ "invalid", "bad_utf8", -EINVAL, "BINUNICODE is not valid UTF-8" },
	{ "invalid", "no_pickle", -EINVAL, "a zip without a top-level FOLDER/data.pkl record" },
	{ "invalid", "truncated", -EINVAL, "zip: no end of central directory record" },
	{ "invalid", "not_zip", -EINVAL, "not a zip file (the file starts with 68 65 6c 6c)" },
	{ "invalid", "empty_file", -EINVAL, "not a zip file" },
};

START_TEST(test_refused)
{
	struct torch_file t = { 0 };
	char p[PATH_MAX];

	fx(p, refused[_i].sub, refused[_i].file);
	tf_check_refusal(refused[_i].file, p, parse_path(p, &t), refused[_i].err, "PyTorch checkpoint",
			 refused[_i].reason);
	ck_assert_ptr_null(t.tensors);
	ck_assert_msg(access(marker, F_OK) < 0, "%s: the marker %s exists", refused[_i].file, marker);
}
END_TEST

/* The crafted files differ from this one, which parses (and torch reads). */
START_TEST(test_control)
{
	struct torch_file t = { 0 };
	char p[PATH_MAX];

	ck_assert_int_eq(parse_path(fx(p, "invalid", "ok_control"), &t), 0);
	ck_assert_uint_eq(t.ntensors, 1);
	ck_assert_str_eq(t.tensors[0].name, "w");
	ck_assert_uint_eq(t.tensors[0].nbytes, 16);
	ck_assert_str_eq(t.archive, "archive");
	torch_free(&t);
	ck_assert_int_lt(access(marker, F_OK), 0);
}
END_TEST

/* ======================================================================
 * torch.load's view (manifest.txt)
 * ====================================================================== */

START_TEST(test_reference)
{
	char p[PATH_MAX], line[4096], file[256] = "", root[256], path[PATH_MAX];
	struct torch_file t = { 0 };
	uint8_t *bytes = NULL;
	size_t len = 0;
	uint32_t ti = 0, nfiles = 0, ntensors = 0;
	FILE *f;

	snprintf(p, sizeof(p), "%s/manifest.txt", fixdir);
	f = fopen(p, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == 'F') {
			ck_assert_uint_eq(ti, t.ntensors);
			torch_free(&t);
			free(bytes);
			ck_assert_int_eq(sscanf(line, "F %255s %255s", file, root), 2);
			parse_ok(file, &t);
			ck_assert_str_eq(t.sd.root, strcmp(root, "-") ? root : "");
			bytes = tf_slurp(fx(path, "valid", file), &len);
			ti = 0;
			nfiles++;
		} else if (line[0] == 'T') {
			char name[1024], dtype[32];
			unsigned ndim;
			int o, k;
			const struct tz_tensor *x = &t.tensors[ti];
			ck_assert_int_eq(sscanf(line, "T %1023s %31s %u%n", name, dtype, &ndim, &o), 3);
			ck_assert_uint_lt(ti, t.ntensors);
			ck_assert_str_eq(x->name, name);
			ck_assert_str_eq(vram_dtype_name(x->dtype), dtype);
			ck_assert_uint_eq(x->ndim, ndim);
			for (unsigned j = 0; j < ndim; j++) {
				uint64_t d;
				ck_assert_int_eq(sscanf(line + o, " %" SCNu64 "%n", &d, &k), 1);
				o += k;
				ck_assert_uint_eq(x->shape[j], d);
			}
			unsigned long crc = strtoul(line + o, NULL, 10);
			ck_assert_uint_le(x->file_offset + x->nbytes, len);
			ck_assert_msg(crc32_update(0, bytes + x->file_offset, x->nbytes) == crc, "%s: %s: bytes differ",
				      file, name);
			ti++;
			ntensors++;
		}
	}
	ck_assert_uint_eq(ti, t.ntensors);
	torch_free(&t);
	free(bytes);
	fclose(f);
	ck_assert_uint_ge(nfiles, 11);
	ck_assert_uint_ge(ntensors, 80);
}
END_TEST

START_TEST(test_details)
{
	struct torch_file t;
	const struct tz_tensor *base, *x;

	parse_ok("shared", &t);
	base = named(&t, "base");
	ck_assert_uint_eq(t.sd.nstorages, 2);
	x = named(&t, "slice");
	ck_assert_uint_eq(x->file_offset, base->file_offset + 8);
	ck_assert_uint_eq(x->nbytes, 32);
	x = named(&t, "row");
	ck_assert_uint_eq(x->file_offset, base->file_offset + 60);
	x = named(&t, "same");
	ck_assert_uint_eq(x->file_offset, base->file_offset);
	ck_assert_uint_eq(x->nbytes, base->nbytes);
	ck_assert_uint_eq(x->storage, base->storage);
	ck_assert_uint_eq(named(&t, "tail")->file_offset, base->file_offset + 39 * 4);
	ck_assert_uint_ne(named(&t, "other")->storage, base->storage);
	ck_assert_uint_le(t.data_begin, base->file_offset);
	ck_assert_uint_le(base->file_offset + base->nbytes, t.data_end);
	torch_free(&t);

	parse_ok("mixed", &t);
	ck_assert_uint_eq(t.ntensors, 3);
	ck_assert_uint_eq(t.sd.nskipped, 7);
	ck_assert_uint_eq(named(&t, "scalar")->ndim, 0);
	ck_assert_uint_eq(named(&t, "scalar")->nbytes, 4);
	ck_assert_uint_eq(named(&t, "empty")->nbytes, 0);
	torch_free(&t);

	parse_ok("sd15_ckpt", &t);
	ck_assert_str_eq(t.sd.root, "state_dict");
	ck_assert_uint_eq(t.sd.nskipped, 0);
	ck_assert_uint_gt(t.pickle_size, 100);
	ck_assert_uint_ge(t.nentries, t.sd.nstorages + 2);
	torch_free(&t);

	parse_ok("empty", &t);
	ck_assert_uint_eq(t.ntensors, 0);
	torch_free(&t);
	torch_free(&t);

	ck_assert_int_eq(tz_sniff((const uint8_t *)"PK\3\4", 4), TZ_ZIP);
	ck_assert_int_eq(tz_sniff((const uint8_t *)"\x80\x02\x8a\x0a", 4), TZ_LEGACY);
	ck_assert_int_eq(tz_sniff((const uint8_t *)"\x80\x04\x95", 3), TZ_PICKLE);
	ck_assert_int_eq(tz_sniff((const uint8_t *)"{\"a", 3), TZ_OTHER);
}
END_TEST

START_TEST(test_io_errors)
{
	/* Opening is vram_model_open's: the file is opened once, there; then
	 * a file that ends before the size fstat gave: it shrank. */
	check_io_errors("nope.pt", "flat");
}
END_TEST

/* ======================================================================
 * Hostile input from memory: prefixes, mutations of the zip and pickle
 * ====================================================================== */

static const char *const small[] = { "flat", "module", "params", "shared", "mixed", "proto4" };

static void check_sane(const struct torch_file *t, size_t len)
{
	for (uint32_t i = 0; i < t->ntensors; i++) {
		ck_assert_uint_le(t->tensors[i].file_offset + t->tensors[i].nbytes, len);
		ck_assert_uint_eq(strlen(t->tensors[i].name), t->tensors[i].name_len);
	}
}

START_TEST(test_prefixes)
{
	char p[PATH_MAX];
	size_t len;
	uint8_t *b = tf_slurp(fx(p, "valid", small[_i]), &len);
	struct torch_file t = { 0 };
	struct src s = src_mem(b, len, "mem");

	ck_assert_int_eq(torch_parse(&s, &t), 0);
	check_sane(&t, len);
	torch_free(&t);
	for (size_t n = 0; n < len; n++) {
		uint8_t *c = tf_cut(b, n);
		s = src_mem(c, n, "mem");
		int r = torch_parse(&s, &t);
		ck_assert_msg(r == -EINVAL, "%s cut at %zu: %d %s", small[_i], n, r, vram_last_error());
		free(c);
	}
	free(b);
}
END_TEST

/* Bytes anywhere in the zip (the pickle's CRC stops most changes there:
 * the pickle's own mutations follow). */
START_TEST(test_zip_mutations)
{
	char p[PATH_MAX];
	size_t len;
	uint8_t *b = tf_slurp(fx(p, "valid", small[_i]), &len);
	uint64_t x = 0x2545f4914f6cdd1dull + (uint64_t)_i;
	unsigned ok = 0;

	for (int k = 0; k < 2000; k++) {
		/* half of them in the directory at the end */
		size_t span = k % 2 ? MIN(len, 1500) : len;
		uint8_t *c = tf_mutant(b, len, k, &x, len - span, span);
		struct torch_file t = { 0 };
		struct src s = src_mem(c, len, "mem");
		int r = torch_parse(&s, &t);
		if (r == 0) {
			check_sane(&t, len);
			ok++;
		} else {
			ck_assert_msg(r == -EINVAL || r == -ENOTSUP, "%d %s", r, vram_last_error());
		}
		torch_free(&t);
		free(c);
	}
	free(b);
	printf("test-pytorch: %s: %u of 2000 zip mutations still parse\n", small[_i], ok);
}
END_TEST

/* The restricted unpickler on its own (the fuzz entry point): data.pkl of
 * each small file, changed a byte or three at a time. */
START_TEST(test_pickle_mutations)
{
	char p[PATH_MAX];
	struct torch_file t;
	size_t len;
	uint8_t *b = tf_slurp(fx(p, "valid", small[_i]), &len), *pkl;
	uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)_i, plen;
	unsigned ok = 0;

	parse_ok(small[_i], &t);
	pkl = b + t.pickle_offset;
	plen = t.pickle_size;
	torch_free(&t);
	for (int k = 0; k < 4000; k++) {
		uint8_t *c = tf_mutant(pkl, plen, k, &x, 0, plen);
		struct pk_state_dict sd = { 0 };
		int r = pk_load(c, plen, "mem", "data.pkl", &sd);
		if (r == 0) {
			ok++;
			for (uint32_t i = 0; i < sd.ntensors; i++) {
				const struct pk_tensor *pt = &sd.tensors[i];
				ck_assert_uint_lt(pt->storage, sd.nstorages);
				ck_assert(pt->nbytes == 0 || pt->offset + pt->nbytes <= sd.storages[pt->storage].nbytes);
			}
		} else {
			ck_assert_msg(r == -EINVAL || r == -ENOTSUP, "%d %s", r, vram_last_error());
		}
		pk_free(&sd);
		free(c);
	}
	free(b);
	printf("test-pytorch: %s: %u of 4000 pickle mutations still parse\n", small[_i], ok);
}
END_TEST


/* Dict keys that are tuples sharing their items (DUP, TUPLE2, 64 times:
 * 2^64 paths through 65 values) or nested a million deep: whether they are
 * hashable is known when each tuple is built.  Checking it by recursion
 * took exponential time on the first (a 550-byte pickle from fuzz-pickle
 * ran for 40 s) and would overflow the stack on the second; with that
 * code this test does not finish. */
START_TEST(test_pickle_tuple_keys)
{
	static const char head[] = "\200\002}(N", tail[] = "K\007u.";
	const size_t deep = 1000000;
	size_t n = 0;
	uint8_t *b = malloc(sizeof(head) + sizeof(tail) + deep);
	struct pk_state_dict sd = { 0 };
	int r;

	ck_assert_ptr_nonnull(b);
	memcpy(b, head, sizeof(head) - 1);
	n = sizeof(head) - 1;
	for (int i = 0; i < 64; i++) {
		b[n++] = '2';     /* DUP */
		b[n++] = 0x86;    /* TUPLE2: (x, x) */
	}
	memcpy(b + n, tail, sizeof(tail) - 1);
	n += sizeof(tail) - 1;
	r = pk_load(b, n, "mem", "data.pkl", &sd);
	ck_assert_msg(r == 0, "%d %s", r, vram_last_error());
	ck_assert_uint_eq(sd.ntensors, 0);
	ck_assert_uint_eq(sd.nskipped, 1);
	pk_free(&sd);

	n = sizeof(head) - 1;
	memset(b + n, 0x85, deep); /* TUPLE1, a million times */
	n += deep;
	memcpy(b + n, tail, sizeof(tail) - 1);
	n += sizeof(tail) - 1;
	r = pk_load(b, n, "mem", "data.pkl", &sd);
	ck_assert_msg(r == 0, "%d %s", r, vram_last_error());
	ck_assert_uint_eq(sd.nskipped, 1);
	pk_free(&sd);
	free(b);
}
END_TEST

/* Pickles of the kind protocol 2 writes by hand, from memory (found by
 * fuzz-pickle): containers built on an empty stack; an empty tensor whose
 * storage offset lies past its storage (torch accepts it: an empty tensor
 * needs no bytes) keeps its bytes (none) inside the storage, so that its
 * file offset stays inside its record. */
START_TEST(test_pickle_edges)
{
	static const char top_list[] = "\200\002].";
	static const char top_dict[] = "\200\002}.";
	static const char past[] =
		"\200\002}(X\001\000\000\000wctorch._utils\n_rebuild_tensor_v2\n"
		"((X\007\000\000\000storagectorch\nFloatStorage\nX\001\000\000\0000X\003\000\000\000cpu"
		"J\004\000\000\000tQ" /* 4 floats */
		"J\000\000\004\000" /* offset 262144 */
		"(J\000\000\000\000t(J\001\000\000\000t" /* size (0,), stride (1,) */
		"\211ccollections\nOrderedDict\n)RtRu.";
	struct pk_state_dict sd = { 0 };

	ck_assert_int_eq(pk_load((const uint8_t *)top_list, sizeof(top_list) - 1, "mem", "data.pkl", &sd), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "the pickle holds a list, not a dict of tensors"));
	ck_assert_int_eq(pk_load((const uint8_t *)top_dict, sizeof(top_dict) - 1, "mem", "data.pkl", &sd), 0);
	ck_assert_uint_eq(sd.ntensors, 0);
	pk_free(&sd);

	ck_assert_msg(pk_load((const uint8_t *)past, sizeof(past) - 1, "mem", "data.pkl", &sd) == 0, "%s",
		      vram_last_error());
	ck_assert_uint_eq(sd.ntensors, 1);
	ck_assert_uint_eq(sd.nstorages, 1);
	ck_assert_uint_eq(sd.storages[0].nbytes, 16);
	ck_assert_uint_eq(sd.tensors[0].nbytes, 0);
	ck_assert_uint_le(sd.tensors[0].offset, sd.storages[0].nbytes);
	pk_free(&sd);
}
END_TEST

/* ======================================================================
 * The model API over PyTorch files (vram_model_open)
 * ====================================================================== */

static vram_model *model_ok(const char *sub, const char *name)
{
	char p[PATH_MAX];
	vram_model *m = NULL;
	int r = vram_model_open(fx(p, sub, name), &m);

	ck_assert_msg(r == 0, "%s: %d %s", name, r, vram_last_error());
	return m;
}

START_TEST(test_model)
{
	vram_model *m = model_ok("valid", "sd15_ckpt");
	struct vram_component_info ci = { .struct_size = sizeof(ci) };
	struct vram_tensor_info a = { .struct_size = sizeof(a) }, b = { .struct_size = sizeof(b) };
	struct vram_layer_info li = { .struct_size = sizeof(li) };
	struct torch_file t;

	ck_assert_str_eq(vram_model_format(m), "pytorch");
	ck_assert_int_eq(vram_model_tensor_count(m), 13);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_UNET, &ci), 0);
	ck_assert_uint_eq(ci.ntensors, 7);
	ck_assert_uint_eq(ci.nlayers, 4);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_CLIP, &ci), 0);
	ck_assert_uint_eq(ci.ntensors, 3);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_VAE, &ci), 0);
	ck_assert_uint_eq(ci.ntensors, 1);
	ck_assert_int_eq(vram_model_component(m, VRAM_COMP_OTHER, &ci), 0);
	ck_assert_uint_eq(ci.ntensors, 2);
	ck_assert_int_eq(vram_model_layer(m, 0, &li), 0);
	ck_assert_str_eq(li.name, "model.diffusion_model.input_blocks.0");
	ck_assert_int_eq(vram_model_metadata_count(m), 0);
	vram_model_close(m);

	/* shared storages: ranges of one record, overlapping */
	m = model_ok("valid", "shared");
	parse_ok("shared", &t);
	ck_assert_int_eq(vram_model_tensor(m, (uint32_t)vram_model_find_tensor(m, "base"), &a), 0);
	ck_assert_int_eq(vram_model_tensor(m, (uint32_t)vram_model_find_tensor(m, "row"), &b), 0);
	ck_assert_uint_eq(a.file_offset, named(&t, "base")->file_offset);
	ck_assert_uint_eq(b.file_offset, a.file_offset + 60);
	ck_assert_uint_eq(b.nbytes, 20);
	ck_assert_uint_eq(b.ndim, 1);
	ck_assert_uint_eq(vram_model_data_offset(m), t.data_begin);
	ck_assert_uint_eq(vram_model_data_size(m), t.data_end - t.data_begin);
	ck_assert_uint_eq(vram_model_header_size(m), t.pickle_size);
	torch_free(&t);
	vram_model_close(m);

	m = model_ok("valid", "all_dtypes");
	ck_assert_int_eq(vram_model_tensor(m, (uint32_t)vram_model_find_tensor(m, "t_F8_E4M3"), &a), 0);
	ck_assert_uint_eq(a.dtype, VRAM_DTYPE_F8_E4M3);
	ck_assert_uint_eq(a.nbytes, 6);
	vram_model_close(m);
}
END_TEST

START_TEST(test_model_refused)
{
	char p[PATH_MAX], want[PATH_MAX + 128];
	vram_model *m = (vram_model *)(uintptr_t)0x5a5a;

	ck_assert_int_eq(vram_model_open(fx(p, "unsupported", "legacy"), &m), -ENOTSUP);
	snprintf(want, sizeof(want), "%s: unsupported PyTorch checkpoint: the legacy format", p);
	ck_assert_msg(!strncmp(vram_last_error(), want, strlen(want)), "%s", vram_last_error());
	ck_assert_int_eq(vram_model_open(fx(p, "invalid", "reduce_os_system"), &m), -EINVAL);
	ck_assert_int_eq(vram_model_open(fx(p, "unsupported", "bare_pickle"), &m), -ENOTSUP);
	ck_assert_ptr_eq(m, (vram_model *)(uintptr_t)0x5a5a);
	ck_assert_int_lt(access(marker, F_OK), 0);
}
END_TEST

/* ======================================================================
 * Fixtures and main
 * ====================================================================== */

static void add_tests(TCase *tc)
{
	TF_ADD_LOOP(tc, test_refused, refused);
	tcase_add_test(tc, test_control);
	tcase_add_test(tc, test_reference);
	tcase_add_test(tc, test_details);
	tcase_add_test(tc, test_io_errors);
	TF_ADD_LOOP(tc, test_prefixes, small);
	TF_ADD_LOOP(tc, test_zip_mutations, small);
	TF_ADD_LOOP(tc, test_pickle_mutations, small);
	tcase_add_test(tc, test_pickle_edges);
	tcase_add_test(tc, test_pickle_tuple_keys);
	tcase_add_test(tc, test_model);
	tcase_add_test(tc, test_model_refused);
}

int main(void)
{
	struct tf_gen g;
	int failed, r = tf_prepare(&g, "test-pytorch", "gen_torch.py", "torch", fixdir, sizeof(fixdir));

	if (r)
		return r;
	snprintf(marker, sizeof(marker), "%s/MARKER-code-ran", fixdir);
	if ((r = tf_generate(&g, "gen_torch.py", (const char *const[]){ fixdir, marker, NULL })))
		return r;
	failed = tf_run("pytorch", "reader", 120, add_tests);
	if (access(marker, F_OK) == 0) {
		fprintf(stderr, "test-pytorch: %s exists: a hostile pickle ran\n", marker);
		failed++;
	}
	tf_rmtree(fixdir);
	return failed ? 1 : 0;
}
