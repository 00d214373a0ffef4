/* SPDX-License-Identifier: MIT */
/*
 * The strict GGUF reader (not installed): versions 2 and 3, little-endian,
 * every length and offset checked against the file, the rules of ggml's
 * own reader (gguf.cpp) where it has one.  Tensors are described, never
 * read: quantised types keep their stored blocks.  docs/formats.md lists
 * the rules and the reasons given.
 */
#ifndef VRAM_RUNTIME_GGUF_H
#define VRAM_RUNTIME_GGUF_H

#include <stdint.h>

#include "runtime/reader.h"

#define GGUF_MAX_DIMS 4u                 /* GGML_MAX_DIMS */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_KEY 65535u              /* the format's limit on keys */
#define GGUF_MAX_NAME 65535u             /* tensor names (ggml: 64) */
/* Scalar string values longer than this are described, not kept. */
#define GGUF_MAX_KEPT_STRING (1u << 20)

/* Metadata value types (GGUF_TYPE_* in ggml). */
enum gguf_vtype {
	GGUF_VT_UINT8 = 0, GGUF_VT_INT8 = 1, GGUF_VT_UINT16 = 2, GGUF_VT_INT16 = 3,
	GGUF_VT_UINT32 = 4, GGUF_VT_INT32 = 5, GGUF_VT_FLOAT32 = 6, GGUF_VT_BOOL = 7,
	GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9, GGUF_VT_UINT64 = 10, GGUF_VT_INT64 = 11,
	GGUF_VT_FLOAT64 = 12,
	GGUF_VT_COUNT
};

/* A tensor type of ggml: elements per block and bytes per block (1 and
 * the element size for plain types). */
struct gguf_type_info {
	const char *name;        /* "Q4_K"; NULL for an id ggml never used */
	uint32_t block;          /* 0 for a type removed from GGUF files */
	uint32_t bytes;
};
#define GGUF_TYPE_COUNT 42u      /* ids 0..41 (ggml/gguf-py 0.19) */

/* The type with ggml id `type`, or NULL when out of range. */
const struct gguf_type_info *gguf_type(uint32_t type);

/* A metadata entry.  value is text for people: numbers in decimal,
 * floats with %.9g / %.17g, bools true/false, strings as stored (up to
 * GGUF_MAX_KEPT_STRING bytes, else "<string of N bytes>"), numeric arrays
 * of up to 16 elements as "[1, 2, 3]", other arrays "<array of N TYPE>". */
struct gguf_kv {
	const char *key;
	const char *value;
	uint32_t type;           /* enum gguf_vtype */
	uint32_t arr_type;       /* element type of an array */
	uint64_t arr_len;
	uint64_t u;              /* integer and bool scalars, as unsigned */
};

struct gguf_tensor {
	const char *name;
	uint32_t name_len;
	uint32_t type;           /* ggml type id, gguf_type() describes it */
	uint32_t ndim;
	uint32_t pad;
	uint64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] is the row; 1 past ndim */
	uint64_t nelem;
	uint64_t offset;         /* relative to data_offset */
	uint64_t nbytes;
};

struct gguf_file {
	uint32_t version;
	uint32_t alignment;
	uint64_t file_size;
	uint64_t info_end;       /* end of the tensor infos */
	uint64_t data_offset;    /* info_end rounded up to the alignment */
	uint64_t data_size;      /* padded end of the last tensor */
	uint64_t nkv, ntensors;
	struct gguf_kv *kv;          /* file order */
	struct gguf_tensor *tensors; /* file order (= offset order) */
	struct arena arena;          /* owns everything above */
};

/* Parses and validates the GGUF file of s (a memory buffer or an opened
 * file) into *g, which must be zeroed.  0; -EINVAL with vram_last_error()
 * = "PATH: invalid GGUF: REASON"; -ENOTSUP "PATH: unsupported GGUF: REASON"
 * (big-endian, version 1 or above 3); -ENOMEM; -errno from reading.  On
 * failure *g holds nothing (freed).  Free with gguf_free. */
int gguf_parse(const struct src *s, struct gguf_file *g);

/* The vramd dtype (enum vram_dtype) of ggml type `type`: plain types are
 * the safetensors dtypes, quantised ones VRAM_DTYPE_Q4_0 ...; and back.
 * VRAM_DTYPE_COUNT / UINT32_MAX when there is none. */
uint32_t gguf_vram_dtype(uint32_t type);
uint32_t gguf_ggml_type(uint32_t dtype);

/* Frees what gguf_parse allocated; a zeroed or freed *g is fine. */
void gguf_free(struct gguf_file *g);

/* The metadata entry called key, or NULL. */
const struct gguf_kv *gguf_find_kv(const struct gguf_file *g, const char *key);

/* "MOSTLY_Q4_K_M"-style name of general.file_type (llama.cpp's
 * LlamaFileType) without the MOSTLY_ prefix ("Q4_K_M", "F16", "ALL_F32"),
 * or NULL for a value it does not know. */
const char *gguf_file_type_name(uint64_t ftype);

/* Name of a metadata value type ("UINT32"), "?" when out of range. */
const char *gguf_vtype_name(uint32_t t);

#endif
