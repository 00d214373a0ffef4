/* SPDX-License-Identifier: MIT */
#include "common/util.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const struct {
	const char *name;
	uint64_t mult;
} size_units[] = {
	{ "", 1 }, { "B", 1 },
	{ "KiB", 1ull << 10 }, { "MiB", 1ull << 20 }, { "GiB", 1ull << 30 }, { "TiB", 1ull << 40 },
	{ "KB", 1000ull }, { "kB", 1000ull }, { "MB", 1000000ull }, { "GB", 1000000000ull },
	{ "TB", 1000000000000ull },
};

int size_parse(const char *s, uint64_t *ret)
{
	const char *p = s;
	uint64_t ip = 0;
	int digits = 0;

	if (!s)
		return -EINVAL;
	while (isspace((unsigned char)*p))
		p++;
	while (isdigit((unsigned char)*p)) {
		unsigned d = (unsigned)(*p - '0');
		if (ip > (UINT64_MAX - d) / 10)
			return -ERANGE;
		ip = ip * 10 + d;
		p++;
		digits++;
	}
	/* The fraction is kept as an exact decimal: numerator / 10^fdigits. */
	uint64_t frac = 0, fscale = 1;
	if (*p == '.') {
		p++;
		while (isdigit((unsigned char)*p)) {
			if (fscale < 1000000000000ull) {
				frac = frac * 10 + (uint64_t)(*p - '0');
				fscale *= 10;
			}
			p++;
			digits++;
		}
	}
	if (!digits)
		return -EINVAL;
	while (isspace((unsigned char)*p))
		p++;
	const char *unit = p;
	size_t ulen = strlen(unit);
	while (ulen && isspace((unsigned char)unit[ulen - 1]))
		ulen--;
	for (size_t i = 0; i < sizeof(size_units) / sizeof(size_units[0]); i++) {
		if (strlen(size_units[i].name) != ulen || strncmp(unit, size_units[i].name, ulen))
			continue;
		uint64_t m = size_units[i].mult;
		if (ip && m > UINT64_MAX / ip)
			return -ERANGE;
		uint64_t v = ip * m;
		/* frac * m / fscale without overflow: m <= 2^40, frac < 10^12 */
		long double f = (long double)frac * (long double)m / (long double)fscale;
		uint64_t fb = (uint64_t)llroundl(f);
		if (frac && m == 1 && fb != f)
			return -EINVAL; /* "1.5" bytes is not a size */
		if (v > UINT64_MAX - fb)
			return -ERANGE;
		*ret = v + fb;
		return 0;
	}
	return -EINVAL;
}

char *size_format(uint64_t size, char *buf, size_t len)
{
	static const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	int i = 0;
	long double v = (long double)size;
	while (v >= 1024.0L && i < 5) {
		v /= 1024.0L;
		i++;
	}
	if (i == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)size);
	else
		snprintf(buf, len, "%.2Lf %s", v, u[i]);
	return buf;
}

size_t str_copy(char *dst, const char *src, size_t len)
{
	size_t n = strlen(src);
	if (len) {
		size_t c = n < len - 1 ? n : len - 1;
		memcpy(dst, src, c);
		dst[c] = '\0';
	}
	return n;
}

bool text_printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

int mem_is_zero(const void *p, size_t n)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < n; i++)
		if (c[i])
			return 0;
	return 1;
}

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int errf(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;
	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}
