/* SPDX-License-Identifier: MIT */
/*
 * make soak (and test-soak's short run): a real vramd and many real client
 * processes doing what clients do (shared and private loads onto a
 * simulated GPU and the cpu pool, every byte checked against the file;
 * allocations that answer RECLAIM), while a killer SIGKILLs random clients
 * at random moments, the broker itself is SIGKILLed and restarted under
 * load (its clients reconnect and re-register), and an unprivileged user
 * floods the socket with connections that never say HELLO.  Afterwards:
 * nothing accounted (once the copies are dropped), the broker's fds at
 * their baseline, its RSS grown by less than a bound.
 *
 *   helper-soak DIR SECONDS [BROKER_KILL_EVERY_S]
 *
 * Prints a summary line and exits 0, or 1 naming what failed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "runtime/vram.h"

#define MiB (1ull << 20)
#define MAX_KIDS 24

static const char *g_dir, *g_build;
static char g_sock[512], g_admin[512], g_log[512], g_file[512];

static void msleep(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static pid_t start_broker(void)
{
	char prog[512], state[600];
	snprintf(prog, sizeof(prog), "%s/bin/vramd", g_build);
	snprintf(state, sizeof(state), "%s/state", g_dir);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(g_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0)
			dup2(fd, 2);
		execl(prog, prog, "--no-config", "--no-cuda", "--socket", g_sock, "--admin-socket", g_admin, "--state-dir",
		      state, "--socket-mode", "0666", "--sim-gpus", "256MiB", "--host-pool", "384MiB", "--cache-max", "40%",
		      "--reclaim-deadline-ms", "3000", "--hello-timeout-ms", "2000", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		vram_client *c;
		if (vram_connect(g_sock, "soak-probe", &c) == 0) {
			vram_close(c);
			return pid;
		}
		msleep(10);
	}
	return -1;
}

/* A file of n F16 tensors of assorted sizes, bytes from seed. */
static int write_file(const char *path, int n, unsigned seed)
{
	FILE *f = fopen(path, "we");
	if (!f)
		return -1;
	char hdr[65536];
	size_t hl = 0, off = 0, sizes[256];
	srand(seed);
	hl += (size_t)snprintf(hdr, sizeof(hdr), "{");
	for (int i = 0; i < n; i++) {
		sizes[i] = (size_t)(1 + rand() % 900) * 1024 * 2;
		const char *comp = i % 5 == 0 ? "cond_stage_model.transformer" : "model.diffusion_model.input_blocks";
		hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl,
				       "%s\"%s.%d.0.weight\":{\"dtype\":\"F16\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
				       i ? "," : "", comp, i, sizes[i] / 2, off, off + sizes[i]);
		off += sizes[i];
	}
	hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl, "}");
	while (hl % 8)
		hdr[hl++] = ' ';
	uint64_t len = hl;
	int ok = fwrite(&len, 8, 1, f) == 1 && fwrite(hdr, 1, hl, f) == hl;
	for (size_t b = 0; ok && b < off; b++)
		ok = fputc(rand() & 0xff, f) != EOF;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* ---- the clients --------------------------------------------------------------- */

/* Loads the file (shared or not, on a random device), checks every byte,
 * holds it a while.  Exit 0; 3 when the bytes are wrong; 4 for another
 * failure than the broker going away. */
