/* SPDX-License-Identifier: MIT */
/*
 * Busy clients sharing one (simulated) GPU through a real vramd: RECLAIM
 * answered at once while passes run, whatever is asked; a model whose
 * layers were all resident turns paged and keeps running, and comes back
 * when memory is offered; floors and ceilings hold throughout.  Every byte
 * seen through acquire is checked against the file.
 *
 * The first test is issue 12's scenario scaled down: two `vramctl bench
 * pager` processes with the UNet wholly on the GPU, the second starting
 * while the first is mid-pass.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "common/util.h"
#include "testlib-holder.h"
#include "testlib-pager.h"

/* ---- helpers -------------------------------------------------------------- */

/* The client called name in the broker's status, copied; asserts it is
 * there. */
static struct vram_client_status client_status(vram_client *o, const char *name)
{
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(o, &s), 0);
	const struct vram_client_status *cs = tp_client(s, name);
	ck_assert_msg(cs != NULL, "no client %s", name);
	struct vram_client_status r = *cs;
	vram_status_free(s);
	return r;
}

/* ---- issue 12, scaled down ----------------------------------------------- */

/* `vramctl bench pager` over e's checkpoint with its UNet wholly on the
 * GPU, 4 passes, output (stdout and stderr) to out; the passes start once
 * go exists (NULL: at once). */
static pid_t spawn_bench_go(const struct tp_env *e, const char *ready, const char *go, const char *out)
{
	char prog[512];
	snprintf(prog, sizeof(prog), "%s/bin/vramctl", t_build());
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		const char *argv[] = { prog, "--socket", e->sock, "bench", "pager", e->file,
				       "--unet-expert-mode-allocations", "cuda:0,100%", "--passes", "4",
				       "--compute-ms-per-gb", "5000", "--ready-file", ready,
				       go ? "--go-file" : NULL, go, NULL };
		execv(prog, (char *const *)argv);
		_exit(127);
	}
	return pid;
}

static pid_t spawn_bench(const struct tp_env *e, const char *ready, const char *out)
{
	return spawn_bench_go(e, ready, NULL, out);
}

/* Whether child pid has exited (it is not reaped). */
static bool exited(pid_t pid)
{
	siginfo_t si = { 0 };
	return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid;
}

/* Waits for client pid; asserts it exited 0, naming it and quoting the
 * end of its output otherwise. */
static void bench_wait_ok(pid_t pid, const char *who, const char *out)
{
	int st;
	char cmd[1400], txt[4096] = "";
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		snprintf(cmd, sizeof(cmd), "tail -c 2000 %s", out);
		t_run(cmd, txt, sizeof(txt));
	}
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: %s", who, txt);
}

/* Two clients, each with its UNet wholly resident on a GPU too small for
 * both; the second starts while the first is mid-pass.  The first answers
 * every RECLAIM (it turns paged), both finish every pass, and nothing is
 * accounted once they exit. */
START_TEST(test_two_busy_instances)
{
	static const char *const args[] = { "--sim-gpus", "30MiB", "--host-pool", "100MiB", "--no-cuda", "-v",
					    "--reclaim-deadline-ms", "10000", NULL };
	struct tp_env e;
	char cmd[1024], ra[320], rb[320], oa[320], ob[320];
	tp_env_start(&e, args);
	snprintf(cmd, sizeof(cmd), "%s tests/make_checkpoint.py --out %s --size %d --seed 3 >/dev/null", t_python(),
		 e.file, 24 << 20);
	ck_assert_int_eq(t_run(cmd, NULL, 0), 0);
	snprintf(ra, sizeof(ra), "%s/a.ready", e.dir);
	snprintf(rb, sizeof(rb), "%s/b.ready", e.dir);
	snprintf(oa, sizeof(oa), "%s/a.out", e.dir);
	snprintf(ob, sizeof(ob), "%s/b.out", e.dir);
	pid_t a = spawn_bench(&e, ra, oa);
	for (int i = 0; i < 3000 && access(ra, F_OK) != 0; i++)
		t_sleep_ms(10);
	ck_assert_msg(access(ra, F_OK) == 0, "the first client never got to its passes");
	pid_t b = spawn_bench(&e, rb, ob);
	int sa, sb;
	waitpid(b, &sb, 0);
	waitpid(a, &sa, 0);
	char txt[4096] = "";
	if (!WIFEXITED(sb) || WEXITSTATUS(sb)) {
		snprintf(cmd, sizeof(cmd), "tail -c 2000 %s", ob);
		t_run(cmd, txt, sizeof(txt));
	}
	ck_assert_msg(WIFEXITED(sb) && WEXITSTATUS(sb) == 0, "second client: %s", txt);
	if (!WIFEXITED(sa) || WEXITSTATUS(sa)) {
		snprintf(cmd, sizeof(cmd), "tail -c 2000 %s", oa);
		t_run(cmd, txt, sizeof(txt));
	}
	ck_assert_msg(WIFEXITED(sa) && WEXITSTATUS(sa) == 0, "first client: %s", txt);
	ck_assert_int_ge(tp_log_count(&e, "RECLAIM answered"), 1);
	ck_assert_int_eq(tp_log_count(&e, "ignored RECLAIM"), 0);
	tp_env_stop_empty(&e);
}
END_TEST

