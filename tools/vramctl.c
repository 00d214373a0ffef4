/* SPDX-License-Identifier: MIT */
/* vramctl: admin and user CLI for vramd. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "tools/vramctl.h"

static const struct {
	const char *name;
	int (*fn)(struct ctl *);
	const char *help;
} commands[] = {
	{ "status", cmd_status, "status [--json]          devices, usage and clients of the broker" },
	{ "top", cmd_top, "top [--interval MS] [--count N]  live view of devices and clients (q quits)" },
	{ "inspect", cmd_inspect, "inspect FILE [--json]    format, tensors, components, layers of a checkpoint" },
	{ "plan", cmd_plan, "plan FILE [flags]        placement of a checkpoint across devices" },
	{ "load", cmd_load, "load FILE [flags] [--private]  load a checkpoint into broker memory (shared copies by default)" },
	{ "cache", cmd_cache, "cache list [--json] | cache drop FILE|--all [--force]  the broker's shared copies" },
	{ "metrics", cmd_metrics, "metrics [--output FILE]  Prometheus text exposition of devices, clients, counters" },
	{ "quota", cmd_quota, "quota set|list|rm ...     per-user/per-client floors and ceilings (admin)" },
	{ "clients", cmd_clients, "clients [--json]         connected clients (all of them for admins)" },
	{ "evict", cmd_evict, "evict CLIENT-ID          ask a client to release its reclaimable memory (admin)" },
	{ "reload", cmd_reload, "reload                   re-read the broker's config limits and quota file (admin)" },
	{ "bench", cmd_bench, "bench pager FILE [flags] simulated forward passes through the pager" },
};

static void usage(FILE *f)
{
	fputs("Usage: vramctl [--socket PATH] [--admin-socket PATH] [--json] COMMAND [ARGS]\n\nCommands:\n", f);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %s\n", commands[i].help);
	fputs("\nThe socket defaults to $VRAMD_SOCKET, then " VRAM_DEFAULT_SOCKET "; the admin socket\n"
	      "to $VRAMD_ADMIN_SOCKET, then " VRAM_DEFAULT_ADMIN_SOCKET ".\n"
	      "Exit codes: 0 ok, 64 usage, 65 invalid data, 69 broker unreachable, 77 not permitted.\n",
	      f);
}

const char *ctl_size(uint64_t v, char *buf, size_t len)
{
	return size_format(v, buf, len);
}

int ctl_connect(struct ctl *ctl, vram_client **ret)
{
	int r = vram_connect(ctl->socket, "vramctl", ret);
	if (r < 0) {
		fprintf(stderr, "vramctl: %s\n", vram_last_error());
		return EX_UNAVAILABLE_;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct ctl ctl = { .tty = isatty(STDOUT_FILENO) };
	int i = 1;

	/* Global options come before the command. */
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--socket") || !strcmp(argv[i], "-s")) {
			if (++i == argc) {
				fprintf(stderr, "vramctl: --socket needs a path\n");
				return EX_USAGE_;
			}
			ctl.socket = argv[i];
		} else if (!strcmp(argv[i], "--admin-socket")) {
			if (++i == argc) {
				fprintf(stderr, "vramctl: --admin-socket needs a path\n");
				return EX_USAGE_;
			}
			ctl.admin_socket = argv[i];
		} else if (!strncmp(argv[i], "--admin-socket=", 15)) {
			ctl.admin_socket = argv[i] + 15;
		} else if (!strncmp(argv[i], "--socket=", 9)) {
			ctl.socket = argv[i] + 9;
		} else if (!strcmp(argv[i], "--json")) {
			ctl.json = true;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--version")) {
			printf("vramctl %d.%d.%d\n", VRAM_VERSION_MAJOR, VRAM_VERSION_MINOR, VRAM_VERSION_PATCH);
			return 0;
		} else {
			fprintf(stderr, "vramctl: unknown option %s\n", argv[i]);
			usage(stderr);
			return EX_USAGE_;
		}
	}
	if (i == argc) {
		usage(stderr);
		return EX_USAGE_;
	}
	ctl.argc = argc - i;
	ctl.argv = argv + i;
	for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
		if (!strcmp(argv[i], commands[k].name))
			return commands[k].fn(&ctl);
	fprintf(stderr, "vramctl: unknown command \"%s\"\n", argv[i]);
	usage(stderr);
	return EX_USAGE_;
}
