/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include "runtime/internal.h"

static __thread char last_error[1024];

uint32_t vram_version(void)
{
	return VRAM_VERSION;
}

const char *vram_last_error(void)
{
	return last_error;
}

int vram_verror(int err, const char *fmt, va_list ap)
{
	/* Through a temporary: an argument may be vram_last_error() itself
	 * ("...: %s", vram_last_error()). */
	char tmp[sizeof(last_error)];
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	memcpy(last_error, tmp, sizeof(tmp));
	return err;
}

int vram_error(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vram_verror(err, fmt, ap);
	va_end(ap);
	return err;
}

void vram_error_clear(void)
{
	last_error[0] = '\0';
}