static int client_load(unsigned seed)
{
	vram_client *c;
	vram_model *m;
	vram_loaded *l;
	srand(seed);
	if (vram_connect(g_sock, "soak-load", &c) < 0)
		return 0; /* the broker is restarting */
	if (vram_model_open(g_file, &m) < 0)
		return 4;
	struct vram_load_options o;
	vram_load_options_init(&o);
	o.flags = rand() % 3 ? VRAM_LOAD_SHARED : 0;
	int r = vram_load(c, m, NULL, (uint32_t)(rand() % 2), &o, &l);
	if (r < 0) {
		const char *e = vram_last_error();
		return strstr(e, "connection") || strstr(e, "went away") || r == -ENOMEM || r == -ECONNRESET ||
		       r == -EPIPE || r == -EDQUOT ? 0 : (fprintf(stderr, "soak: load: %s\n", e), 4);
	}
	FILE *f = fopen(g_file, "re");
	for (int i = 0; f && i < vram_model_tensor_count(m); i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		uint8_t *want = malloc(ti.nbytes), *got = vram_loaded_tensor_host_ptr(l, (uint32_t)i);
		if (!want || fseek(f, (long)ti.file_offset, SEEK_SET) || fread(want, 1, ti.nbytes, f) != ti.nbytes ||
		    memcmp(want, got, ti.nbytes)) {
			fprintf(stderr, "soak: tensor %s differs from the file\n", ti.name);
			return 3;
		}
		free(want);
	}
	if (f)
		fclose(f);
	msleep((unsigned)(rand() % 400));
	vram_unload(l);
	vram_model_close(m);
	vram_close(c);
	return 0;
}

struct holder {
	vram_client *c;
	vram_grant *g[32];
	int n;
};

static uint64_t give(void *user, uint32_t dev, uint64_t bytes, uint64_t deadline_ms)
{
	struct holder *h = user;
	uint64_t freed = 0;
	for (int i = h->n - 1; i >= 0 && freed < bytes; i--) {
		vram_grant *g = h->g[i];
		if (!g || vram_grant_device(g) != dev)
			continue;
		h->g[i] = NULL;
		freed += vram_grant_size(g);
		vram_free(h->c, g);
	}
	return freed;
}

/* Allocates and frees reclaimable memory at random, answering RECLAIM;
 * writes and checks a pattern in what it holds. */
static int client_alloc(unsigned seed)
{
	struct holder h = { 0 };
	srand(seed);
	if (vram_connect(g_sock, "soak-alloc", &h.c) < 0)
		return 0;
	vram_set_reclaim_handler(h.c, give, &h);
	for (int round = 0; round < 40; round++) {
		int i = rand() % 32;
		/* the reclaim handler may run inside any call: a grant leaves
		 * h.g before it is freed, and enters it once it is ready */
		vram_grant *g = h.g[i];
		if (g) {
			h.g[i] = NULL;
			uint8_t *p = vram_grant_host_ptr(g);
			if (p && (p[0] != (uint8_t)i || p[vram_grant_size(g) - 1] != (uint8_t)i))
				return 3;
			vram_free(h.c, g);
		} else if (vram_alloc(h.c, (uint32_t)(rand() % 2), (uint64_t)(1 + rand() % 8) * MiB,
				      VRAM_ALLOC_RECLAIMABLE, &g) == 0) {
			uint8_t *p = vram_grant_host_ptr(g);
			if (p) {
				p[0] = (uint8_t)i;
				p[vram_grant_size(g) - 1] = (uint8_t)i;
			}
			if (h.n < i + 1)
				h.n = i + 1;
			h.g[i] = g;
		}
		vram_dispatch(h.c);
		msleep((unsigned)(rand() % 30));
	}
	vram_close(h.c);
	return 0;
}

/* Connections from nobody that never say HELLO. */
static int client_flood(unsigned seed)
{
	if (getuid() == 0 && (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0))
		return 0;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, g_sock, strlen(g_sock) + 1);
	int fds[100], n = 0;
	for (; n < 100; n++) {
		fds[n] = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (fds[n] < 0 || connect(fds[n], (struct sockaddr *)&sa, sizeof(sa)) < 0)
			break;
	}
	msleep(500);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	return 0;
}

/* ---- the run --------------------------------------------------------------------- */

/* How far the broker's RSS may grow over the run.  Under ASan freed
 * memory waits in its quarantine (up to 256 MiB) before it is reused, so
 * the RSS says little there: a looser bound. */
#ifdef __SANITIZE_ADDRESS__
#define RSS_GROWTH_KIB (64 * 1024)
#else
#define RSS_GROWTH_KIB (16 * 1024)
#endif

/* The broker's fds: memfds (grants, copies and the ready reserve's
 * populated memory) counted apart, with their bytes, from the rest. */
struct fdcount {
	int other, memfds, empty; /* empty: memfds of 0 bytes (a revoked grant's) */
	uint64_t memfd_bytes;
};

