/* SPDX-License-Identifier: MIT */
/*
 * vramd under systemd, without systemd as PID 1:
 *  - the unit files pass `systemd-analyze verify` (and a planted mistake is
 *    caught, so the check is not vacuous) and keep their hardening
 *    (`systemd-analyze security --offline`);
 *  - the sysusers.d and tmpfiles.d snippets work on a scratch root;
 *  - every key of the example config is one vramd accepts;
 *  - the real vramd started by `systemd-socket-activate --seqpacket` serves
 *    on the socket it was passed, and refuses a stream socket;
 *  - READY=1 (only once listening), WATCHDOG=1 and STOPPING=1 arrive on a
 *    test NOTIFY_SOCKET, and WATCHDOG_PID/WATCHDOG_USEC are honoured;
 *  - the FDSTORE helpers (testlib-notify.h): fds sent with FDSTORE=1 are
 *    received, and handed back to a new vramd as systemd would;
 *  - `vramctl metrics` is valid exposition format with the right values;
 *  - `make install DESTDIR=...` and the installed pkg-config file work.
 * A check whose tool is missing (or cannot run in this container) is
 * skipped with a message on stderr.
 */
#include <ctype.h>
#include <grp.h>
#include <pwd.h>
#include <systemd/sd-daemon.h>

#include "broker/broker.h"
#include "common/cleanup.h"
#include "runtime/vram.h"
#include "testlib.h"
#include "testlib-notify.h"

#define MiB (1ull << 20)

static void skip(const char *test, const char *why)
{
	fprintf(stderr, "%s: skipped: %s\n", test, why);
}

/* Full path of a program found in $PATH (or the usual places), or NULL. */
static const char *find_prog(const char *name, char *buf, size_t len)
{
	const char *path = getenv("PATH");
	char dirs[4096];
	snprintf(dirs, sizeof(dirs), "%s:/usr/bin:/bin:/usr/sbin:/sbin", path ? path : "");
	char *save = NULL;
	for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		snprintf(buf, len, "%s/%s", d, name);
		if (access(buf, X_OK) == 0)
			return buf;
	}
	return NULL;
}

/* The end of a long output, for failure messages (Check caps their size). */
static const char *tail(const char *s)
{
	size_t n = strlen(s);
	return n > 3000 ? s + n - 3000 : s;
}

