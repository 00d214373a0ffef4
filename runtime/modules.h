/* SPDX-License-Identifier: MIT */
/*
 * Leaf modules (not installed): the planner's unit of placement.  A
 * checkpoint's tensors are grouped into modules (a module's .weight, .bias,
 * ... together: the tensors that share a name up to the last ".") and the
 * modules of each component are put in the order in which ComfyUI's model
 * registers them (its named_modules() order, which DisTorch2 places from
 * the tail).  That order is known per model family by the registration
 * order of the attribute names its classes use (docs/plan.md, "Module
 * order"); a component of a family not known here keeps the natural order
 * of its names.  Works on plain arrays; modules_from_model() feeds it from
 * a vram_model.
 */
#ifndef VRAM_RUNTIME_MODULES_H
#define VRAM_RUNTIME_MODULES_H

#include <stdint.h>

#include "runtime/plan.h"
#include "runtime/vram.h"

/* Module orders (model families). */
enum mod_family {
	MOD_NATURAL = 0,         /* unknown shape: natural order of the names */
	MOD_SD_UNET,             /* SD1.x/SD2.x/SDXL UNet (openaimodel) */
	MOD_FLUX,                /* Flux (and its derivatives: double/single blocks) */
	MOD_SD3,                 /* SD3 MMDiT */
	MOD_WAN,                 /* Wan 2.x */
	MOD_QWEN_IMAGE,          /* Qwen-Image */
	MOD_TEXT,                /* text encoders: CLIP (HF and OpenCLIP names), T5, Llama/Qwen */
	MOD_FAMILY_COUNT
};

/* "sd-unet", "flux", ..., "natural"; "?" out of range. */
const char *mod_family_name(uint32_t family);

/* One tensor as modules_build sees it. */
struct mod_tensor {
	const char *name;        /* full name, NUL-terminated */
	uint32_t component;      /* enum vram_component */
	uint32_t layer;          /* its model layer */
	uint32_t layer_flags;    /* VRAM_LAYER_* of that layer */
	uint32_t pad;
	uint64_t nbytes;         /* as it will be stored (converted size) */
};

/* The modules of a model, in placement order: by component, then each
 * component's modules in its family's order. */
struct mod_units {
	struct plan_unit *units; /* nunits; names point into names */
	uint32_t nunits;
	uint32_t ntensors;
	uint32_t *tensor_unit;   /* the unit of each tensor */
	uint32_t family[VRAM_COMP_COUNT];
	char *names;
};

/* Groups the n tensors t into modules and orders them.  A unit's layer is
 * its tensors' (a module whose tensors fall in two layers gives two
 * units); flags are VRAM_LAYER_EMBEDDING for a text encoder's embedding
 * modules (its layer is flagged, or it is T5's "shared" or a Llama's
 * "embed_tokens").  0 or -ENOMEM (-EINVAL for a component out of range);
 * *ret owns its arrays (modules_free), untouched on failure. */
int modules_build(const struct mod_tensor *t, uint32_t n, struct mod_units *ret);

/* modules_build over model m's tensors, each counted at its size as a
 * load converting to cast_to from the set cast_from stores it (cast_to 0:
 * as in the file).  Errors as modules_build, or the model getters'. */
int modules_from_model(const vram_model *m, uint32_t cast_to, uint32_t cast_from, struct mod_units *ret);

/* Frees what modules_build allocated; a zeroed *u is fine. */
void modules_free(struct mod_units *u);

/* Compares module paths a and b (lengths given) in family's order: <0,
 * 0, >0.  Segment by segment: numbers numerically and before words,
 * words by the family's registration order (unknown words after known
 * ones, then in natural order), a path before the paths under it. */
int modules_cmp(uint32_t family, const char *a, size_t alen, const char *b, size_t blen);

#endif
