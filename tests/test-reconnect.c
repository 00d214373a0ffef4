/* SPDX-License-Identifier: MIT */
/*
 * The client runtime across a broker restart (SIGKILL, then a new vramd on
 * the same socket): a FREE that meets the restart frees the grant it names
 * and nothing else; a pager that only computes (no call of its own to the
 * broker) reconnects at once, re-registers what it holds and keeps
 * answering RECLAIM.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "common/util.h"
#include "testlib-pager.h"

static const char *const sim_args[] = { "--sim-gpus", "64MiB", "--host-pool", "128MiB", "--no-cuda",
					"--reclaim-deadline-ms", "20000", NULL };
/* a GPU the pager and a newcomer must share */
static const char *const small_args[] = { "--sim-gpus", "32MiB", "--host-pool", "128MiB", "--no-cuda",
					  "--reclaim-deadline-ms", "20000", NULL };

/* Bytes the broker accounts to the client called name (-1: no such client). */
static int64_t held_by(vram_client *o, const char *name)
{
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(o, &s), 0);
	const struct vram_client_status *cs = tp_client(s, name);
	int64_t held = cs ? (int64_t)cs->held : -1;
	vram_status_free(s);
	return held;
}

/* Grants of 2, 4 and 6 MiB; the broker restarts; the FREE of the 2 MiB
 * grant is the call that meets the restart.  It must free that one (the
 * 4 and 6 MiB are registered again under new ids), not whichever grant
 * the new broker numbered like the old 2 MiB one. */
START_TEST(test_free_after_restart)
{
	struct tp_env e;
	tp_env_start(&e, sim_args);
	vram_client *c;
	vram_grant *g2, *g4, *g6;
	ck_assert_int_eq(vram_connect(e.sock, "holder", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g2), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 4 * MiB, 0, &g4), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 6 * MiB, 0, &g6), 0);
	memset(vram_grant_host_ptr(g6), 0x66, 6 * MiB);

	tp_env_restart(&e);
	ck_assert_msg(vram_free(c, g2) == 0, "%s", vram_last_error());
	vram_client *o;
	ck_assert_int_eq(vram_connect(e.sock, "observer", &o), 0);
	ck_assert_int_eq(held_by(o, "holder"), (int64_t)(10 * MiB));
	/* the 6 MiB grant is still ours, under its new id */
	ck_assert_uint_eq(((uint8_t *)vram_grant_host_ptr(g6))[6 * MiB - 1], 0x66);
	ck_assert_msg(vram_free(c, g6) == 0, "%s", vram_last_error());
	ck_assert_int_eq(held_by(o, "holder"), (int64_t)(4 * MiB));
	ck_assert_msg(vram_free(c, g4) == 0, "%s", vram_last_error());
	ck_assert_int_eq(held_by(o, "holder"), 0);
	vram_close(c);
	tp_wait_empty(o);
	vram_close(o);
	tp_env_stop(&e);
}
END_TEST

/* Waits (bounded) until the broker accounts at least bytes to name. */
static int64_t wait_held(vram_client *o, const char *name, int64_t bytes)
{
	int64_t h = -1;
	for (int i = 0; i < 1500; i++) {
		if ((h = held_by(o, name)) >= bytes)
			break;
		t_sleep_ms(10);
	}
	return h;
}

/* A pager mid-passes when the broker is SIGKILLed and restarted: its
 * dispatch thread sees the hang-up and reconnects (the passes make no
 * broker call that would), so the new broker accounts what it holds while
 * it runs, and a newcomer's ALLOC is served by RECLAIM from it. */
START_TEST(test_pager_reconnects)
{
	struct tp_env e;
	tp_env_start(&e, small_args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "busy", 0.004, NULL, 0) == 0, "%s", vram_last_error());
	struct tp_busy b;
	tp_busy_start(&b, &e, &t);
	vram_client *o;
	ck_assert_int_eq(vram_connect(e.sock, "observer", &o), 0);
	int64_t before = held_by(o, "busy");
	ck_assert_int_gt(before, 0);
	vram_close(o);

	tp_env_restart(&e);
	ck_assert_int_eq(vram_connect(e.sock, "observer", &o), 0);
	int64_t after = wait_held(o, "busy", before);
	ck_assert_msg(after == before, "after the restart the broker accounts %lld bytes to the pager, %lld before",
		      (long long)after, (long long)before);
	ck_assert_msg(!b.err[0], "%s", b.err);

	/* it answers RECLAIM from the new broker: a newcomer gets memory */
	vram_client *n;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	ck_assert_msg(vram_alloc(n, 0, 16 * MiB, 0, &g) == 0, "%s", vram_last_error());
	tp_busy_stop(&b, 2);
	/* the FREEs that served the newcomer come before RECLAIM_DONE:
	 * that may still be on its way (bounded wait) */
	struct vram_status *s = NULL;
	const struct vram_client_status *cs = NULL;
	for (int i = 0; i < 1500; i++) {
		vram_status_free(s);
		ck_assert_int_eq(vram_get_status(o, &s), 0);
		cs = tp_client(s, "busy");
		ck_assert_ptr_nonnull(cs);
		if (cs->reclaims_answered >= 1)
			break;
		t_sleep_ms(10);
	}
	ck_assert_uint_ge(cs->reclaims_answered, 1);
	ck_assert_uint_eq(cs->reclaims_missed, 0);
	vram_status_free(s);
	vram_close(n);
	tp_model_close(&t);
	tp_wait_empty(o);
	vram_close(o);
	tp_env_stop(&e);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("reconnect");
	TCase *tc = tcase_create("reconnect");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_free_after_restart);
	tcase_add_test(tc, test_pager_reconnects);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
