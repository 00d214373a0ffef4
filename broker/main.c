/* SPDX-License-Identifier: MIT */
/* vramd: the GPU and pinned-host memory broker. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "broker/broker.h"

static void usage(FILE *f)
{
	fputs("Usage: vramd [OPTIONS]\n"
	      "Owns GPU and pinned host memory pools and grants them to clients as fds.\n\n"
	      "  --socket PATH          client socket (default /run/vramd/vramd.sock)\n"
	      "  --sim-gpus SIZE[,...]  simulated GPUs cuda:N, one per size (e.g. 8GiB,4GiB)\n"
	      "  --host-pool SIZE       capacity of the cpu pool (default: half of RAM)\n"
	      "  --ready-reserve SIZE|N%  populated memory kept ready for the next grants\n"
	      "                         in each host-memory pool (default 25%; 0: none)\n"
	      "  --ready-refill-rate SIZE  bytes per second the reserve's refill may\n"
	      "                         populate (default 0: no cap; it runs at low priority)\n"
	      "  --ready-min-free SIZE|N%  memory the reserve always leaves free on the\n"
	      "                         machine or in vramd's cgroup (default 5%)\n"
	      "  --client-max SIZE      bytes one client may hold (default: unlimited)\n"
	      "  --max-clients N        connected clients at most (default 256)\n"
	      "  --max-clients-per-uid N  connections of one user at most (default 64; admins exempt)\n"
	      "  --hello-timeout-ms N   drop a connection that has not said HELLO by then (default 5000)\n"
	      "  --cache-max SIZE|N%    shared read-only copies per device at most (default 50%; 0: none)\n"
	      "  --max-grants N         grants per client at most (default 4096)\n"
	      "  --reclaim-deadline-ms N  how long an ALLOC waits for RECLAIM (default 2000)\n"
	      "  --admin-socket PATH    admin socket (default /run/vramd/admin.sock)\n"
	      "  --admin-group GROUP    members may use admin operations (default: root only)\n"
	      "  --state-dir DIR        quotas are kept here (default /var/lib/vramd)\n"
	      "  --socket-group GROUP   group of the client socket (default vram, if it exists)\n"
	      "  --socket-mode MODE     mode of the client socket (default 0660)\n"
	      "  --no-cuda              do not look for NVIDIA GPUs\n"
	      "  --config FILE          INI file with the same keys (socket = ..., ...);\n"
	      "                         default $VRAMD_CONFIG, else " VRAMD_CONFIG_DEFAULT ",\n"
	      "                         when it exists (then a reload reads it if it appears)\n"
	      "  --no-config            read no config file\n"
	      "  --foreground           stay in the foreground (vramd never forks; accepted\n"
	      "                         for compatibility with init scripts)\n"
	      "  -v, --verbose          log every grant\n"
	      "  -h, --help\n\n"
	      "Sizes: B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal).\n",
	      f);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "sim-gpus", required_argument, NULL, 'g' },
		{ "host-pool", required_argument, NULL, 'p' },
		{ "client-max", required_argument, NULL, 'm' },
		{ "ready-reserve", required_argument, NULL, 'r' },
		{ "ready-refill-rate", required_argument, NULL, 'F' },
		{ "ready-min-free", required_argument, NULL, 'L' },
		{ "max-clients", required_argument, NULL, 'C' },
		{ "max-grants", required_argument, NULL, 'G' },
		{ "max-clients-per-uid", required_argument, NULL, 'U' },
		{ "hello-timeout-ms", required_argument, NULL, 'H' },
		{ "cache-max", required_argument, NULL, 'K' },
		{ "reclaim-deadline-ms", required_argument, NULL, 'R' },
		{ "admin-socket", required_argument, NULL, 'A' },
		{ "state-dir", required_argument, NULL, 'S' },
		{ "admin-group", required_argument, NULL, 'a' },
		{ "socket-group", required_argument, NULL, 'o' },
		{ "socket-mode", required_argument, NULL, 'M' },
		{ "no-cuda", no_argument, NULL, 'n' },
		{ "config", required_argument, NULL, 'c' },
		{ "no-config", no_argument, NULL, 'N' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct broker_config cfg;
	char err[256];
	int o, r;

	broker_config_init(&cfg);
	/* The installed defaults (tests that embed the broker start from
	 * broker_config_init's, which touch nothing outside their temp dir). */
	cfg.admin_socket = "/run/vramd/admin.sock";
	cfg.state_dir = "/var/lib/vramd";
	cfg.socket_group = "vram";
	cfg.socket_mode = 0660;
	cfg.fdstore = -1;

	/* The config file is read first so that options override it: the one
	 * --config names (it must exist), else VRAMD_CONFIG_DEFAULT if it
	 * exists (a reload reads it if it appears later), unless --no-config. */
	const char *dflt = getenv("VRAMD_CONFIG");
	cfg.config_path = dflt && *dflt ? dflt : VRAMD_CONFIG_DEFAULT;
	cfg.config_optional = true;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--no-config"))
			cfg.config_path = NULL;
		else if (!strcmp(argv[i], "--config") && i + 1 < argc)
			cfg.config_path = argv[i + 1];
		else if (!strncmp(argv[i], "--config=", 9))
			cfg.config_path = argv[i] + 9;
		else
			continue;
		cfg.config_optional = false;
	}
	if (cfg.config_path) {
		r = broker_config_load(&cfg, cfg.config_path, err, sizeof(err));
		if (r == -ENOENT && cfg.config_optional)
			r = 0;
		if (r < 0) {
			broker_log(0, "%s", err);
			return 1;
		}
	}

	while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		const char *key = NULL;
		switch (o) {
		case 's': key = "socket"; break;
		case 'g': key = "sim-gpus"; break;
		case 'p': key = "host-pool"; break;
		case 'm': key = "client-max"; break;
		case 'r': key = "ready-reserve"; break;
		case 'F': key = "ready-refill-rate"; break;
		case 'L': key = "ready-min-free"; break;
		case 'C': key = "max-clients"; break;
		case 'G': key = "max-grants"; break;
		case 'U': key = "max-clients-per-uid"; break;
		case 'H': key = "hello-timeout-ms"; break;
		case 'K': key = "cache-max"; break;
		case 'R': key = "reclaim-deadline-ms"; break;
		case 'A': key = "admin-socket"; break;
		case 'S': key = "state-dir"; break;
		case 'a': key = "admin-group"; break;
		case 'o': key = "socket-group"; break;
		case 'M': key = "socket-mode"; break;
		case 'n': cfg.no_cuda = true; break;
		case 'c': case 'f': case 'N': break;
		case 'v': cfg.verbose = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (key && (r = broker_config_set(&cfg, key, optarg, err, sizeof(err))) < 0) {
			fprintf(stderr, "vramd: --%s\n", err);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "vramd: unexpected argument \"%s\"\n", argv[optind]);
		return 2;
	}
	broker_log_level = cfg.verbose ? 2 : 1;

	/* From systemd: the listening socket (socket activation) and grant
	 * fds from the fd store (FDNAME=grant-...), in any order. */
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);
	int restore_fds[4096];
	char *restore_names[4096];
	uint32_t nrestore = 0;
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		const char *name = names && names[i] ? names[i] : "";
		if (!strncmp(name, "grant-", 6) || !strncmp(name, "copy-", 5)) {
			if (nrestore < 4096) {
				restore_fds[nrestore] = fd;
				restore_names[nrestore++] = names[i];
			} else {
				close(fd);
			}
		} else if (cfg.listen_fd < 0 && sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) > 0) {
			cfg.listen_fd = fd;
			broker_log(1, "socket activation: using the socket systemd passed");
		} else {
			broker_log(0, "fd %d (%s) from systemd is not a listening SOCK_SEQPACKET unix socket", fd,
				   name[0] ? name : "unnamed");
			return 1;
		}
	}
	cfg.restore_fds = restore_fds;
	cfg.restore_names = restore_names;
	cfg.nrestore = nrestore;

	struct broker *b = broker_new(&cfg);
	if (!b) {
		broker_log(0, "cannot start: %s", strerror(errno));
		return 1;
	}
	if (cfg.listen_fd < 0)
		broker_log(1, "listening on %s", cfg.socket_path);
	r = broker_run(b);
	broker_free(b);
	if (names)
		for (int i = 0; i < n; i++)
			free(names[i]);
	free(names);
	return r < 0 ? 1 : 0;
}
