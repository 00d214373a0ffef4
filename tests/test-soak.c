/* SPDX-License-Identifier: MIT */
/*
 * The short soak make check runs (make soak runs the long one): 15 s of
 * real clients loading, allocating, answering RECLAIM and flooding the
 * socket, SIGKILLed at random, with the broker SIGKILLed and restarted
 * every 5 s under them (tests/helper-soak.c has the whole story).  Wrong
 * bytes, a client failing for another reason than being killed, memory
 * left accounted, fds or RSS left grown: a failure.
 */
#include "testlib.h"

START_TEST(test_soak_short)
{
	char *d = t_tmpdir();
	char cmd[1024], out[8192];
	ck_assert_ptr_nonnull(d);
	chmod(d, 0755); /* the flood's unprivileged user reaches the socket */
	snprintf(cmd, sizeof(cmd), "%s/tests/helper-soak %s 15 5 2>&1", t_build(), d);
	int rc = t_run(cmd, out, sizeof(out));
	fputs(out, stderr);
	ck_assert_msg(rc == 0, "soak failed (rc %d):\n%s", rc, out);
	ck_assert_msg(strstr(out, "0 wrong bytes") && strstr(out, "settled"), "%s", out);
	t_rmtree(d);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("soak");
	TCase *tc = tcase_create("soak");
	tcase_add_test(tc, test_soak_short);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