static char *abs_path(const char *rel)
{
	char *p = realpath(rel, NULL);
	ck_assert_msg(p, "realpath %s: %s", rel, strerror(errno));
	return p;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return strdup("");
	char *buf = calloc(1, 1 << 20);
	ck_assert_ptr_nonnull(buf);
	size_t n = fread(buf, 1, (1 << 20) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* Copies systemd/NAME to DIR/NAME with the install-time placeholders
 * replaced by this build's paths. */
static void copy_unit(const char *dir, const char *name, const char *extra_after, const char *extra)
{
	char src[256], dst[4200], line[4096];
	_cleanup_free_ char *bindir = NULL, *docdir = abs_path("docs");
	char b[512];
	snprintf(b, sizeof(b), "%s/bin", t_build());
	bindir = abs_path(b);
	snprintf(src, sizeof(src), "systemd/%s", name);
	snprintf(dst, sizeof(dst), "%s/%s", dir, name);
	FILE *in = fopen(src, "re"), *out = fopen(dst, "we");
	ck_assert_ptr_nonnull(in);
	ck_assert_ptr_nonnull(out);
	while (fgets(line, sizeof(line), in)) {
		for (char *p = line; *p;) {
			if (!strncmp(p, "@BINDIR@", 8)) {
				fputs(bindir, out);
				p += 8;
			} else if (!strncmp(p, "@SYSCONFDIR@", 12)) {
				fprintf(out, "%s/etc", dir);
				p += 12;
			} else if (!strncmp(p, "@DOCDIR@", 8)) {
				fputs(docdir, out);
				p += 8;
			} else {
				fputc(*p++, out);
			}
		}
		if (extra_after && !strncmp(line, extra_after, strlen(extra_after)))
			fputs(extra, out);
	}
	fclose(in);
	fclose(out);
}

/* Lines of out that mention one of our unit files. */
static int our_complaints(const char *out, const char *dir)
{
	int n = 0;
	for (const char *p = out; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		char line[1024];
		snprintf(line, sizeof(line), "%.*s", (int)len, p);
		if (strstr(line, "vramd.service") || strstr(line, "vramd.socket") || strstr(line, dir)) {
			fprintf(stderr, "systemd-analyze: %s\n", line);
			n++;
		}
		p = nl ? nl + 1 : p + len;
	}
	return n;
}

/* ---- unit files ---------------------------------------------------------------- */

START_TEST(test_units_verify)
{
	char prog[512], cmd[8192];
	if (!find_prog("systemd-analyze", prog, sizeof(prog))) {
		skip("test_units_verify", "systemd-analyze not installed");
		return;
	}
	char *dir = t_tmpdir();
	ck_assert_ptr_nonnull(dir);
	_cleanup_free_ char *out = calloc(1, 1 << 16);
	ck_assert_ptr_nonnull(out);
	static const char *const units[] = { "vramd.service", "vramd.socket", "vramd-metrics.service",
					     "vramd-metrics.timer" };
	for (size_t i = 0; i < ARRAY_SIZE(units); i++)
		copy_unit(dir, units[i], NULL, NULL);

	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && '%s' verify --man=no --generators=no ./vramd.socket ./vramd.service "
		 "./vramd-metrics.service ./vramd-metrics.timer 2>&1",
		 dir, prog);
	int rc = t_run(cmd, out, 1 << 16);
	int ours = our_complaints(out, dir);
	if (rc != 0 && ours == 0) {
		fprintf(stderr, "%s\n", out);
		skip("test_units_verify", "systemd-analyze verify cannot run here");
		t_rmtree(dir);
		return;
	}
	ck_assert_msg(rc == 0 && ours == 0, "systemd-analyze verify (rc %d):\n%s", rc, tail(out));

	/* The same check catches a mistake: the test is not vacuous. */
	copy_unit(dir, "vramd.service", "Type=notify", "WatchdogSecs=20s\n");
	rc = t_run(cmd, out, 1 << 16);
	ck_assert_msg(strstr(out, "WatchdogSecs"), "a planted unknown key went unnoticed:\n%s", tail(out));
	copy_unit(dir, "vramd.service", NULL, NULL);

	/* Hardening stays: exposure at most 2.0 ("OK") on systemd's scale. */
	for (int k = 0; k < 2; k++) {
		snprintf(cmd, sizeof(cmd),
			 "cd '%s' && '%s' security --offline=yes --threshold=20 --no-pager ./%s 2>&1", dir, prog,
			 k ? "vramd-metrics.service" : "vramd.service");
		rc = t_run(cmd, out, 1 << 16);
		if (strstr(out, "unrecognized option") || strstr(out, "Unknown command")) {
			skip("test_units_verify", "this systemd-analyze has no offline security check");
			break;
		}
		const char *overall = strstr(out, "Overall exposure level");
		ck_assert_msg(rc == 0 && overall, "systemd-analyze security (rc %d):\n%s", rc,
			      overall ? overall : tail(out));
	}

	/* The properties the issue asks for are there (not just valid). */
	_cleanup_free_ char *svc = slurp("systemd/vramd.service");
	_cleanup_free_ char *sock = slurp("systemd/vramd.socket");
	static const char *const want_svc[] = {
		"\nType=notify\n", "\nWatchdogSec=", "\nProtectSystem=strict\n", "\nProtectHome=yes\n",
		"\nNoNewPrivileges=yes\n", "\nRestrictAddressFamilies=AF_UNIX\n", "\nCapabilityBoundingSet=\n",
		"\nDevicePolicy=closed\n", "\nDeviceAllow=char-nvidia-frontend rw\n", "\nDeviceAllow=char-nvidia-uvm rw\n",
		"\nLimitMEMLOCK=", "\nLimitNOFILE=", "\nStateDirectory=vramd\n", "\nRuntimeDirectory=vramd\n",
		"\nFileDescriptorStoreMax=", "@BINDIR@/vramd",
	};
	for (size_t i = 0; i < ARRAY_SIZE(want_svc); i++)
		ck_assert_msg(strstr(svc, want_svc[i]), "vramd.service lacks %s", want_svc[i]);
	ck_assert_msg(!strstr(svc, "\nPrivateDevices=yes"), "PrivateDevices= would hide /dev/nvidia*");
	ck_assert_msg(!strstr(svc, "\nPrivateUsers=yes"), "PrivateUsers= would break SO_PEERCRED uids");
	static const char *const want_sock[] = { "\nListenSequentialPacket=/run/vramd/vramd.sock\n",
						 "\nSocketMode=0660\n", "\nSocketGroup=vram\n" };
	for (size_t i = 0; i < ARRAY_SIZE(want_sock); i++)
		ck_assert_msg(strstr(sock, want_sock[i]), "vramd.socket lacks %s", want_sock[i]);
	t_rmtree(dir);
}
END_TEST

/* ExecStart= runs vramd itself, no shell in between (the journal's
 * SYSLOG_IDENTIFIER would be "sh", and `journalctl -t vramd` would find
 * nothing); vramd finds its config through VRAMD_CONFIG (test-admin's
 * test_reload_default_config runs that).  ExecReload= waits for the
 * broker's answer, so a failed reload fails `systemctl reload`. */
START_TEST(test_unit_execstart)
{
	_cleanup_free_ char *svc = slurp("systemd/vramd.service");
	ck_assert_msg(strstr(svc, "\nExecStart=@BINDIR@/vramd $VRAMD_OPTS\n"), "ExecStart= is not vramd itself");
	ck_assert_msg(!strstr(svc, "/bin/sh"), "a shell in the unit");
	ck_assert_msg(strstr(svc, "\nEnvironment=VRAMD_CONFIG=@SYSCONFDIR@/vramd/vramd.conf\n"), "no VRAMD_CONFIG");
	ck_assert_msg(strstr(svc, "\nExecReload=@BINDIR@/vramctl reload\n"), "ExecReload= does not wait for the answer");
	/* vramd reads $VRAMD_CONFIG when it exists: a broken one stops it */
	char *dir = t_tmpdir();
	char cmd[1200], out[2048];
	snprintf(cmd, sizeof(cmd),
		 "printf 'max-clients = lots\\n' > %s/vramd.conf && VRAMD_CONFIG=%s/vramd.conf %s/bin/vramd --socket %s/s.sock "
		 "--admin-socket %s/a.sock --state-dir %s/state --no-cuda --host-pool 8MiB 2>&1",
		 dir, dir, t_build(), dir, dir, dir);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "vramd.conf:1: max-clients"), "%s", out);
	t_rmtree(dir);
}
END_TEST

START_TEST(test_sysusers_tmpfiles)
{
	char sysusers[512], tmpfiles[512], cmd[8192], path[4200];
	char *dir = t_tmpdir();
	ck_assert_ptr_nonnull(dir);
	_cleanup_free_ char *su = abs_path("systemd/vramd.sysusers");
	_cleanup_free_ char *tf = abs_path("systemd/vramd.tmpfiles");
	_cleanup_free_ char *out = calloc(1, 1 << 16);
	ck_assert_ptr_nonnull(out);
	snprintf(path, sizeof(path), "%s/etc", dir);
	ck_assert_int_eq(mkdir(path, 0755), 0);

	if (!find_prog("systemd-sysusers", sysusers, sizeof(sysusers))) {
		skip("test_sysusers_tmpfiles", "systemd-sysusers not installed");
		t_rmtree(dir);
		return;
	}
	snprintf(cmd, sizeof(cmd), "'%s' --root='%s' '%s' 2>&1", sysusers, dir, su);
	int rc = t_run(cmd, out, 1 << 16);
	if (rc != 0 && geteuid() != 0) {
		skip("test_sysusers_tmpfiles", "systemd-sysusers needs root here");
		t_rmtree(dir);
		return;
	}
	ck_assert_msg(rc == 0, "systemd-sysusers: %s", tail(out));
	snprintf(path, sizeof(path), "%s/etc/group", dir);
	_cleanup_free_ char *group = slurp(path);
	snprintf(path, sizeof(path), "%s/etc/passwd", dir);
	_cleanup_free_ char *passwd = slurp(path);
	unsigned gid = 0, uid = 0, ugid = 1;
	const char *g = strstr(group, "vram:x:");
	ck_assert_msg(g && sscanf(g, "vram:x:%u:", &gid) == 1, "no group vram in:\n%s", tail(group));
	const char *u = strstr(passwd, "vramd:x:");
	ck_assert_msg(u && sscanf(u, "vramd:x:%u:%u:", &uid, &ugid) == 2, "no user vramd in:\n%s", tail(passwd));
	ck_assert_msg(ugid == gid, "vramd's primary group is %u, not vram (%u)", ugid, gid);
	ck_assert_ptr_nonnull(strstr(u, ":/var/lib/vramd:"));

	if (!find_prog("systemd-tmpfiles", tmpfiles, sizeof(tmpfiles))) {
		skip("test_sysusers_tmpfiles", "systemd-tmpfiles not installed");
		t_rmtree(dir);
		return;
	}
	snprintf(cmd, sizeof(cmd), "'%s' --root='%s' --create '%s' 2>&1", tmpfiles, dir, tf);
	rc = t_run(cmd, out, 1 << 16);
	ck_assert_msg(rc == 0, "systemd-tmpfiles: %s", tail(out));
	static const struct {
		const char *path;
		mode_t mode;
		bool ours;
	} want[] = { { "run/vramd", 0755, true }, { "var/lib/vramd", 0700, true }, { "etc/vramd", 0755, false } };
	for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", dir, want[i].path);
		ck_assert_msg(stat(path, &st) == 0 && S_ISDIR(st.st_mode), "%s not created", want[i].path);
		ck_assert_uint_eq(st.st_mode & 07777, want[i].mode);
		if (geteuid() == 0 && want[i].ours) {
			ck_assert_uint_eq(st.st_uid, uid);
			ck_assert_uint_eq(st.st_gid, gid);
		}
	}
	t_rmtree(dir);
}
END_TEST

