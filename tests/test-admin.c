/* SPDX-License-Identifier: MIT */
/*
 * Shared-server operation against a real vramd: quota ceilings under
 * concurrent clients, floors honoured through reclaim, quotas surviving a
 * restart, a corrupt state file refusing the start, a non-root client
 * refused on every admin operation and blind to other users' clients,
 * evict.
 */
#include <poll.h>
#include <pty.h>
#include <setjmp.h>
#include <pthread.h>
#include <stdatomic.h>

#include <grp.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/vram.h"
#include "testlib-holder.h"
#include "testlib-raw.h"
#include "testlib.h"

#define MiB (1ull << 20)

/* The suite's broker: a simulated GPU of sim, 64 MiB of host pool, a short
 * RECLAIM deadline (tests/testlib.h has the harness). */
#define env t_broker

static void env_args(const char *sim, const char *args[8])
{
	const char *a[] = { "--sim-gpus", sim, "--host-pool", "64MiB", "--reclaim-deadline-ms", "500", NULL };
	memcpy(args, a, sizeof(a));
}

static void env_start(struct env *e, const char *sim)
{
	const char *args[8];
	env_args(sim, args);
	t_broker_start(e, args);
}

static void env_restart(struct env *e, const char *sim)
{
	const char *args[8];
	env_args(sim, args);
	t_broker_restart(e, args);
}

static void env_stop(struct env *e)
{
	t_broker_stop(e);
}

/* Waits (bounded) until device dev's use is want; returns it. */
static uint64_t wait_used(vram_client *c, uint32_t dev, uint64_t want)
{
	uint64_t u = 0;
	for (int i = 0; i < 300; i++) {
		struct vram_status *s;
		ck_assert_int_eq(vram_get_status(c, &s), 0);
		u = s->devices[dev].used;
		vram_status_free(s);
		if (u == want)
			break;
		t_sleep_ms(10);
	}
	return u;
}

static uint64_t used_on(vram_client *c, uint32_t dev)
{
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	uint64_t u = s->devices[dev].used;
	vram_status_free(s);
	return u;
}

/* Eight processes of one quota bucket (name:batch) race to allocate; the
 * ceiling is never exceeded, at any sample and at the end. */
START_TEST(test_ceiling_concurrent)
{
	struct env e;
	env_start(&e, "256MiB");
	vram_client *a;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_set(a, "name:batch", "cuda:0", VRAM_QUOTA_CEILING, 0, 40 * MiB), 0);
	/* each child holds what it has at the end until the parent has seen
	 * it (done[] says it finished, hold[] closing lets it go): the last
	 * sample is never taken after everyone has left */
	int done[2], hold[2];
	ck_assert_int_eq(pipe(done), 0);
	ck_assert_int_eq(pipe(hold), 0);
	pid_t kids[8];
	for (int k = 0; k < 8; k++) {
		kids[k] = fork();
		if (kids[k] == 0) {
			close(done[0]);
			close(hold[1]);
			vram_client *c;
			vram_grant *g[64];
			int n = 0;
			if (vram_connect(e.sock, "batch", &c) < 0)
				_exit(1);
			for (int i = 0; i < 200; i++) {
				if (n < 64 && vram_alloc(c, 0, 2 * MiB, 0, &g[n]) == 0)
					n++;
				else if (n && (i % 3 == 0))
					vram_free(c, g[--n]);
			}
			char x = 'd', y;
			if (write(done[1], &x, 1) != 1 || read(hold[0], &y, 1) < 0)
				_exit(1);
			_exit(0);
		}
	}
	close(done[1]);
	close(hold[0]);
	uint64_t peak = 0;
	char x;
	for (int finished = 0; finished < 8;) {
		peak = MAX(peak, used_on(a, 0));
		struct pollfd p = { .fd = done[0], .events = POLLIN };
		if (poll(&p, 1, 0) == 1) {
			ck_assert_int_eq(read(done[0], &x, 1), 1);
			finished++;
		}
	}
	peak = MAX(peak, used_on(a, 0));
	close(hold[1]);
	for (int k = 0; k < 8; k++) {
		int st;
		ck_assert_int_eq(waitpid(kids[k], &st, 0), kids[k]);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed", k);
	}
	close(done[0]);
	ck_assert_uint_le(peak, 40 * MiB);
	ck_assert_uint_gt(peak, 0);
	/* the refusal names the quota */
	vram_client *c;
	vram_grant *g[32];
	ck_assert_int_eq(vram_connect(e.sock, "batch", &c), 0);
	int n = 0;
	while (n < 32 && vram_alloc(c, 0, 2 * MiB, 0, &g[n]) == 0)
		n++;
	ck_assert_int_eq(n, 20);
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g[n]), -EDQUOT);
	ck_assert_msg(strstr(vram_last_error(), "quota name:batch on cuda:0: ceiling 40.00 MiB"), "%s",
		      vram_last_error());
	/* another name is not limited by it */
	vram_client *o;
	vram_grant *og;
	ck_assert_int_eq(vram_connect(e.sock, "other", &o), 0);
	ck_assert_int_eq(vram_alloc(o, 0, 64 * MiB, 0, &og), 0);
	vram_close(o);
	vram_close(c);
	vram_close(a);
	env_stop(&e);
}
END_TEST


