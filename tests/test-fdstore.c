/* SPDX-License-Identifier: MIT */
/*
 * systemd's fd store against a real vramd and a test NOTIFY_SOCKET: grant
 * fds are stored (FDSTORE=1) and removed when freed (FDSTOREREMOVE=1); a
 * broker started with them back accounts the memory to its holder before
 * the holder reconnects, hands it over (not counted twice) when the holder
 * re-registers, and releases at once what a dead process held.
 */
#include "common/cleanup.h"
#include "runtime/vram.h"
#include "testlib-notify.h"
#include "testlib.h"

#define MiB (1ull << 20)

/* A vramd as systemd runs it: its dir, paths and pid a t_broker's
 * (testlib.h), but spawned with a NOTIFY_SOCKET and the fd store handed
 * back (LISTEN_FDS), which t_broker_run does not do. */
struct env {
	struct t_broker b;
	struct tn_listener notify;
	struct tn_fdstore store;
	const char *sim;         /* --sim-gpus; NULL: 64MiB */
};

static void env_spawn(struct env *e)
{
	char prog[512];
	snprintf(prog, sizeof(prog), "%s/bin/vramd", t_build());
	const char *argv[] = { prog, "--socket", e->b.sock, "--admin-socket", e->b.admin, "--state-dir", e->b.state,
			       "--sim-gpus", e->sim ? e->sim : "64MiB", "--host-pool", "64MiB", "--no-cuda", "--socket-mode", "0666", "--no-config", NULL };
	_cleanup_free_ char *names = e->store.n ? tn_fdstore_names(&e->store) : NULL;
	struct tn_spawn o = {
		.argv = argv, .notify = e->notify.path, .watchdog_pid = -1,
		.fds = e->store.n ? e->store.fds : NULL, .nfds = e->store.n, .fdnames = names, .log = e->b.log,
	};
	e->b.pid = tn_spawn(&o);
	ck_assert_int_gt(e->b.pid, 0);
	/* Until READY=1, applying what comes before it (the broker releases
	 * stored grants of dead processes while it starts). */
	for (int i = 0; i < 100; i++) {
		struct tn_msg m;
		if (tn_recv(&e->notify, 50, &m) <= 0)
			continue;
		bool ready = tn_has(&m, "READY=1");
		tn_fdstore_apply(&e->store, &m);
		if (ready)
			return;
	}
	ck_abort_msg("vramd sent no READY=1");
}

static void env_start(struct env *e)
{
	memset(e, 0, sizeof(*e));
	t_broker_dir(&e->b);
	ck_assert_int_eq(tn_listen(&e->notify, e->b.dir, "notify"), 0);
	tn_fdstore_init(&e->store);
	env_spawn(e);
}

/* Applies every FDSTORE / FDSTOREREMOVE message waiting (bounded). */
static int drain(struct env *e, int want_stored)
{
	for (int i = 0; i < 100 && e->store.n != want_stored; i++) {
		struct tn_msg m;
		if (tn_recv(&e->notify, 50, &m) > 0)
			tn_fdstore_apply(&e->store, &m);
	}
	return e->store.n;
}

static void env_stop(struct env *e)
{
	t_broker_halt(&e->b);
	tn_fdstore_clear(&e->store);
	tn_close(&e->notify);
	t_broker_stop(&e->b);
}

static struct vram_status *status_of(const char *sock)
{
	vram_client *o;
	struct vram_status *s;
	ck_assert_int_eq(vram_connect(sock, "observer", &o), 0);
	ck_assert_int_eq(vram_get_status(o, &s), 0);
	vram_close(o);
	return s;
}

static uint64_t held_by(const struct vram_status *s, const char *name)
{
	uint64_t h = 0;
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, name))
			h += s->clients[i].held;
	return h;
}

