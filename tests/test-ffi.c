/* SPDX-License-Identifier: MIT */
/*
 * libvram.so driven from Python with ctypes, as the ComfyUI node will:
 * symbols exported, structs laid out as the header says, tensors compared
 * with the reference safetensors library, a grant mapped into Python, a
 * load whose bytes match the file; the exported symbols are exactly the
 * API.
 */
#include "testlib.h"

START_TEST(test_ctypes)
{
	struct t_broker b;
	char file[512], cmd[4096], out[4096];
	const char *const args[] = { "--sim-gpus", "64MiB", "--host-pool", "64MiB", NULL };
	t_broker_start(&b, args);
	snprintf(file, sizeof(file), "%s/m.safetensors", b.dir);
	ck_assert_int_eq(t_write_checkpoint(file, 6, 33, 17, 5), 0);
	/* An ASan build of libvram.so in a Python that is not: the runtime
	 * must be loaded first, and Python's own allocations are not ours. */
#ifdef __SANITIZE_ADDRESS__
	const char *pre = "LD_PRELOAD=$(${CC:-cc} -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 ";
#else
	const char *pre = "";
#endif
	snprintf(cmd, sizeof(cmd), "%s%s tests/py/ctypes_smoke.py %s/lib/libvram.so.0 %s %s 2>&1", pre, t_python(),
		 t_build(), file, b.sock);
	int rc = t_run(cmd, out, sizeof(out));
	ck_assert_msg(rc == 0 && !strncmp(out, "OK", 2), "rc %d: %s", rc, out);
	t_broker_stop(&b);
}
END_TEST

/* Exactly the public API is exported: every VRAM_API function of vram.h, in
 * the version node of libvram.map that lists it, and nothing else
 * (scripts/check-abi.sh); and the check does catch a map that lacks one. */
START_TEST(test_exports)
{
	char cmd[2048], out[4096];
	snprintf(cmd, sizeof(cmd), "sh scripts/check-abi.sh %s/lib/libvram.so.0 2>&1", t_build());
	int rc = t_run(cmd, out, sizeof(out));
	ck_assert_msg(rc == 0, "rc %d: %s", rc, out);

	char *d = t_tmpdir();
	snprintf(cmd, sizeof(cmd), "grep -v 'vram_model_fd;' runtime/libvram.map > %s/lacking.map && "
		 "sh scripts/check-abi.sh %s/lib/libvram.so.0 runtime/vram.h %s/lacking.map 2>&1", d, t_build(), d);
	rc = t_run(cmd, out, sizeof(out));
	ck_assert_msg(rc == 1 && strstr(out, "vram_model_fd"), "rc %d: %s", rc, out);
	t_rmtree(d);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ffi");
	TCase *tc = tcase_create("ctypes");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_ctypes);
	tcase_add_test(tc, test_exports);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
