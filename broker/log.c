/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>

#include "broker/log.h"

int broker_log_level = 1;

void broker_log(int level, const char *fmt, ...)
{
	static const char *const prefix[] = { "<3>", "<6>", "<7>" };
	va_list ap;
	if (level > broker_log_level)
		return;
	/* sd-daemon(3) prefixes: journald reads the priority from them. */
	fputs(prefix[level < 0 ? 0 : level > 2 ? 2 : level], stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}
