/* SPDX-License-Identifier: MIT */
/*
 * Placement planner internals (not installed): the allocation-string parser
 * (allocstr.c) and the planner core that works on plain arrays (plan.c).
 * docs/plan.md describes the semantics; this header only the interfaces.
 */
#ifndef VRAM_RUNTIME_PLAN_H
#define VRAM_RUNTIME_PLAN_H

#include <stdint.h>

#include "runtime/vram.h"

/* Devices one plan may name (the broker exposes at most 16). */
#define PLAN_MAX_DEVICES 64u

/* Ratio and fraction values are kept exactly as fixed point with this many
 * decimals; further digits are ignored. */
#define ALLOC_FRAC_DIGITS 9
#define ALLOC_FRAC_ONE    1000000000ull

enum alloc_form {
	ALLOC_FORM_NONE = 0,     /* only "*" entries: no value fixed the form */
	ALLOC_FORM_BYTES,        /* "2.5gb" */
	ALLOC_FORM_RATIO,        /* "70%" */
	ALLOC_FORM_FRACTION,     /* "0.1": of the device's total memory */
};

struct alloc_entry {
	uint32_t dev;            /* index into the device names given */
	uint32_t star;           /* 1: this entry takes the remainder */
	uint64_t bytes;          /* BYTES: the value in bytes */
	uint64_t fixed;          /* RATIO/FRACTION: value * ALLOC_FRAC_ONE */
};

struct alloc_spec {
	enum alloc_form form;
	uint32_t n;              /* entries, in string order */
	int32_t  star;           /* entry index of "*", or -1 */
	uint32_t pad;
	struct alloc_entry e[PLAN_MAX_DEVICES];
};

/* Parses allocation string s of component what ("unet", "clip") against the
 * ndevs device names in names.  Fills *ret and returns 0, or returns -EINVAL
 * with vram_last_error() = `what allocation "S": entry N: REASON` (or a
 * whole-string reason).  Values are checked on their own here (syntax,
 * sign, range, forms not mixed, devices known and not repeated, one "*",
 * ratio sums); what depends on the model is checked by alloc_quotas(). */
int alloc_parse(const char *what, const char *s, const char *const *names, uint32_t ndevs,
		struct alloc_spec *ret);

/* Turns a parsed spec into per-device byte quotas for a component of
 * comp_bytes bytes: ret_quota[d] for each of the ndevs devices (totals in
 * dev_total, for fraction form), summing to comp_bytes exactly.  cpu_dev is
 * the index of the "cpu" device or -1; it takes the remainder of byte and
 * fraction strings that have no "*".  -EINVAL (message as alloc_parse, with
 * s quoted) when a remainder is left and nobody may take it. */
int alloc_quotas(const char *what, const char *s, const struct alloc_spec *spec,
		 const uint64_t *dev_total, uint32_t ndevs, int cpu_dev,
		 uint64_t comp_bytes, uint64_t *ret_quota);

/* One unit of placement as the planner core sees it: a leaf module (a
 * module's own tensors together; runtime/modules.h), or whatever a caller
 * of plan_build() places as a whole. */
struct plan_unit {
	uint32_t component;      /* enum vram_component */
	uint32_t flags;          /* VRAM_LAYER_EMBEDDING: a text encoder's embedding */
	uint64_t nbytes;
	const char *name;        /* borrowed; NULL: "unit N" */
	uint32_t layer;          /* its model layer (with a plan_map) */
	uint32_t pad;
};

/* A model layer, for a plan_map. */
struct plan_map_layer {
	uint32_t component;
	uint32_t pad;
	const char *name;        /* borrowed */
};

/* How the units map onto a model (optional): its layers, which units make
 * each (struct plan_unit.layer), the unit of each tensor, and the module
 * order each component's units follow (for the JSON). */
struct plan_map {
	uint32_t nlayers;
	uint32_t ntensors;
	const struct plan_map_layer *layers;
	const uint32_t *tensor_unit;
	const char *order[VRAM_COMP_COUNT];   /* "sd-unet", "natural", ... */
};

/* The planner core: places nunits units, given per component in
 * placement order (the component's tail last), on ndevs devices with
 * options o (NULL: defaults).  map (NULL: none; then every unit is a
 * layer of its own and the plan has no tensors) ties them to a model's
 * layers and tensors.  model is a name recorded in the plan (NULL: none).
 * Names are copied; nothing is borrowed after return.  Errors as
 * vram_plan_create(). */
int plan_build(const struct plan_unit *units, uint32_t nunits, const struct plan_map *map, const char *model,
	       const struct vram_plan_options *o, const struct vram_plan_device *devs,
	       uint32_t ndevs, vram_plan **ret_plan);

/* Device of unit (index into the units given to plan_build), or -EINVAL. */
int plan_unit_device(const vram_plan *p, uint32_t unit);

/* The quota the planner gave comp on dev after tiny/embedding layers were
 * charged to the compute device (for tests: a device before the last one
 * with a quota never gets more than this).  0 for bad arguments. */
uint64_t plan_quota(const vram_plan *p, uint32_t comp, uint32_t dev);

/* 1 if every unit of layer is pinned to its component's compute device
 * (its layer is tiny, or it is a text encoder's embedding), 0 if not,
 * -EINVAL for a bad index.  Without a map, layer is a unit. */
int plan_layer_pinned(const vram_plan *p, uint32_t layer);

/* Placement order of device names: cuda:N by N, then other names in list
 * order, then cpu.  Writes ndevs indices into ret_order. */
void plan_device_order(const char *const *names, uint32_t ndevs, uint32_t *ret_order);

#endif