/* A name is a claim any client may make: a name's quota can lower what its
 * user may hold, never raise it.  Root's clients here (uid 0) have a
 * 16 MiB ceiling; a client that calls itself by a name with no ceiling is
 * still held to it, and one that calls itself by a name with a 4 MiB
 * ceiling is held to that. */
START_TEST(test_name_cannot_raise_uid_ceiling)
{
	struct env e;
	env_start(&e, "256MiB");
	vram_client *a, *c;
	vram_grant *g, *g2;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_set(a, "uid:0", "cuda:0", VRAM_QUOTA_CEILING, 0, 16 * MiB), 0);
	ck_assert_int_eq(vram_quota_set(a, "name:generous", "cuda:0", VRAM_QUOTA_CEILING, 0, VRAM_NO_CEILING), 0);
	ck_assert_int_eq(vram_quota_set(a, "name:small", "cuda:0", VRAM_QUOTA_CEILING, 0, 4 * MiB), 0);
	ck_assert_int_eq(vram_connect(e.sock, "generous", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 24 * MiB, 0, &g), -EDQUOT);
	ck_assert_msg(strstr(vram_last_error(), "quota uid:0 on cuda:0: ceiling 16.00 MiB"), "%s", vram_last_error());
	ck_assert_int_eq(vram_alloc(c, 0, 12 * MiB, 0, &g), 0);
	/* the user's bucket counts every name of the user: 12 + 6 > 16 */
	vram_client *s;
	ck_assert_int_eq(vram_connect(e.sock, "small", &s), 0);
	ck_assert_int_eq(vram_alloc(s, 0, 6 * MiB, 0, &g2), -EDQUOT);
	ck_assert_msg(strstr(vram_last_error(), "quota name:small on cuda:0: ceiling 4.00 MiB"), "%s",
		      vram_last_error());
	ck_assert_int_eq(vram_alloc(s, 0, 4 * MiB, 0, &g2), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g), -EDQUOT);
	ck_assert_msg(strstr(vram_last_error(), "quota uid:0 on cuda:0"), "%s", vram_last_error());
	vram_close(s);
	vram_close(c);
	vram_close(a);
	env_stop(&e);
}
END_TEST

/* A floor is honoured by reclaiming borrowed memory from others, never
 * below their own floor. */
