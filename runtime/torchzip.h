/* SPDX-License-Identifier: MIT */
/*
 * PyTorch checkpoints (not installed): the zip torch.save writes (.ckpt,
 * .pt, .pth, .bin), read without running anything: the zip's central
 * directory (zip64 too) and local headers checked against the file, the
 * pickle data.pkl run by the restricted unpickler (pickle.h), and every
 * tensor a byte range of a stored data/KEY record: zero copy, streamed like
 * a safetensors tensor.  Tensors that share a storage get ranges that may
 * overlap.  docs/formats.md has the rules.
 */
#ifndef VRAM_RUNTIME_TORCHZIP_H
#define VRAM_RUNTIME_TORCHZIP_H

#include <stdint.h>

#include "runtime/pickle.h"
#include "runtime/reader.h"

#define TZ_MAX_CENTRAL (256u << 20)       /* bytes of the central directory */

/* What a file's first bytes say it is. */
enum tz_kind {
	TZ_ZIP,                  /* "PK\3\4": a zip, maybe torch's */
	TZ_LEGACY,               /* torch.save before 1.6 (or _use_new_zipfile_serialization=False) */
	TZ_PICKLE,               /* a bare pickle */
	TZ_OTHER,
};
/* The kind of a file that starts with the n bytes at head (8 suffice). */
enum tz_kind tz_sniff(const uint8_t *head, size_t n);

struct tz_tensor {
	const char *name;
	uint32_t name_len;
	uint32_t dtype;          /* enum vram_dtype */
	uint32_t ndim;
	uint32_t storage;        /* index into the state dict's storages */
	const uint64_t *shape;
	uint64_t file_offset;    /* absolute */
	uint64_t nbytes;
};

struct torch_file {
	uint64_t file_size;
	const char *archive;     /* the zip's top folder: records are ARCHIVE/NAME */
	uint64_t pickle_offset;  /* data.pkl's bytes in the file */
	uint64_t pickle_size;
	uint64_t data_begin;     /* the tensors' bytes lie in [data_begin, data_end) */
	uint64_t data_end;
	uint32_t nentries;       /* zip entries */
	uint32_t ntensors;
	struct tz_tensor *tensors;   /* the state dict's order */
	struct pk_state_dict sd;     /* names, shapes, storages; sd.root, sd.nskipped */
	struct arena arena;
};

/* Reads the PyTorch checkpoint of s (memory or an opened file) into *t,
 * which must be zeroed.  0; -EINVAL "PATH: invalid PyTorch checkpoint:
 * REASON" (a malformed zip or pickle, a global or opcode outside the
 * list); -ENOTSUP "PATH: unsupported PyTorch checkpoint: REASON" (legacy
 * format, compressed or encrypted records, big-endian, non-contiguous
 * tensors, dtypes vramd lacks); -ENOMEM; -errno from reading.  On failure
 * *t holds nothing.  Free with torch_free. */
int torch_parse(const struct src *s, struct torch_file *t);

/* Frees *t; a zeroed or freed one is fine. */
void torch_free(struct torch_file *t);

#endif
