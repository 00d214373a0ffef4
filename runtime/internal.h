/* SPDX-License-Identifier: MIT */
/* libvram internals shared between runtime files (not installed). */
#ifndef VRAM_RUNTIME_INTERNAL_H
#define VRAM_RUNTIME_INTERNAL_H

#include <stdarg.h>

#include "runtime/vram.h"

/* Sets this thread's vram_last_error() to the formatted message and returns
 * err (a negative errno), so that failures read `return vram_error(-EINVAL,
 * "...", ...);`.  The formatted message is truncated at 1 KiB. */
int vram_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int vram_verror(int err, const char *fmt, va_list ap);
/* Clears the message (start of a public call that may fail). */
void vram_error_clear(void);

#endif