START_TEST(test_floor_through_reclaim)
{
	struct env e;
	env_start(&e, "64MiB");
	vram_client *a;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_set(a, "name:guaranteed", "cuda:0", VRAM_QUOTA_FLOOR, 32 * MiB, 0), 0);
	ck_assert_int_eq(vram_quota_set(a, "name:greedy", "cuda:0", VRAM_QUOTA_FLOOR, 16 * MiB, 0), 0);
	struct holder h = { 0 };
	ck_assert_int_eq(vram_connect(e.sock, "greedy", &h.c), 0);
	for (h.n = 0; h.n < 32; h.n++) /* the whole device, borrowed */
		ck_assert_int_eq(vram_alloc(h.c, 0, 2 * MiB, VRAM_ALLOC_RECLAIMABLE, &h.g[h.n]), 0);
	vram_set_reclaim_handler(h.c, give_back, &h);
	ck_assert_int_eq(pthread_create(&h.th, NULL, dispatcher, &h), 0);
	vram_client *g;
	vram_grant *gg, *more;
	ck_assert_int_eq(vram_connect(e.sock, "guaranteed", &g), 0);
	ck_assert_msg(vram_alloc(g, 0, 32 * MiB, 0, &gg) == 0, "%s", vram_last_error());
	/* greedy is at 32 MiB now; 16 more would take it below its floor */
	ck_assert_int_eq(vram_alloc(g, 0, 24 * MiB, 0, &more), -ENOMEM);
	ck_assert_int_ge(h.n, 8); /* it kept at least its 16 MiB floor */
	atomic_store(&h.stop, 1);
	pthread_join(h.th, NULL);
	vram_close(h.c);
	vram_close(g);
	ck_assert_uint_eq(wait_used(a, 0, 0), 0);
	vram_close(a);
	env_stop(&e);
}
END_TEST

START_TEST(test_quotas_survive_restart)
{
	struct env e;
	env_start(&e, "64MiB");
	vram_client *a;
	char *json;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_set(a, "uid:1000", "cuda:0", VRAM_QUOTA_FLOOR | VRAM_QUOTA_CEILING, 8 * MiB,
					 16 * MiB), 0);
	ck_assert_int_eq(vram_quota_set(a, "default", "cpu", VRAM_QUOTA_CEILING, 0, 32 * MiB), 0);
	/* floors above capacity are refused when set */
	ck_assert_int_eq(vram_quota_set(a, "uid:1001", "cuda:0", VRAM_QUOTA_FLOOR, 60 * MiB, 0), -ENOSPC);
	ck_assert_int_eq(vram_quota_list(a, &json), 0);
	ck_assert_ptr_nonnull(strstr(json, "uid:1000"));
	free(json);
	vram_close(a);
	env_restart(&e, "64MiB");
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_list(a, &json), 0);
	ck_assert_ptr_nonnull(strstr(json, "\"uid:1000\""));
	ck_assert_ptr_nonnull(strstr(json, "16777216"));
	ck_assert_ptr_nonnull(strstr(json, "\"default\""));
	ck_assert_ptr_null(strstr(json, "uid:1001"));
	free(json);
	/* and they are enforced */
	vram_grant *g;
	ck_assert_int_eq(vram_alloc(a, 1, 48 * MiB, 0, &g), -EDQUOT);
	ck_assert_int_eq(vram_quota_rm(a, "default", NULL), 0);
	ck_assert_int_eq(vram_alloc(a, 1, 48 * MiB, 0, &g), 0);
	ck_assert_int_eq(vram_quota_rm(a, "default", NULL), -ENOENT);
	vram_close(a);
	env_stop(&e);
}
END_TEST

START_TEST(test_corrupt_state_refuses_start)
{
	char *d = t_tmpdir();
	char cmd[2048], out[4096];
	const char *bad[] = {
		"{\"version\": 1, \"quotas\": [",                                     /* truncated */
		"{\"version\": 7, \"quotas\": []}",                                   /* unknown version */
		"{\"version\": 1, \"quotas\": [{\"subject\": \"uid:x\", \"device\": \"cpu\", \"floor\": 0, \"ceiling\": null}]}",
		"",                                                                   /* empty */
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		snprintf(cmd, sizeof(cmd),
			 "mkdir -p %s/state && printf '%%s' '%s' > %s/state/quotas.json && "
			 "%s/bin/vramd --socket %s/s.sock --admin-socket %s/a.sock --state-dir %s/state --no-cuda "
			 "--host-pool 8MiB 2>&1",
			 d, bad[i], d, t_build(), d, d, d);
		ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 1);
		ck_assert_msg(strstr(out, "refusing to start") && strstr(out, "quotas.json"), "%s", out);
	}
	t_rmtree(d);
}
END_TEST

