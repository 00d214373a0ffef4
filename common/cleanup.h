/* SPDX-License-Identifier: MIT */
/* Scope-bound cleanup in the systemd style: _cleanup_(fn) runs fn(&var) when
 * var leaves scope; TAKE_PTR/TAKE_FD hand ownership on. */
#ifndef VRAM_COMMON_CLEANUP_H
#define VRAM_COMMON_CLEANUP_H

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void freep(void *p) { free(*(void **)p); }
static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}
#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)

/* Defines funcp(type **p), which calls func(*p), for _cleanup_(funcp) on a
 * pointer to type; func must accept NULL (as destructors here do). */
#define DEFINE_CLEANUP_FUNC(type, func) \
	static inline void func##p(type **p) { func(*p); }

#define TAKE_PTR(p) ({ __typeof__(p) _p = (p); (p) = NULL; _p; })
#define TAKE_FD(fd) ({ int _fd = (fd); (fd) = -1; _fd; })

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
