/* SPDX-License-Identifier: MIT */
/*
 * dtypes (not installed): the dtype table behind vram_dtype_name(),
 * vram_dtype_bits() and vram_dtype_block() (safetensors' dtypes, then
 * GGUF's block-quantised ones), and the rules of conversion
 * while loading (which dtypes convert, and the room a converted tensor
 * takes).  The reader, the loader, the planner, the streaming engine, the
 * pager and the CUDA copier all take them from here; this file depends on
 * the public header and runtime/internal.h only.
 */
#ifndef VRAM_RUNTIME_DTYPE_H
#define VRAM_RUNTIME_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/vram.h"

/* The dtypes conversion handles (kernels/): F8_E4M3, F8_E5M2, F16, BF16,
 * F32, as a set of (1u << dtype) bits. */
#define DTYPE_CASTABLE ((1u << VRAM_DTYPE_F8_E4M3) | (1u << VRAM_DTYPE_F8_E5M2) | (1u << VRAM_DTYPE_F16) | \
			(1u << VRAM_DTYPE_BF16) | (1u << VRAM_DTYPE_F32))

/* The dtypes safetensors files hold: BOOL .. U64.  The ones after them are
 * GGUF's block-quantised types, stored and loaded as their blocks and
 * never converted. */
#define DTYPE_ST_COUNT (VRAM_DTYPE_U64 + 1u)

/* Bytes per element of dtype: bits / 8, so 0 for the sub-byte dtypes (F4,
 * F6_*), the block-quantised ones and a dtype out of range. */
uint32_t dtype_size(uint32_t dtype);

/* Whether dtype is one of GGUF's block-quantised types (Q4_0 .. Q1_0). */
bool dtype_quantised(uint32_t dtype);

/* The safetensors dtype (below DTYPE_ST_COUNT) whose name is the len
 * bytes at name (not NUL-terminated), compared exactly, or -1.  dtype_find_nocase: the same ignoring ASCII
 * case (for "dtypes are case-sensitive: F16" hints). */
int dtype_find(const char *name, size_t len);
int dtype_find_nocase(const char *name, size_t len);

/* Conversion while loading: checks cast_to / cast_from (0: the default set,
 * VRAM_LOAD_CAST_DEFAULT_FROM) and fills *ret_from with the effective set.
 * 0, or -EINVAL with vram_last_error() naming the dtype refused.  cast_to
 * 0 means no conversion (any cast_from is then accepted). */
int dtype_cast_check(uint32_t cast_to, uint32_t cast_from, uint32_t *ret_from);

/* Whether a load converting to cast_to from the set from converts a
 * tensor of dtype. */
bool dtype_casts(uint32_t dtype, uint32_t cast_to, uint32_t from);

/* The size of a tensor of dtype and nbytes as such a load stores it
 * (nbytes when it is not converted). */
uint64_t dtype_cast_nbytes(uint32_t dtype, uint64_t nbytes, uint32_t cast_to, uint32_t from);

#endif