START_TEST(test_fdstore_restart)
{
	struct env e;
	env_start(&e);
	vram_client *c;
	vram_grant *g[3];
	ck_assert_int_eq(vram_connect(e.b.sock, "holder", &c), 0);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(vram_alloc(c, (uint32_t)(i & 1), 4 * MiB, VRAM_ALLOC_RECLAIMABLE, &g[i]), 0);
		memset(vram_grant_host_ptr(g[i]), 0x30 + i, 4 * MiB);
	}
	ck_assert_int_eq(drain(&e, 3), 3);
	/* freeing removes it from the store */
	ck_assert_int_eq(vram_free(c, g[2]), 0);
	ck_assert_int_eq(drain(&e, 2), 2);

	/* a crash: the new broker gets the stored fds back */
	kill(e.b.pid, SIGKILL);
	waitpid(e.b.pid, NULL, 0);
	env_spawn(&e);
	struct vram_status *s = status_of(e.b.sock);
	ck_assert_uint_eq(s->devices[0].used, 4 * MiB);
	ck_assert_uint_eq(s->devices[1].used, 4 * MiB);
	ck_assert_uint_eq(held_by(s, "restored"), 8 * MiB); /* before the holder reconnects */
	vram_status_free(s);

	/* the holder comes back: its grants change hands, counted once */
	struct vram_status *mine;
	ck_assert_msg(vram_get_status(c, &mine) == 0, "%s", vram_last_error());
	vram_status_free(mine);
	s = status_of(e.b.sock);
	ck_assert_uint_eq(s->devices[0].used, 4 * MiB);
	ck_assert_uint_eq(s->devices[1].used, 4 * MiB);
	ck_assert_uint_eq(s->devices[0].reclaimable, 4 * MiB);
	ck_assert_uint_eq(held_by(s, "holder"), 8 * MiB);
	ck_assert_uint_eq(held_by(s, "restored"), 0);
	vram_status_free(s);
	ck_assert_uint_eq(((uint8_t *)vram_grant_host_ptr(g[1]))[123], 0x31);
	vram_close(c);
	env_stop(&e);
}
END_TEST

/* A shared copy survives a crash through the fd store (its key in the
 * state directory): the restarted broker has it before anyone comes back,
 * its user re-registers what it maps (counted again, once), and a new load
 * of the same file is a hit, not a second read. */
START_TEST(test_fdstore_shared_copy)
{
	struct env e;
	env_start(&e);
	char file[300];
	snprintf(file, sizeof(file), "%s/model.safetensors", e.b.dir);
	ck_assert_int_eq(t_write_checkpoint(file, 4, 512, 1024, 5), 0);
	vram_client *c;
	vram_model *m;
	vram_loaded *l;
	ck_assert_int_eq(vram_connect(e.b.sock, "holder", &c), 0);
	ck_assert_int_eq(vram_model_open(file, &m), 0);
	struct vram_load_options o;
	vram_load_options_init(&o);
	o.flags = VRAM_LOAD_SHARED;
	ck_assert_msg(vram_load(c, m, NULL, 1, &o, &l) == 0, "%s", vram_last_error());
	struct vram_load_stats st = { .struct_size = sizeof(st) };
	vram_loaded_stats(l, &st);
	ck_assert_uint_gt(st.share_filled, 0);
	ck_assert_int_ge(drain(&e, (int)st.share_filled), (int)st.share_filled); /* the copies, stored */
	const uint8_t *p = vram_loaded_tensor_host_ptr(l, 0);
	uint8_t first = p[0];

	kill(e.b.pid, SIGKILL);
	waitpid(e.b.pid, NULL, 0);
	env_spawn(&e);
	struct vram_status *s = status_of(e.b.sock);
	ck_assert_uint_gt(s->devices[1].cache, 0);
	uint64_t cache = s->devices[1].cache;
	vram_status_free(s);
	/* the holder comes back (any call reconnects) and re-registers */
	struct vram_status *mine;
	ck_assert_msg(vram_get_status(c, &mine) == 0, "%s", vram_last_error());
	vram_status_free(mine);
	s = status_of(e.b.sock);
	ck_assert_uint_eq(s->devices[1].cache, cache); /* counted once */
	ck_assert_uint_eq(s->devices[1].used, cache);
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "holder"))
			ck_assert_uint_eq(s->clients[i].shared_dev[1], cache);
	vram_status_free(s);
	ck_assert_uint_eq(p[0], first);
	/* another load: a hit */
	vram_loaded *l2;
	ck_assert_msg(vram_load(c, m, NULL, 1, &o, &l2) == 0, "%s", vram_last_error());
	struct vram_load_stats st2 = { .struct_size = sizeof(st2) };
	vram_loaded_stats(l2, &st2);
	ck_assert_uint_eq(st2.share_hits, st.share_filled);
	ck_assert_uint_eq(st2.share_filled, 0);
	vram_unload(l2);
	vram_unload(l);
	vram_model_close(m);
	vram_close(c);
	env_stop(&e);
}
END_TEST

