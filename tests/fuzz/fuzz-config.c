/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the broker's configuration file (the input, as the
 * file's text) read by broker_config_load(), at the level of "parse this
 * file", whatever parser is behind it.
 *
 * Properties: the result is 0 or a negative errno with a message logged
 * that names the file; a configuration that loads holds values within
 * their documented ranges (absolute socket paths that fit sun_path, at
 * most 15 simulated GPUs of 2 MiB or more, limits from 1 to 1048576, a
 * mode within 0777, a reclaim deadline from 1 ms to 10 minutes).
 *
 * Links broker/config.c alone: the broker's log is replaced here (weak, in
 * case config.c comes to define it) by one that formats and keeps the
 * last line.
 */
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "broker/broker.h"
#include "tests/fuzz/fuzz.h"

static char last_log[2048];
static unsigned nlog;

__attribute__((weak)) void broker_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_log, sizeof(last_log), fmt, ap);
	va_end(ap);
	nlog++;
}

static void check_config(const struct broker_config *c)
{
	FUZZ_ASSERT(c->socket_path && c->socket_path[0] == '/' && strlen(c->socket_path) < 108, "socket");
	FUZZ_ASSERT(!c->admin_socket || (c->admin_socket[0] == '/' && strlen(c->admin_socket) < 108),
		    "admin-socket");
	FUZZ_ASSERT(!c->state_dir || c->state_dir[0] == '/', "state-dir");
	FUZZ_ASSERT(!c->admin_group || (*c->admin_group && !strchr(c->admin_group, ':')), "admin-group");
	FUZZ_ASSERT(!c->socket_group || (*c->socket_group && !strchr(c->socket_group, ':')), "socket-group");
	FUZZ_ASSERT(c->nsim < VRAMD_MAX_DEVICES, "%u simulated GPUs", c->nsim);
	for (uint32_t i = 0; i < c->nsim; i++)
		FUZZ_ASSERT(c->sim_gpus[i] >= (2u << 20), "sim-gpus[%u]", i);
	FUZZ_ASSERT(c->host_pool == 0 || c->host_pool >= (2u << 20), "host-pool");
	FUZZ_ASSERT(c->max_clients >= 1 && c->max_clients <= (1u << 20), "max-clients");
	FUZZ_ASSERT(c->max_grants >= 1 && c->max_grants <= (1u << 20), "max-grants");
	FUZZ_ASSERT(c->socket_mode <= 0777, "socket-mode");
	FUZZ_ASSERT(c->reclaim_deadline_ms >= 1 && c->reclaim_deadline_ms <= 600000, "reclaim-deadline-ms");
	FUZZ_ASSERT(c->fdstore >= -1 && c->fdstore <= 1, "fdstore");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	struct broker_config cfg;
	unsigned before = nlog;
	int r;

	/* broker_config_init()'s defaults, without linking the broker */
	memset(&cfg, 0, sizeof(cfg));
	cfg.socket_path = "/run/vramd/vramd.sock";
	cfg.max_clients = 256;
	cfg.max_grants = 4096;
	cfg.listen_fd = -1;
	cfg.reclaim_deadline_ms = 2000;

	r = broker_config_load(&cfg, path);
	if (r < 0) {
		FUZZ_ASSERT(r == -EINVAL || r == -ENOMEM, "returned %d", r);
		FUZZ_ASSERT(nlog > before && !strncmp(last_log, path, strlen(path)), "log \"%s\"", last_log);
		return 0;
	}
	FUZZ_ASSERT(r == 0, "returned %d", r);
	check_config(&cfg);
	return 0;
}
