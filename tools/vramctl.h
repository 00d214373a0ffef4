/* SPDX-License-Identifier: MIT */
/* vramctl internals: shared by the command files. */
#ifndef VRAMCTL_H
#define VRAMCTL_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "common/cleanup.h"
#include "runtime/vram.h"

/* _cleanup_(vram_model_closep) and so on: every handle a command holds is
 * released on every path out of it, in reverse order of declaration. */
DEFINE_CLEANUP_FUNC(vram_model, vram_model_close)
DEFINE_CLEANUP_FUNC(vram_client, vram_close)
DEFINE_CLEANUP_FUNC(vram_plan, vram_plan_free)
DEFINE_CLEANUP_FUNC(vram_loaded, vram_unload)
DEFINE_CLEANUP_FUNC(vram_pager, vram_pager_free)
DEFINE_CLEANUP_FUNC(vram_uvm_pager, vram_uvm_pager_free)
DEFINE_CLEANUP_FUNC(struct vram_status, vram_status_free)

/* sysexits(3) codes vramctl uses. */
#define EX_OK_ 0
#define EX_USAGE_ 64
#define EX_DATAERR_ 65
#define EX_NOINPUT_ 66
#define EX_UNAVAILABLE_ 69
#define EX_SOFTWARE_ 70
#define EX_IOERR_ 74
#define EX_TEMPFAIL_ 75
#define EX_NOPERM_ 77
#define EX_CONFIG_ 78

struct ctl {
	const char *socket;       /* --socket or NULL ($VRAMD_SOCKET, default) */
	const char *admin_socket; /* --admin-socket or NULL ($VRAMD_ADMIN_SOCKET, default) */
	bool json;
	bool tty;                 /* stdout is a terminal */
	int argc;                 /* the command's arguments (argv[0] = command) */
	char **argv;
};

/* Connects as "vramctl"; prints the error and returns EX_UNAVAILABLE_ (or
 * another exit code) on failure, 0 on success. */
int ctl_connect(struct ctl *ctl, vram_client **ret);
/* Parses the command's only argument (--json), connects and fetches the
 * broker's status; prints the error and returns the exit code, or 0 with
 * both set (the caller frees them). */
int ctl_fetch_status(struct ctl *ctl, const char *cmd, vram_client **ret_client, struct vram_status **ret_status);
/* One client of s as the JSON object status --json and clients --json print
 * (docs/vramctl.md). */
json_t *ctl_client_json(const struct vram_status *s, uint32_t i);
/* How a device's memory is paged: "device" (CUDA), "hugetlb", "thp", "4k". */
const char *ctl_page_kind(const struct vram_device_info *d);
/* Formats a byte count for tables ("8.00 GiB"). */
const char *ctl_size(uint64_t v, char *buf, size_t len);

int cmd_status(struct ctl *ctl);
int cmd_inspect(struct ctl *ctl);
int cmd_plan(struct ctl *ctl);
int cmd_load(struct ctl *ctl);
int cmd_metrics(struct ctl *ctl);
int cmd_bench(struct ctl *ctl);
int cmd_quota(struct ctl *ctl);
int cmd_clients(struct ctl *ctl);
int cmd_evict(struct ctl *ctl);
int cmd_reload(struct ctl *ctl);
int cmd_top(struct ctl *ctl);
int cmd_cache(struct ctl *ctl);

#endif
