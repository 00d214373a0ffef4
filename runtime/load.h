/* SPDX-License-Identifier: MIT */
/* libvram internals: a loaded model (load.c), used by the pager. */
#ifndef VRAM_RUNTIME_LOAD_H
#define VRAM_RUNTIME_LOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/internal.h"

/* Target size of one grant of a loaded model (a chunk of whole layers).
 * A reclaimable load's chunks aim at a 32nd of their device at most
 * (reclaim gives a chunk back whole, and only when no layer of it is in
 * use), and not below LOAD_CHUNK_MIN nor four of the device's allocation
 * granules (a grant is rounded up to one: smaller chunks would waste much
 * of theirs). */
#define LOAD_CHUNK_TARGET (256ull << 20)
#define LOAD_CHUNK_MIN (4ull << 20)
/* Reads of a load that lands every byte straight in host memory (no
 * staging), unless the caller chose: 16 MiB x 32 in flight.  Bytes in
 * flight cost no memory there, and the disks measured want more of them
 * than the engine's defaults (docs/benchmarks.md: fio's best shapes had
 * 0.5-1 GiB in flight; fastsafetensors reads 16 MiB x 16 threads). */
#define LOAD_DIRECT_CHUNK (16ull << 20)
#define LOAD_DIRECT_DEPTH 32u

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
	uint32_t pagers;         /* pagers over it: their tables are its grants as they
				    were, so vram_loaded_make_private refuses meanwhile */
};

#endif