/* Issue 12's four-client scenario scaled down (make bench, busy part 2):
 * four `vramctl bench pager` processes on a GPU smaller than any two of
 * their models (a 48 MiB checkpoint, ~38 MiB of it on the GPU, 57 MiB of
 * GPU: a quarter each is 14.25 MiB, a window of two slots for the largest
 * layer 12 MiB), each loaded after the one before is ready, then all busy
 * at once.  Every newcomer gets its window (the holders above their fair
 * share give back whole chunks although each one's excess is smaller
 * than a chunk), all finish every pass, nothing is accounted after. */
START_TEST(test_four_busy_instances)
{
	static const char *const args[] = { "--sim-gpus", "57MiB", "--host-pool", "288MiB", "--no-cuda", "-v",
					    "--reclaim-deadline-ms", "10000", NULL };
	struct tp_env e;
	char cmd[1024], go[320], ready[4][320], out[4][320], who[32];
	pid_t kid[4];
	tp_env_start(&e, args);
	snprintf(cmd, sizeof(cmd), "%s tests/make_checkpoint.py --out %s --size %d --seed 12 >/dev/null",
		 t_python(), e.file, 48 << 20);
	ck_assert_int_eq(t_run(cmd, NULL, 0), 0);
	snprintf(go, sizeof(go), "%s/go", e.dir);
	for (int i = 0; i < 4; i++) {
		snprintf(ready[i], sizeof(ready[i]), "%s/c%d.ready", e.dir, i + 1);
		snprintf(out[i], sizeof(out[i]), "%s/c%d.out", e.dir, i + 1);
		kid[i] = spawn_bench_go(&e, ready[i], go, out[i]);
		for (int k = 0; k < 3000 && access(ready[i], F_OK) != 0 && !exited(kid[i]); k++)
			t_sleep_ms(10);
	}
	int fd = open(go, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	close(fd);
	for (int i = 0; i < 4; i++) {
		snprintf(who, sizeof(who), "client %d", i + 1);
		bench_wait_ok(kid[i], who, out[i]);
	}
	ck_assert_int_eq(tp_log_count(&e, "ignored RECLAIM"), 0);
	tp_env_stop_empty(&e);
}
END_TEST

/* ---- in-process clients --------------------------------------------------- */

/* A load that holds its stream at the first read until the other client's
 * ALLOC has been answered (at most 20 s). */
struct held_load {
	atomic_int streaming, asked;
	const char *sock;
	int rc;
};

static int hold_progress(void *user, uint64_t done, uint64_t total)
{
	struct held_load *h = user;
	atomic_store(&h->streaming, 1);
	for (int i = 0; i < 2000 && !atomic_load(&h->asked); i++)
		t_sleep_ms(10);
	return 0;
}

static void *ask_when_streaming(void *arg)
{
	struct held_load *h = arg;
	vram_client *c;
	vram_grant *g = NULL;
	while (!atomic_load(&h->streaming))
		t_sleep_ms(5);
	h->rc = vram_connect(h->sock, "asker", &c);
	if (h->rc == 0) {
		h->rc = vram_alloc(c, 0, 16 * MiB, 0, &g);
		if (g)
			vram_free(c, g);
		vram_close(c);
	}
	atomic_store(&h->asked, 1);
	return NULL;
}

/* A RECLAIM that comes while a reclaimable load streams (no pager yet, so
 * no handler, and no call of the loader reads its socket) is answered,
 * "0 freed" at once, instead of sitting unread past its deadline: the
 * broker counts the loader as having answered, never logs "ignored", and
 * the asker is refused (nothing else holds the GPU). */
START_TEST(test_reclaim_during_load)
{
	static const char *const args[] = { "--sim-gpus", "32MiB", "--host-pool", "128MiB", "--no-cuda", "-v",
					    "--reclaim-deadline-ms", "2000", NULL };
	struct tp_env e;
	tp_env_start(&e, args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	vram_model *m;
	vram_client *c;
	vram_loaded *l = NULL;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "loader", &c), 0);
	struct held_load h = { .sock = e.sock, .rc = 1 };
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, ask_when_streaming, &h), 0);
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = VRAM_LOAD_RECLAIMABLE;
	lo.chunk_size = 1 * MiB;
	lo.progress = hold_progress;
	lo.user = &h;
	int r = vram_load(c, m, NULL, 0, &lo, &l);
	pthread_join(th, NULL);
	ck_assert_msg(r == 0, "%s", vram_last_error());
	ck_assert_int_eq(h.rc, -ENOMEM);
	vram_client *o;
	ck_assert_int_eq(vram_connect(e.sock, "observer", &o), 0);
	struct vram_client_status cs = client_status(o, "loader");
	ck_assert_uint_eq(cs.reclaims_missed, 0);
	ck_assert_uint_ge(cs.reclaims_answered, 1);
	ck_assert_int_eq(tp_log_count(&e, "ignored RECLAIM"), 0);
	/* every tensor on the GPU: the load itself was not disturbed */
	for (uint32_t t = 0; t < (uint32_t)vram_model_tensor_count(m); t++)
		ck_assert_int_eq(vram_loaded_tensor_device(l, t), 0);
	vram_unload(l);
	vram_close(c);
	vram_model_close(m);
	tp_wait_empty(o);
	vram_close(o);
	tp_env_stop(&e);
}
END_TEST