static struct fdcount count_fds(pid_t pid)
{
	char path[64], link[256];
	struct fdcount c = { 0 };
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);
		struct stat st;
		if (n > 0 && (link[n] = 0, !strncmp(link, "/memfd:", 7)) && fstatat(dirfd(d), e->d_name, &st, 0) == 0) {
			c.memfds++;
			c.empty += st.st_size == 0;
			c.memfd_bytes += (uint64_t)st.st_size;
		} else {
			c.other++;
		}
	}
	if (d)
		closedir(d);
	return c;
}

static long rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return kib;
}

struct tally {
	unsigned started, killed, bad, failed, broker_kills, reaped;
};

static void reap(pid_t *kids, struct tally *t, bool block)
{
	for (int i = 0; i < MAX_KIDS; i++) {
		int st;
		if (kids[i] <= 0 || waitpid(kids[i], &st, block ? 0 : WNOHANG) != kids[i])
			continue;
		kids[i] = 0;
		t->reaped++;
		if (WIFEXITED(st) && WEXITSTATUS(st) == 3)
			t->bad++;
		else if (WIFEXITED(st) && WEXITSTATUS(st) != 0)
			t->failed++;
	}
}

static void spawn(pid_t *kids, struct tally *t, unsigned seed)
{
	for (int i = 0; i < MAX_KIDS; i++) {
		if (kids[i] > 0)
			continue;
		int kind = (int)(seed % 10);
		pid_t pid = fork();
		if (pid == 0)
			_exit(kind < 5 ? client_load(seed) : kind < 9 ? client_alloc(seed) : client_flood(seed));
		kids[i] = pid;
		t->started++;
		return;
	}
}

/* The bytes of the devices' ready reserves, or UINT64_MAX when the status
 * cannot be had. */
static uint64_t ready_bytes(vram_client *a)
{
	struct vram_status *s;
	if (vram_get_status(a, &s) < 0)
		return UINT64_MAX;
	uint64_t r = 0;
	for (uint32_t d = 0; d < s->ndevices; d++)
		r += s->devices[d].ready;
	vram_status_free(s);
	return r;
}

/* With no client left but a (this check's connection): the broker holds
 * no more fds than at the start apart from memfds and that connection
 * (its socket and pidfd), and its memfds are exactly its ready reserves (a
 * grant or copy fd kept past its end would show as bytes beyond them).
 * The reserve may be refilling: looked at until it holds still. */
static int check_fds(pid_t broker, vram_client *a, struct fdcount fds0)
{
	struct fdcount fds = { 0 };
	uint64_t r0 = 0, r1 = 0;
	for (int i = 0; i < 100; i++) {
		r0 = ready_bytes(a);
		fds = count_fds(broker);
		r1 = ready_bytes(a);
		if (r0 == r1 && fds.memfd_bytes == r1)
			break;
		msleep(50);
	}
	printf("soak: settled: broker fds %d besides memfds (baseline %d + this check), %d memfds of %llu bytes, ready reserve %llu\n",
	       fds.other, fds0.other, fds.memfds, (unsigned long long)fds.memfd_bytes, (unsigned long long)r1);
	if (fds.other <= fds0.other + 2 && fds.memfd_bytes == r1 && r0 == r1 && !fds.empty)
		return 0;
	fprintf(stderr, "soak: the broker holds fds it should not (%d besides memfds, %d at the start; memfds of %llu bytes, %d empty, ready reserve %llu):\n",
		fds.other, fds0.other, (unsigned long long)fds.memfd_bytes, fds.empty, (unsigned long long)r1);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "ls -l /proc/%d/fd >&2", (int)broker);
	if (system(cmd) != 0)
		fprintf(stderr, "(cannot list them)\n");
	return 1;
}

