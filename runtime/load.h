/* SPDX-License-Identifier: MIT */
/* libvram internals: a loaded model (load.c), used by the pager. */
#ifndef VRAM_RUNTIME_LOAD_H
#define VRAM_RUNTIME_LOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/internal.h"

/* Conversion while loading: checks cast_to / cast_from (0: the default
 * set) and fills *ret_from with the effective set; 0 or -EINVAL with the
 * error set.  cast_to 0 means no conversion. */
int load_cast_check(uint32_t cast_to, uint32_t cast_from, uint32_t *ret_from);
/* Whether a load converting to cast_to from the set from converts a tensor
 * of dtype. */
bool load_casts(uint32_t dtype, uint32_t cast_to, uint32_t from);
/* The size of a tensor of dtype and nbytes as such a load stores it
 * (nbytes when it is not converted). */
uint64_t load_cast_nbytes(uint32_t dtype, uint64_t nbytes, uint32_t cast_to, uint32_t from);

/* Target size of one grant of a loaded model (a chunk of whole layers). */
#define LOAD_CHUNK_TARGET (256ull << 20)

struct loaded_grant {
	vram_grant *grant;       /* NULL once dropped by reclaim */
	uint32_t device;         /* broker device index */
	uint32_t component;
};

struct loaded_tensor {
	uint32_t grant;          /* index into grants (whose device is where it is now) */
	uint32_t dtype;          /* as loaded (converted or the file's) */
	uint64_t offset;         /* of the first byte in the grant */
	uint64_t nbytes;         /* as loaded */
};

struct vram_loaded {
	vram_client *client;
	const vram_model *model;
	uint32_t ntensors;
	uint32_t ngrants;
	struct loaded_tensor *tensors;
	struct loaded_grant *grants;
	struct vram_load_stats stats;
	uint32_t converted;      /* tensors converted: sizes differ from the file's */
};

#endif
