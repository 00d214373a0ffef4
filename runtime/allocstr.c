/* SPDX-License-Identifier: MIT */
/*
 * Expert-mode allocation strings ("cuda:0,2.5gb;cpu,*", "cuda:0,70%;cuda:1,30%",
 * "cuda:0,0.1;cpu,0.5"): parsing and validation (alloc_parse) and the
 * conversion into per-device byte quotas for one component (alloc_quotas).
 *
 * Unlike DisTorch2, the form is decided by each value on its own (a unit, a
 * "%", or a bare number), never by letters anywhere in the string, and every
 * mistake is an error naming the entry, before any byte is read.  All
 * arithmetic is exact integer arithmetic (no float round trip); docs/plan.md
 * has the rules.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/internal.h"
#include "runtime/plan.h"

/* Largest integer part of a percentage: keeps every product in 128 bits
 * (component bytes < 2^64, a sum of at most 64 values < 2^56). */
#define ALLOC_PERCENT_MAX 1000000ull

/* Binary units, case-insensitive, as in DisTorch2 (plus t/tb/tib, which it
 * silently read as bytes). */
static const struct {
	const char *name;
	unsigned shift;
} alloc_units[] = {
	{ "b", 0 },
	{ "k", 10 }, { "kb", 10 }, { "kib", 10 },
	{ "m", 20 }, { "mb", 20 }, { "mib", 20 },
	{ "g", 30 }, { "gb", 30 }, { "gib", 30 },
	{ "t", 40 }, { "tb", 40 }, { "tib", 40 },
};

static const char *form_noun(enum alloc_form f)
{
	switch (f) {
	case ALLOC_FORM_BYTES: return "a size";
	case ALLOC_FORM_RATIO: return "a percentage";
	case ALLOC_FORM_FRACTION: return "a fraction";
	default: return "a remainder";
	}
}