static int as_nobody(void)
{
	return setgroups(0, NULL) == 0 && setgid(65534) == 0 && setuid(65534) == 0 ? 0 : -1;
}

/* A non-root client: refused on every admin operation (on both sockets),
 * and blind to other users' clients. */
START_TEST(test_non_root)
{
	if (getuid() != 0) {
		fprintf(stderr, "test_non_root: skipped, needs root to switch to nobody\n");
		return;
	}
	struct env e;
	env_start(&e, "64MiB");
	vram_client *root;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.sock, "root-job", &root), 0);
	ck_assert_int_eq(vram_alloc(root, 0, 8 * MiB, 0, &g), 0);
	pid_t kid = fork();
	if (kid == 0) {
		if (as_nobody() < 0)
			_exit(10);
		vram_client *c;
		char *json;
		/* the admin socket is 0600: not even a connection */
		if (vram_connect(e.admin, "nobody", &c) != -EACCES)
			_exit(11);
		if (vram_connect(e.sock, "nobody-job", &c) < 0)
			_exit(12);
		if (vram_quota_set(c, "default", "cuda:0", VRAM_QUOTA_CEILING, 0, MiB) != -EPERM)
			_exit(13);
		if (vram_quota_rm(c, "default", NULL) != -EPERM)
			_exit(14);
		if (vram_quota_list(c, &json) != -EPERM)
			_exit(15);
		if (vram_evict(c, 1) != -EPERM)
			_exit(16);
		vram_grant *mine;
		if (vram_alloc(c, 0, 2 * MiB, 0, &mine) < 0)
			_exit(17);
		struct vram_status *s;
		if (vram_get_status(c, &s) < 0)
			_exit(18);
		/* totals are visible, root's client is not */
		int ok = s->nclients == 1 && s->clients[0].uid == 65534 && s->devices[0].used == 10 * MiB;
		vram_status_free(s);
		_exit(ok ? 0 : 19);
	}
	int st;
	waitpid(kid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit %d", WEXITSTATUS(st));
	/* root (an admin) sees everyone */
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(root, &s), 0);
	ck_assert_uint_ge(s->nclients, 1);
	vram_status_free(s);
	vram_close(root);
	env_stop(&e);
}
END_TEST

/* Raw connections to path that never say HELLO; returns how many were
 * made (each stays open in fds). */
static int open_silent(const char *path, int *fds, int n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return 0;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int k = 0;
	for (; k < n; k++) {
		fds[k] = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (fds[k] < 0 || connect(fds[k], (struct sockaddr *)&sa, sizeof(sa)) < 0)
			break;
	}
	return k;
}

/* 300 connections from an unprivileged user that never say HELLO: its
 * connections past max-clients-per-uid are refused with the reason, root
 * still connects and sees the status, and the silent ones are dropped when
 * the HELLO timeout passes, which gives the user its room back. */
