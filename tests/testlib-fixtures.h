/* SPDX-License-Identifier: MIT */
/*
 * The checkpoint readers' suites (test-safetensors, test-gguf,
 * test-pytorch): fixtures a Python generator writes into a temp directory
 * before the suite runs, the checks every reader's refusals share, and
 * hostile input built in memory (header-only, static).
 */
#ifndef VRAM_TESTLIB_FIXTURES_H
#define VRAM_TESTLIB_FIXTURES_H

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "runtime/reader.h"
#include "runtime/vram.h"

/* ---- fixtures: a generator run once, before the suite ------------------ */

/* A suite's generators: $VRAM_SRCDIR/tests/NAME (the source dir defaults
 * to the current one), run by $VRAM_PYTHON (default
 * $VRAM_SRCDIR/.venv/bin/python) into dir. */
struct tf_gen {
	const char *suite;       /* "test-gguf": messages, the temp dir's name */
	const char *src;
	char py[PATH_MAX];
	char *dir;               /* the suite's fixture dir, dirlen bytes */
	size_t dirlen;
};

/* tests/NAME under the source dir, into buf (PATH_MAX bytes). */
static inline const char *tf_script(const struct tf_gen *g, char *buf, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/tests/%s", g->src, name);
	return buf;
}

/* Runs argv[0] with argv (NULL-terminated, no shell) and waits: its exit
 * code, 127 when it could not be run, 128 when a signal ended it, -1 when
 * fork failed. */