START_TEST(test_fdstore_dead_holder)
{
	struct env e;
	env_start(&e);
	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	pid_t kid = fork();
	if (kid == 0) {
		vram_client *c;
		vram_grant *g;
		if (vram_connect(e.b.sock, "doomed", &c) < 0 || vram_alloc(c, 0, 8 * MiB, 0, &g) < 0)
			_exit(1);
		if (write(pfd[1], "x", 1) != 1)
			_exit(2);
		pause();
		_exit(0);
	}
	char x;
	ck_assert_int_eq(read(pfd[0], &x, 1), 1);
	ck_assert_int_eq(drain(&e, 1), 1);
	/* broker and holder both die; the store still has the fd */
	kill(e.b.pid, SIGKILL);
	waitpid(e.b.pid, NULL, 0);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	env_spawn(&e);
	ck_assert_int_eq(drain(&e, 0), 0); /* FDSTOREREMOVE: released at once */
	struct vram_status *s = status_of(e.b.sock);
	ck_assert_uint_eq(s->devices[0].used, 0);
	vram_status_free(s);
	close(pfd[0]);
	close(pfd[1]);
	env_stop(&e);
}
END_TEST

/* A restored grant keeps its owner: the uid comes from the fd store, not
 * from /proc (which ProtectProc=invisible hides from the vramd user under
 * systemd, and which shows the process's uid now, not the connection's).
 * The holder connects as root, takes 12 MiB of cpu and then runs as
 * nobody; after a broker crash the 12 MiB still count against root's
 * 16 MiB ceiling. */
START_TEST(test_fdstore_restored_owner)
{
	if (getuid() != 0) {
		fprintf(stderr, "test_fdstore_restored_owner: skipped, needs root to switch to nobody\n");
		return;
	}
	struct env e;
	env_start(&e);
	vram_client *a;
	ck_assert_int_eq(vram_connect(e.b.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_set(a, "uid:0", "cpu", VRAM_QUOTA_CEILING, 0, 16 * MiB), 0);
	vram_close(a);
	int ready[2], go[2];
	ck_assert_int_eq(pipe(ready), 0);
	ck_assert_int_eq(pipe(go), 0);
	pid_t kid = fork();
	if (kid == 0) {
		vram_client *c;
		vram_grant *g;
		char b = 0;
		if (vram_connect(e.b.sock, "owner-test", &c) < 0 || vram_alloc(c, 1, 12 * MiB, 0, &g) < 0)
			_exit(1);
		if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
			_exit(2);
		if (write(ready[1], &b, 1) != 1 || read(go[0], &b, 1) < 0)
			_exit(3);
		_exit(0);
	}
	char b;
	ck_assert_int_eq(read(ready[0], &b, 1), 1);
	ck_assert_int_eq(drain(&e, 1), 1);
	kill(e.b.pid, SIGKILL);
	waitpid(e.b.pid, NULL, 0);
	env_spawn(&e);
	struct vram_status *s = status_of(e.b.sock);
	int found = 0;
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "restored")) {
			ck_assert_uint_eq(s->clients[i].uid, 0);
			ck_assert_uint_eq(s->clients[i].held, 12 * MiB);
			found++;
		}
	ck_assert_int_eq(found, 1);
	vram_status_free(s);
	vram_client *c;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.b.sock, "root-load", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 1, 8 * MiB, 0, &g), -EDQUOT);
	ck_assert_msg(strstr(vram_last_error(), "quota uid:0 on cpu"), "%s", vram_last_error());
	ck_assert_int_eq(vram_alloc(c, 1, 4 * MiB, 0, &g), 0);
	vram_close(c);
	ck_assert_int_eq(write(go[1], &b, 1), 1);
	int st;
	waitpid(kid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "holder exit %d", WEXITSTATUS(st));
	for (int i = 0; i < 2; i++) {
		close(ready[i]);
		close(go[i]);
	}
	env_stop(&e);
}
END_TEST