/* Writes fixed-point v (ALLOC_FRAC_ONE = 1) without trailing zeros. */
static void fixed_format(uint64_t v, char *buf, size_t len)
{
	uint64_t ip = v / ALLOC_FRAC_ONE, fp = v % ALLOC_FRAC_ONE;
	if (!fp) {
		snprintf(buf, len, "%llu", (unsigned long long)ip);
		return;
	}
	int digits = ALLOC_FRAC_DIGITS;
	while (fp % 10 == 0) {
		fp /= 10;
		digits--;
	}
	snprintf(buf, len, "%llu.%0*llu", (unsigned long long)ip, digits, (unsigned long long)fp);
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* "cuda:0, cuda:1, cpu" into buf. */
static void names_list(const char *const *names, uint32_t n, char *buf, size_t len)
{
	size_t off = 0;
	buf[0] = '\0';
	for (uint32_t i = 0; i < n && off < len; i++) {
		int w = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", names[i]);
		if (w < 0)
			break;
		off += (size_t)w;
	}
}

struct alloc_value {
	enum alloc_form form;
	uint64_t bytes;
	uint64_t fixed;
};

/* Classifies and converts one value (not "*").  0, or -EINVAL with the
 * reason (after the quoted value) in why. */
static int value_parse(const char *v, struct alloc_value *ret, char *why, size_t whylen)
{
	const char *p = v;
	uint64_t ip = 0, frac = 0, fscale = ALLOC_FRAC_ONE;
	int digits = 0, overflow = 0;

	if (*p == '-' && (isdigit((unsigned char)p[1]) || p[1] == '.')) {
		snprintf(why, whylen, "is negative");
		return -EINVAL;
	}
	while (isdigit((unsigned char)*p)) {
		unsigned d = (unsigned)(*p++ - '0');
		if (ip > (UINT64_MAX - d) / 10)
			overflow = 1;
		else
			ip = ip * 10 + d;
		digits++;
	}
	if (*p == '.') {
		p++;
		while (isdigit((unsigned char)*p)) {
			/* digits past ALLOC_FRAC_DIGITS are ignored */
			if (fscale > 1) {
				fscale /= 10;
				frac += (uint64_t)(*p - '0') * fscale;
			}
			p++;
			digits++;
		}
	}
	if (!digits)
		goto not_a_value;
	while (isspace((unsigned char)*p))
		p++;

	if (*p == '\0') {
		/* A bare number is a fraction of the device's total memory. */
		if (overflow || ip > 1 || (ip == 1 && frac)) {
			/* DisTorch2 read bare numbers as bytes in some strings */
			snprintf(why, whylen, "is a fraction of the device's memory and must be between 0 and 1"
				 " (%sb is bytes, %s%% a ratio)", v, v);
			return -EINVAL;
		}
		ret->form = ALLOC_FORM_FRACTION;
		ret->fixed = ip * ALLOC_FRAC_ONE + frac;
		return 0;
	}
	if (p[0] == '%' && p[1] == '\0') {
		if (overflow || ip > ALLOC_PERCENT_MAX) {
			snprintf(why, whylen, "is too large (at most 1000000%%)");
			return -EINVAL;
		}
		ret->form = ALLOC_FORM_RATIO;
		ret->fixed = ip * ALLOC_FRAC_ONE + frac;
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(alloc_units); i++) {
		if (strcasecmp(p, alloc_units[i].name))
			continue;
		unsigned shift = alloc_units[i].shift;
		if (shift == 0 && frac) {
			snprintf(why, whylen, "is not a whole number of bytes");
			return -EINVAL;
		}
		/* ip << shift plus frac's share, rounded down to whole bytes */
		unsigned __int128 b = ((unsigned __int128)ip << shift) +
			(((unsigned __int128)frac << shift) / ALLOC_FRAC_ONE);
		if (overflow || b > UINT64_MAX) {
			snprintf(why, whylen, "is too large");
			return -EINVAL;
		}
		ret->form = ALLOC_FORM_BYTES;
		ret->bytes = (uint64_t)b;
		return 0;
	}
not_a_value:
	/* DisTorch2's log suggests "cpu,5gb*"; here "*" stands alone */
	snprintf(why, whylen, "is not a size, a percentage or a fraction%s",
		 strchr(v, '*') ? " (\"*\" takes the remainder on its own)" : "");
	return -EINVAL;
}

/* Parses and validates an allocation string (contract in plan.h): 0 with
 * *ret filled, or -EINVAL naming the entry (*ret untouched), -ENOMEM. */
int alloc_parse(const char *what, const char *s, const char *const *names, uint32_t ndevs,
		struct alloc_spec *ret)
{
	_cleanup_free_ char *buf = NULL;
	struct alloc_spec spec = { .form = ALLOC_FORM_NONE, .star = -1 };
	uint32_t form_entry = 0;   /* 1-based entry that fixed the form */
	char devs[512];

	if (!what || !s || !ret || (ndevs && !names) || ndevs > PLAN_MAX_DEVICES)
		return rt_error(-EINVAL, "alloc_parse: bad arguments");
	buf = strdup(s);
	if (!buf)
		return rt_error(-ENOMEM, "%s allocation: out of memory", what);
	names_list(names, ndevs, devs, sizeof(devs));

#define FAIL(k, ...) do { \
		char why_[512]; \
		snprintf(why_, sizeof(why_), __VA_ARGS__); \
		return rt_error(-EINVAL, "%s allocation \"%s\": entry %u: %s", what, s, (unsigned)(k), why_); \
	} while (0)

	uint32_t k = 0;
	char *save = buf;
	for (;;) {
		char *next = strchr(save, ';');
		if (next)
			*next = '\0';
		char *entry = trim(save);
		k++;

		if (!*entry)
			FAIL(k, "is empty (expected device,value)");
		char *comma = strchr(entry, ',');
		if (!comma)
			FAIL(k, "\"%s\" has no value (expected device,value)", entry);
		if (strchr(comma + 1, ','))
			FAIL(k, "\"%s\" has more than one \",\" (expected device,value)", entry);
		*comma = '\0';
		char *dev = trim(entry), *val = trim(comma + 1);
		if (!*dev)
			FAIL(k, "no device before \",\" (expected device,value)");
		if (!*val)
			FAIL(k, "no value for %s (expected a size, a percentage, a fraction or \"*\")", dev);

		uint32_t d;
		for (d = 0; d < ndevs; d++)
			if (!strcmp(names[d], dev))
				break;
		if (d == ndevs)
			FAIL(k, "\"%s\" is not a device of this broker (devices: %s)", dev, devs);
		for (uint32_t j = 0; j < spec.n; j++)
			if (spec.e[j].dev == d)
				FAIL(k, "%s is already given in entry %u", dev, j + 1);

		/* spec.n < ndevs <= PLAN_MAX_DEVICES: devices are unique */
		struct alloc_entry *e = &spec.e[spec.n];
		memset(e, 0, sizeof(*e));
		e->dev = d;
		if (!strcmp(val, "*")) {
			if (spec.star >= 0)
				FAIL(k, "a second \"*\" (entry %d already takes the remainder)", spec.star + 1);
			e->star = 1;
			spec.star = (int32_t)spec.n;
		} else {
			struct alloc_value v = { 0 };
			char why[256];
			if (value_parse(val, &v, why, sizeof(why)) < 0)
				FAIL(k, "\"%s\" %s", val, why);
			if (spec.form == ALLOC_FORM_NONE) {
				spec.form = v.form;
				form_entry = k;
			} else if (spec.form != v.form) {
				FAIL(k, "\"%s\" is %s but entry %u is %s (one string uses one form)",
				     val, form_noun(v.form), form_entry, form_noun(spec.form));
			}
			e->bytes = v.bytes;
			e->fixed = v.fixed;
		}
		spec.n++;
		if (!next)
			break;
		save = next + 1;
	}
#undef FAIL

	if (spec.form == ALLOC_FORM_RATIO) {
		uint64_t sum = 0;   /* < 64 * 10^15: no overflow */
		for (uint32_t i = 0; i < spec.n; i++)
			sum += spec.e[i].fixed;
		char sbuf[64];
		fixed_format(sum, sbuf, sizeof(sbuf));
		if (spec.star >= 0 && sum > 100 * ALLOC_FRAC_ONE)
			return rt_error(-EINVAL, "%s allocation \"%s\": the percentages add up to %s%% "
					"and entry %d takes the rest (expected at most 100%% with a \"*\")",
					what, s, sbuf, spec.star + 1);
		if (spec.star < 0 && sum == 0)
			return rt_error(-EINVAL, "%s allocation \"%s\": the percentages add up to 0%% "
					"(expected a positive sum)", what, s);
	}
	*ret = spec;
	return 0;
}