static const char *const small_args[] = { "--sim-gpus", "32MiB", "--host-pool", "128MiB", "--no-cuda",
					  "--reclaim-deadline-ms", "20000", NULL };

/* A client busy in acquire, copy and release when RECLAIMs come (a
 * newcomer takes and gives back memory again and again): each is
 * answered, none missed, the newcomer is served every time, the passes
 * never fail and every byte is the file's. */
START_TEST(test_reclaim_mid_acquire)
{
	struct tp_env e;
	tp_env_start(&e, small_args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "busy", 0.004, NULL, 0) == 0, "%s", vram_last_error());
	struct tp_busy b;
	tp_busy_start(&b, &e, &t);
	vram_client *n;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	int served = 0;
	for (int k = 0; k < 8; k++) {
		/* -ENOMEM when the pager's idle grants do not fit its excess over
		 * its fair share: it never goes below that */
		vram_grant *g;
		int rc = vram_alloc(n, 0, 12 * MiB, 0, &g);
		ck_assert_msg(rc == 0 || rc == -ENOMEM, "round %d: %s", k, vram_last_error());
		if (rc < 0)
			continue;
		served++;
		memset(vram_grant_host_ptr(g), k, vram_grant_size(g));
		ck_assert_int_eq(vram_free(n, g), 0);
		t_sleep_ms(20); /* the pager takes memory back meanwhile (OFFER) */
	}
	ck_assert_int_gt(served, 0);
	tp_busy_stop(&b, 2);
	struct vram_client_status cs = client_status(n, "busy");
	ck_assert_uint_ge(cs.reclaims_answered, 1);
	ck_assert_uint_eq(cs.reclaims_missed, 0);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(t.p, &st);
	ck_assert_uint_eq(st.reclaims, cs.reclaims_answered);
	ck_assert_uint_gt(st.dropped, 0);
	tp_model_close(&t);
	tp_wait_empty(n);
	vram_close(n);
	tp_env_stop(&e);
}
END_TEST

/* Asked for more than it can ever give: the pager frees what is idle,
 * keeps a window of two slots, and goes on serving the right bytes.
 * Through the broker (the client holds reclaimable memory the pager does
 * not manage): it answers at once with what it freed, and the newcomer is
 * told -ENOMEM then, not at the deadline. */
START_TEST(test_reclaim_more_than_can_give)
{
	struct tp_env e;
	tp_env_start(&e, small_args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "busy", 0.012, NULL, 0) == 0, "%s", vram_last_error());
	tp_pass(&e, &t);
	uint64_t freed = vram_pager_reclaim(t.p, 0, 1ull << 40);
	ck_assert_uint_gt(freed, 0);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(t.p, &st);
	ck_assert_uint_ge(st.window_slots, 2);
	tp_pass(&e, &t);
	tp_pass(&e, &t);
	/* memory of its client the pager knows nothing of */
	vram_grant *extra;
	ck_assert_int_eq(vram_alloc(t.c, 0, 16 * MiB, VRAM_ALLOC_RECLAIMABLE, &extra), 0);
	struct tp_busy b;
	tp_busy_start(&b, &e, &t);
	vram_client *n;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	ck_assert_int_eq(vram_alloc(n, 0, 15 * MiB, 0, &g), -ENOMEM);
	ck_assert_msg(strstr(vram_last_error(), "freed too little"), "%s", vram_last_error());
	tp_busy_stop(&b, 1);
	struct vram_client_status cs = client_status(n, "busy");
	ck_assert_uint_ge(cs.reclaims_answered, 1);
	ck_assert_uint_eq(cs.reclaims_missed, 0);
	ck_assert_uint_lt(cs.reclaim_freed, cs.reclaim_asked);
	vram_free(t.c, extra);
	tp_model_close(&t);
	tp_wait_empty(n);
	vram_close(n);
	tp_env_stop(&e);
}
END_TEST