START_TEST(test_connection_flood)
{
	if (getuid() != 0) {
		fprintf(stderr, "test_connection_flood: skipped, needs root to switch to nobody\n");
		return;
	}
	struct env e;
	t_broker_dir(&e);
	const char *const args[] = { "--sim-gpus", "64MiB", "--host-pool", "64MiB", "--hello-timeout-ms", "1500", NULL };
	t_broker_run(&e, args);
	int go[2], ready[2];
	ck_assert_int_eq(pipe(go), 0);
	ck_assert_int_eq(pipe(ready), 0);
	pid_t kid = fork();
	if (kid == 0) {
		static int fds[300];
		char b = 0;
		if (as_nobody() < 0)
			_exit(10);
		if (open_silent(e.sock, fds, 300) != 300)
			_exit(11);
		t_sleep_ms(200); /* the broker accepts (and refuses) them */
		vram_client *c = NULL;
		int r = vram_connect(e.sock, "nobody-too-many", &c);
		if (r != -EUSERS || !strstr(vram_last_error(), "max-clients-per-uid 64"))
			_exit(12);
		if (write(ready[1], &b, 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(13);
		/* past the HELLO timeout the silent ones are gone */
		c = NULL;
		for (int i = 0; i < 100 && vram_connect(e.sock, "nobody-later", &c) < 0; i++)
			t_sleep_ms(50);
		if (!c)
			_exit(14);
		vram_close(c);
		_exit(0);
	}
	char b;
	ck_assert_int_eq(read(ready[0], &b, 1), 1);
	vram_client *root;
	ck_assert_msg(vram_connect(e.sock, "root", &root) == 0, "%s", vram_last_error());
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(root, &s), 0);
	vram_status_free(s);
	vram_close(root);
	ck_assert_int_eq(write(go[1], &b, 1), 1);
	int st;
	waitpid(kid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit %d", WEXITSTATUS(st));
	size_t len;
	_cleanup_free_ uint8_t *log = t_read_file(e.log, &len);
	ck_assert_ptr_nonnull(log);
	log[len] = 0;
	ck_assert_msg(strstr((char *)log, "no HELLO within 1500 ms"), "%s", log);
	for (int i = 0; i < 2; i++) {
		close(go[i]);
		close(ready[i]);
	}
	env_stop(&e);
}
END_TEST

static sigjmp_buf bus_jump;

static void on_bus(int sig)
{
	siglongjmp(bus_jump, 1);
}

/* 1 if reading p faults with SIGBUS. */
static int faults(volatile const uint8_t *p)
{
	struct sigaction sa = { .sa_handler = on_bus }, old;
	sigaction(SIGBUS, &sa, &old);
	int r = 1;
	if (!sigsetjmp(bus_jump, 1)) {
		(void)*p;
		r = 0;
	}
	sigaction(SIGBUS, &old, NULL);
	return r;
}

/* A user with a 64 MiB ceiling connects, takes 64 MiB, keeps the memfd
 * (and a mapping) and closes the socket, five times: each time the broker
 * revokes the grant (the file is cut to 0 bytes, the mapping faults), so
 * the user never holds more than its ceiling. */
START_TEST(test_ceiling_not_evaded_by_keeping_fds)
{
	if (getuid() != 0) {
		fprintf(stderr, "test_ceiling_not_evaded_by_keeping_fds: skipped, needs root to switch to nobody\n");
		return;
	}
	struct env e;
	env_start(&e, "64MiB");
	vram_client *a;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_quota_set(a, "uid:65534", "cpu", VRAM_QUOTA_CEILING, 0, 64 * MiB), 0);
	vram_close(a);
	pid_t kid = fork();
	if (kid == 0) {
		int kept[5];
		uint8_t *maps[5];
		if (as_nobody() < 0)
			_exit(10);
		for (int i = 0; i < 5; i++) {
			int s = tr_connect(e.sock);
			if (s < 0 || tr_hello(s, "evader") < 0)
				_exit(11);
			int r = tr_alloc(s, 1, 64 * MiB, 0, 1, &kept[i], NULL);
			if (r < 0)
				_exit(12);
			maps[i] = mmap(NULL, 64 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, kept[i], 0);
			if (maps[i] == MAP_FAILED)
				_exit(13);
			memset(maps[i], 0x5a, 64 * MiB);
			close(s);
			/* the broker sees the hang-up and revokes */
			struct stat st;
			for (int w = 0; w < 500 && fstat(kept[i], &st) == 0 && st.st_size; w++)
				t_sleep_ms(10);
			if (fstat(kept[i], &st) < 0 || st.st_size != 0)
				_exit(14);
			if (!faults(maps[i] + 4096))
				_exit(15);
		}
		uint64_t total = 0;
		for (int i = 0; i < 5; i++) {
			struct stat st;
			fstat(kept[i], &st);
			total += (uint64_t)st.st_size;
		}
		_exit(total <= 64 * MiB ? 0 : 16);
	}
	int st;
	waitpid(kid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit %d", WEXITSTATUS(st));
	struct vram_status *s;
	vram_client *o;
	ck_assert_int_eq(vram_connect(e.sock, "observer", &o), 0);
	ck_assert_int_eq(vram_get_status(o, &s), 0);
	ck_assert_uint_eq(s->devices[1].used, 0);
	vram_status_free(s);
	vram_close(o);
	env_stop(&e);
}
END_TEST

/* Evict: a client that answers keeps its connection; one that ignores the
 * deadline is disconnected, and its memory comes back. */
START_TEST(test_evict)
{
	struct env e;
	env_start(&e, "64MiB");
	vram_client *a;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	struct holder h = { 0 };
	ck_assert_int_eq(vram_connect(e.sock, "polite", &h.c), 0);
	for (h.n = 0; h.n < 4; h.n++)
		ck_assert_int_eq(vram_alloc(h.c, 0, 2 * MiB, VRAM_ALLOC_RECLAIMABLE, &h.g[h.n]), 0);
	vram_set_reclaim_handler(h.c, give_back, &h);
	ck_assert_int_eq(pthread_create(&h.th, NULL, dispatcher, &h), 0);
	vram_client *deaf;
	vram_grant *dg;
	ck_assert_int_eq(vram_connect(e.sock, "deaf", &deaf), 0);
	ck_assert_int_eq(vram_alloc(deaf, 0, 16 * MiB, VRAM_ALLOC_RECLAIMABLE, &dg), 0);
	ck_assert_int_eq(vram_evict(a, vram_client_id(h.c)), 0);
	ck_assert_int_eq(vram_evict(a, vram_client_id(deaf)), 0);
	ck_assert_int_eq(vram_evict(a, 4242), -ESRCH);
	t_sleep_ms(900); /* past the 500 ms deadline */
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(a, &s), 0);
	int polite = 0, deaf_seen = 0;
	for (uint32_t i = 0; i < s->nclients; i++) {
		polite |= !strcmp(s->clients[i].name, "polite");
		deaf_seen |= !strcmp(s->clients[i].name, "deaf");
	}
	if (s->devices[0].used) {
		char cmd[400];
		snprintf(cmd, sizeof(cmd), "cat %s >&2", e.log);
		t_run(cmd, NULL, 0);
	}
	ck_assert_uint_eq(s->devices[0].used, 0);
	vram_status_free(s);
	ck_assert(polite);
	ck_assert(!deaf_seen);
	ck_assert_int_eq(h.n, 0);
	atomic_store(&h.stop, 1);
	pthread_join(h.th, NULL);
	vram_close(h.c);
	vram_close(deaf);
	vram_close(a);
	env_stop(&e);
}
END_TEST


/* Reload: the config file's limits and the quota file, by admin RELOAD and
 * by SIGHUP; a bad config changes nothing. */
START_TEST(test_reload)
{
	struct env e;
	t_broker_dir(&e);
	char conf[300];
	snprintf(conf, sizeof(conf), "%s/vramd.conf", e.dir);
	FILE *f = fopen(conf, "w");
	fprintf(f, "client-max = 8MiB\n");
	fclose(f);
	const char *const args[] = { "--config", conf, "--sim-gpus", "64MiB", "--host-pool", "64MiB", NULL };
	t_broker_run(&e, args);
	vram_client *a;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 6 * MiB, 0, &g), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 4 * MiB, 0, &g), -EDQUOT);
	f = fopen(conf, "w");
	fprintf(f, "client-max = 64MiB\n");
	fclose(f);
	ck_assert_int_eq(vram_reload(a), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 4 * MiB, 0, &g), 0);
	/* a bad config: refused, limits unchanged */
	f = fopen(conf, "w");
	fprintf(f, "client-max = lots\n");
	fclose(f);
	ck_assert_int_eq(vram_reload(a), -EINVAL);
	ck_assert_msg(strstr(vram_last_error(), "vramd.conf:1: client-max: \"lots\" is not a size") &&
		      strstr(vram_last_error(), "nothing changed"), "%s", vram_last_error());
	ck_assert_int_eq(vram_alloc(a, 0, 4 * MiB, 0, &g), 0); /* still 64 MiB */
	/* vramctl reload says so too, and exits EX_CONFIG (78), not usage */
	char cmd[700], out[2048];
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --admin-socket %s reload 2>&1", t_build(), e.admin);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 78);
	ck_assert_msg(strstr(out, "is not a size"), "%s", out);
	/* SIGHUP does the same */
	f = fopen(conf, "w");
	fprintf(f, "client-max = 12MiB\n"); /* it holds 14 MiB */
	fclose(f);
	kill(e.pid, SIGHUP);
	int refused = 0;
	for (int i = 0; i < 100 && !refused; i++) {
		refused = vram_alloc(a, 0, 2 * MiB, 0, &g) == -EDQUOT;
		if (!refused) {
			vram_free(a, g);
			t_sleep_ms(10);
		}
	}
	ck_assert(refused);
	vram_close(a);
	/* non-admins may not */
	pid_t kid = fork();
	if (kid == 0) {
		vram_client *c;
		if (as_nobody() < 0 || vram_connect(e.sock, "nobody", &c) < 0)
			_exit(1);
		_exit(vram_reload(c) == -EPERM ? 0 : 2);
	}
	int st;
	waitpid(kid, &st, 0);
	if (getuid() == 0)
		ck_assert_int_eq(WEXITSTATUS(st), 0);
	env_stop(&e);
}
END_TEST

