/* SPDX-License-Identifier: MIT */
/*
 * The restricted unpickler of PyTorch checkpoints (not installed): a small
 * pickle machine in C that accepts what torch.save writes for a state dict
 * and nothing else.  It knows a fixed list of globals (those of
 * torch.load(weights_only=True) a state dict needs: collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2/_v3, _rebuild_parameter(_with_state),
 * the storage types, torch.storage.UntypedStorage, the torch dtypes,
 * torch.Size, _codecs.encode) as tags; nothing is imported, looked up or
 * called, so nothing in the file can run.  Any other global or opcode is
 * refused, naming it.  docs/formats.md has the rules.
 */
#ifndef VRAM_RUNTIME_PICKLE_H
#define VRAM_RUNTIME_PICKLE_H

#include <stdint.h>

#include "runtime/reader.h"

#define PK_MAX_PICKLE (256u << 20)        /* bytes of data.pkl */
#define PK_MAX_MEMORY (1024ull << 20)     /* the machine's own memory */
#define PK_MAX_DIMS 64u

/* A storage a tensor views: the zip record data/KEY. */
struct pk_storage {
	const char *key;
	uint32_t dtype;          /* enum vram_dtype; PK_UNTYPED for UntypedStorage */
	uint32_t pad;
	uint64_t numel;          /* elements (bytes for an untyped storage) */
	uint64_t nbytes;         /* numel * element size */
};
#define PK_UNTYPED 0xffffffffu

struct pk_tensor {
	const char *name;
	uint32_t name_len;
	uint32_t dtype;          /* enum vram_dtype */
	uint32_t ndim;
	uint32_t storage;        /* index into storages */
	const uint64_t *shape;
	uint64_t offset;         /* bytes into the storage */
	uint64_t nbytes;
};

struct pk_state_dict {
	struct pk_tensor *tensors;   /* in the dict's order */
	struct pk_storage *storages; /* in order of first use */
	uint32_t ntensors, nstorages;
	uint32_t nskipped;           /* entries whose value is not a tensor */
	uint32_t pad;
	const char *root;            /* "" or the key the state dict was found under */
	struct arena arena;          /* owns everything above */
};

/* Unpickles buf (len bytes, the record called `what` of the file at path,
 * e.g. "archive/data.pkl") and picks the state dict as ComfyUI does: the
 * value of "state_dict" when the top-level dict has that key, else the
 * only value when there is one and it is a dict, else the top-level dict.
 * Its tensor values become *ret (zeroed by the caller); other values are
 * counted in nskipped.  0; -EINVAL "PATH: invalid PyTorch checkpoint:
 * WHAT byte N: REASON" for a malformed or refused pickle (a global or
 * opcode outside the list, named); -ENOTSUP "PATH: unsupported PyTorch
 * checkpoint: ..." for a valid one vramd cannot serve (a non-contiguous
 * tensor, a dtype vramd lacks); -ENOMEM.  On failure *ret holds nothing. */
int pk_load(const uint8_t *buf, size_t len, const char *path, const char *what, struct pk_state_dict *ret);

/* Frees *sd; a zeroed or freed one is fine. */
void pk_free(struct pk_state_dict *sd);

#endif