/* Every layer the pager holds on the GPU acquired: it answers the RECLAIM
 * with 0 freed, at once, and the broker gets the memory from the other
 * holder. */
START_TEST(test_every_layer_acquired)
{
	static const char *const args[] = { "--sim-gpus", "40MiB", "--host-pool", "64MiB", "--no-cuda",
					    "--reclaim-deadline-ms", "20000", NULL };
	struct tp_env e;
	tp_env_start(&e, args);
	tp_env_checkpoint(&e, 4, 2000, 1024); /* four layers of just under 4 MiB */
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "pinned", 0, NULL, 0) == 0, "%s", vram_last_error());
	uint32_t held[VRAM_PAGER_MAX_ACQUIRED], nheld = 0;
	for (uint32_t li = 0; li < (uint32_t)vram_model_layer_count(t.m); li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(t.m, li, &info);
		if (!info.ntensors || !info.nbytes || vram_loaded_tensor_device(t.l, info.first_tensor) != 0)
			continue;
		ck_assert_uint_lt(nheld, VRAM_PAGER_MAX_ACQUIRED);
		ck_assert_int_eq(vram_pager_acquire(t.p, li), 0);
		held[nheld++] = li;
	}
	ck_assert_uint_ge(nheld, 4);
	struct holder h = { 0 };
	ck_assert_int_eq(vram_connect(e.sock, "holder", &h.c), 0);
	for (h.n = 0; h.n < 4; h.n++)
		ck_assert_int_eq(vram_alloc(h.c, 0, 4 * MiB, VRAM_ALLOC_RECLAIMABLE, &h.g[h.n]), 0);
	vram_set_reclaim_handler(h.c, give_back, &h);
	ck_assert_int_eq(pthread_create(&h.th, NULL, dispatcher, &h), 0);
	vram_client *n;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	ck_assert_int_eq(vram_demand(n, 0, 40 * MiB, 0), 0);
	ck_assert_msg(vram_alloc(n, 0, 8 * MiB, 0, &g) == 0, "%s", vram_last_error());
	struct vram_client_status cs = client_status(n, "pinned");
	ck_assert_uint_ge(cs.reclaims_answered, 1);
	ck_assert_uint_eq(cs.reclaims_missed, 0);
	ck_assert_uint_eq(cs.reclaim_freed, 0);
	ck_assert_int_ge(atomic_load(&h.calls), 1);
	ck_assert_int_eq(vram_free(n, g), 0);
	char why[256];
	for (uint32_t i = 0; i < nheld; i++) {
		ck_assert_msg(tp_layer_differs(&e, &t, held[i], why, sizeof(why)) == 0, "%s", why);
		ck_assert_int_eq(vram_pager_release(t.p, held[i]), 0);
	}
	atomic_store(&h.stop, 1);
	pthread_join(h.th, NULL);
	vram_close(h.c);
	tp_model_close(&t);
	tp_wait_empty(n);
	vram_close(n);
	tp_env_stop(&e);
}
END_TEST

struct racer {
	vram_client *c;
	atomic_int stop;
	int rounds, refused;
	char err[256];
};

/* Allocates and frees 1 MiB on the pager's own connection, again and
 * again: -ENOMEM (past its share) is fine, nothing else is. */
static void *racer_main(void *arg)
{
	struct racer *r = arg;
	while (!atomic_load(&r->stop) && !r->err[0]) {
		vram_grant *g;
		int rc = vram_alloc(r->c, 0, 1 * MiB, 0, &g);
		if (rc == -ENOMEM) {
			r->refused++;
		} else if (rc < 0) {
			snprintf(r->err, sizeof(r->err), "alloc: %s", vram_last_error());
		} else {
			memset(vram_grant_host_ptr(g), 0x5a, MiB);
			if (vram_free(r->c, g) < 0)
				snprintf(r->err, sizeof(r->err), "free: %s", vram_last_error());
		}
		r->rounds++;
		t_sleep_ms(1);
	}
	return NULL;
}