/* Grants restored for a holder that has not come back (it is stopped, not
 * dead) are nobody's to give back: a RECLAIM is not sent to the restored
 * placeholder (it has no connection; sending failed and released its
 * grants, handing the same memory out twice), and evicting it is refused. */
START_TEST(test_fdstore_restored_not_reclaimed)
{
	struct env e;
	env_start(&e);
	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	pid_t kid = fork();
	if (kid == 0) {
		vram_client *c;
		vram_grant *g;
		if (vram_connect(e.b.sock, "sleeper", &c) < 0 || vram_alloc(c, 0, 8 * MiB, VRAM_ALLOC_RECLAIMABLE, &g) < 0)
			_exit(1);
		if (write(pfd[1], "x", 1) != 1)
			_exit(2);
		pause();
		_exit(0);
	}
	char x;
	ck_assert_int_eq(read(pfd[0], &x, 1), 1);
	ck_assert_int_eq(drain(&e, 1), 1);
	kill(e.b.pid, SIGKILL);
	waitpid(e.b.pid, NULL, 0);
	env_spawn(&e);
	struct vram_status *s = status_of(e.b.sock);
	ck_assert_uint_eq(held_by(s, "restored"), 8 * MiB);
	uint32_t restored_id = 0;
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "restored"))
			restored_id = s->clients[i].id;
	vram_status_free(s);

	vram_client *c;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.b.sock, "newcomer", &c), 0);
	for (int k = 0; k < 2; k++) {
		ck_assert_int_eq(vram_alloc(c, 0, 62 * MiB, 0, &g), -ENOMEM);
		s = status_of(e.b.sock);
		ck_assert_uint_eq(held_by(s, "restored"), 8 * MiB);
		ck_assert_uint_eq(s->devices[0].used, 8 * MiB);
		vram_status_free(s);
	}
	vram_client *a;
	ck_assert_int_eq(vram_connect(e.b.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_evict(a, restored_id), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "restored"));
	vram_close(a);
	vram_close(c);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	close(pfd[0]);
	close(pfd[1]);
	env_stop(&e);
}
END_TEST

/* A broker restarted with a smaller pool than the grants it gets back from
 * the store: more is accounted than the pool holds, and nothing more is
 * granted there (the free space is 0, not a wrapped difference). */
START_TEST(test_fdstore_smaller_pool)
{
	struct env e;
	env_start(&e);
	vram_client *c;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.b.sock, "holder", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 8 * MiB, 0, &g), 0);
	ck_assert_int_eq(drain(&e, 1), 1);
	kill(e.b.pid, SIGKILL);
	waitpid(e.b.pid, NULL, 0);
	e.sim = "4MiB";
	env_spawn(&e);
	vram_client *d;
	vram_grant *h;
	ck_assert_int_eq(vram_connect(e.b.sock, "newcomer", &d), 0);
	ck_assert_int_eq(vram_alloc(d, 0, 2 * MiB, 0, &h), -ENOMEM);
	struct vram_status *s = status_of(e.b.sock);
	ck_assert_uint_eq(s->devices[0].used, 8 * MiB);
	ck_assert_uint_eq(s->devices[0].total, 4 * MiB);
	vram_status_free(s);
	vram_close(d);
	vram_close(c);
	env_stop(&e);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("fdstore");
	TCase *tc = tcase_create("fdstore");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_fdstore_restart);
	tcase_add_test(tc, test_fdstore_dead_holder);
	tcase_add_test(tc, test_fdstore_restored_not_reclaimed);
	tcase_add_test(tc, test_fdstore_restored_owner);
	tcase_add_test(tc, test_fdstore_shared_copy);
	tcase_add_test(tc, test_fdstore_smaller_pool);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