/* broker_config_set keeps pointers into strdup'ed values for the process's
 * life: a static config keeps them reachable for the leak checker. */
static struct broker_config conf_cfg;

START_TEST(test_conf_example)
{
	/* Keys the lead is adding with quotas; accepted once they exist. */
	static const char *const coming[] = { "admin-socket", "admin-group", "state-dir", "socket-group" };
	/* Every key broker/config.c accepts must be documented. */
	static const char *const known[] = { "socket", "sim-gpus", "host-pool", "client-max", "max-clients",
					     "max-grants", "socket-mode", "reclaim-deadline-ms", "cuda", "verbose",
					     "ready-reserve", "ready-refill-rate", "ready-min-free" };
	char line[1024], err[256];
	char seen[64][64];
	int nseen = 0;

	broker_config_init(&conf_cfg);
	broker_log_level = 0;
	/* As shipped (everything commented out) it loads. */
	char cerr[256] = "";
	ck_assert_msg(broker_config_load(&conf_cfg, "systemd/vramd.conf.example", cerr, sizeof(cerr)) == 0, "%s", cerr);

	FILE *f = fopen("systemd/vramd.conf.example", "re");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		char key[64], value[512] = "";
		line[strcspn(line, "\n")] = '\0';
		/* "#key = value" or "#key =": a documented setting */
		if (line[0] != '#' || !islower((unsigned char)line[1]))
			continue;
		if (sscanf(line + 1, "%63[a-z-] = %511[^\n]", key, value) < 1 || !strstr(line, " ="))
			continue;
		int r = broker_config_set(&conf_cfg, key, value, err, sizeof(err));
		bool is_coming = false;
		for (size_t i = 0; i < ARRAY_SIZE(coming); i++)
			is_coming |= !strcmp(key, coming[i]);
		if (r == -ENOENT && is_coming)
			fprintf(stderr, "test_conf_example: note: \"%s\" is documented but vramd does not take it yet\n",
				key);
		else
			ck_assert_msg(r == 0, "vramd.conf.example: \"%s = %s\": %s", key, value, err);
		if (nseen < 64)
			snprintf(seen[nseen++], sizeof(seen[0]), "%s", key);
	}
	fclose(f);
	for (size_t i = 0; i < ARRAY_SIZE(known); i++) {
		bool found = false;
		for (int k = 0; k < nseen; k++)
			found |= !strcmp(seen[k], known[i]);
		ck_assert_msg(found, "vramd.conf.example does not document \"%s\"", known[i]);
	}
	for (size_t i = 0; i < ARRAY_SIZE(coming); i++) {
		bool found = false;
		for (int k = 0; k < nseen; k++)
			found |= !strcmp(seen[k], coming[i]);
		ck_assert_msg(found, "vramd.conf.example does not document \"%s\"", coming[i]);
	}
}
END_TEST

/* ---- socket activation and sd_notify ------------------------------------------- */

struct env {
	char *dir;
	char sock[256];
	char unused[256];
	char admin[256];   /* --admin-socket: never /run/vramd */
	char state[256];   /* --state-dir: never /var/lib/vramd */
	char log[256];
	char vramd[512];
	char vramctl[512];
	struct tn_listener notify;
};

static void env_init(struct env *e)
{
	memset(e, 0, sizeof(*e));
	e->notify.fd = -1;
	e->dir = t_tmpdir();
	ck_assert_ptr_nonnull(e->dir);
	snprintf(e->sock, sizeof(e->sock), "%s/vramd.sock", e->dir);
	snprintf(e->unused, sizeof(e->unused), "%s/not-used.sock", e->dir);
	snprintf(e->log, sizeof(e->log), "%s/vramd.log", e->dir);
	snprintf(e->admin, sizeof(e->admin), "%s/admin.sock", e->dir);
	snprintf(e->state, sizeof(e->state), "%s/state", e->dir);
	_cleanup_free_ char *bin = NULL;
	char b[512];
	snprintf(b, sizeof(b), "%s/bin", t_build());
	bin = abs_path(b);
	snprintf(e->vramd, sizeof(e->vramd), "%s/vramd", bin);
	snprintf(e->vramctl, sizeof(e->vramctl), "%s/vramctl", bin);
	ck_assert_int_eq(tn_listen(&e->notify, e->dir, "notify"), 0);
}

static void env_fini(struct env *e)
{
	tn_close(&e->notify);
	t_rmtree(e->dir);
}

static void dump_log(const struct env *e)
{
	_cleanup_free_ char *log = slurp(e->log);
	fprintf(stderr, "---- vramd log ----\n%s-------------------\n", log);
}