/* RECLAIMs racing with the client's own ALLOCs and FREEs on the same
 * connection, and with the newcomer's FREEs: every RECLAIM answered, no
 * call fails for anything but -ENOMEM, the accounting ends at 0. */
START_TEST(test_reclaim_races)
{
	struct tp_env e;
	tp_env_start(&e, small_args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "busy", 0.004, NULL, 0) == 0, "%s", vram_last_error());
	struct tp_busy b;
	tp_busy_start(&b, &e, &t);
	struct racer r = { .c = t.c };
	pthread_t rt;
	ck_assert_int_eq(pthread_create(&rt, NULL, racer_main, &r), 0);
	vram_client *n;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	int served = 0;
	for (int k = 0; k < 12; k++) {
		vram_grant *g[4];
		int ng = 0;
		for (; ng < 4; ng++) {
			int rc = vram_alloc(n, 0, 4 * MiB, 0, &g[ng]);
			ck_assert_msg(rc == 0 || rc == -ENOMEM, "newcomer: %s", vram_last_error());
			if (rc < 0)
				break;
			served++;
		}
		while (ng > 0)
			ck_assert_int_eq(vram_free(n, g[--ng]), 0);
	}
	atomic_store(&r.stop, 1);
	pthread_join(rt, NULL);
	ck_assert_msg(!r.err[0], "%s", r.err);
	ck_assert_int_gt(r.rounds, 0);
	tp_busy_stop(&b, 1);
	ck_assert_int_gt(served, 0);
	struct vram_client_status cs = client_status(n, "busy");
	ck_assert_uint_ge(cs.reclaims_answered, 1);
	ck_assert_uint_eq(cs.reclaims_missed, 0);
	tp_model_close(&t);
	tp_wait_empty(n);
	vram_close(n);
	tp_env_stop(&e);
}
END_TEST

/* A model all resident, turned paged by a newcomer's RECLAIM (its chunks
 * dropped, then copied to the donor), then whole again once the newcomer
 * leaves (the OFFER brings its chunks back and the window goes); right
 * bytes throughout. */
START_TEST(test_offer_promotes)
{
	/* room for the model and, while it is paged, its window */
	static const char *const args[] = { "--sim-gpus", "40MiB", "--host-pool", "128MiB", "--no-cuda",
					    "--reclaim-deadline-ms", "20000", NULL };
	struct tp_env e;
	tp_env_start(&e, args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "whole", 0, "cuda:0,100%", 0) == 0, "%s", vram_last_error());
	tp_pass(&e, &t);
	struct vram_pager_stats st0 = { .struct_size = sizeof(st0) }, st = { .struct_size = sizeof(st) };
	vram_pager_stats(t.p, &st0);
	ck_assert_uint_eq(st0.window_slots, 0);
	vram_client *n;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	uint64_t whole = client_status(n, "whole").held_dev[0];
	ck_assert_msg(vram_alloc(n, 0, 14 * MiB, 0, &g) == 0, "%s", vram_last_error());
	tp_pass(&e, &t); /* paged now */
	vram_pager_stats(t.p, &st);
	ck_assert_uint_gt(st.dropped, 0);
	ck_assert_uint_ge(st.window_slots, 2);
	ck_assert_uint_lt(client_status(n, "whole").held_dev[0], whole);
	/* the donor copy (the mover's, from the file) */
	for (int i = 0; i < 1000 && st.demoted == 0; i++) {
		t_sleep_ms(5);
		vram_pager_stats(t.p, &st);
	}
	ck_assert_uint_gt(st.demoted, 0);
	tp_pass(&e, &t);
	ck_assert_int_eq(vram_free(n, g), 0);
	/* offered back (within a second or two of the broker's pacing) */
	uint64_t held = 0;
	for (int i = 0; i < 1000; i++) {
		tp_pass(&e, &t);
		vram_pager_stats(t.p, &st);
		held = client_status(n, "whole").held_dev[0];
		if (st.window_slots == 0 && held >= whole)
			break;
		t_sleep_ms(5);
	}
	ck_assert_uint_gt(st.promoted, 0);
	ck_assert_uint_gt(st.offers, 0);
	ck_assert_uint_eq(st.window_slots, 0);
	ck_assert_uint_ge(held, whole);
	tp_pass(&e, &t);
	tp_model_close(&t);
	tp_wait_empty(n);
	vram_close(n);
	tp_env_stop(&e);
}
END_TEST

/* A client killed while the mover copies its dropped chunks to the donor:
 * nothing stays accounted to it, and the newcomer that made it drop them
 * keeps its grant and can go on. */