/* Quiet: no client left, nothing accounted once the copies are dropped. */
static int settle(pid_t broker, struct fdcount fds0, long rss0)
{
	vram_client *a;
	struct vram_status *s = NULL;
	for (int i = 0; i < 1000; i++) {
		if (vram_connect(g_admin, "soak-check", &a) < 0) {
			msleep(10);
			continue;
		}
		vram_cache_drop(a, -1, VRAM_CACHE_DROP_ALL);
		if (vram_get_status(a, &s) == 0) {
			uint64_t used = 0;
			for (uint32_t d = 0; d < s->ndevices; d++)
				used += s->devices[d].used;
			bool quiet = used == 0 && s->grants == 0 && s->nclients == 1;
			vram_status_free(s);
			if (quiet) {
				int r = check_fds(broker, a, fds0);
				vram_close(a);
				long rss = rss_kib(broker);
				printf("soak: broker RSS %ld KiB (baseline %ld)\n", rss, rss0);
				if (rss - rss0 > RSS_GROWTH_KIB) {
					fprintf(stderr, "soak: the broker's RSS grew by %ld KiB\n", rss - rss0);
					return 1;
				}
				return r;
			}
		}
		vram_close(a);
		msleep(20);
	}
	fprintf(stderr, "soak: memory still accounted long after every client is gone\n");
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: helper-soak DIR SECONDS [BROKER_KILL_EVERY_S]\n");
		return 2;
	}
	g_dir = argv[1];
	g_build = getenv("VRAM_BUILD") ? getenv("VRAM_BUILD") : "build";
	int seconds = atoi(argv[2]), kill_every = argc > 3 ? atoi(argv[3]) : 0;
	snprintf(g_sock, sizeof(g_sock), "%s/vramd.sock", g_dir);
	snprintf(g_admin, sizeof(g_admin), "%s/admin.sock", g_dir);
	snprintf(g_log, sizeof(g_log), "%s/vramd.log", g_dir);
	snprintf(g_file, sizeof(g_file), "%s/soak.safetensors", g_dir);
	setenv("VRAMD_RECONNECT_TIMEOUT_MS", "15000", 1);
	signal(SIGPIPE, SIG_IGN);
	if (write_file(g_file, 60, 42) < 0 || chmod(g_file, 0644) < 0) {
		fprintf(stderr, "soak: cannot write %s\n", g_file);
		return 1;
	}
	pid_t broker = start_broker();
	if (broker < 0) {
		fprintf(stderr, "soak: vramd did not start (%s)\n", g_log);
		return 1;
	}
	msleep(200);
	struct fdcount fds0 = count_fds(broker);
	long rss0 = rss_kib(broker);
	pid_t kids[MAX_KIDS] = { 0 };
	struct tally t = { 0 };
	uint64_t end = now_ns() + (uint64_t)seconds * 1000000000ull, next_bk = now_ns() + (uint64_t)kill_every * 1000000000ull;
	unsigned seed = 1;
	while (now_ns() < end) {
		reap(kids, &t, false);
		spawn(kids, &t, seed++ * 2654435761u);
		int victim = rand() % MAX_KIDS;
		if (rand() % 4 == 0 && kids[victim] > 0) {
			kill(kids[victim], SIGKILL);
			t.killed++;
		}
		if (kill_every && now_ns() >= next_bk) {
			kill(broker, SIGKILL);
			waitpid(broker, NULL, 0);
			t.broker_kills++;
			if ((broker = start_broker()) < 0) {
				fprintf(stderr, "soak: vramd did not restart\n");
				return 1;
			}
			next_bk = now_ns() + (uint64_t)kill_every * 1000000000ull;
		}
		msleep((unsigned)(5 + rand() % 40));
	}
	for (int i = 0; i < MAX_KIDS; i++)
		if (kids[i] > 0)
			kill(kids[i], SIGKILL);
	reap(kids, &t, true);
	printf("soak: %d s, %u clients (%u killed at random), %u broker kills, %u wrong bytes, %u other failures\n",
	       seconds, t.started, t.killed, t.broker_kills, t.bad, t.failed);
	int r = settle(broker, fds0, rss0);
	kill(broker, SIGTERM);
	waitpid(broker, NULL, 0);
	if (t.bad || t.failed) {
		fprintf(stderr, "soak: %u clients saw wrong bytes, %u failed otherwise (see above)\n", t.bad, t.failed);
		return 1;
	}
	return r;
}