/* SIGTERM, and the exit status within 5 s (SIGKILL after). */
static int stop(pid_t pid)
{
	kill(pid, SIGTERM);
	int st = tn_waitpid(pid, 5000);
	if (st == -1) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
	}
	return st;
}

static int wait_for_socket_file(const char *path, int ms)
{
	struct stat st;
	for (int t = 0; t < ms; t += 10) {
		if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			return 0;
		t_sleep_ms(10);
	}
	return -1;
}

static int raw_connect(const char *path, int type)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

START_TEST(test_socket_activation)
{
	char prog[512], cmd[8192], ev[4400];
	struct env e;
	struct tn_msg m;
	if (!find_prog("systemd-socket-activate", prog, sizeof(prog))) {
		skip("test_socket_activation", "systemd-socket-activate not installed");
		return;
	}
	env_init(&e);
	snprintf(ev, sizeof(ev), "NOTIFY_SOCKET=%s", e.notify.path);
	/* --socket names a path vramd would bind if it ignored the passed
	 * socket: it must stay absent. */
	const char *argv[] = { prog, "--seqpacket", "-l", e.sock, "--fdname=client", "-E", ev, e.vramd, "--socket",
			       e.unused, "--admin-socket", e.admin, "--state-dir", e.state, "--sim-gpus", "64MiB",
			       "--host-pool", "64MiB", "--no-cuda", NULL };
	struct tn_spawn o = { .argv = argv, .watchdog_pid = -1, .log = e.log };
	pid_t pid = tn_spawn(&o);
	ck_assert_int_gt(pid, 0);
	ck_assert_msg(wait_for_socket_file(e.sock, 5000) == 0, "systemd-socket-activate made no socket");
	/* Nothing runs until the first connection. */
	ck_assert_int_eq(tn_recv(&e.notify, 100, &m), 0);
	int fd = raw_connect(e.sock, SOCK_SEQPACKET);
	ck_assert_int_ge(fd, 0);
	/* systemd-socket-activate execs vramd in its own process. */
	int got = tn_wait(&e.notify, "READY=1", pid, 10000, &m);
	if (got != 1)
		dump_log(&e);
	ck_assert_int_eq(got, 1);
	tn_msg_close_fds(&m);
	close(fd);

	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' status --json", e.vramctl, e.sock);
	_cleanup_free_ char *out = calloc(1, 1 << 16);
	ck_assert_ptr_nonnull(out);
	ck_assert_int_eq(t_run(cmd, out, 1 << 16), 0);
	char want[64];
	snprintf(want, sizeof(want), "\"broker_pid\": %d", (int)pid);
	ck_assert_msg(strstr(out, want), "status from another broker?\n%s", tail(out));
	ck_assert_ptr_nonnull(strstr(out, "\"name\": \"cuda:0\""));
	ck_assert_int_eq(access(e.unused, F_OK), -1);
	_cleanup_free_ char *log = slurp(e.log);
	ck_assert_msg(strstr(log, "socket activation"), "log:\n%s", tail(log));

	int st = stop(pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
	/* vramd did not bind it, so vramd does not remove it. */
	ck_assert_int_eq(access(e.sock, F_OK), 0);
	env_fini(&e);
}
END_TEST

START_TEST(test_socket_activation_wrong_type)
{
	char prog[512];
	struct env e;
	if (!find_prog("systemd-socket-activate", prog, sizeof(prog))) {
		skip("test_socket_activation_wrong_type", "systemd-socket-activate not installed");
		return;
	}
	env_init(&e);
	/* A stream socket: vramd must refuse it rather than serve garbage. */
	const char *argv[] = { prog, "-l", e.sock, e.vramd, "--socket", e.unused, "--admin-socket", e.admin,
			       "--state-dir", e.state, "--sim-gpus", "64MiB", "--host-pool", "64MiB", "--no-cuda", NULL };
	struct tn_spawn o = { .argv = argv, .watchdog_pid = -1, .log = e.log };
	pid_t pid = tn_spawn(&o);
	ck_assert_int_gt(pid, 0);
	ck_assert_int_eq(wait_for_socket_file(e.sock, 5000), 0);
	int fd = raw_connect(e.sock, SOCK_STREAM);
	ck_assert_int_ge(fd, 0);
	int st = tn_waitpid(pid, 10000);
	if (st == -1) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		dump_log(&e);
		ck_abort_msg("vramd served a stream socket");
	}
	close(fd);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %#x", st);
	_cleanup_free_ char *log = slurp(e.log);
	ck_assert_msg(strstr(log, "SOCK_SEQPACKET"), "log:\n%s", tail(log));
	ck_assert_int_eq(access(e.unused, F_OK), -1);
	env_fini(&e);
}
END_TEST

static pid_t spawn_notified(struct env *e, unsigned long long wd_usec, pid_t wd_pid)
{
	const char *argv[] = { e->vramd, "--socket", e->sock, "--socket-mode", "0666", "--admin-socket", e->admin,
			       "--state-dir", e->state, "--sim-gpus", "64MiB", "--host-pool", "64MiB", "--no-cuda", NULL };
	struct tn_spawn o = { .argv = argv, .notify = e->notify.path, .watchdog_usec = wd_usec,
			      .watchdog_pid = wd_pid, .log = e->log };
	pid_t pid = tn_spawn(&o);
	ck_assert_int_gt(pid, 0);
	return pid;
}

START_TEST(test_notify_ready_watchdog)
{
	struct env e;
	struct tn_msg m;
	char buf[64];
	env_init(&e);
	pid_t pid = spawn_notified(&e, 200000, 0);

	int got = tn_wait(&e.notify, "READY=1", pid, 10000, &m);
	/* READY=1 means listening: a client may connect the moment it
	 * arrives. */
	int alive = t_socket_alive(e.sock);
	if (got != 1)
		dump_log(&e);
	ck_assert_int_eq(got, 1);
	ck_assert_int_eq(alive, 1);
	ck_assert_int_eq(m.pid, pid);
	ck_assert_ptr_nonnull(tn_get(&m, "MAINPID", buf, sizeof(buf)));
	ck_assert_int_eq(atoi(buf), pid);
	ck_assert_ptr_nonnull(tn_get(&m, "STATUS", buf, sizeof(buf)));
	ck_assert_int_eq(m.nfds, 0);

	/* WATCHDOG_USEC=200 ms: a ping every 100 ms from the event loop. */
	long t0 = tn_now_ms(), t3 = 0;
	for (int i = 0; i < 3; i++) {
		got = tn_wait(&e.notify, "WATCHDOG=1", pid, 2000, &m);
		ck_assert_msg(got == 1, "watchdog ping %d missing", i + 1);
		tn_msg_close_fds(&m);
	}
	t3 = tn_now_ms();
	ck_assert_msg(t3 - t0 >= 150 && t3 - t0 <= 3000, "3 pings in %ld ms (expected ~300)", t3 - t0);

	kill(pid, SIGTERM);
	ck_assert_int_eq(tn_wait(&e.notify, "STOPPING=1", pid, 5000, &m), 1);
	int st = tn_waitpid(pid, 5000);
	ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
	env_fini(&e);
}
END_TEST