START_TEST(test_killed_while_demoting)
{
	struct tp_env e;
	tp_env_start(&e, small_args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	int pipefd[2];
	ck_assert_int_eq(pipe(pipefd), 0);
	pid_t kid = fork();
	if (kid == 0) {
		struct tp_model t;
		close(pipefd[0]);
		if (tp_model_open(&t, &e, "victim", 0, "cuda:0,100%", 0) < 0)
			_exit(1);
		if (write(pipefd[1], "r", 1) != 1)
			_exit(2);
		for (;;)
			for (uint32_t li = 0; li < t.nunet; li++) {
				vram_pager_acquire(t.p, li);
				vram_pager_release(t.p, li);
			}
	}
	close(pipefd[1]);
	char ch;
	ck_assert_int_eq(read(pipefd[0], &ch, 1), 1);
	close(pipefd[0]);
	vram_client *n;
	vram_grant *g, *g2;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	/* wanting half the device, as a pager says before its first ALLOC:
	 * the victim's fair share is the other half (asking only 14 MiB left
	 * it 18, an excess that a chunk of it did not always fit in) */
	ck_assert_int_eq(vram_demand(n, 0, 16 * MiB, 14 * MiB), 0);
	ck_assert_msg(vram_alloc(n, 0, 14 * MiB, 0, &g) == 0, "%s", vram_last_error());
	kill(kid, SIGKILL); /* its mover is copying what it dropped, or about to */
	waitpid(kid, NULL, 0);
	memset(vram_grant_host_ptr(g), 0x77, vram_grant_size(g));
	ck_assert_msg(vram_alloc(n, 0, 14 * MiB, 0, &g2) == 0, "%s", vram_last_error());
	ck_assert_int_eq(vram_free(n, g2), 0);
	ck_assert_int_eq(vram_free(n, g), 0);
	tp_wait_empty(n);
	vram_close(n);
	tp_env_stop(&e);
}
END_TEST

struct sampler {
	vram_client *o;
	atomic_int stop;
	uint64_t floor, ceiling;
	int samples;
	bool floored;            /* the floor's holder reached its floor */
	char err[256];
};

/* Samples the status: name:floored never below its floor once it got
 * there, name:capped never above its ceiling. */
static void *sampler_main(void *arg)
{
	struct sampler *s = arg;
	while (!atomic_load(&s->stop) && !s->err[0]) {
		struct vram_status *st;
		if (vram_get_status(s->o, &st) < 0) {
			snprintf(s->err, sizeof(s->err), "status: %s", vram_last_error());
			break;
		}
		const struct vram_client_status *f = tp_client(st, "floored"), *c = tp_client(st, "capped");
		if (f && f->held_dev[0] >= s->floor)
			s->floored = true;
		else if (f && s->floored)
			snprintf(s->err, sizeof(s->err), "floored holds %llu on cuda:0, below its floor %llu",
				 (unsigned long long)f->held_dev[0], (unsigned long long)s->floor);
		if (c && c->held_dev[0] > s->ceiling)
			snprintf(s->err, sizeof(s->err), "capped holds %llu on cuda:0, above its ceiling %llu",
				 (unsigned long long)c->held_dev[0], (unsigned long long)s->ceiling);
		vram_status_free(st);
		s->samples++;
		t_sleep_ms(2);
	}
	return NULL;
}

/* Three busy pagers on one GPU, one with a floor, one with a ceiling, and
 * a newcomer coming and going: the floor is never reclaimed from, the
 * ceiling never exceeded, at any sample. */
START_TEST(test_floors_and_ceilings)
{
	static const char *const args[] = { "--sim-gpus", "48MiB", "--host-pool", "256MiB", "--no-cuda",
					    "--reclaim-deadline-ms", "20000", NULL };
	struct tp_env e;
	tp_env_start(&e, args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	vram_client *a;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_set(a, "name:floored", "cuda:0", VRAM_QUOTA_FLOOR, 16 * MiB, 0), 0);
	ck_assert_int_eq(vram_quota_set(a, "name:capped", "cuda:0", VRAM_QUOTA_CEILING, 0, 10 * MiB), 0);
	struct sampler s = { .o = a, .floor = 16 * MiB, .ceiling = 10 * MiB };
	pthread_t sth;
	ck_assert_int_eq(pthread_create(&sth, NULL, sampler_main, &s), 0);
	struct tp_model tf, tc, to;
	ck_assert_msg(tp_model_open(&tf, &e, "floored", 0, "cuda:0,100%", 0) == 0, "%s", vram_last_error());
	struct tp_busy bf, bc, bo;
	tp_busy_start(&bf, &e, &tf);
	ck_assert_msg(tp_model_open(&tc, &e, "capped", 0, "cuda:0,100%", 0) == 0, "%s", vram_last_error());
	tp_busy_start(&bc, &e, &tc);
	ck_assert_msg(tp_model_open(&to, &e, "other", 0, "cuda:0,100%", 0) == 0, "%s", vram_last_error());
	tp_busy_start(&bo, &e, &to);
	vram_client *n;
	ck_assert_int_eq(vram_connect(e.sock, "newcomer", &n), 0);
	for (int k = 0; k < 6; k++) {
		vram_grant *g;
		int rc = vram_alloc(n, 0, 8 * MiB, 0, &g);
		ck_assert_msg(rc == 0 || rc == -ENOMEM, "%s", vram_last_error());
		t_sleep_ms(30);
		if (rc == 0)
			ck_assert_int_eq(vram_free(n, g), 0);
	}
	tp_busy_stop(&bf, 1);
	tp_busy_stop(&bc, 1);
	tp_busy_stop(&bo, 1);
	atomic_store(&s.stop, 1);
	pthread_join(sth, NULL);
	ck_assert_msg(!s.err[0], "%s", s.err);
	ck_assert(s.floored);
	ck_assert_int_gt(s.samples, 10);
	tp_model_close(&to);
	tp_model_close(&tc);
	tp_model_close(&tf);
	vram_close(n);
	vram_close(a);
	tp_env_stop_empty(&e);
}
END_TEST

/* A model loaded from shared copies (broker-owned, read-only) and paged:
 * a reclaim, while passes run, drops them like resident chunks (UNSHARE;
 * never cut into window slots, which would be written: a fault), the
 * mover copies them to the donor; every byte the file's throughout. */
START_TEST(test_shared_copies_paged)
{
	static const char *const args[] = { "--sim-gpus", "40MiB", "--host-pool", "128MiB", "--no-cuda",
					    "--cache-max", "100%", "--reclaim-deadline-ms", "20000", NULL };
	struct tp_env e;
	tp_env_start(&e, args);
	tp_env_checkpoint(&e, 24, 512, 1024);
	struct tp_model t;
	ck_assert_msg(tp_model_open_ex(&t, &e, "shared", 0, "cuda:0,100%", 0, VRAM_LOAD_SHARED) == 0, "%s",
		      vram_last_error());
	struct vram_load_stats ls = { .struct_size = sizeof(ls) };
	ck_assert_int_eq(vram_loaded_stats(t.l, &ls), 0);
	ck_assert_msg(ls.shared_bytes > 0, "nothing was shared: %s", ls.share_why);
	tp_pass(&e, &t);
	vram_client *n;
	ck_assert_int_eq(vram_connect(e.sock, "observer", &n), 0);
	ck_assert_uint_gt(client_status(n, "shared").shared_dev[0], 0);
	/* the broker never asks for copies someone maps (they are nobody's
	 * to give back), but the pager may give them up when asked: all */
	struct tp_busy b;
	tp_busy_start(&b, &e, &t);
	vram_pager_reclaim(t.p, 0, 1ull << 40);
	tp_busy_stop(&b, 1);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(t.p, &st);
	ck_assert_uint_gt(st.dropped, 0);
	ck_assert_uint_eq(client_status(n, "shared").shared_dev[0], 0); /* every copy given back */
	tp_pass(&e, &t);
	for (int i = 0; i < 1000 && st.demoted == 0; i++) {
		t_sleep_ms(5);
		vram_pager_stats(t.p, &st);
	}
	ck_assert_uint_gt(st.demoted, 0);
	tp_pass(&e, &t);
	tp_model_close(&t);
	ck_assert_int_eq(vram_cache_drop(n, -1, VRAM_CACHE_DROP_ALL), 0); /* the copies stay as cache */
	tp_wait_empty(n);
	vram_close(n);
	tp_env_stop(&e);
}
END_TEST

/* A checkpoint whose unet layers hold three modules of 512 KiB each (the
 * planner places modules: a layer may be split between devices). */
static void split_checkpoint(struct tp_env *e)
{
	ck_assert_int_eq(t_write_st(e->file, 5,
				    "for i in range(16):\n"
				    "  for m in range(3):\n"
				    "    t[f'model.diffusion_model.input_blocks.{i}.{m}.weight'] = "
				    "r.standard_normal((256, 1024)).astype(np.float16)\n"), 0);
	e->bytes = t_read_file(e->file, &e->len);
	ck_assert_ptr_nonnull(e->bytes);
}

/* A layer the plan splits between the GPU and the cpu (it places leaf
 * modules) has a part in a chunk of each: it is paged whole, a copy into
 * its slot keeps both chunks where they are, and reclaiming everything
 * reclaimable drops each chunk with only its own tensors; right bytes. */
START_TEST(test_split_layer_paged)
{
	struct tp_env e;
	tp_env_start(&e, small_args);
	split_checkpoint(&e);
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "split", 0, "cuda:0,30%;cpu,*", 0) == 0, "%s", vram_last_error());
	int split = -1;
	for (uint32_t li = 0; li < t.nunet && split < 0; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(t.m, li, &info);
		for (uint32_t k = info.first_tensor + 1; k < info.first_tensor + info.ntensors; k++)
			if (vram_plan_tensor_device(t.plan, k) != vram_plan_tensor_device(t.plan, info.first_tensor))
				split = (int)li;
	}
	ck_assert_msg(split >= 0, "no layer is split between devices");
	struct tp_busy b;
	tp_busy_start(&b, &e, &t);
	for (int k = 0; k < 4; k++)
		vram_pager_reclaim(t.p, 0, 1ull << 40);
	tp_busy_stop(&b, 2);
	tp_pass(&e, &t);
	vram_pager_reclaim(t.p, 0, 1ull << 40);
	tp_check_layer(&e, &t, (uint32_t)split);
	tp_pass(&e, &t);
	tp_model_close(&t);
	tp_env_stop_empty(&e);
}
END_TEST

