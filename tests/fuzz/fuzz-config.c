/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the broker's configuration file (the input, as the
 * file's text) read by broker_config_load(), at the level of "parse this
 * file", whatever parser is behind it.
 *
 * Properties: the result is 0 or -EINVAL / -ENOMEM with an error message
 * that names the file (and is NUL-terminated within its buffer); a
 * configuration that loads holds values within their documented ranges
 * (absolute socket paths that fit sun_path, at most 15 simulated GPUs of
 * 2 MiB or more, limits from 1 to 1048576, a mode within 0777, deadlines
 * from 1 ms to 10 minutes, shares at most 100 %).
 *
 * Links broker/config.c and common/util.c alone.
 */
#include <errno.h>
#include <string.h>

#include "broker/config.h"
#include "tests/fuzz/fuzz.h"

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
	FUZZ_ASSERT(c->max_clients_per_uid >= 1 && c->max_clients_per_uid <= (1u << 20), "max-clients-per-uid");
	FUZZ_ASSERT(c->socket_mode <= 0777, "socket-mode");
	FUZZ_ASSERT(c->reclaim_deadline_ms >= 1 && c->reclaim_deadline_ms <= 600000, "reclaim-deadline-ms");
	FUZZ_ASSERT(c->hello_timeout_ms >= 1 && c->hello_timeout_ms <= 600000, "hello-timeout-ms");
	FUZZ_ASSERT(c->cache_max_pct <= 100, "cache-max %u%%", c->cache_max_pct);
	FUZZ_ASSERT(!c->ready_reserve.share || c->ready_reserve.bp <= 10000, "ready-reserve");
	FUZZ_ASSERT(!c->ready_min_free.share || c->ready_min_free.bp <= 10000, "ready-min-free");
	FUZZ_ASSERT(c->fdstore >= -1 && c->fdstore <= 1, "fdstore");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	struct broker_config cfg;
	char err[512];
	int r;

	broker_config_init(&cfg);
	memset(err, 0x55, sizeof(err));
	r = broker_config_load(&cfg, path, err, sizeof(err));
	if (r < 0) {
		FUZZ_ASSERT(r == -EINVAL || r == -ENOMEM, "returned %d", r);
		FUZZ_ASSERT(memchr(err, 0, sizeof(err)), "error message not terminated");
		FUZZ_ASSERT(!strncmp(err, path, strlen(path)), "error \"%s\" does not name the file", err);
	} else {
		FUZZ_ASSERT(r == 0, "returned %d", r);
		check_config(&cfg);
	}
	/* nothing points at them now: one process can run for millions of
	 * inputs without its string list growing (and slowing) */
	broker_config_forget_strings();
	return 0;
}
