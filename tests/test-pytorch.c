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
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "runtime/pickle.h"
#include "runtime/reader.h"
#include "runtime/torchzip.h"
#include "runtime/vram.h"

static char fixdir[1024], marker[1100];

static const char *fx(char *buf, const char *sub, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/%s/%s.pt", fixdir, sub, name);
	return buf;
}

static uint8_t *slurp(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *b;
	long n;

	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b = malloc((size_t)n + 1);
	ck_assert_ptr_nonnull(b);
	ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*ret_len = (size_t)n;
	return b;
}

/* Parses the file at path through an fd opened here, as vram_model_open
 * hands the model's fd to the reader. */
static int parse_path(const char *path, struct torch_file *x)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	struct src s;

	if (fd < 0)
		return -errno;
	ck_assert_int_eq(fstat(fd, &st), 0);
	s = src_fd(fd, (uint64_t)st.st_size, path);
	return torch_parse(&s, x);
}

static void parse_ok(const char *name, struct torch_file *t)
{
	char p[PATH_MAX];
	int r;

	memset(t, 0, sizeof(*t));
	r = parse_path(fx(p, "valid", name), t);
	ck_assert_msg(r == 0, "%s: %d %s", name, r, vram_last_error());
}

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
	char p[PATH_MAX], prefix[PATH_MAX + 64];
	const char *msg;
	int r;

	fx(p, refused[_i].sub, refused[_i].file);
	r = parse_path(p, &t);
	msg = vram_last_error();
	ck_assert_msg(r == refused[_i].err, "%s: returned %d, want %d (%s)", refused[_i].file, r, refused[_i].err, msg);
	ck_assert_ptr_null(t.tensors);
	snprintf(prefix, sizeof(prefix), "%s: %s PyTorch checkpoint: ", p, r == -ENOTSUP ? "unsupported" : "invalid");
	ck_assert_msg(!strncmp(msg, prefix, strlen(prefix)), "%s: message \"%s\"", refused[_i].file, msg);
	ck_assert_msg(strstr(msg + strlen(prefix), refused[_i].reason), "%s:\n  got  \"%s\"\n  want \"%s\"",
		      refused[_i].file, msg + strlen(prefix), refused[_i].reason);
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
			bytes = slurp(fx(path, "valid", file), &len);
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
	struct torch_file x = { 0 };
	vram_model *m = NULL;
	char p[PATH_MAX];
	struct stat st;
	struct src s;
	_cleanup_close_ int fd = -1;

	/* Opening is vram_model_open's: the file is opened once, there. */
	snprintf(p, sizeof(p), "%s/nope.pt", fixdir);
	ck_assert_int_eq(vram_model_open(p, &m), -ENOENT);
	ck_assert_int_eq(vram_model_open(fixdir, &m), -EISDIR);
	ck_assert_int_eq(vram_model_open("/dev/null", &m), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "not a regular file"));
	ck_assert_ptr_null(m);
	/* A file that ends before the size fstat gave: it shrank. */
	fd = open(fx(p, "valid", "flat"), O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	s = src_fd(fd, (uint64_t)st.st_size + (1u << 20), p);
	ck_assert_int_eq(torch_parse(&s, &x), -EIO);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "file shrank while being read"));
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
	uint8_t *b = slurp(fx(p, "valid", small[_i]), &len);
	struct torch_file t = { 0 };
	struct src s = src_mem(b, len, "mem");

	ck_assert_int_eq(torch_parse(&s, &t), 0);
	check_sane(&t, len);
	torch_free(&t);
	for (size_t n = 0; n < len; n++) {
		uint8_t *c = malloc(n ? n : 1);
		memcpy(c, b, n);
		s = src_mem(c, n, "mem");
		int r = torch_parse(&s, &t);
		ck_assert_msg(r == -EINVAL, "%s cut at %zu: %d %s", small[_i], n, r, vram_last_error());
		free(c);
	}
	free(b);
}
END_TEST