/* Per-device byte quotas of a parsed string for comp_bytes (contract in
 * plan.h): they add up to comp_bytes exactly.  0, or -EINVAL when a
 * remainder has no device to go to. */
int alloc_quotas(const char *what, const char *s, const struct alloc_spec *spec,
		 const uint64_t *dev_total, uint32_t ndevs, int cpu_dev,
		 uint64_t comp_bytes, uint64_t *ret_quota)
{
	uint64_t left = comp_bytes;

	if (!what || !s || !spec || !dev_total || !ret_quota || ndevs > PLAN_MAX_DEVICES ||
	    cpu_dev >= (int)ndevs)
		return rt_error(-EINVAL, "alloc_quotas: bad arguments");
	for (uint32_t i = 0; i < spec->n; i++)
		if (spec->e[i].dev >= ndevs)
			return rt_error(-EINVAL, "alloc_quotas: bad arguments");
	memset(ret_quota, 0, ndevs * sizeof(*ret_quota));

	if (spec->form == ALLOC_FORM_RATIO) {
		/* Cumulative rounding: entry i gets floor(B*cum_i/S) - floor(B*cum_{i-1}/S),
		 * so the shares add up to exactly floor(B*sum/S) (= B without "*"). */
		unsigned __int128 S = 0, cum = 0;
		uint64_t prev = 0;
		if (spec->star >= 0)
			S = 100 * (unsigned __int128)ALLOC_FRAC_ONE;
		else
			for (uint32_t i = 0; i < spec->n; i++)
				S += spec->e[i].fixed;
		if (S == 0)
			return rt_error(-EINVAL, "%s allocation \"%s\": the percentages add up to 0%%", what, s);
		for (uint32_t i = 0; i < spec->n; i++) {
			const struct alloc_entry *e = &spec->e[i];
			if (e->star)
				continue;
			cum += e->fixed;
			uint64_t cur = (uint64_t)((unsigned __int128)comp_bytes * cum / S);
			ret_quota[e->dev] += cur - prev;
			prev = cur;
		}
		left = comp_bytes - prev;
		if (spec->star >= 0)
			ret_quota[spec->e[spec->star].dev] += left;
		return 0;
	}

	/* Byte and fraction form: handed out in string order, each capped at what
	 * is left of the component. */
	for (uint32_t i = 0; i < spec->n; i++) {
		const struct alloc_entry *e = &spec->e[i];
		if (e->star)
			continue;
		uint64_t want = e->bytes;
		if (spec->form == ALLOC_FORM_FRACTION)
			want = (uint64_t)((unsigned __int128)dev_total[e->dev] * e->fixed / ALLOC_FRAC_ONE);
		uint64_t give = MIN(want, left);
		ret_quota[e->dev] += give;
		left -= give;
	}
	if (!left)
		return 0;
	if (spec->star >= 0) {
		ret_quota[spec->e[spec->star].dev] += left;
		return 0;
	}
	if (cpu_dev >= 0) {
		ret_quota[cpu_dev] += left;
		return 0;
	}
	char placed[32], all[32], rest[32];
	size_format(comp_bytes - left, placed, sizeof(placed));
	size_format(comp_bytes, all, sizeof(all));
	size_format(left, rest, sizeof(rest));
	memset(ret_quota, 0, ndevs * sizeof(*ret_quota));
	return rt_error(-EINVAL, "%s allocation \"%s\": the entries place %s of the %s's %s and "
			"there is no \"*\" entry or cpu device to take the other %s",
			what, s, placed, what, all, rest);
}