static inline int tf_spawn(const char *suite, char *const argv[])
{
	int st;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0) {
		execv(argv[0], argv);
		fprintf(stderr, "%s: %s: %s\n", suite, argv[0], strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static inline int tf_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* Removes dir and everything below it. */
static inline void tf_rmtree(const char *dir)
{
	nftw(dir, tf_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Finds python and tests/SCRIPT, checks that python imports module (NULL:
 * no check), then makes dir, a fresh "$TMPDIR/SUITE.XXXXXX" (TMPDIR
 * default /tmp) of len bytes.  0; 77 with the skip line printed when
 * python, the script or the module is missing; 1 with the error printed. */
static inline int tf_prepare(struct tf_gen *g, const char *suite, const char *script, const char *module,
			     char *dir, size_t len)
{
	const char *tmp = getenv("TMPDIR"), *py = getenv("VRAM_PYTHON");
	char gen[PATH_MAX], imp[128];

	*g = (struct tf_gen){ .suite = suite, .src = getenv("VRAM_SRCDIR"), .dir = dir, .dirlen = len };
	if (!g->src || !*g->src)
		g->src = ".";
	if (py && *py)
		snprintf(g->py, sizeof(g->py), "%s", py);
	else
		snprintf(g->py, sizeof(g->py), "%s/.venv/bin/python", g->src);
	if (access(g->py, X_OK) < 0 || access(tf_script(g, gen, script), R_OK) < 0) {
		printf("%s: skipped: needs %s (set VRAM_PYTHON; `make deps` makes .venv) and %s, "
		       "run from the repository root or set VRAM_SRCDIR\n", suite, g->py, gen);
		return 77;
	}
	snprintf(imp, sizeof(imp), "import %s", module ? module : "sys");
	if (module && tf_spawn(suite, (char *const[]){ g->py, "-c", imp, NULL }) != 0) {
		printf("%s: skipped: %s has no %s (`make deps` installs it)\n", suite, g->py, module);
		return 77;
	}
	snprintf(dir, len, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", suite);
	if (!mkdtemp(dir)) {
		fprintf(stderr, "%s: mkdtemp %s: %s\n", suite, dir, strerror(errno));
		return 1;
	}
	return 0;
}

/* Runs python tests/SCRIPT with args (NULL-terminated, at most 14).  0
 * when it succeeded; otherwise the fixture dir is removed, the failure
 * printed, and the exit code main returns: 77 when python could not be
 * run, 1 otherwise. */
static inline int tf_generate(const struct tf_gen *g, const char *script, const char *const *args)
{
	char path[PATH_MAX];
	char *argv[17] = { (char *)g->py, (char *)tf_script(g, path, script) };
	size_t n = 2;
	int r;

	while (*args && n < 16)
		argv[n++] = (char *)*args++;
	r = tf_spawn(g->suite, argv);
	if (r == 0)
		return 0;
	fprintf(stderr, "%s: fixture generation failed (%s exit %d)\n", g->suite, script, r);
	tf_rmtree(g->dir);
	return r == 127 ? 77 : 1;
}

/* tcase_add_loop_test over every entry of the array arr. */
#define TF_ADD_LOOP(tc, fn, arr) tcase_add_loop_test(tc, fn, 0, (int)(sizeof(arr) / sizeof((arr)[0])))

/* Runs a suite NAME of one test case TCNAME (timeout seconds each) that
 * add fills: how many tests failed. */
static inline int tf_run(const char *name, const char *tcname, int timeout, void (*add)(TCase *tc))
{
	Suite *s = suite_create(name);
	TCase *tc = tcase_create(tcname);
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, timeout);
	add(tc);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed;
}

/* ---- refusals ------------------------------------------------------------ */

/* A refusal as every reader words it: r is want, and the message is
 * "PATH: invalid KIND: ..." (-ENOTSUP: "unsupported KIND") with reason in
 * what follows.  label names the fixture in failures. */
static inline void tf_check_refusal(const char *label, const char *path, int r, int want, const char *kind,
				    const char *reason)
{
	const char *msg = vram_last_error();
	char prefix[PATH_MAX + 64];

	ck_assert_msg(r == want, "%s: returned %d, want %d (%s)", label, r, want, msg);
	snprintf(prefix, sizeof(prefix), "%s: %s %s: ", path, r == -ENOTSUP ? "unsupported" : "invalid", kind);
	ck_assert_msg(!strncmp(msg, prefix, strlen(prefix)), "%s: message \"%s\"", label, msg);
	ck_assert_msg(strstr(msg + strlen(prefix), reason), "%s:\n  got  \"%s\"\n  want \"%s\"", label,
		      msg + strlen(prefix), reason);
}

/* vram_model_open's refusals before any reader runs: dir/MISSING does not
 * exist (the message is "PATH: strerror"), dir is a directory, /dev/null
 * not a regular file, NULL arguments; *ret is never set. */
static inline void tf_check_open_errors(const char *dir, const char *missing)
{
	char p[PATH_MAX], want[PATH_MAX + 64];
	vram_model *m = NULL;

	snprintf(p, sizeof(p), "%s/%s", dir, missing);
	ck_assert_int_eq(vram_model_open(p, &m), -ENOENT);
	snprintf(want, sizeof(want), "%s: %s", p, strerror(ENOENT));
	ck_assert_str_eq(vram_last_error(), want);
	ck_assert_int_eq(vram_model_open(dir, &m), -EISDIR);
	ck_assert_int_eq(vram_model_open("/dev/null", &m), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "not a regular file"));
	ck_assert_int_eq(vram_model_open(NULL, &m), -EINVAL);
	ck_assert_int_eq(vram_model_open(p, NULL), -EINVAL);
	ck_assert_ptr_null(m);
}

/* ---- sources and hostile input ------------------------------------------- */

/* A source over the file at path through an fd opened here (*fd, the
 * caller closes it), as vram_model_open hands the model's fd to a reader;
 * extra bytes more than fstat gives (a file that shrank while being
 * read).  -errno when path cannot be opened. */
static inline int tf_src_open(const char *path, uint64_t extra, int *fd, struct src *s)
{
	struct stat st;

	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return -errno;
	ck_assert_int_eq(fstat(*fd, &st), 0);
	*s = src_fd(*fd, (uint64_t)st.st_size + extra, path);
	return 0;
}

/* A reader's helpers, for a reader PARSE: int (const struct src *, TYPE *)
 * whose fixtures are FX(buf, SUB, NAME) under DIR:
 * - parse_path(path, x) parses the file at path through an fd opened here,
 *   as vram_model_open hands the model's fd to the reader;
 * - parse_ok(name, x) parses fixture valid/NAME into a zeroed *x and
 *   asserts it succeeded;
 * - check_io_errors(missing, name) checks vram_model_open's refusals
 *   (tf_check_open_errors, DIR/MISSING) and that PARSE refuses with -EIO
 *   "file shrank while being read" valid/NAME read as 1 MiB longer than
 *   it is. */
#define TF_DEFINE_PARSERS(TYPE, PARSE, FX, DIR)                                 \
	static int parse_path(const char *path, TYPE *x)                        \
	{                                                                       \
		_cleanup_close_ int fd = -1;                                    \
		struct src s;                                                   \
		int r = tf_src_open(path, 0, &fd, &s);                          \
                                                                                \
		return r < 0 ? r : PARSE(&s, x);                                \
	}                                                                       \
                                                                                \
	static void parse_ok(const char *name, TYPE *x)                         \
	{                                                                       \
		char p[PATH_MAX];                                               \
		int r;                                                          \
                                                                                \
		memset(x, 0, sizeof(*x));                                       \
		r = parse_path(FX(p, "valid", name), x);                        \
		ck_assert_msg(r == 0, "%s: %d %s", name, r, vram_last_error()); \
	}                                                                       \
                                                                                \
	static void check_io_errors(const char *missing, const char *name)      \
	{                                                                       \
		_cleanup_close_ int fd = -1;                                    \
		TYPE x = { 0 };                                                 \
		char p[PATH_MAX];                                               \
		struct src s;                                                   \
                                                                                \
		tf_check_open_errors(DIR, missing);                             \
		ck_assert_int_eq(tf_src_open(FX(p, "valid", name), 1u << 20, &fd, &s), 0); \
		ck_assert_int_eq(PARSE(&s, &x), -EIO);                          \
		ck_assert_ptr_nonnull(strstr(vram_last_error(), "file shrank while being read")); \
	}

/* The file's bytes (malloc'd, asserted) and size. */
static inline uint8_t *tf_slurp(const char *path, size_t *ret_len)
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

/* The next of a xorshift64 sequence (seeded with any non-zero *x). */
static inline uint64_t tf_xs(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* A malloc'd copy of the first n bytes of b, exactly n bytes long (one
 * when n is 0), so that ASan sees any read past them. */
static inline uint8_t *tf_cut(const uint8_t *b, size_t n)
{
	uint8_t *c = malloc(n ? n : 1);

	ck_assert_ptr_nonnull(c);
	memcpy(c, b, n);
	return c;
}

/* A malloc'd copy of b (len bytes) with 1 + k % 3 bytes changed at random
 * (*x) within [from, from + span). */
static inline uint8_t *tf_mutant(const uint8_t *b, size_t len, int k, uint64_t *x, size_t from, size_t span)
{
	uint8_t *c = tf_cut(b, len);

	for (int m = 0; m < 1 + k % 3; m++) {
		size_t at = from + (size_t)(tf_xs(x) % span);
		c[at] = (uint8_t)(tf_xs(x) >> 32);
	}
	return c;
}

#endif
