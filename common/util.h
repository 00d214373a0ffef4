/* SPDX-License-Identifier: MIT */
/* Small helpers shared by broker, runtime and tools. */
#ifndef VRAM_COMMON_UTIL_H
#define VRAM_COMMON_UTIL_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vramd's wire ABI is little-endian; big-endian hosts need byte swapping"
#endif

/* Parses a size: digits with an optional fraction, then an optional unit
 * B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal), case as
 * written here (k/K accepted for kilo).  Spaces between number and unit are
 * allowed.  0 or -EINVAL (not a size / unknown unit) / -ERANGE (overflow). */
int size_parse(const char *s, uint64_t *ret);

/* Writes size in binary units with up to 2 decimals ("8.00 GiB", "512 B").
 * Returns buf. */
char *size_format(uint64_t size, char *buf, size_t len);

/* strlcpy semantics: always NUL-terminates when len > 0; returns strlen(src). */
size_t str_copy(char *dst, const char *src, size_t len);

/* true when s (NUL-terminated) has no control characters: a name or text
 * that may go into logs, JSON and status lines as it is. */
bool text_printable(const char *s);

/* 1 if the first n bytes of p are all zero. */
int mem_is_zero(const void *p, size_t n);

/* Writes a message to err (when err and errlen are non-zero) and returns r,
 * so that a function reporting through an err buffer can write
 * `return errf(err, errlen, -EINVAL, "...", ...)`. */
int errf(char *err, size_t errlen, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);

/* Round x up to a multiple of align (a power of two or not); -1 on overflow
 * is reported as 0 with *overflow set. */
static inline uint64_t round_up_u64(uint64_t x, uint64_t align, int *overflow)
{
	uint64_t r = x % align;
	if (r == 0)
		return x;
	if (x > UINT64_MAX - (align - r)) {
		*overflow = 1;
		return 0;
	}
	return x + (align - r);
}

#endif
