/* SPDX-License-Identifier: MIT */
/*
 * Checkpoint internals (not installed): struct vram_model as the safetensors
 * reader (safetensors.c) fills it and the indexer (model.c) orders it.
 * Runtime files that walk every tensor (the loader) may read the struct
 * directly instead of going through the public getters; they must treat it
 * as read-only.  docs/safetensors.md describes the rules and the ordering.
 */
#ifndef VRAM_RUNTIME_MODEL_H
#define VRAM_RUNTIME_MODEL_H

#include <stdint.h>
#include <sys/stat.h>

#include "runtime/vram.h"

/* Where a model came from (vram_model_format). */
enum model_format { MODEL_SAFETENSORS, MODEL_GGUF, MODEL_PYTORCH };

/* The reference implementation's header limit (facts.md §3). */
#define ST_MAX_HEADER 100000000ULL
/* serde_json's recursion limit as the reference hits it: a header nested
 * deeper than this many objects/arrays is rejected. */
#define ST_MAX_DEPTH 127u

struct model_tensor {
	const char *name;        /* in vram_model.strings, NUL-terminated */
	const uint64_t *shape;   /* ndim entries in vram_model.dims (NULL if 0) */
	uint64_t begin, end;     /* data_offsets, relative to the data start */
	uint32_t name_len;
	uint32_t dtype;          /* enum vram_dtype */
	uint32_t ndim;
	uint32_t component;      /* enum vram_component (set by model.c) */
	uint32_t layer;          /* index into vram_model.layers (model.c) */
	uint32_t layer_len;      /* the layer's name is name[0, layer_len) */
};

struct model_layer {
	const char *name;        /* in vram_model.layer_names */
	uint32_t component;
	uint32_t first, count;   /* tensors [first, first + count) */
	uint32_t flags;          /* VRAM_LAYER_* */
	uint64_t nbytes;
};

struct vram_model {
	char *path;                      /* as given to vram_model_open */
	int fd;                          /* the file, opened once (O_RDONLY | O_CLOEXEC):
					    every read of it goes through this fd */
	struct stat st;                  /* fstat of fd at open: size and mtime that
					    model_check_unchanged() compares */
	uint64_t file_size;
	uint64_t header_size;            /* safetensors: N, JSON bytes; GGUF: the
					    metadata and infos; PyTorch: data.pkl */
	uint64_t data_offset;            /* 8 + N */
	uint64_t data_size;              /* file_size - data_offset */

	uint32_t ntensors;
	uint32_t nlayers;
	uint32_t nmeta;
	uint32_t format;                 /* enum model_format */
	uint32_t components_set;         /* the reader set every tensor's component
					    (GGUF: names carry no prefixes) */

	struct model_tensor *tensors;    /* model order once model.c ran */
	struct model_layer *layers;      /* unet, clip, vae, other; natural order */
	uint32_t *by_name;               /* tensor indices sorted by strcmp(name) */
	const char **meta;               /* 2 * nmeta: key, value, in file order */
	uint64_t *dims;                  /* every tensor's shape */
	char *strings;                   /* tensor names, metadata keys/values */
	char *layer_names;
	struct vram_component_info comp[VRAM_COMP_COUNT];
};

/* Reads and validates the safetensors file open at m->fd (a regular file
 * of m->st.st_size bytes; facts.md §3) and fills m's sizes, tensors (in
 * file order, component/layer unset), dims, strings and meta.  m must be
 * zeroed apart from path, fd and st; on failure what was allocated stays in
 * m for model_free().  0, -EINVAL with vram_last_error() = "PATH: invalid
 * safetensors: REASON", -ENOMEM, or -errno from pread with "PATH: MESSAGE". */
int st_read(struct vram_model *m);

/* 0 when the file open at m->fd still has the size and modification time
 * it had when m was opened (its bytes then still match the header m holds);
 * -ESTALE with vram_last_error() = "PATH: file changed since it was opened
 * (size A -> B)" or "(modified)", or -errno of fstat. */
int model_check_unchanged(const struct vram_model *m);

/* 0 when m->path still names the file m has open (same device and inode:
 * a stat, the path is not opened); -ESTALE with vram_last_error() = "PATH:
 * file changed since it was opened (the path names another file now)" or
 * "(the path is gone: REASON)". */
int model_check_path(const struct vram_model *m);

/* Reads the checkpoint open at m->fd, whichever format it is (by its first
 * bytes: GGUF and PyTorch zips in model-formats.c, safetensors by
 * st_read), into m as st_read does, setting m->format.  m as st_read
 * wants it.  0, or -errno with vram_last_error() set. */
int model_read(struct vram_model *m);

/* Frees m and everything it owns, and closes its fd.  NULL is fine. */
void model_free(struct vram_model *m);

/* Component of a tensor name by ComfyUI's key prefixes (facts.md §2), and
 * the length of that prefix in *ret_prefix_len (0 for "other"). */
uint32_t model_component(const char *name, size_t *ret_prefix_len);

/* Length of the layer (block) name that tensor name belongs to: the name up
 * to and including the first all-digits dot-separated component after
 * prefix_len bytes, else the name minus its last component, else the whole
 * name. */
size_t model_layer_len(const char *name, size_t prefix_len);

/* Natural order of two byte strings: digit runs compare as numbers
 * (blocks.2 < blocks.10), ties broken bytewise so the order is total.
 * <0, 0, >0 like strcmp. */
int model_natcmp(const char *a, size_t alen, const char *b, size_t blen);

#endif