/* The default config file (here through VRAMD_CONFIG, as the unit sets
 * it) is read when it exists: a broker started without one reads it when
 * it appears, at the next reload, and forgets it when it goes. */
START_TEST(test_reload_default_config)
{
	struct env e;
	t_broker_dir(&e);
	char conf[300];
	snprintf(conf, sizeof(conf), "%s/vramd.conf", e.dir);
	setenv("VRAMD_CONFIG", conf, 1);
	const char *const args[] = { "--sim-gpus", "64MiB", "--host-pool", "64MiB", NULL };
	t_broker_run(&e, args);
	unsetenv("VRAMD_CONFIG");
	vram_client *a;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.admin, "admin", &a), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 10 * MiB, 0, &g), 0);
	FILE *f = fopen(conf, "w");
	fprintf(f, "[vramd]\nclient-max = 12MiB\n");
	fclose(f);
	ck_assert_int_eq(vram_reload(a), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 4 * MiB, 0, &g), -EDQUOT);
	ck_assert_msg(strstr(vram_last_error(), "client limit"), "%s", vram_last_error());
	unlink(conf);
	ck_assert_int_eq(vram_reload(a), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 4 * MiB, 0, &g), 0);
	vram_close(a);
	env_stop(&e);
}
END_TEST

/* Reads what the pseudo-terminal master m gives until EOF or timeout_ms;
 * returns the bytes in buf (NUL-terminated). */