static uint64_t xs(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* Bytes anywhere in the zip (the pickle's CRC stops most changes there:
 * the pickle's own mutations follow). */
START_TEST(test_zip_mutations)
{
	char p[PATH_MAX];
	size_t len;
	uint8_t *b = slurp(fx(p, "valid", small[_i]), &len);
	uint64_t x = 0x2545f4914f6cdd1dull + (uint64_t)_i;
	unsigned ok = 0;

	for (int k = 0; k < 2000; k++) {
		uint8_t *c = malloc(len);
		struct torch_file t = { 0 };
		memcpy(c, b, len);
		for (int m = 0; m < 1 + k % 3; m++) {
			size_t at = xs(&x) % len;
			/* half of them in the directory at the end */
			if (k % 2)
				at = len - 1 - xs(&x) % MIN(len, 1500);
			c[at] = (uint8_t)xs(&x);
		}
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
	uint8_t *b = slurp(fx(p, "valid", small[_i]), &len), *pkl;
	uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)_i, plen;
	unsigned ok = 0;

	parse_ok(small[_i], &t);
	pkl = b + t.pickle_offset;
	plen = t.pickle_size;
	torch_free(&t);
	for (int k = 0; k < 4000; k++) {
		uint8_t *c = malloc(plen);
		struct pk_state_dict sd = { 0 };
		memcpy(c, pkl, plen);
		for (int m = 0; m < 1 + k % 3; m++)
			c[xs(&x) % plen] = (uint8_t)xs(&x);
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

static int run(char *const argv[])
{
	int st;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0) {
		execv(argv[0], argv);
		fprintf(stderr, "test-pytorch: %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

static Suite *suite(void)
{
	Suite *s = suite_create("pytorch");
	TCase *tc = tcase_create("reader");

	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_refused, 0, (int)(sizeof(refused) / sizeof(refused[0])));
	tcase_add_test(tc, test_control);
	tcase_add_test(tc, test_reference);
	tcase_add_test(tc, test_details);
	tcase_add_test(tc, test_io_errors);
	tcase_add_loop_test(tc, test_prefixes, 0, (int)(sizeof(small) / sizeof(small[0])));
	tcase_add_loop_test(tc, test_zip_mutations, 0, (int)(sizeof(small) / sizeof(small[0])));
	tcase_add_loop_test(tc, test_pickle_mutations, 0, (int)(sizeof(small) / sizeof(small[0])));
	tcase_add_test(tc, test_model);
	tcase_add_test(tc, test_model_refused);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");
	const char *py = getenv("VRAM_PYTHON");
	const char *src = getenv("VRAM_SRCDIR");
	char pybuf[PATH_MAX], gen[PATH_MAX];
	SRunner *sr;
	int failed, r;

	if (!src || !*src)
		src = ".";
	if (!py || !*py) {
		snprintf(pybuf, sizeof(pybuf), "%s/.venv/bin/python", src);
		py = pybuf;
	}
	snprintf(gen, sizeof(gen), "%s/tests/gen_torch.py", src);
	if (access(py, X_OK) < 0 || access(gen, R_OK) < 0) {
		printf("test-pytorch: skipped: needs %s (set VRAM_PYTHON; `make deps` makes .venv) and %s, "
		       "run from the repository root or set VRAM_SRCDIR\n", py, gen);
		return 77;
	}
	if (run((char *const[]){ (char *)py, "-c", "import torch", NULL }) != 0) {
		printf("test-pytorch: skipped: %s has no torch (`make deps` installs it)\n", py);
		return 77;
	}
	snprintf(fixdir, sizeof(fixdir), "%s/test-pytorch.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(fixdir)) {
		fprintf(stderr, "test-pytorch: mkdtemp %s: %s\n", fixdir, strerror(errno));
		return 1;
	}
	snprintf(marker, sizeof(marker), "%s/MARKER-code-ran", fixdir);
	r = run((char *const[]){ (char *)py, gen, fixdir, marker, NULL });
	if (r != 0) {
		fprintf(stderr, "test-pytorch: fixture generation failed (exit %d)\n", r);
		nftw(fixdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
		return r == 127 ? 77 : 1;
	}

	sr = srunner_create(suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (access(marker, F_OK) == 0) {
		fprintf(stderr, "test-pytorch: %s exists: a hostile pickle ran\n", marker);
		failed++;
	}
	nftw(fixdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return failed ? 1 : 0;
}
