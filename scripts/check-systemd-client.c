/* SPDX-License-Identifier: MIT */
/* A libvram client for scripts/check-systemd.sh, built inside the booted
 * container against the installed vram.pc alone:
 *
 *   cc -o vt-client check-systemd-client.c $(pkg-config --cflags --libs vram)
 *
 * so building it is itself the check that the installed header and
 * pkg-config file serve a program without liburing-dev or libjansson-dev.
 *
 *   vt-client alloc DEVICE MIB
 *       connects, allocates MIB MiB on DEVICE ("cpu", "cuda:0"), frees it,
 *       exits: 0 granted, 2 refused with EDQUOT, 1 any other failure.
 *   vt-client hold STATEFILE DEVICE MIB [MIB...]
 *       connects as "vt-holder", allocates each size in turn, writes
 *       "ready" to STATEFILE and waits.  SIGUSR1: frees the first grant it
 *       still holds (the first call after a broker restart, which makes
 *       libvram reconnect and re-register first) and writes
 *       "freed MIB RC" to STATEFILE.  SIGTERM or SIGINT: vram_close(), exit 0.
 *
 * STATEFILE is replaced atomically (write to STATEFILE.tmp, rename), so the
 * script never reads half of it.  Messages go to stderr, one line each. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vram.h>

#define MAX_HOLD 8

static int parse_mib(const char *s, uint64_t *ret)
{
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || !end || *end || v == 0 || v > (1ull << 24)) {
		fprintf(stderr, "vt-client: \"%s\" is not a size in MiB (1-16777216)\n", s);
		return -EINVAL;
	}
	*ret = (uint64_t)v << 20;
	return 0;
}

static int find_device(vram_client *c, const char *name, uint32_t *ret)
{
	int d = vram_device_find(c, name);
	if (d < 0) {
		fprintf(stderr, "vt-client: no device %s: %s\n", name, vram_last_error());
		return d;
	}
	*ret = (uint32_t)d;
	return 0;
}

static int write_state(const char *path, const char *text)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -errno;
	int bad = fputs(text, f) < 0 || fputc('\n', f) < 0;
	if (fclose(f) != 0 || bad || rename(tmp, path) < 0) {
		int r = errno ? -errno : -EIO;
		unlink(tmp);
		return r;
	}
	return 0;
}

static int cmd_alloc(int argc, char **argv)
{
	uint64_t size;
	uint32_t dev;
	vram_client *c = NULL;
	vram_grant *g = NULL;
	if (argc != 4 || parse_mib(argv[3], &size) < 0) {
		fprintf(stderr, "usage: vt-client alloc DEVICE MIB\n");
		return 1;
	}
	int r = vram_connect(NULL, "vt-alloc", &c);
	if (r < 0) {
		fprintf(stderr, "vt-client: connect: %s\n", vram_last_error());
		return 1;
	}
	if (find_device(c, argv[2], &dev) < 0) {
		vram_close(c);
		return 1;
	}
	r = vram_alloc(c, dev, size, 0, &g);
	if (r < 0) {
		fprintf(stderr, "vt-client: alloc %s %s MiB: %s (%s)\n", argv[2], argv[3], strerror(-r),
			vram_last_error());
		vram_close(c);
		return r == -EDQUOT ? 2 : 1;
	}
	printf("granted %s MiB on %s\n", argv[3], argv[2]);
	vram_free(c, g);
	vram_close(c);
	return 0;
}

/* Waits for SIGUSR1 (free the next grant) or SIGTERM/SIGINT (exit). */
static int hold_loop(vram_client *c, const char *state, vram_grant **g, int n)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	int next = 0;
	for (;;) {
		int sig;
		if (sigwait(&set, &sig) != 0)
			return 1;
		if (sig != SIGUSR1)
			return 0;
		if (next == n) {
			write_state(state, "freed 0 nothing-left");
			continue;
		}
		uint64_t mib = vram_grant_size(g[next]) >> 20;
		int r = vram_free(c, g[next]);
		g[next++] = NULL;
		char line[128];
		snprintf(line, sizeof(line), "freed %llu %d", (unsigned long long)mib, r);
		if (r < 0)
			fprintf(stderr, "vt-client: free: %s\n", vram_last_error());
		write_state(state, line);
	}
}

static int cmd_hold(int argc, char **argv)
{
	uint64_t size[MAX_HOLD];
	vram_grant *g[MAX_HOLD] = { 0 };
	uint32_t dev;
	int n = argc - 4;
	if (argc < 5 || n > MAX_HOLD) {
		fprintf(stderr, "usage: vt-client hold STATEFILE DEVICE MIB [MIB...] (at most %d)\n", MAX_HOLD);
		return 1;
	}
	for (int i = 0; i < n; i++)
		if (parse_mib(argv[4 + i], &size[i]) < 0)
			return 1;
	/* signals wait for sigwait, from the start */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	vram_client *c = NULL;
	if (vram_connect(NULL, "vt-holder", &c) < 0) {
		fprintf(stderr, "vt-client: connect: %s\n", vram_last_error());
		return 1;
	}
	if (find_device(c, argv[3], &dev) < 0) {
		vram_close(c);
		return 1;
	}
	for (int i = 0; i < n; i++) {
		int r = vram_alloc(c, dev, size[i], 0, &g[i]);
		if (r < 0) {
			fprintf(stderr, "vt-client: hold: alloc %s MiB: %s\n", argv[4 + i], vram_last_error());
			vram_close(c);
			return 1;
		}
	}
	int r = write_state(argv[2], "ready");
	if (r < 0) {
		fprintf(stderr, "vt-client: %s: %s\n", argv[2], strerror(-r));
		vram_close(c);
		return 1;
	}
	r = hold_loop(c, argv[2], g, n);
	vram_close(c);
	return r;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "alloc"))
		return cmd_alloc(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "hold"))
		return cmd_hold(argc, argv);
	fprintf(stderr, "usage: vt-client alloc DEVICE MIB | hold STATEFILE DEVICE MIB [MIB...]\n");
	return 1;
}
