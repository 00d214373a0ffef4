/* SPDX-License-Identifier: MIT */
/*
 * Where the runs of a loaded bucket of tensors sit in its memory: one
 * function, used by the loader for its grants and by the broker for the
 * shared copies it fills, so that both lay out the same runs the same way
 * (docs/design.md, "The loader lays grants out as windows of the file").
 */
#ifndef VRAM_COMMON_LAYOUT_H
#define VRAM_COMMON_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>

/* O_DIRECT granularity: a window run's region starts on it, and the run
 * begins at the same offset modulo LAYOUT_PAGE as in the file. */
#define LAYOUT_PAGE 4096u
/* A solo run (one tensor, staged or converted) starts on this boundary:
 * any element, and vectorised kernels. */
#define LAYOUT_TENSOR_ALIGN 256u

struct layout_run {
	uint64_t file_off, len;  /* in the file */
	uint64_t olen;           /* bytes in memory (converted size; len for window runs) */
	bool solo;
};

/* Gives each run its region (ret_region[i], from the start of the memory)
 * and returns the bytes the memory needs (a multiple of LAYOUT_PAGE, at
 * least one page).  A run's data starts at layout_data(run, region). */
uint64_t layout_regions(const struct layout_run *runs, uint32_t n, uint64_t *ret_region);

/* Where the run's first byte lands. */
static inline uint64_t layout_data(const struct layout_run *r, uint64_t region)
{
	return r->solo ? region : region + r->file_off % LAYOUT_PAGE;
}

#endif
