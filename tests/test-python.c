/* SPDX-License-Identifier: MIT */
/*
 * The Python binding (python/vramd) and the ComfyUI node pack (comfyui/):
 * runs each suite of tests/py in the project's Python (.venv, where
 * `make deps` installs numpy, safetensors and torch).  Each suite starts its
 * own vramd on simulated GPUs.  test_comfyui needs COMFYUI_DIR (and a GPU
 * for its CUDA case); it prints why when it skips.
 */
#include "testlib.h"

static void run_suite(const char *module)
{
	char cmd[4096];
	static char out[1 << 16];
#ifdef __SANITIZE_ADDRESS__
	/* An ASan build of libvram.so in a Python that is not: the runtime
	 * must be loaded first, and Python's own allocations are not ours.
	 * libstdc++ right after it, so that ASan's __cxa_throw interceptor
	 * finds the real one (torch throws C++ exceptions it catches itself;
	 * without it: "CHECK failed ... real___cxa_throw", then a hang). */
	const char *pre = "LD_PRELOAD=\"$(${CC:-cc} -print-file-name=libasan.so) "
			  "$(${CC:-cc} -print-file-name=libstdc++.so.6)\" ASAN_OPTIONS=detect_leaks=0 ";
#else
	const char *pre = "";
#endif
	snprintf(cmd, sizeof(cmd), "VRAM_BUILD=%s VRAMD_LIBRARY=%s/lib/libvram.so.0 %s%s tests/py/harness.py %s 2>&1",
		 t_build(), t_build(), pre, t_python(), module);
	int rc = t_run(cmd, out, sizeof(out));
	/* the skip lines, so that a skipped case is seen */
	for (char *l = strstr(out, "SKIPPED "); l; l = strstr(l + 1, "SKIPPED ")) {
		char *e = strchr(l, '\n');
		printf("%.*s\n", e ? (int)(e - l) : (int)strlen(l), l);
	}
	size_t n = strlen(out);
	ck_assert_msg(rc == 0, "%s: exit %d:\n%s", module, rc, n > 3000 ? out + n - 3000 : out);
}

START_TEST(test_binding) { run_suite("test_binding"); }
END_TEST
START_TEST(test_nodes) { run_suite("test_nodes"); }
END_TEST
START_TEST(test_torch) { run_suite("test_torch"); }
END_TEST
START_TEST(test_eviction) { run_suite("test_eviction"); }
END_TEST
START_TEST(test_comfyui) { run_suite("test_comfyui"); }
END_TEST

int main(void)
{
	Suite *s = suite_create("python");
	TCase *tc = tcase_create("py");
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_binding);
	tcase_add_test(tc, test_nodes);
	tcase_add_test(tc, test_torch);
	tcase_add_test(tc, test_eviction);
	tcase_add_test(tc, test_comfyui);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
