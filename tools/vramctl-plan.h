/* SPDX-License-Identifier: MIT */
/* vramctl: the seed node's placement flags, shared by plan, load, bench. */
#ifndef VRAMCTL_PLAN_H
#define VRAMCTL_PLAN_H

#include <stdbool.h>

#include "tools/vramctl.h"

#define VRAM_MAX_PLAN_DEVICES 32

struct plan_args {
	struct vram_plan_options opts;
	const char *devices;     /* --devices spec, or NULL: the broker's */
	bool given;              /* any placement flag given */
};

void plan_args_init(struct plan_args *pa);
/* Consumes argv[*i] (and its value) if it is a placement flag: 1 consumed,
 * 0 not a placement flag, -1 bad value (message printed). */
int plan_args_parse(struct plan_args *pa, int argc, char **argv, int *i);
/* Builds the plan (devices from --devices or the broker c); prints errors
 * and returns an exit code, or 0. */
int plan_args_make(struct ctl *ctl, struct plan_args *pa, const vram_model *m, vram_client *c, vram_plan **ret);
/* Human table of a plan. */
void plan_print(const vram_plan *p, const vram_model *m);

#endif
