/* SPDX-License-Identifier: MIT */
/* Helpers shared by the Check suites (header-only, static). */
#ifndef VRAM_TESTLIB_H
#define VRAM_TESTLIB_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline const char *t_build(void)
{
	const char *b = getenv("VRAM_BUILD");
	return b && *b ? b : "build";
}

static inline const char *t_python(void)
{
	const char *p = getenv("VRAM_PYTHON");
	if (p && *p)
		return p;
	return access(".venv/bin/python", X_OK) == 0 ? ".venv/bin/python" : "python3";
}

/* A fresh temporary directory; removed by t_rmtree. */
static inline char *t_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	char *d;
	if (asprintf(&d, "%s/vramd-test-XXXXXX", base && *base ? base : "/tmp") < 0)
		return NULL;
	if (!mkdtemp(d)) {
		free(d);
		return NULL;
	}
	return d;
}

static inline void t_rmtree(char *d)
{
	char cmd[4200];
	if (!d)
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", d);
	free(d);
}

static inline int t_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	struct dirent *e;
	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the DIR's own fd */
}

static inline void t_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* 1 when something accepts connections on path. */
static inline int t_socket_alive(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return 0;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* Starts build/bin/vramd with args (NULL-terminated, after the program name),
 * stderr to logpath (or inherited if NULL); waits up to 5 s for socket.
 * Returns the pid, or -1. */
static inline pid_t t_start_vramd(const char *socket, const char *logpath, const char *const *args)
{
	char prog[512];
	const char *argv[64];
	int n = 0;
	snprintf(prog, sizeof(prog), "%s/bin/vramd", t_build());
	argv[n++] = prog;
	argv[n++] = "--socket";
	argv[n++] = socket;
	int has_admin = 0, has_state = 0, has_mode = 0, has_config = 0;
	const char *admin_path = NULL;
	for (int i = 0; args && args[i] && n < 56; i++) {
		has_admin |= !strcmp(args[i], "--admin-socket");
		if (!strcmp(args[i], "--admin-socket") && args[i + 1])
			admin_path = args[i + 1];
		has_state |= !strcmp(args[i], "--state-dir");
		has_mode |= !strcmp(args[i], "--socket-mode");
		has_config |= !strcmp(args[i], "--config") || !strcmp(args[i], "--no-config");
		argv[n++] = args[i];
	}
	/* Everything in the socket's directory, never /run or /var/lib. */
	static char admin[512], state[512];
	const char *slash = strrchr(socket, '/');
	int dlen = slash ? (int)(slash - socket) : 1;
	snprintf(admin, sizeof(admin), "%.*s/admin.sock", dlen, slash ? socket : ".");
	snprintf(state, sizeof(state), "%.*s/state", dlen, slash ? socket : ".");
	if (!has_admin) {
		argv[n++] = "--admin-socket";
		argv[n++] = admin;
		admin_path = admin;
	}
	if (!has_state) {
		argv[n++] = "--state-dir";
		argv[n++] = state;
	}
	if (!has_mode) {
		argv[n++] = "--socket-mode";
		argv[n++] = "0666";
	}
	if (!has_config && !getenv("VRAMD_CONFIG")) /* never the machine's /etc/vramd/vramd.conf */
		argv[n++] = "--no-config";
	argv[n] = NULL;
	pid_t pid = fork();
	if (pid == 0) {
		if (logpath) {
			int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
			if (fd >= 0)
				dup2(fd, 2);
		}
		unsetenv("NOTIFY_SOCKET");
		unsetenv("LISTEN_FDS");
		execv(prog, (char *const *)argv);
		_exit(127);
	}
	/* ready when both sockets answer (the admin one comes up second) */
	for (int i = 0; i < 500; i++) {
		if (t_socket_alive(socket) && (!admin_path || !*admin_path || t_socket_alive(admin_path)))
			return pid;
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			return -1;
		t_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* SIGTERM, then waits (SIGKILL after 5 s).  Returns the exit status. */
static inline int t_stop(pid_t pid)
{
	int st = 0;
	if (pid <= 0)
		return -1;
	kill(pid, SIGTERM);
	for (int i = 0; i < 500; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return st;
		t_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return st;
}

/* ---- the shared harness: a vramd on a temp socket ---------------------------- */

/* A vramd of a test's own: its temp dir (on a real file system, which
 * O_DIRECT needs: /var/tmp when it can), sockets, log and state dir in it. */
struct t_broker {
	char *dir;
	char sock[256], admin[256], log[256], state[256];
	pid_t pid;
	int cuda;                /* set after t_broker_dir: vramd looks for the
				  * real driver (no "--no-cuda") */
};

/* Makes b's temp dir and paths, nothing started (a test that writes a
 * config file into the dir first, or sets b->cuda). */
static inline void t_broker_dir(struct t_broker *b)
{
	memset(b, 0, sizeof(*b));
	setenv("TMPDIR", access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp", 1);
	b->dir = t_tmpdir();
	ck_assert_ptr_nonnull(b->dir);
	chmod(b->dir, 0755); /* other users may reach the client socket, not the admin one */
	snprintf(b->sock, sizeof(b->sock), "%s/vramd.sock", b->dir);
	snprintf(b->admin, sizeof(b->admin), "%s/admin.sock", b->dir);
	snprintf(b->log, sizeof(b->log), "%s/vramd.log", b->dir);
	snprintf(b->state, sizeof(b->state), "%s/state", b->dir);
}

/* Starts vramd in b's dir with args (NULL-terminated; "--no-cuda" unless
 * b->cuda, and the paths are added).  Fails the test if it does not come
 * up. */
static inline void t_broker_run(struct t_broker *b, const char *const *args)
{
	const char *argv[48];
	int n = 0;
	for (int i = 0; args && args[i] && n < 40; i++)
		argv[n++] = args[i];
	if (!b->cuda)
		argv[n++] = "--no-cuda";
	argv[n] = NULL;
	b->pid = t_start_vramd(b->sock, b->log, argv);
	ck_assert_msg(b->pid > 0, "vramd did not start (log: %s)", b->log);
}

/* A fresh dir and a vramd in it with args. */
static inline void t_broker_start(struct t_broker *b, const char *const *args)
{
	t_broker_dir(b);
	t_broker_run(b, args);
}

/* SIGTERM, a clean exit asserted; the temp dir stays (a test that looks at
 * what vramd left, or goes on without it). */
static inline void t_broker_halt(struct t_broker *b)
{
	int st = t_stop(b->pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "vramd exit status %d", st);
	b->pid = 0;
}

/* t_broker_halt, then vramd again in the same dir (its state kept) with
 * args. */
static inline void t_broker_restart(struct t_broker *b, const char *const *args)
{
	t_broker_halt(b);
	t_broker_run(b, args);
}

/* SIGTERM (unless halted), a clean exit asserted, the temp dir removed. */
static inline void t_broker_stop(struct t_broker *b)
{
	if (b->pid > 0)
		t_broker_halt(b);
	t_rmtree(b->dir);
	b->dir = NULL;
}

/* Forks a child that runs fn(arg) and exits with its return value (a
 * failed check in the child is its exit code, never the parent's).  The
 * pid, or -1. */
static inline pid_t t_fork(int (*fn)(void *), void *arg)
{
	pid_t pid = fork();
	if (pid == 0)
		_exit(fn(arg));
	return pid;
}

/* Waits at most timeout_ms for pid; its exit code, 128 + signal, or -1 on
 * timeout (it is killed then). */
static inline int t_wait(pid_t pid, int timeout_ms)
{
	int st;
	for (int i = 0; i < timeout_ms / 10 + 1; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		t_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* 1 if the broker's log has needle. */
static inline int t_log_has(const struct t_broker *b, const char *needle)
{
	FILE *f = fopen(b->log, "re");
	char line[1024];
	int found = 0;
	while (f && !found && fgets(line, sizeof(line), f))
		found = strstr(line, needle) != NULL;
	if (f)
		fclose(f);
	return found;
}

/* Runs a shell command, captures up to cap-1 bytes of stdout; returns the
 * exit code (or -1). */
static inline int t_run(const char *cmd, char *out, size_t cap)
{
	FILE *p = popen(cmd, "r");
	size_t n = 0;
	if (!p)
		return -1;
	if (out && cap) {
		n = fread(out, 1, cap - 1, p);
		out[n] = '\0';
	} else {
		char buf[4096];
		while (fread(buf, 1, sizeof(buf), p) > 0)
			;
	}
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Writes a safetensors file with the reference library: python lines
 * (body, each ending in a newline) fill the dict t, with r a numpy
 * generator seeded with seed.  Returns the python exit code. */
static inline int t_write_st(const char *path, int seed, const char *body)
{
	char cmd[4096];
	snprintf(cmd, sizeof(cmd),
		 "%s -c \"\n"
		 "import numpy as np\n"
		 "from safetensors.numpy import save_file\n"
		 "r = np.random.default_rng(%d)\n"
		 "t = {}\n"
		 "%s"
		 "save_file(t, '%s', metadata={'format': 'pt'})\n\"",
		 t_python(), seed, body, path);
	return t_run(cmd, NULL, 0);
}

/* Writes a checkpoint with the reference library: blocks unet blocks with a
 * rows x cols F16 weight and an F32 bias each, a CLIP part with an
 * embedding, a VAE part, an empty and a scalar tensor; odd sizes so that
 * nothing is aligned.  Returns the python exit code. */
static inline int t_write_checkpoint(const char *path, int blocks, int rows, int cols, int seed)
{
	char body[2048];
	snprintf(body, sizeof(body),
		 "for i in range(%d):\n"
		 "  t[f'model.diffusion_model.input_blocks.{i}.0.weight'] = r.standard_normal((%d, %d)).astype(np.float16)\n"
		 "  t[f'model.diffusion_model.input_blocks.{i}.0.bias'] = r.standard_normal(%d).astype(np.float32)\n"
		 "t['model.diffusion_model.out.2.weight'] = r.standard_normal((7, 3)).astype(np.float32)\n"
		 "t['cond_stage_model.transformer.text_model.embeddings.token_embedding.weight'] = r.standard_normal((301, 17)).astype(np.float16)\n"
		 "for i in range(5):\n"
		 "  t[f'cond_stage_model.transformer.text_model.encoder.layers.{i}.mlp.fc1.weight'] = r.standard_normal((33, 65)).astype(np.float32)\n"
		 "t['first_stage_model.decoder.conv_in.weight'] = r.standard_normal((13, 7, 3, 3)).astype(np.float32)\n"
		 "t['first_stage_model.decoder.empty'] = np.zeros((0, 4), dtype=np.float16)\n"
		 "t['model.diffusion_model.scalar'] = np.array(3.5, dtype=np.float64)\n",
		 blocks, rows, cols, cols);
	return t_write_st(path, seed, body);
}

/* One tensor of a hand-written safetensors file: 1-D, elems x esize bytes. */
struct t_tensor {
	const char *name, *dtype;
	size_t elems, esize;
};

/* Writes the safetensors file path holding tensors t[0..n) back to back in
 * this order (so at whatever offsets their sizes give: odd ones too), their
 * bytes from data.  The header is padded to 8 bytes.  Returns the data
 * size, or 0 on failure. */
static inline size_t t_write_safetensors(const char *path, const struct t_tensor *t, size_t n, const uint8_t *data)
{
	char hdr[8192];
	size_t hl = 0, off = 0;
	hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl, "{");
	for (size_t i = 0; i < n && hl < sizeof(hdr); i++) {
		size_t nb = t[i].elems * t[i].esize;
		hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl,
				       "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
				       i ? "," : "", t[i].name, t[i].dtype, t[i].elems, off, off + nb);
		off += nb;
	}
	if (hl + 9 > sizeof(hdr))
		return 0;
	hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl, "}");
	while (hl % 8)
		hdr[hl++] = ' ';
	FILE *fp = fopen(path, "wb");
	if (!fp)
		return 0;
	uint64_t len = hl;
	int ok = fwrite(&len, 8, 1, fp) == 1 && fwrite(hdr, 1, hl, fp) == hl && fwrite(data, 1, off, fp) == off;
	return fclose(fp) == 0 && ok ? off : 0;
}

/* The whole file in memory (*len set); free() it. */
static inline uint8_t *t_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc(*len + 1);
	if (b && fread(b, 1, *len, f) != *len) {
		free(b);
		b = NULL;
	}
	fclose(f);
	return b;
}

#endif