static size_t pty_drain(int m, char *buf, size_t cap, int timeout_ms)
{
	size_t n = 0;
	uint64_t until = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	while (n + 1 < cap && now_ns() < until) {
		struct pollfd p = { .fd = m, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		ssize_t r = read(m, buf + n, cap - 1 - n);
		if (r <= 0)
			break; /* EIO: the child closed its end */
		n += (size_t)r;
	}
	buf[n] = '\0';
	return n;
}

/* vramctl top on a pseudo-terminal: frames that clear the screen, the
 * devices, a client's held / wanted / fair share per device; q quits. */
START_TEST(test_vramctl_top_pty)
{
	struct env e;
	env_start(&e, "64MiB");
	vram_client *h;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(e.sock, "top-holder", &h), 0);
	ck_assert_int_eq(vram_alloc(h, 0, 24 * MiB, VRAM_ALLOC_RECLAIMABLE, &g), 0);
	ck_assert_int_eq(vram_demand(h, 0, 48 * MiB, 8 * MiB), 0);
	char prog[512];
	snprintf(prog, sizeof(prog), "%s/bin/vramctl", t_build());
	static char out[1 << 16];
	for (int round = 0; round < 2; round++) {
		int m;
		pid_t kid = forkpty(&m, NULL, NULL, NULL);
		ck_assert_int_ge(kid, 0);
		if (kid == 0) {
			if (round == 0)
				execl(prog, prog, "--socket", e.sock, "top", "--count", "3", "--interval", "100", (char *)NULL);
			else
				execl(prog, prog, "--socket", e.sock, "top", "--interval", "100", (char *)NULL);
			_exit(127);
		}
		if (round == 1) {
			pty_drain(m, out, sizeof(out), 400); /* a frame or more */
			ck_assert_int_eq(write(m, "q", 1), 1);
		}
		pty_drain(m, out, sizeof(out), 5000);
		int st;
		for (int i = 0; i < 300 && waitpid(kid, &st, WNOHANG) != kid; i++)
			t_sleep_ms(10);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "vramctl top exit %d", WEXITSTATUS(st));
		close(m);
		if (round == 1)
			continue;
		ck_assert_msg(strstr(out, "\033[H\033[2J") && strstr(out, "(q quits)"), "%s", out);
		ck_assert_msg(strstr(out, "cuda:0") && strstr(out, "FAIR SHARE"), "%s", out);
		/* the holder's line: 24 MiB held, 48 wanted, all 64 its share (alone) */
		char *line = strstr(out, "top-holder");
		ck_assert_msg(line && strstr(line, "24.00 MiB") && strstr(line, "48.00 MiB"), "%s", out);
		int frames = 0;
		for (char *p = out; (p = strstr(p, "\033[2J")); p++)
			frames++;
		ck_assert_int_eq(frames, 3);
	}
	vram_close(h);
	env_stop(&e);
}
END_TEST

