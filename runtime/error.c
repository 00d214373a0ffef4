/* SPDX-License-Identifier: MIT */
#include <errno.h>
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

int rt_verror(int err, const char *fmt, va_list ap)
{
	/* Through a temporary: an argument may be vram_last_error() itself
	 * ("...: %s", vram_last_error()). */
	char tmp[sizeof(last_error)];
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	memcpy(last_error, tmp, sizeof(tmp));
	return err;
}

int rt_error(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	rt_verror(err, fmt, ap);
	va_end(ap);
	return err;
}

void rt_error_clear(void)
{
	last_error[0] = '\0';
}

void rt_error_save(struct rt_saved_error *s)
{
	_Static_assert(sizeof(s->msg) == sizeof(last_error), "a saved error holds a whole message");
	memcpy(s->msg, last_error, sizeof(s->msg));
}

void rt_error_restore(const struct rt_saved_error *s)
{
	memcpy(last_error, s->msg, sizeof(last_error));
}

int rt_struct_out(void *dst, const void *src, size_t size, const char *what)
{
	uint32_t want;

	memcpy(&want, dst, sizeof(want));
	if (want <= sizeof(uint32_t))
		return rt_error(-EINVAL, "%s: struct_size is %u; set it to sizeof the struct", what, want);
	memcpy((char *)dst + sizeof(uint32_t), (const char *)src + sizeof(uint32_t),
	       (want < size ? want : size) - sizeof(uint32_t));
	return 0;
}

int rt_struct_in(void *dst, const void *src, size_t size, size_t min_size, const char *what)
{
	uint32_t have;

	memcpy(&have, src, sizeof(have));
	if (have < min_size)
		return rt_error(-EINVAL, "%s: struct_size is %u; set it to sizeof the struct", what, have);
	memcpy((char *)dst + sizeof(uint32_t), (const char *)src + sizeof(uint32_t),
	       (have < size ? have : size) - sizeof(uint32_t));
	return 0;
}
