/* SPDX-License-Identifier: MIT */
/* libvram internals shared between runtime files (not installed). */
#ifndef VRAM_RUNTIME_INTERNAL_H
#define VRAM_RUNTIME_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include "runtime/vram.h"

/* Sets this thread's vram_last_error() to the formatted message and returns
 * err (a negative errno), so that failures read `return rt_error(-EINVAL,
 * "...", ...);`.  The formatted message is truncated at 1 KiB. */
int rt_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int rt_verror(int err, const char *fmt, va_list ap);
/* Clears the message (start of a public call that may fail). */
void rt_error_clear(void);

/* The thread's last error kept across cleanup that may overwrite it: the
 * void release functions (vram_unload, vram_pager_free, ...) save it on
 * entry and restore it on return, so a caller's failure path can release
 * what it holds and still report its own error. */
struct rt_saved_error {
	char msg[1024];
};
void rt_error_save(struct rt_saved_error *s);
void rt_error_restore(const struct rt_saved_error *s);

/* Structs that start with struct_size and may grow.
 * rt_struct_out: copies the fields of src (size bytes) that the caller's
 * struct at dst has room for (by its struct_size), keeping that
 * struct_size.  rt_struct_in: copies the caller's src into dst (size
 * bytes, defaults already in it) as far as both reach; src must hold at
 * least the fields up to min_size (the struct's first published size).
 * Both: 0, or -EINVAL naming `what` when struct_size is too small. */
int rt_struct_out(void *dst, const void *src, size_t size, const char *what);
int rt_struct_in(void *dst, const void *src, size_t size, size_t min_size, const char *what);

#endif
