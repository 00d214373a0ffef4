/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the expert-mode allocation strings (runtime/allocstr.c).
 * The input's first byte picks the device list (how many of 16 names, and
 * whether one is "cpu"), the next 16 bytes give the component size and a
 * device total, the rest is the string (up to its first NUL).
 * alloc_parse() runs on it; when it accepts, alloc_quotas() too.
 *
 * Properties: a refusal is -EINVAL naming the component and the string; an
 * accepted spec has one entry per named device, each known and given once,
 * at most one "*", one form; quotas that succeed add up to the component
 * exactly, and a device the string does not name (other than the cpu
 * device taking a remainder) gets nothing.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "runtime/internal.h"
#include "runtime/plan.h"
#include "tests/fuzz/fuzz.h"

static const char *const all_names[] = {
	"cuda:0", "cuda:1", "cpu", "cuda:2", "cuda:3", "mps", "cuda:10", "cuda:4",
	"cuda:5", "cuda:6", "cuda:7", "cuda:8", "cuda:9", "xpu:0", "cuda:11", "cuda:12",
};

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void check_spec(const struct alloc_spec *spec, uint32_t ndevs)
{
	uint64_t seen = 0;

	FUZZ_ASSERT(spec->n >= 1 && spec->n <= ndevs, "%u entries for %u devices", spec->n, ndevs);
	FUZZ_ASSERT(spec->star >= -1 && spec->star < (int32_t)spec->n, "star %d", spec->star);
	for (uint32_t i = 0; i < spec->n; i++) {
		const struct alloc_entry *e = &spec->e[i];
		FUZZ_ASSERT(e->dev < ndevs && !(seen & (1ull << e->dev)), "entry %u: device %u", i, e->dev);
		seen |= 1ull << e->dev;
		FUZZ_ASSERT(e->star == (spec->star == (int32_t)i), "entry %u: star", i);
		if (spec->form == ALLOC_FORM_FRACTION && !e->star)
			FUZZ_ASSERT(e->fixed <= ALLOC_FRAC_ONE, "entry %u: fraction above 1", i);
	}
	FUZZ_ASSERT(spec->form != ALLOC_FORM_NONE || spec->star >= 0, "no form and no star");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct alloc_spec spec;
	uint64_t totals[PLAN_MAX_DEVICES], quota[PLAN_MAX_DEVICES], comp, sum = 0;
	const char *msg;
	uint32_t ndevs;
	int cpu_dev = -1, r;
	char *s;

	if (size < 17)
		return 0;
	ndevs = data[0] % 17;
	comp = get_u64(data + 1) >> (data[0] >> 5); /* small and large components */
	for (uint32_t i = 0; i < ndevs; i++) {
		totals[i] = get_u64(data + 9) >> (i % 8);
		if (!strcmp(all_names[i], "cpu") && !(data[0] & 0x10))
			cpu_dev = (int)i;
	}
	s = strndup((const char *)data + 17, size - 17);
	if (!s)
		return 0;

	r = alloc_parse("unet", s, all_names, ndevs, &spec);
	if (r < 0) {
		msg = vram_last_error();
		FUZZ_ASSERT(r == -EINVAL || r == -ENOMEM, "alloc_parse returned %d", r);
		/* the string is quoted whole (messages are cut at 1 KiB) */
		FUZZ_ASSERT(!strncmp(msg, "unet allocation", 15) && (strlen(s) > 256 || strstr(msg, s)),
			    "message \"%s\"", msg);
		free(s);
		return 0;
	}
	check_spec(&spec, ndevs);

	r = alloc_quotas("unet", s, &spec, totals, ndevs, cpu_dev, comp, quota);
	if (r < 0) {
		FUZZ_ASSERT(r == -EINVAL, "alloc_quotas returned %d", r);
		FUZZ_ASSERT(spec.star < 0 && cpu_dev < 0, "refused with somewhere for the rest: %s",
			    vram_last_error());
		free(s);
		return 0;
	}
	for (uint32_t d = 0; d < ndevs; d++) {
		bool named = false;
		for (uint32_t i = 0; i < spec.n; i++)
			named |= spec.e[i].dev == d;
		FUZZ_ASSERT(named || (int)d == cpu_dev || quota[d] == 0, "device %u not named gets %llu", d,
			    (unsigned long long)quota[d]);
		FUZZ_ASSERT(sum + quota[d] >= sum, "quotas overflow");
		sum += quota[d];
	}
	FUZZ_ASSERT(sum == comp, "quotas add up to %llu of %llu", (unsigned long long)sum,
		    (unsigned long long)comp);
	free(s);
	return 0;
}