START_TEST(test_notify_watchdog_off)
{
	struct env e;
	struct tn_msg m;
	env_init(&e);

	/* WATCHDOG_PID naming another process: the watchdog is not ours
	 * (sd_watchdog_enabled), so no pings; READY=1 still comes. */
	pid_t pid = spawn_notified(&e, 200000, 1);
	ck_assert_int_eq(tn_wait(&e.notify, "READY=1", pid, 10000, &m), 1);
	ck_assert_int_eq(tn_wait(&e.notify, "WATCHDOG=1", 0, 600, &m), 0);
	int st = stop(pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);

	/* No WATCHDOG_USEC at all: no pings either. */
	pid = spawn_notified(&e, 0, -1);
	ck_assert_int_eq(tn_wait(&e.notify, "READY=1", pid, 10000, &m), 1);
	ck_assert_int_eq(tn_wait(&e.notify, "WATCHDOG=1", 0, 600, &m), 0);
	st = stop(pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
	env_fini(&e);
}
END_TEST

/* ---- FDSTORE -------------------------------------------------------------------- */

static bool same_file(int a, int b)
{
	struct stat x, y;
	return fstat(a, &x) == 0 && fstat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

START_TEST(test_fdstore)
{
	struct env e;
	struct tn_msg m;
	struct tn_fdstore store;
	char buf[64];
	env_init(&e);
	tn_fdstore_init(&store);
	setenv("NOTIFY_SOCKET", e.notify.path, 1);

	/* Two fds with a name, as a broker would park client connections. */
	int p[2];
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	int mfd = memfd_create("fdstore-test", MFD_CLOEXEC);
	ck_assert_int_ge(mfd, 0);
	int two[2] = { p[0], mfd };
	ck_assert_int_gt(sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=conn", two, 2), 0);
	ck_assert_int_eq(tn_wait(&e.notify, "FDSTORE=1", getpid(), 2000, &m), 1);
	ck_assert_int_eq(m.pid, getpid());
	ck_assert_int_eq(m.nfds, 2);
	ck_assert(same_file(m.fds[0], p[0]));
	ck_assert(same_file(m.fds[1], mfd));
	ck_assert(fcntl(m.fds[0], F_GETFD) & FD_CLOEXEC);
	ck_assert_str_eq(tn_get(&m, "FDNAME", buf, sizeof(buf)), "conn");
	ck_assert_int_eq(tn_fdstore_apply(&store, &m), 2);
	ck_assert_int_eq(m.nfds, 0);
	ck_assert_int_eq(store.n, 2);

	/* The listening socket, as the broker would keep it across a
	 * restart. */
	int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.107s", e.sock);
	ck_assert_int_ge(lfd, 0);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 16), 0);
	ck_assert_int_gt(sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=client", &lfd, 1), 0);
	ck_assert_int_eq(tn_wait(&e.notify, "FDSTORE=1", getpid(), 2000, &m), 1);
	ck_assert_int_eq(tn_fdstore_apply(&store, &m), 1);
	close(lfd);

	/* FDSTOREREMOVE drops those with the name, and closes them. */
	ck_assert_int_gt(sd_pid_notify(0, 0, "FDSTOREREMOVE=1\nFDNAME=conn"), 0);
	ck_assert_int_eq(tn_wait(&e.notify, "FDSTOREREMOVE=1", getpid(), 2000, &m), 1);
	ck_assert_int_eq(tn_fdstore_apply(&store, &m), 0);
	ck_assert_int_eq(store.n, 1);
	_cleanup_free_ char *names = tn_fdstore_names(&store);
	ck_assert_str_eq(names, "client");
	close(p[0]);
	close(p[1]);
	close(mfd);
	unsetenv("NOTIFY_SOCKET");

	/* Handed back as systemd does after a restart (LISTEN_FDS from fd 3,
	 * LISTEN_FDNAMES): vramd serves on the stored socket. */
	const char *argv[] = { e.vramd, "--socket", e.unused, "--admin-socket", e.admin, "--state-dir", e.state,
			       "--sim-gpus", "64MiB", "--host-pool", "64MiB", "--no-cuda", NULL };
	struct tn_spawn o = { .argv = argv, .notify = e.notify.path, .watchdog_pid = -1, .fds = store.fds,
			      .nfds = store.n, .fdnames = names, .log = e.log };
	pid_t pid = tn_spawn(&o);
	ck_assert_int_gt(pid, 0);
	int got = tn_wait(&e.notify, "READY=1", pid, 10000, &m);
	if (got != 1)
		dump_log(&e);
	ck_assert_int_eq(got, 1);
	tn_fdstore_clear(&store);
	vram_client *c;
	ck_assert_int_eq(vram_connect(e.sock, "fdstore", &c), 0);
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_int_eq((pid_t)s->broker_pid, pid);
	vram_status_free(s);
	vram_close(c);
	ck_assert_int_eq(access(e.unused, F_OK), -1);
	int st = stop(pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
	env_fini(&e);
}
END_TEST

/* ---- metrics ---------------------------------------------------------------------- */

struct sample {
	char name[128];
	char labels[1024];  /* as written, between the braces */
	double value;
};

struct exposition {
	struct sample *s;
	int n;
	char types[64][128];
	int ntypes;
};

static bool metric_name_ok(const char *s, size_t n)
{
	if (!n || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
			return false;
	return true;
}

/* Validates the label set "a="x",b="y"" per the text format; 0 or -1. */
static int labels_ok(const char *p, const char *end)
{
	if (p == end)
		return 0;
	for (;;) {
		const char *eq = memchr(p, '=', (size_t)(end - p));
		if (!eq || !metric_name_ok(p, (size_t)(eq - p)) || !strncmp(p, "__", 2) || eq[1] != '"')
			return -1;
		const char *q = eq + 2;
		for (; q < end && *q != '"'; q++) {
			if (*q == '\n')
				return -1;
			if (*q == '\\') {
				q++;
				if (q >= end || (*q != '\\' && *q != '"' && *q != 'n'))
					return -1;
			}
		}
		if (q >= end)
			return -1;
		q++;
		if (q == end)
			return 0;
		if (*q != ',')
			return -1;
		p = q + 1;
	}
}

/* Parses the exposition strictly: HELP then TYPE before a family's samples,
 * each family once, samples of a family together. */
static void parse_exposition(const char *text, struct exposition *x)
{
	char current[128] = "";
	memset(x, 0, sizeof(*x));
	x->s = calloc(4096, sizeof(*x->s));
	ck_assert_ptr_nonnull(x->s);
	ck_assert_msg(*text && text[strlen(text) - 1] == '\n', "output does not end with a newline");
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		ck_assert_ptr_nonnull(nl);
		char line[2048];
		ck_assert_uint_lt((size_t)(nl - p), sizeof(line));
		snprintf(line, sizeof(line), "%.*s", (int)(nl - p), p);
		p = nl + 1;
		if (!strncmp(line, "# HELP ", 7)) {
			char name[128];
			ck_assert_msg(sscanf(line + 7, "%127s", name) == 1 && metric_name_ok(name, strlen(name)), "%s",
				      line);
			snprintf(current, sizeof(current), "%s", name);
			continue;
		}
		if (!strncmp(line, "# TYPE ", 7)) {
			char name[128], type[32];
			ck_assert_msg(sscanf(line + 7, "%127s %31s", name, type) == 2, "%s", line);
			ck_assert_msg(!strcmp(name, current), "TYPE %s without its HELP first", name);
			ck_assert_msg(!strcmp(type, "gauge") || !strcmp(type, "counter"), "%s", line);
			ck_assert_msg(strcmp(type, "counter") || strstr(name, "_total"), "counter %s lacks _total", name);
			for (int i = 0; i < x->ntypes; i++)
				ck_assert_msg(strcmp(x->types[i], name), "family %s declared twice", name);
			ck_assert_int_lt(x->ntypes, 64);
			snprintf(x->types[x->ntypes++], sizeof(x->types[0]), "%s", name);
			continue;
		}
		ck_assert_msg(line[0] != '#', "unexpected comment: %s", line);
		struct sample *s = &x->s[x->n];
		ck_assert_int_lt(x->n, 4096);
		const char *brace = strchr(line, '{'), *sp;
		if (brace) {
			const char *close = strrchr(line, '}');
			ck_assert_msg(close && close[1] == ' ', "%s", line);
			ck_assert_msg(labels_ok(brace + 1, close) == 0, "bad labels: %s", line);
			snprintf(s->name, sizeof(s->name), "%.*s", (int)(brace - line), line);
			snprintf(s->labels, sizeof(s->labels), "%.*s", (int)(close - brace - 1), brace + 1);
			sp = close + 1;
		} else {
			sp = strchr(line, ' ');
			ck_assert_msg(sp, "%s", line);
			snprintf(s->name, sizeof(s->name), "%.*s", (int)(sp - line), line);
		}
		ck_assert_msg(metric_name_ok(s->name, strlen(s->name)), "%s", line);
		ck_assert_msg(!strcmp(s->name, current), "sample %s outside its family (%s)", s->name, current);
		char *end;
		s->value = strtod(sp + 1, &end);
		ck_assert_msg(end != sp + 1 && *end == '\0', "bad value: %s", line);
		x->n++;
	}
}

/* The value of the one sample called name whose labels contain every
 * fragment (NULL-terminated); fails if none or several. */
static double value_of(const struct exposition *x, const char *name, const char *const *frags)
{
	int found = -1;
	for (int i = 0; i < x->n; i++) {
		if (strcmp(x->s[i].name, name))
			continue;
		bool ok = true;
		for (int k = 0; frags && frags[k]; k++)
			ok &= strstr(x->s[i].labels, frags[k]) != NULL;
		if (!ok)
			continue;
		ck_assert_msg(found < 0, "several %s samples match", name);
		found = i;
	}
	ck_assert_msg(found >= 0, "no %s sample with %s", name, frags && frags[0] ? frags[0] : "");
	return x->s[found].value;
}

#define V(x, name, ...) value_of(x, name, (const char *const[]){ __VA_ARGS__, NULL })

static char *run_metrics(const char *vramctl, const char *sock, const char *extra, int *rc)
{
	char cmd[4096];
	char *out = calloc(1, 1 << 20);
	ck_assert_ptr_nonnull(out);
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' metrics %s 2>/dev/null", vramctl, sock, extra ? extra : "");
	*rc = t_run(cmd, out, 1 << 20);
	return out;
}

START_TEST(test_metrics)
{
	struct t_broker e;
	struct exposition x;
	int rc;
	char pidl[64], uidl[64], vramctl[512];
	snprintf(vramctl, sizeof(vramctl), "%s/bin/vramctl", t_build());
	const char *args[] = { "--sim-gpus", "64MiB,32MiB", "--host-pool", "64MiB", NULL };
	t_broker_start(&e, args);

	/* A client whose name needs escaping, and one byte that is not UTF-8. */
	vram_client *c;
	vram_grant *g1, *g2;
	ck_assert_int_eq(vram_connect(e.sock, "m \"q\" \\ \xff", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 5 * MiB, 0, &g1), 0);
	ck_assert_int_eq(vram_alloc(c, 2, 1 * MiB, VRAM_ALLOC_RECLAIMABLE, &g2), 0);
	snprintf(pidl, sizeof(pidl), "pid=\"%d\"", (int)getpid());
	snprintf(uidl, sizeof(uidl), "uid=\"%u\"", (unsigned)getuid());

	_cleanup_free_ char *out = run_metrics(vramctl, e.sock, NULL, &rc);
	ck_assert_msg(rc == 0, "rc %d", rc);
	parse_exposition(out, &x);
	ck_assert_double_eq(V(&x, "vramd_up", ""), 1);
	ck_assert_double_eq(V(&x, "vramd_clients", ""), 1);
	ck_assert_double_eq(V(&x, "vramd_grants", ""), 2);
	ck_assert_double_eq(V(&x, "vramd_protocol_errors_total", ""), 0);
	ck_assert(V(&x, "vramd_uptime_seconds", "") >= 0);
	const char *cuda0 = "device=\"cuda:0\",backend=\"sim\",simulated=\"true\"";
	const char *cuda1 = "device=\"cuda:1\",backend=\"sim\",simulated=\"true\"";
	const char *cpu = "device=\"cpu\",backend=\"cpu\",simulated=\"false\"";
	ck_assert_double_eq(V(&x, "vramd_device_total_bytes", cuda0), 64 * MiB);
	ck_assert_double_eq(V(&x, "vramd_device_total_bytes", cuda1), 32 * MiB);
	ck_assert_double_eq(V(&x, "vramd_device_used_bytes", cuda0), 6 * MiB);
	ck_assert_double_eq(V(&x, "vramd_device_used_bytes", cuda1), 0);
	ck_assert_double_eq(V(&x, "vramd_device_used_bytes", cpu), 2 * MiB);
	ck_assert_double_eq(V(&x, "vramd_device_free_bytes", cuda0), 58 * MiB);
	ck_assert_double_eq(V(&x, "vramd_device_reclaimable_bytes", cpu), 2 * MiB);
	ck_assert_double_eq(V(&x, "vramd_device_reclaimable_bytes", cuda0), 0);
	ck_assert_double_eq(V(&x, "vramd_device_granularity_bytes", cuda0), 2 * MiB);
	ck_assert_double_eq(V(&x, "vramd_device_info", cuda0, "model=\"simulated"), 1);
	const char *name = "client_name=\"m \\\"q\\\" \\\\ \xef\xbf\xbd\"";
	ck_assert_double_eq(V(&x, "vramd_client_held_bytes", name, pidl, uidl, cuda0), 6 * MiB);
	ck_assert_double_eq(V(&x, "vramd_client_held_bytes", name, cuda1), 0);
	ck_assert_double_eq(V(&x, "vramd_client_held_bytes", name, cpu), 2 * MiB);
	ck_assert_double_eq(V(&x, "vramd_client_reclaimable_bytes", name), 2 * MiB);
	ck_assert_double_eq(V(&x, "vramd_client_grants", name), 2);
	ck_assert_double_eq(V(&x, "vramd_client_reclaims_answered_total", name), 0);
	ck_assert_double_eq(V(&x, "vramd_client_reclaims_missed_total", name), 0);
	ck_assert_double_eq(V(&x, "vramd_client_reclaim_late", name), 0);
	/* vramctl itself is not reported as a client */
	ck_assert_ptr_null(strstr(out, "client_name=\"vramctl\""));
	/* every family the docs list is there */
	_cleanup_free_ char *doc = slurp("docs/metrics.md");
	for (int i = 0; i < x.ntypes; i++)
		ck_assert_msg(strstr(doc, x.types[i]), "docs/metrics.md does not describe %s", x.types[i]);
	free(x.s);

	/* After a free the series stays, at 0. */
	ck_assert_int_eq(vram_free(c, g1), 0);
	free(out);
	out = run_metrics(vramctl, e.sock, NULL, &rc);
	ck_assert_int_eq(rc, 0);
	parse_exposition(out, &x);
	ck_assert_double_eq(V(&x, "vramd_client_held_bytes", name, cuda0), 0);
	ck_assert_double_eq(V(&x, "vramd_device_used_bytes", cuda0), 0);
	ck_assert_double_eq(V(&x, "vramd_grants", ""), 1);
	free(x.s);

	/* --output writes the file atomically (no temporary left behind). */
	char file[4200], extra[4300];
	snprintf(file, sizeof(file), "%s/vramd.prom", e.dir);
	snprintf(extra, sizeof(extra), "--output '%s'", file);
	free(out);
	out = run_metrics(vramctl, e.sock, extra, &rc);
	ck_assert_int_eq(rc, 0);
	ck_assert_str_eq(out, "");
	_cleanup_free_ char *prom = slurp(file);
	parse_exposition(prom, &x);
	ck_assert_double_eq(V(&x, "vramd_client_held_bytes", name, cpu), 2 * MiB);
	free(x.s);
	struct stat st;
	ck_assert_int_eq(stat(file, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0644);
	char cmd[4400], ls[4096];
	snprintf(cmd, sizeof(cmd), "ls -A '%s' | grep -c tmp", e.dir);
	t_run(cmd, ls, sizeof(ls));
	ck_assert_str_eq(ls, "0\n");

	/* Usage errors. */
	free(out);
	out = run_metrics(vramctl, e.sock, "--bogus", &rc);
	ck_assert_int_eq(rc, 64);

	/* Broker gone: vramd_up 0, still valid, and exit code 69; the file
	 * says so too. */
	vram_close(c);
	t_broker_halt(&e);
	free(out);
	out = run_metrics(vramctl, e.sock, NULL, &rc);
	ck_assert_int_eq(rc, 69);
	parse_exposition(out, &x);
	ck_assert_int_eq(x.n, 1);
	ck_assert_double_eq(V(&x, "vramd_up", ""), 0);
	free(x.s);
	free(out);
	out = run_metrics(vramctl, e.sock, extra, &rc);
	ck_assert_int_eq(rc, 69);
	free(prom);
	prom = slurp(file);
	ck_assert_ptr_nonnull(strstr(prom, "\nvramd_up 0\n"));
	t_broker_stop(&e);
	(void)g2;
}
END_TEST

/* A sanitizer build (make asan) installs a sanitized libvram: programs
 * linked with it need the same runtime, and whatever make rebuilds on the
 * way must be built the same way. */
#ifdef __SANITIZE_ADDRESS__
#define SAN_FLAGS "-fsanitize=address,undefined"
#define MAKE_SAN "SAN=1"
#else
#define SAN_FLAGS ""
#define MAKE_SAN ""
#endif

/* ---- make install ----------------------------------------------------------------------- */

START_TEST(test_make_install)
{
	char makep[512], pkgconf[512], cc[512], cmd[16384];
	if (access("Makefile", F_OK) != 0 || !find_prog("make", makep, sizeof(makep)) ||
	    !find_prog("pkg-config", pkgconf, sizeof(pkgconf)) || !find_prog("cc", cc, sizeof(cc))) {
		skip("test_make_install", "needs the source tree, make, pkg-config and cc");
		return;
	}
	char *dir = t_tmpdir();
	ck_assert_ptr_nonnull(dir);
	_cleanup_free_ char *out = calloc(1, 1 << 16);
	ck_assert_ptr_nonnull(out);
	char root[4200];
	snprintf(root, sizeof(root), "%s/root", dir);

	snprintf(cmd, sizeof(cmd), "MAKEFLAGS= '%s' -s --no-print-directory BUILD='%s' DESTDIR='%s' PREFIX=/usr " MAKE_SAN " install 2>&1",
		 makep, t_build(), root);
	int rc = t_run(cmd, out, 1 << 16);
	ck_assert_msg(rc == 0, "make install:\n%s", tail(out));
	static const char *const files[] = {
		"usr/bin/vramd", "usr/bin/vramctl", "usr/lib/libvram.so.0", "usr/lib/libvram.so", "usr/lib/libvram.a",
		"usr/include/vram.h", "usr/include/vramd/vramd.h", "usr/lib/pkgconfig/vram.pc",
		"usr/lib/systemd/system/vramd.service", "usr/lib/systemd/system/vramd.socket",
		"usr/lib/sysusers.d/vramd.conf", "usr/lib/tmpfiles.d/vramd.conf", "etc/vramd/vramd.conf.example",
		"usr/share/doc/vramd/admin.md", "usr/share/doc/vramd/metrics.md", "usr/share/doc/vramd/README.md",
	};
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		char p[4400];
		snprintf(p, sizeof(p), "%s/%s", root, files[i]);
		ck_assert_msg(access(p, F_OK) == 0, "make install did not install %s", files[i]);
	}
	char p[4400];
	snprintf(p, sizeof(p), "%s/usr/lib/systemd/system/vramd.service", root);
	_cleanup_free_ char *svc = slurp(p);
	ck_assert_msg(strstr(svc, "\nExecStart=/usr/bin/vramd $VRAMD_OPTS\n") &&
		      strstr(svc, "\nExecReload=/usr/bin/vramctl reload\n") && !strstr(svc, "@BINDIR@") && !strstr(svc, "@SYSCONFDIR@") && !strstr(svc, "@DOCDIR@"), "placeholders left:\n%s", tail(svc));
	snprintf(p, sizeof(p), "%s/usr/lib/libvram.so", root);
	char link[64] = "";
	ck_assert_int_gt(readlink(p, link, sizeof(link) - 1), 0);
	ck_assert_str_eq(link, "libvram.so.0");

	/* A program built against the installed files, dynamically and
	 * statically, through the pkg-config file. */
	char src[4300];
	snprintf(src, sizeof(src), "%s/x.c", dir);
	FILE *f = fopen(src, "we");
	ck_assert_ptr_nonnull(f);
	fputs("#include <stdio.h>\n#include <vram.h>\n"
	      "int main(void) { printf(\"%u %u\\n\", vram_version(), (unsigned)VRAM_VERSION); "
	      "return vram_version() == VRAM_VERSION ? 0 : 1; }\n",
	      f);
	fclose(f);
	char *build = NULL;
	ck_assert_int_ge(asprintf(&build,
				  "export PKG_CONFIG_PATH='%s/usr/lib/pkgconfig'; pc() { '%s' --define-variable=prefix='%s/usr' \"$@\"; }; "
				  "'%s' " SAN_FLAGS " -o '%s/x' '%s' $(pc --cflags --libs vram) && LD_LIBRARY_PATH='%s/usr/lib' '%s/x' && "
				  "'%s' " SAN_FLAGS " -o '%s/xs' '%s' $(pc --cflags vram) -l:libvram.a "
				  "$(pc --libs --static vram | sed 's/-lvram//') && '%s/xs' 2>&1",
				  root, pkgconf, root, cc, dir, src, root, dir, cc, dir, src, dir),
			 0);
	rc = t_run(build, out, 1 << 16);
	free(build);
	ck_assert_msg(rc == 0, "building against the installed library failed (rc %d):\n%s", rc, tail(out));
	/* vram.h needs no other library's headers: --cflags --libs works with
	 * only vram.pc in sight (no liburing.pc, no jansson.pc) */
	snprintf(cmd, sizeof(cmd), "PKG_CONFIG_LIBDIR='%s/usr/lib/pkgconfig' PKG_CONFIG_PATH= '%s' --cflags --libs vram 2>&1",
		 root, pkgconf);
	rc = t_run(cmd, out, 1 << 16);
	ck_assert_msg(rc == 0 && strstr(out, "-lvram"), "pkg-config --cflags --libs vram alone:\n%s", tail(out));

	snprintf(cmd, sizeof(cmd),
		 "MAKEFLAGS= '%s' -s --no-print-directory BUILD='%s' DESTDIR='%s' PREFIX=/usr " MAKE_SAN " uninstall 2>&1 && "
		 "find '%s' -type f -o -type l",
		 makep, t_build(), root, root);
	rc = t_run(cmd, out, 1 << 16);
	ck_assert_msg(rc == 0 && out[0] == '\0', "left after uninstall:\n%s", tail(out));
	t_rmtree(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("systemd");
	TCase *tu = tcase_create("units");
	tcase_add_test(tu, test_units_verify);
	tcase_add_test(tu, test_unit_execstart);
	tcase_add_test(tu, test_sysusers_tmpfiles);
	tcase_add_test(tu, test_conf_example);
	tcase_set_timeout(tu, 60);
	suite_add_tcase(s, tu);
	TCase *tr = tcase_create("run");
	tcase_add_test(tr, test_socket_activation);
	tcase_add_test(tr, test_socket_activation_wrong_type);
	tcase_add_test(tr, test_notify_ready_watchdog);
	tcase_add_test(tr, test_notify_watchdog_off);
	tcase_add_test(tr, test_fdstore);
	tcase_add_test(tr, test_metrics);
	tcase_set_timeout(tr, 60);
	suite_add_tcase(s, tr);
	TCase *ti = tcase_create("install");
	tcase_add_test(ti, test_make_install);
	tcase_set_timeout(ti, 240);
	suite_add_tcase(s, ti);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
