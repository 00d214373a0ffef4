/* SPDX-License-Identifier: MIT */
/*
 * What the checkpoint readers share (not installed): a byte source that is
 * either a file read with pread or a buffer in memory (the entry point for
 * fuzzing), an arena for the strings and arrays a parse hands out, names
 * and shapes for messages, UTF-8 and CRC-32 checks.  Used by gguf.c,
 * torchzip.c and pickle.c; safetensors.c (which parses with jansson) uses
 * the byte source, the messages and the UTF-8 check.
 */
#ifndef VRAM_RUNTIME_READER_H
#define VRAM_RUNTIME_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A file's bytes: mem when not NULL (size bytes), else fd (not owned)
 * read with pread.  path names it in messages. */
struct src {
	const char *path;
	const uint8_t *mem;
	int fd;
	uint64_t size;
};

/* A source over len bytes at buf, called path in messages (NULL: "<memory>"). */
struct src src_mem(const void *buf, size_t len, const char *path);

/* A source reading with pread the regular file open at fd, size bytes as
 * fstat gave them, called path in messages.  The fd stays the caller's
 * (the model's: the checkpoint is opened once, in vram_model_open); the
 * source needs no closing. */
struct src src_fd(int fd, uint64_t size, const char *path);

/* Reads len bytes at off into dst.  The caller has checked that off + len
 * is within s->size.  0; -EIO "PATH: reading WHAT: file shrank while being
 * read" when the file ends early; -errno "PATH: reading WHAT: MESSAGE". */
int src_read(const struct src *s, void *dst, size_t len, uint64_t off, const char *what);

/* ---- arena: many small allocations freed at once ---------------------- */

struct arena_block;
struct arena {
	struct arena_block *head;
	size_t used, cap;        /* in head */
	size_t total;            /* bytes of all blocks */
};

/* n bytes aligned to 8 from a, zeroed; NULL when out of memory. */
void *arena_alloc(struct arena *a, size_t n);
/* A NUL-terminated copy of s[0, n); NULL when out of memory. */
char *arena_strndup(struct arena *a, const char *s, size_t n);
/* Frees every block; a is empty again. */
void arena_free(struct arena *a);

/* ---- messages ---------------------------------------------------------- */

/* A name in double quotes for a message: control bytes as \xNN (and all
 * bytes above 0x7f when the name is not UTF-8), '"' and '\' escaped, cut
 * after QNAME_MAX bytes (on a UTF-8 boundary) with "...". */
#define QNAME_MAX 160
struct qname {
	char s[QNAME_MAX * 4 + 8];
};
const char *qname(struct qname *b, const char *s, size_t n);
/* The same for text that is JSON as written (a safetensors header's): its
 * '\' escapes are kept as they are, not escaped again. */
const char *qname_json(struct qname *b, const char *s, size_t n);

/* "[2, 4]": a shape for a message, the first 8 entries at most. */
const char *fmt_shape(char *buf, size_t len, const uint64_t *dims, uint32_t ndim);

/* ---- checks ------------------------------------------------------------ */

/* Whether s[0, n) is strict UTF-8: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
bool utf8_valid(const uint8_t *s, size_t n);
/* The offset of the first byte of s[0, n) where strict UTF-8 ends (the
 * first byte of a sequence that is not UTF-8 or is cut off), SIZE_MAX
 * when it all is. */
size_t utf8_invalid_at(const uint8_t *s, size_t n);

/* CRC-32 (ISO-HDLC, as zip uses) of n bytes, continuing from crc (0 to
 * start). */
uint32_t crc32_update(uint32_t crc, const void *buf, size_t n);

#endif