START_TEST(test_vramctl_quota_cli)
{
	struct env e;
	env_start(&e, "64MiB");
	char cmd[1024], out[8192];
	snprintf(cmd, sizeof(cmd),
		 "V='%s/bin/vramctl --socket %s --admin-socket %s'; "
		 "$V quota set name:comfy-1 cuda:0 --floor 8MiB --ceiling 32MiB && "
		 "$V quota set default cpu --ceiling none && $V quota list && $V quota list --json && "
		 "$V quota rm name:comfy-1 cuda:0 && $V clients",
		 t_build(), e.sock, e.admin);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "name:comfy-1") && strstr(out, "32.00 MiB") && strstr(out, "\"ceiling\": null"), "%s",
		      out);
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --admin-socket %s quota set bogus:1 cuda:0 --floor 1MiB 2>&1",
		 t_build(), e.admin);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 64);
	ck_assert_msg(strstr(out, "bogus:1"), "%s", out);
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --admin-socket %s quota set default cuda:0 --floor lots 2>&1",
		 t_build(), e.admin);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 64);
	env_stop(&e);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("admin");
	TCase *tc = tcase_create("admin");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_ceiling_concurrent);
	tcase_add_test(tc, test_name_cannot_raise_uid_ceiling);
	tcase_add_test(tc, test_floor_through_reclaim);
	tcase_add_test(tc, test_quotas_survive_restart);
	tcase_add_test(tc, test_corrupt_state_refuses_start);
	tcase_add_test(tc, test_non_root);
	tcase_add_test(tc, test_connection_flood);
	tcase_add_test(tc, test_ceiling_not_evaded_by_keeping_fds);
	tcase_add_test(tc, test_evict);
	tcase_add_test(tc, test_vramctl_quota_cli);
	tcase_add_test(tc, test_vramctl_top_pty);
	tcase_add_test(tc, test_reload);
	tcase_add_test(tc, test_reload_default_config);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