/* A checkpoint whose unet layers grow by a slot step (2 MiB) each: 4, 6,
 * ..., 14 MiB. */
static void growing_checkpoint(struct tp_env *e)
{
	ck_assert_int_eq(t_write_st(e->file, 6,
				    "for i in range(6):\n"
				    "  t[f'model.diffusion_model.input_blocks.{i}.0.weight'] = "
				    "r.standard_normal((2048 + 1024 * i, 1024)).astype(np.float16)\n"), 0);
	e->bytes = t_read_file(e->file, &e->len);
	ck_assert_ptr_nonnull(e->bytes);
}

/* Slots are cut for the largest layer paged when a chunk is dropped: as
 * larger layers are paged, the earlier slots stop fitting it and the
 * window has fewer than two that do.  Those slots go back on RECLAIM all
 * the same (they did not: an idle client kept a window of six slots and
 * answered every RECLAIM with 0 B, issue 12's four clients), and the model
 * keeps running, right bytes. */
START_TEST(test_window_cut_for_smaller_layers)
{
	static const char *const args[] = { "--sim-gpus", "128MiB", "--host-pool", "256MiB", "--no-cuda", NULL };
	struct tp_env e;
	tp_env_start(&e, args);
	growing_checkpoint(&e);
	struct tp_model t;
	ck_assert_msg(tp_model_open(&t, &e, "growing", 0, "cuda:0,100%", 0) == 0, "%s", vram_last_error());
	tp_pass(&e, &t); /* the smallest layer is the least recently used */
	/* the chunks turn window slots one by one, each cut for a larger
	 * layer than the one before */
	uint64_t freed = 0;
	for (int k = 0; k < 4 && !freed; k++)
		freed = vram_pager_reclaim(t.p, 0, 1);
	ck_assert_uint_gt(freed, 0);
	vram_pager_reclaim(t.p, 0, 1ull << 40);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	ck_assert_int_eq(vram_pager_stats(t.p, &st), 0);
	ck_assert_msg(st.window_bytes <= 2 * 14 * MiB, "window of %u slots, %llu bytes, kept", st.window_slots,
		      (unsigned long long)st.window_bytes);
	tp_pass(&e, &t);
	tp_pass(&e, &t);
	tp_model_close(&t);
	tp_env_stop_empty(&e);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("busy");
	TCase *tc = tcase_create("busy");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_two_busy_instances);
	tcase_add_test(tc, test_four_busy_instances);
	tcase_add_test(tc, test_reclaim_mid_acquire);
	tcase_add_test(tc, test_reclaim_during_load);
	tcase_add_test(tc, test_reclaim_more_than_can_give);
	tcase_add_test(tc, test_every_layer_acquired);
	tcase_add_test(tc, test_reclaim_races);
	tcase_add_test(tc, test_offer_promotes);
	tcase_add_test(tc, test_killed_while_demoting);
	tcase_add_test(tc, test_floors_and_ceilings);
	tcase_add_test(tc, test_shared_copies_paged);
	tcase_add_test(tc, test_split_layer_paged);
	tcase_add_test(tc, test_window_cut_for_smaller_layers);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
