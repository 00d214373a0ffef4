/* SPDX-License-Identifier: MIT */
/* The placement planner: allocation strings (every form, every error class),
 * quotas and rounding, DisTorch2 placement on plain arrays, the fit check,
 * device lists, the JSON document, a property test over random strings and
 * layers, and plans of real safetensors files written by the reference
 * library. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/modules.h"
#include "runtime/plan.h"
#include "runtime/vram.h"
#include "testlib.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)

/* ---------------------------------------------------------------------- */
/* helpers                                                                 */

static uint32_t devs_of(const char *spec, struct vram_plan_device *d)
{
	uint32_t n = 0;
	int r = vram_plan_devices_parse(spec, d, PLAN_MAX_DEVICES, &n);
	ck_assert_msg(r == 0, "devices \"%s\": %d %s", spec, r, vram_last_error());
	return n;
}

static uint32_t names_of(const struct vram_plan_device *d, uint32_t n, const char **names)
{
	for (uint32_t i = 0; i < n; i++)
		names[i] = d[i].name;
	return n;
}

/* Parses s against the devices of spec and computes quotas for comp_bytes.
 * Returns the first error (alloc_parse's or alloc_quotas'). */
static int quotas_of(const char *spec, const char *s, uint64_t comp_bytes, uint64_t *q,
		     const char **names, uint32_t *ret_n)
{
	struct vram_plan_device d[PLAN_MAX_DEVICES];
	static char keep[PLAN_MAX_DEVICES][32];
	uint64_t total[PLAN_MAX_DEVICES];
	struct alloc_spec a;
	uint32_t n = devs_of(spec, d);
	int cpu = -1;
	for (uint32_t i = 0; i < n; i++) {
		memcpy(keep[i], d[i].name, 32);
		names[i] = keep[i];
		total[i] = d[i].total;
		if (!strcmp(d[i].name, "cpu"))
			cpu = (int)i;
	}
	*ret_n = n;
	int r = alloc_parse("unet", s, names, n, &a);
	if (r < 0)
		return r;
	return alloc_quotas("unet", s, &a, total, n, cpu, comp_bytes, q);
}

static void expect_parse_error(const char *devspec, const char *s, const char *msg)
{
	struct vram_plan_device d[PLAN_MAX_DEVICES];
	const char *names[PLAN_MAX_DEVICES];
	struct alloc_spec a;
	uint32_t n = names_of(d, devs_of(devspec, d), names);
	int r = alloc_parse("unet", s, names, n, &a);
	ck_assert_msg(r == -EINVAL, "\"%s\": expected -EINVAL, got %d", s, r);
	ck_assert_msg(strstr(vram_last_error(), msg), "\"%s\": message \"%s\" lacks \"%s\"", s,
		      vram_last_error(), msg);
	ck_assert_msg(!strncmp(vram_last_error(), "unet allocation \"", 17), "%s", vram_last_error());
}

/* Layers for plan_build: n layers of comp, sizes given. */
struct layers {
	struct plan_unit l[4096];
	char names[4096][48];
	uint32_t n;
};

static void add_layer(struct layers *L, uint32_t comp, uint64_t bytes, uint32_t flags)
{
	ck_assert_uint_lt(L->n, 4096);
	static const char *pfx[] = { "model.diffusion_model.blocks", "cond_stage_model.layers",
				     "first_stage_model.block", "other" };
	snprintf(L->names[L->n], sizeof(L->names[0]), "%s.%u", pfx[comp], L->n);
	L->l[L->n] = (struct plan_unit){ .component = comp, .flags = flags, .nbytes = bytes,
					  .name = L->names[L->n] };
	L->n++;
}

static vram_plan *plan_ok(struct layers *L, const struct vram_plan_options *o, const char *devspec)
{
	struct vram_plan_device d[PLAN_MAX_DEVICES];
	uint32_t n = devs_of(devspec, d);
	vram_plan *p = NULL;
	int r = plan_build(L->l, L->n, NULL, "test.safetensors", o, d, n, &p);
	ck_assert_msg(r == 0, "plan_build: %d %s", r, vram_last_error());
	ck_assert_ptr_nonnull(p);
	return p;
}

static int plan_err(struct layers *L, const struct vram_plan_options *o, const char *devspec)
{
	struct vram_plan_device d[PLAN_MAX_DEVICES];
	uint32_t n = devs_of(devspec, d);
	vram_plan *p = (vram_plan *)0x1;
	int r = plan_build(L->l, L->n, NULL, NULL, o, d, n, &p);
	ck_assert_msg(r < 0, "plan_build succeeded");
	ck_assert_ptr_eq(p, (vram_plan *)0x1); /* untouched on failure */
	return r;
}

static int plan_dev(const vram_plan *p, const char *name)
{
	for (uint32_t i = 0; i < vram_plan_device_count(p); i++)
		if (!strcmp(vram_plan_device_name(p, i), name))
			return (int)i;
	ck_abort_msg("no device %s", name);
	return -1;
}

static uint64_t placed(const vram_plan *p, uint32_t comp, const char *dev)
{
	return vram_plan_bytes(p, comp, (uint32_t)plan_dev(p, dev));
}

/* Every component's placement adds up to its bytes; every layer is counted
 * on its device exactly once. */
static void check_sums(const vram_plan *p, const struct layers *L)
{
	uint64_t comp_bytes[VRAM_COMP_COUNT] = { 0 };
	uint64_t by_layer[VRAM_COMP_COUNT][PLAN_MAX_DEVICES];
	memset(by_layer, 0, sizeof(by_layer));
	for (uint32_t i = 0; i < L->n; i++) {
		int d = vram_plan_layer_device(p, i);
		ck_assert_int_ge(d, 0);
		ck_assert_uint_lt((uint32_t)d, vram_plan_device_count(p));
		comp_bytes[L->l[i].component] += L->l[i].nbytes;
		by_layer[L->l[i].component][d] += L->l[i].nbytes;
	}
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++) {
		uint64_t sum = 0;
		for (uint32_t d = 0; d < vram_plan_device_count(p); d++) {
			ck_assert_uint_eq(vram_plan_bytes(p, c, d), by_layer[c][d]);
			sum += vram_plan_bytes(p, c, d);
		}
		ck_assert_uint_eq(sum, comp_bytes[c]);
	}
}

/* ---------------------------------------------------------------------- */
/* allocation strings: forms                                               */

START_TEST(test_byte_form)
{
	const char *names[PLAN_MAX_DEVICES];
	uint64_t q[PLAN_MAX_DEVICES];
	uint32_t n;
	const char *devs = "cuda:0=24GiB,cuda:1=12GiB,cpu=64GiB";

	/* the node's byte example, 10 GiB model */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,500mb;cuda:1,3.0g;cpu,*", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 500 * MiB);
	ck_assert_uint_eq(q[1], 3 * GiB);
	ck_assert_uint_eq(q[2], 10 * GiB - 500 * MiB - 3 * GiB);

	/* the example; whitespace around tokens and between number and unit */
	ck_assert_int_eq(quotas_of(devs, "  cuda:0 , 2.5 GB ;\tcpu ,* ", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 2 * GiB + 512 * MiB);
	ck_assert_uint_eq(q[1], 0);
	ck_assert_uint_eq(q[2], 7 * GiB + 512 * MiB);

	/* "*" first in the string still takes only the remainder */
	ck_assert_int_eq(quotas_of(devs, "cpu,*;cuda:1,1g;cuda:0,2g", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 2 * GiB);
	ck_assert_uint_eq(q[1], 1 * GiB);
	ck_assert_uint_eq(q[2], 7 * GiB);

	/* capped in string order at what is left of the component */
	ck_assert_int_eq(quotas_of(devs, "cuda:1,6g;cuda:0,6g;cpu,*", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[1], 6 * GiB);
	ck_assert_uint_eq(q[0], 4 * GiB);
	ck_assert_uint_eq(q[2], 0);

	/* no "*": the remainder goes to cpu, added to its own entry */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,1g;cpu,1g", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 1 * GiB);
	ck_assert_uint_eq(q[2], 9 * GiB);

	/* only "*": everything there */
	ck_assert_int_eq(quotas_of(devs, "cuda:1,*", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[1], 10 * GiB);
	ck_assert_uint_eq(q[0] + q[2], 0);

	/* fractional units round down to whole bytes */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,0.3k;cpu,*", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 307);
	ck_assert_uint_eq(q[0] + q[2], 10 * GiB);
}
END_TEST

START_TEST(test_units)
{
	static const struct {
		const char *v;
		uint64_t bytes;
	} u[] = {
		{ "7b", 7 }, { "7B", 7 },
		{ "3k", 3 * KiB }, { "3kb", 3 * KiB }, { "3KiB", 3 * KiB }, { "3KB", 3 * KiB },
		{ "3m", 3 * MiB }, { "3Mb", 3 * MiB }, { "3mib", 3 * MiB },
		{ "3g", 3 * GiB }, { "3GB", 3 * GiB }, { "3gIb", 3 * GiB },
		{ "1t", TiB }, { "1tb", TiB }, { "1TiB", TiB },   /* DisTorch2 read "1tb" as 1 byte */
		{ "1.5g", GiB + 512 * MiB }, { ".5m", 512 * KiB }, { "2.g", 2 * GiB },
		{ "0b", 0 }, { "16777215t", 16777215ull * TiB },
	};
	const char *names[PLAN_MAX_DEVICES];
	uint64_t q[PLAN_MAX_DEVICES];
	uint32_t n;
	for (size_t i = 0; i < ARRAY_SIZE(u); i++) {
		char s[64];
		snprintf(s, sizeof(s), "cuda:0,%s", u[i].v);
		ck_assert_int_eq(quotas_of("cuda:0=1TiB,cpu=1TiB", s, UINT64_MAX, q, names, &n), 0);
		ck_assert_msg(q[0] == u[i].bytes, "%s: %llu, expected %llu", u[i].v,
			      (unsigned long long)q[0], (unsigned long long)u[i].bytes);
		ck_assert_uint_eq(q[0] + q[1], UINT64_MAX);
	}
}
END_TEST

START_TEST(test_ratio_form)
{
	const char *names[PLAN_MAX_DEVICES];
	uint64_t q[PLAN_MAX_DEVICES];
	uint32_t n;
	const char *devs = "cuda:0=24GiB,cuda:1=12GiB,cpu=64GiB";

	/* the node's examples */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,70%;cuda:1,30%", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 7 * GiB);
	ck_assert_uint_eq(q[1], 3 * GiB);
	ck_assert_uint_eq(q[2], 0);
	ck_assert_int_eq(quotas_of(devs, "cuda:1,50%;cpu,50%", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[1], 5 * GiB);
	ck_assert_uint_eq(q[2], 5 * GiB);
	/* normalised by the sum: 8:8:4 is 40/40/20 */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,8%;cuda:1,8%;cpu,4%", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 4 * GiB);
	ck_assert_uint_eq(q[1], 4 * GiB);
	ck_assert_uint_eq(q[2], 2 * GiB);
	/* over 100 is fine without "*" (it is a ratio) */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,150%;cpu,50%", 8 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 6 * GiB);
	ck_assert_uint_eq(q[2], 2 * GiB);

	/* "*" in ratio form (DisTorch2's docs show it, its code rejects it):
	 * the percentages are literal, "*" gets the rest */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,50%;cpu,*", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 5 * GiB);
	ck_assert_uint_eq(q[2], 5 * GiB);
	ck_assert_int_eq(quotas_of(devs, "cuda:0,20%;cuda:1,30%;cpu,*", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 2 * GiB);
	ck_assert_uint_eq(q[1], 3 * GiB);
	ck_assert_uint_eq(q[2], 5 * GiB);
	ck_assert_int_eq(quotas_of(devs, "cuda:0,60%;cuda:1,40%;cpu,*", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[2], 0);
	ck_assert_int_eq(quotas_of(devs, "cpu,*;cuda:0,0%", 10 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 0);
	ck_assert_uint_eq(q[2], 10 * GiB);

	/* rounding: thirds of a prime number of bytes, exact sum */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,1%;cuda:1,1%;cpu,1%", 1000003, q, names, &n), 0);
	ck_assert_uint_eq(q[0] + q[1] + q[2], 1000003);
	ck_assert_uint_eq(q[0], 333334);  /* floor(B/3) */
	ck_assert_uint_eq(q[1], 333334);  /* floor(2B/3) - floor(B/3) */
	ck_assert_uint_eq(q[2], 333335);
	/* decimals in percentages */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,12.5%;cpu,*", 8 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 1 * GiB);
	ck_assert_uint_eq(q[2], 7 * GiB);
	/* a huge component and huge ratios do not overflow */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,999999.999999999%;cuda:1,1000000%;cpu,1000000%",
				   UINT64_MAX, q, names, &n), 0);
	ck_assert_uint_eq(q[0] + q[1] + q[2], UINT64_MAX);
	/* a device named with byte-unit letters does not switch to byte form */
	ck_assert_int_eq(quotas_of("mps=16GiB,cpu=64GiB", "mps,50%;cpu,50%", 4 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 2 * GiB);
	ck_assert_uint_eq(q[1], 2 * GiB);
}
END_TEST

START_TEST(test_fraction_form)
{
	const char *names[PLAN_MAX_DEVICES];
	uint64_t q[PLAN_MAX_DEVICES];
	uint32_t n;
	const char *devs = "cuda:0=24GiB,cuda:1=12GiB,cpu=64GiB";

	/* the node's example: 0.1 of cuda:0's 24 GiB, 0.5 of cpu's 64 GiB,
	 * capped in string order at the component */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,0.1;cpu,0.5", 20 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], (24 * GiB) / 10);
	ck_assert_uint_eq(q[2], 20 * GiB - (24 * GiB) / 10);
	/* not covered: the remainder goes to cpu */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,0.25;cuda:1,0.5", 20 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 6 * GiB);
	ck_assert_uint_eq(q[1], 6 * GiB);
	ck_assert_uint_eq(q[2], 8 * GiB);
	/* with "*" */
	ck_assert_int_eq(quotas_of(devs, "cuda:0,0.25;cuda:1,*", 20 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 6 * GiB);
	ck_assert_uint_eq(q[1], 14 * GiB);
	ck_assert_uint_eq(q[2], 0);
	/* 0 and 1 are fractions; 1 is all of the device */
	ck_assert_int_eq(quotas_of(devs, "cuda:1,1;cuda:0,0;cpu,*", 20 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[1], 12 * GiB);
	ck_assert_uint_eq(q[0], 0);
	ck_assert_uint_eq(q[2], 8 * GiB);
	/* a remainder with no cpu device and no "*" */
	ck_assert_int_eq(quotas_of("cuda:0=24GiB", "cuda:0,0.5", 20 * GiB, q, names, &n), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "unet allocation \"cuda:0,0.5\": the entries place 12.00 GiB "
			 "of the unet's 20.00 GiB and there is no \"*\" entry or cpu device to take the other 8.00 GiB");
	/* ... is fine when nothing is left */
	ck_assert_int_eq(quotas_of("cuda:0=24GiB", "cuda:0,1", 20 * GiB, q, names, &n), 0);
	ck_assert_uint_eq(q[0], 20 * GiB);
	ck_assert_int_eq(quotas_of("cuda:0=24GiB", "cuda:0,1g", 20 * GiB, q, names, &n), -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* allocation strings: errors                                              */

START_TEST(test_parse_errors)
{
	const char *d = "cuda:0=24GiB,cuda:1=12GiB,cpu=64GiB";
	struct vram_plan_device devs[4];
	const char *names[4];
	struct alloc_spec a;

	/* the example, word for word */
	names_of(devs, devs_of(d, devs), names);
	ck_assert_int_eq(alloc_parse("unet", "cuda:0,70%;cuda:1,3x", names, 3, &a), -EINVAL);
	ck_assert_str_eq(vram_last_error(),
			 "unet allocation \"cuda:0,70%;cuda:1,3x\": entry 2: \"3x\" is not a size, a percentage or a fraction");

	/* mixing forms */
	expect_parse_error(d, "cuda:0,70%;cpu,2g", "entry 2: \"2g\" is a size but entry 1 is a percentage (one string uses one form)");
	expect_parse_error(d, "cuda:0,2g;cpu,0.5", "entry 2: \"0.5\" is a fraction but entry 1 is a size");
	expect_parse_error(d, "cuda:0,*;cuda:1,0.5;cpu,5%", "entry 3: \"5%\" is a percentage but entry 2 is a fraction");
	/* unknown devices */
	expect_parse_error(d, "mps,50%;cpu,50%", "entry 1: \"mps\" is not a device of this broker (devices: cuda:0, cuda:1, cpu)");
	expect_parse_error(d, "cuda:0,1g;cuda:2,1g", "entry 2: \"cuda:2\" is not a device");
	expect_parse_error(d, "CUDA:0,1g", "entry 1: \"CUDA:0\" is not a device");
	/* duplicates */
	expect_parse_error(d, "cuda:0,1g;cpu,*;cuda:0,2g", "entry 3: cuda:0 is already given in entry 1");
	/* negative */
	expect_parse_error(d, "cuda:0,-1g;cpu,*", "entry 1: \"-1g\" is negative");
	expect_parse_error(d, "cuda:0,-5%;cpu,*", "entry 1: \"-5%\" is negative");
	expect_parse_error(d, "cuda:0,-.5", "entry 1: \"-.5\" is negative");
	/* not numbers */
	expect_parse_error(d, "cuda:0,abc", "entry 1: \"abc\" is not a size, a percentage or a fraction");
	expect_parse_error(d, "cuda:0,1e9", "\"1e9\" is not a size");
	expect_parse_error(d, "cuda:0,nan", "\"nan\" is not a size");
	expect_parse_error(d, "cuda:0,5gb*", "\"5gb*\" is not a size, a percentage or a fraction (\"*\" takes the remainder on its own)");
	expect_parse_error(d, "cuda:0,1 0g", "\"1 0g\" is not a size");
	expect_parse_error(d, "cuda:0,1.2.3", "\"1.2.3\" is not a size");
	expect_parse_error(d, "cuda:0,.", "\".\" is not a size");
	expect_parse_error(d, "cuda:0,%", "\"%\" is not a size");
	expect_parse_error(d, "cuda:0,+1g", "\"+1g\" is not a size");
	expect_parse_error(d, "cuda:0,1.5b", "\"1.5b\" is not a whole number of bytes");
	expect_parse_error(d, "cuda:0,1.5", "\"1.5\" is a fraction of the device's memory and must be between 0 and 1");
	expect_parse_error(d, "cuda:0,2", "must be between 0 and 1");
	expect_parse_error(d, "cuda:0,1073741824;cpu,*", "entry 1: \"1073741824\" is a fraction of the device's memory "
			   "and must be between 0 and 1 (1073741824b is bytes, 1073741824% a ratio)");
	expect_parse_error(d, "cuda:0,16777216t", "\"16777216t\" is too large");
	expect_parse_error(d, "cuda:0,99999999999999999999g", "is too large");
	expect_parse_error(d, "cuda:0,1000001%;cpu,1%", "is too large (at most 1000000%)");
	/* more than one "*" */
	expect_parse_error(d, "cuda:0,*;cuda:1,1g;cpu,*", "entry 3: a second \"*\" (entry 1 already takes the remainder)");
	/* ratios summing to zero */
	expect_parse_error(d, "cuda:0,0%;cpu,0%", "the percentages add up to 0% (expected a positive sum)");
	expect_parse_error(d, "cuda:0,60%;cuda:1,50.5%;cpu,*", "the percentages add up to 110.5% and entry 3 takes the rest (expected at most 100% with a \"*\")");
	/* empty entries */
	expect_parse_error(d, "cuda:0,1g;;cpu,*", "entry 2: is empty (expected device,value)");
	expect_parse_error(d, "cuda:0,1g;cpu,*;", "entry 3: is empty");
	expect_parse_error(d, ";cuda:0,1g", "entry 1: is empty");
	expect_parse_error(d, "cuda:0,1g; ;cpu,*", "entry 2: is empty");
	/* malformed entries */
	expect_parse_error(d, "cuda:0", "entry 1: \"cuda:0\" has no value (expected device,value)");
	expect_parse_error(d, "cuda:0,1g,2g", "entry 1: \"cuda:0,1g,2g\" has more than one \",\"");
	expect_parse_error(d, ",1g", "entry 1: no device before \",\"");
	expect_parse_error(d, "cuda:0, ", "entry 1: no value for cuda:0");
	/* the first error wins, by position */
	expect_parse_error(d, "cuda:0,x;mps,y", "entry 1: \"x\"");
	/* a blank string is an error here (the planner treats it as none) */
	expect_parse_error(d, "   ", "entry 1: is empty");
}
END_TEST

/* ---------------------------------------------------------------------- */
/* placement on arrays                                                     */

START_TEST(test_virtual_vram_default)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	ck_assert_uint_eq(o.struct_size, sizeof(o));
	ck_assert(o.flags & VRAM_PLAN_HIGH_PRECISION_LORAS);
	ck_assert(o.unet_virtual_vram_gb == 4.0 && o.clip_virtual_vram_gb == 2.0);
	ck_assert_ptr_null(o.unet_compute_device);

	for (int i = 0; i < 10; i++)
		add_layer(&L, VRAM_COMP_UNET, 1 * GiB, 0);
	for (int i = 0; i < 3; i++)
		add_layer(&L, VRAM_COMP_CLIP, 100 * MiB, 0);
	add_layer(&L, VRAM_COMP_VAE, 80 * MiB, 0);
	add_layer(&L, VRAM_COMP_OTHER, 1 * MiB, 0);

	/* defaults: unet on cuda:0 keeps 10 - 4 GiB, from the tail; clip on cpu;
	 * vae with the unet; other with the unet */
	vram_plan *p = plan_ok(&L, NULL, "cpu=64GiB,cuda:0=24GiB");
	check_sums(p, &L);
	int gpu = plan_dev(p, "cuda:0"), cpu = plan_dev(p, "cpu");
	ck_assert_int_eq(vram_plan_compute_device(p, VRAM_COMP_UNET), gpu);
	ck_assert_int_eq(vram_plan_compute_device(p, VRAM_COMP_CLIP), cpu);
	ck_assert_int_eq(vram_plan_compute_device(p, VRAM_COMP_VAE), gpu);
	ck_assert_int_eq(vram_plan_compute_device(p, VRAM_COMP_OTHER), gpu);
	for (int i = 0; i < 10; i++)
		ck_assert_int_eq(vram_plan_layer_device(p, (uint32_t)i), i < 4 ? cpu : gpu);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 6 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cpu"), 4 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cpu"), 300 * MiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_VAE, "cuda:0"), 80 * MiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_OTHER, "cuda:0"), 1 * MiB);
	ck_assert_uint_eq(vram_plan_flags(p), VRAM_PLAN_HIGH_PRECISION_LORAS);
	vram_plan_free(p);

	/* virtual VRAM larger than the model: all on the donor */
	o.unet_virtual_vram_gb = 128;
	p = plan_ok(&L, &o, "cuda:0=24GiB,cpu=64GiB");
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cpu"), 10 * GiB);
	vram_plan_free(p);
	/* 0: none offloaded, the donor need not exist */
	o.unet_virtual_vram_gb = 0;
	o.clip_compute_device = "cuda:0";
	o.clip_virtual_vram_gb = 0;
	p = plan_ok(&L, &o, "cuda:0=24GiB");
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 10 * GiB);
	vram_plan_free(p);
	/* fractional GiB */
	vram_plan_options_init(&o);
	o.unet_virtual_vram_gb = 2.5;
	o.flags = 0;
	p = plan_ok(&L, &o, "cuda:0=24GiB,cpu=64GiB");
	/* quota on cuda:0 is 7.5 GiB: 7 layers fit, the 8th moves on to cpu */
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 7 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cpu"), 3 * GiB);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_UNET, 0), 7 * GiB + 512 * MiB);
	ck_assert_uint_eq(vram_plan_flags(p), 0);
	vram_plan_free(p);
}
END_TEST

/* The node's documentation: unet on cuda:0 with 8 GB virtual VRAM donated by
 * cuda:1; clip on cuda:1 with 2 GB donated by cpu. */
START_TEST(test_documented_virtual_vram)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_compute_device = "cuda:0";
	o.unet_virtual_vram_gb = 8;
	o.unet_donor_device = "cuda:1";
	o.clip_compute_device = "cuda:1";
	o.clip_virtual_vram_gb = 2;
	o.clip_donor_device = "cpu";
	for (int i = 0; i < 24; i++)
		add_layer(&L, VRAM_COMP_UNET, 512 * MiB, 0);   /* 12 GiB */
	add_layer(&L, VRAM_COMP_CLIP, 200 * MiB, VRAM_LAYER_EMBEDDING);
	for (int i = 0; i < 12; i++)
		add_layer(&L, VRAM_COMP_CLIP, 400 * MiB, 0);  /* 4.7 GiB with the embedding */
	add_layer(&L, VRAM_COMP_VAE, 160 * MiB, 0);

	vram_plan *p = plan_ok(&L, &o, "cuda:0=24GiB,cuda:1=24GiB,cpu=64GiB");
	check_sums(p, &L);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 4 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:1"), 8 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cpu"), 0);
	/* cuda:0 comes first in placement order: it keeps the tail */
	for (uint32_t i = 0; i < 24; i++)
		ck_assert_int_eq(vram_plan_layer_device(p, i), i >= 16 ? 0 : 1);
	/* clip: the embedding is pinned to cuda:1 and charged to it first:
	 * 5000 MiB - 2048 MiB = 2952 MiB, of which 200 are the embedding; the
	 * tail layers take 2400 MiB (6 fit in 2752), cpu the 6 at the head */
	ck_assert_int_eq(plan_layer_pinned(p, 24), 1);
	ck_assert_int_eq(vram_plan_layer_device(p, 24), 1);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cuda:1"), 200 * MiB + 6 * 400 * MiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cpu"), 6 * 400 * MiB);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_CLIP, 1), 5000 * MiB - 2 * GiB - 200 * MiB);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_CLIP, 2), 2 * GiB);
	for (uint32_t i = 25; i < 37; i++)
		ck_assert_int_eq(vram_plan_layer_device(p, i), i >= 31 ? 1 : 2);
	/* the VAE goes whole to the unet compute device by default */
	ck_assert_uint_eq(placed(p, VRAM_COMP_VAE, "cuda:0"), 160 * MiB);
	vram_plan_free(p);

	/* vae_device moves it */
	o.vae_device = "cpu";
	p = plan_ok(&L, &o, "cuda:0=24GiB,cuda:1=24GiB,cpu=64GiB");
	ck_assert_uint_eq(placed(p, VRAM_COMP_VAE, "cpu"), 160 * MiB);
	ck_assert_int_eq(vram_plan_compute_device(p, VRAM_COMP_VAE), 2);
	vram_plan_free(p);
	/* donor = compute: nothing moves */
	o.unet_donor_device = "cuda:0";
	p = plan_ok(&L, &o, "cuda:0=24GiB,cuda:1=24GiB,cpu=64GiB");
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 12 * GiB);
	vram_plan_free(p);
}
END_TEST

START_TEST(test_expert_wins)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	for (int i = 0; i < 10; i++)
		add_layer(&L, VRAM_COMP_UNET, 1 * GiB, 0);
	for (int i = 0; i < 4; i++)
		add_layer(&L, VRAM_COMP_CLIP, 1 * GiB, 0);
	o.unet_virtual_vram_gb = 9;  /* ignored: the expert string wins */
	o.unet_expert_mode_allocations = "cuda:0,70%;cuda:1,30%";
	o.unet_donor_device = "no-such-device";
	o.clip_expert_mode_allocations = "cuda:1,50%;cpu,50%";
	o.clip_compute_device = "cuda:1";
	const char *devs = "cuda:1=24GiB,cuda:0=24GiB,cpu=64GiB";
	/* an explicit donor that is not a device is an error even when unused */
	ck_assert_int_eq(plan_err(&L, &o, devs), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "unet_donor_device \"no-such-device\" is not a device of "
			 "this broker (devices: cuda:1, cuda:0, cpu)");
	o.unet_donor_device = NULL;
	vram_plan *p = plan_ok(&L, &o, devs);
	check_sums(p, &L);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 7 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:1"), 3 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cuda:1"), 2 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cpu"), 2 * GiB);
	/* device order is cuda:0, cuda:1, cpu whatever the list order:
	 * cuda:0 has the tail */
	for (uint32_t i = 0; i < 10; i++)
		ck_assert_str_eq(vram_plan_device_name(p, (uint32_t)vram_plan_layer_device(p, i)),
				 i >= 3 ? "cuda:0" : "cuda:1");
	for (uint32_t i = 10; i < 14; i++)
		ck_assert_str_eq(vram_plan_device_name(p, (uint32_t)vram_plan_layer_device(p, i)),
				 i >= 12 ? "cuda:1" : "cpu");
	vram_plan_free(p);

	/* whitespace-only strings are "none" */
	o.unet_expert_mode_allocations = " \t";
	o.unet_virtual_vram_gb = 4;
	p = plan_ok(&L, &o, devs);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 6 * GiB);
	vram_plan_free(p);
	/* a bad clip string names the clip */
	o.clip_expert_mode_allocations = "cuda:1,50%;cpu,1g";
	ck_assert_int_eq(plan_err(&L, &o, devs), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "clip allocation \"cuda:1,50%;cpu,1g\": entry 2: \"1g\" is a size "
			 "but entry 1 is a percentage (one string uses one form)");
}
END_TEST

START_TEST(test_device_order)
{
	const char *names[] = { "cpu", "cuda:10", "cuda:2", "xpu:0", "cuda:0", "cuda:01" };
	uint32_t order[6];
	plan_device_order(names, 6, order);
	const char *want[] = { "cuda:0", "cuda:2", "cuda:10", "xpu:0", "cuda:01", "cpu" };
	for (int i = 0; i < 6; i++)
		ck_assert_str_eq(names[order[i]], want[i]);

	/* DisTorch2 sorted names as strings (cuda:10 before cuda:2); vramd does not */
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	for (int i = 0; i < 3; i++)
		add_layer(&L, VRAM_COMP_UNET, 1 * GiB, 0);
	o.unet_expert_mode_allocations = "cuda:10,1g;cuda:2,1g;cpu,1g";
	vram_plan *p = plan_ok(&L, &o, "cuda:10=8GiB,cpu=8GiB,cuda:2=8GiB");
	ck_assert_str_eq(vram_plan_device_name(p, (uint32_t)vram_plan_layer_device(p, 2)), "cuda:2");
	ck_assert_str_eq(vram_plan_device_name(p, (uint32_t)vram_plan_layer_device(p, 1)), "cuda:10");
	ck_assert_str_eq(vram_plan_device_name(p, (uint32_t)vram_plan_layer_device(p, 0)), "cpu");
	/* the default unet compute device is the lowest cuda:N */
	ck_assert_str_eq(vram_plan_device_name(p, (uint32_t)vram_plan_compute_device(p, VRAM_COMP_UNET)), "cuda:2");
	vram_plan_free(p);

	/* no GPU: cpu */
	vram_plan_options_init(&o);
	p = plan_ok(&L, &o, "cpu=8GiB");
	ck_assert_int_eq(vram_plan_compute_device(p, VRAM_COMP_UNET), 0);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cpu"), 3 * GiB);
	vram_plan_free(p);
	/* neither: name one */
	ck_assert_int_eq(plan_err(&L, &o, "xpu:0=8GiB"), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "unet_compute_device: no default"));
}
END_TEST

/* Tiny layers (< 0.01 % of the component) and CLIP embeddings stay on the
 * compute device and are charged to it first. */
START_TEST(test_pinned)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	/* unet: 100000 bytes; below 10 bytes is tiny */
	add_layer(&L, VRAM_COMP_UNET, 9, 0);                     /* 0: tiny */
	add_layer(&L, VRAM_COMP_UNET, 10, VRAM_LAYER_EMBEDDING); /* 1: not tiny; the flag only counts in clip */
	for (int i = 0; i < 8; i++)
		add_layer(&L, VRAM_COMP_UNET, 12497, 0);          /* 2..9 */
	add_layer(&L, VRAM_COMP_UNET, 0, 0);                     /* 10: zero bytes: tiny */
	add_layer(&L, VRAM_COMP_UNET, 5, 0);                     /* 11: tiny, at the tail */
	uint64_t unet = 0;
	for (uint32_t i = 0; i < L.n; i++)
		unet += L.l[i].nbytes;
	ck_assert_uint_eq(unet, 100000);

	o.unet_expert_mode_allocations = "cpu,50%;cuda:0,*";
	vram_plan *p = plan_ok(&L, &o, "cuda:0=1GiB,cpu=1GiB");
	check_sums(p, &L);
	ck_assert_int_eq(plan_layer_pinned(p, 0), 1);
	ck_assert_int_eq(plan_layer_pinned(p, 1), 0);
	ck_assert_int_eq(plan_layer_pinned(p, 2), 0);
	ck_assert_int_eq(plan_layer_pinned(p, 10), 1);
	ck_assert_int_eq(plan_layer_pinned(p, 11), 1);
	ck_assert_int_eq(plan_layer_pinned(p, 99), -EINVAL);
	/* charged first: cuda:0 has 50000 - 14 left for the rest; 3 blocks
	 * fit (37491), the 4th (49988) does not; cpu takes the head */
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_UNET, 0), 50000 - 14);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_UNET, 1), 50000);
	for (uint32_t i = 0; i < L.n; i++)
		ck_assert_int_eq(vram_plan_layer_device(p, i), i == 0 || i >= 7 ? 0 : 1);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 14 + 3 * 12497);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cpu"), 10 + 5 * 12497);
	vram_plan_free(p);

	/* the compute device's quota is smaller than the pinned bytes: the
	 * excess comes off the last device in placement order */
	struct layers C = { .n = 0 };
	add_layer(&C, VRAM_COMP_CLIP, 300, VRAM_LAYER_EMBEDDING);
	for (int i = 0; i < 7; i++)
		add_layer(&C, VRAM_COMP_CLIP, 100, 0);
	vram_plan_options_init(&o);
	o.clip_compute_device = "cuda:0";
	o.clip_expert_mode_allocations = "cuda:0,0b;cuda:1,500b;cpu,*";
	p = plan_ok(&C, &o, "cuda:0=1GiB,cuda:1=1GiB,cpu=1GiB");
	check_sums(p, &C);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_CLIP, 0), 0);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_CLIP, 1), 500);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_CLIP, 2), 200);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cuda:0"), 300);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cuda:1"), 500);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cpu"), 200);
	/* an excess larger than the last device's quota runs on to the next */
	o.clip_expert_mode_allocations = "cuda:0,0b;cuda:1,900b;cpu,*";
	vram_plan_free(p);
	p = plan_ok(&C, &o, "cuda:0=1GiB,cuda:1=1GiB,cpu=1GiB");
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_CLIP, 2), 0);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_CLIP, 1), 700);
	ck_assert_uint_eq(placed(p, VRAM_COMP_CLIP, "cuda:1"), 700);
	check_sums(p, &C);
	vram_plan_free(p);
}
END_TEST

/* Contiguity: a layer that does not fit moves on, and later smaller layers
 * never go back (DisTorch2's first fit would scatter them). */
START_TEST(test_contiguous)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	uint64_t sizes[] = { 1, 1, 1, 1, 5, 1, 4 };  /* GiB; the tail is last */
	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++)
		add_layer(&L, VRAM_COMP_UNET, sizes[i] * GiB, 0);
	o.unet_expert_mode_allocations = "cuda:0,6g;cuda:1,3g;cpu,*";
	vram_plan *p = plan_ok(&L, &o, "cuda:0=8GiB,cuda:1=8GiB,cpu=64GiB");
	check_sums(p, &L);
	/* tail: 4 -> cuda:0 (4/6), 1 -> cuda:0 (5/6), 5 does not fit in 1:
	 * cuda:1 (quota 3) cannot take it either, cpu takes it and the rest */
	const char *want[] = { "cpu", "cpu", "cpu", "cpu", "cpu", "cuda:0", "cuda:0" };
	for (uint32_t i = 0; i < ARRAY_SIZE(want); i++)
		ck_assert_str_eq(vram_plan_device_name(p, (uint32_t)vram_plan_layer_device(p, i)), want[i]);
	vram_plan_free(p);

	/* the last device with a quota takes what the others left */
	o.unet_expert_mode_allocations = "cuda:0,5.5g;cuda:1,*";
	p = plan_ok(&L, &o, "cuda:0=8GiB,cuda:1=16GiB,cpu=64GiB");
	check_sums(p, &L);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:0"), 5 * GiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cuda:1"), 9 * GiB);
	ck_assert_uint_eq(plan_quota(p, VRAM_COMP_UNET, 1), 8 * GiB + 512 * MiB);
	ck_assert_uint_eq(placed(p, VRAM_COMP_UNET, "cpu"), 0);
	vram_plan_free(p);
}
END_TEST

START_TEST(test_fit)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	for (int i = 0; i < 19; i++)
		add_layer(&L, VRAM_COMP_UNET, 512 * MiB, 0);   /* 9.5 GiB */
	o.unet_virtual_vram_gb = 0;
	ck_assert_int_eq(plan_err(&L, &o, "cuda:0=8GiB,cpu=64GiB"), -ENOSPC);
	ck_assert_str_eq(vram_last_error(), "plan does not fit: cuda:0 needs 9.50 GiB but has 8.00 GiB "
			 "available (short by 1.50 GiB)");
	/* available, not total, is what counts */
	ck_assert_int_eq(plan_err(&L, &o, "cuda:0=24GiB/9GiB,cpu=64GiB"), -ENOSPC);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "has 9.00 GiB available (short by 512.00 MiB)"));
	/* exactly full fits */
	vram_plan *p = plan_ok(&L, &o, "cuda:0=24GiB/9.5GiB,cpu=64GiB");
	vram_plan_free(p);
	/* the donor can be short too */
	o.unet_virtual_vram_gb = 8;
	ck_assert_int_eq(plan_err(&L, &o, "cuda:0=24GiB,cpu=4GiB"), -ENOSPC);
	ck_assert_str_eq(vram_last_error(), "plan does not fit: cpu needs 8.00 GiB but has 4.00 GiB "
			 "available (short by 4.00 GiB)");
	/* all components count: the VAE on a full GPU */
	o.unet_virtual_vram_gb = 0;
	add_layer(&L, VRAM_COMP_VAE, 1, 0);
	ck_assert_int_eq(plan_err(&L, &o, "cuda:0=24GiB/9.5GiB,cpu=64GiB"), -ENOSPC);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "short by 1 B"));
}
END_TEST

START_TEST(test_option_errors)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	const char *d = "cuda:0=24GiB,cpu=64GiB";
	add_layer(&L, VRAM_COMP_UNET, 1 * GiB, 0);

	vram_plan_options_init(&o);
	o.unet_virtual_vram_gb = 200;
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "unet_virtual_vram_gb 200 is out of range 0-128");
	o.unet_virtual_vram_gb = -0.5;
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "unet_virtual_vram_gb -0.5 is out of range 0-128");
	o.unet_virtual_vram_gb = NAN;
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	vram_plan_options_init(&o);
	o.clip_virtual_vram_gb = 128.01;
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "clip_virtual_vram_gb 128.01 is out of range 0-128");
	o.clip_virtual_vram_gb = 128;   /* the bounds are included */
	vram_plan_free(plan_ok(&L, &o, d));

	vram_plan_options_init(&o);
	o.unet_compute_device = "mps";
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "unet_compute_device \"mps\" is not a device of this broker (devices: cuda:0, cpu)");
	vram_plan_options_init(&o);
	o.vae_device = "cuda:1";
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "vae_device \"cuda:1\" is not a device of this broker (devices: cuda:0, cpu)");
	vram_plan_options_init(&o);
	o.clip_compute_device = "gpu";
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "clip_compute_device \"gpu\""));
	vram_plan_options_init(&o);
	o.clip_donor_device = "cuda:7";
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "clip_donor_device \"cuda:7\""));
	/* the default donor is needed but missing */
	vram_plan_options_init(&o);
	ck_assert_int_eq(plan_err(&L, &o, "cuda:0=24GiB"), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "unet_donor_device \"cpu\" is not a device of this broker (devices: cuda:0)");
	/* ... and not needed when the model has no clip and vv is 0 */
	o.unet_virtual_vram_gb = 0;
	vram_plan *p = plan_ok(&L, &o, "cuda:0=24GiB");
	ck_assert_int_eq(vram_plan_compute_device(p, VRAM_COMP_CLIP), 0);
	vram_plan_free(p);

	vram_plan_options_init(&o);
	o.flags = 1u << 7;
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "plan options: unknown flags 0x80");
	vram_plan_options_init(&o);
	o.struct_size = 8;
	ck_assert_int_eq(plan_err(&L, &o, d), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "struct_size 8 is smaller"));
	/* a larger struct from a newer header: zero tail fine, set tail E2BIG */
	struct {
		struct vram_plan_options o;
		uint64_t more;
	} big;
	memset(&big, 0, sizeof(big));
	vram_plan_options_init(&big.o);
	big.o.struct_size = sizeof(big);
	vram_plan_free(plan_ok(&L, &big.o, d));
	big.more = 1;
	ck_assert_int_eq(plan_err(&L, &big.o, d), -E2BIG);

	/* bad device arrays */
	struct vram_plan_device devs[3];
	vram_plan *q = NULL;
	uint32_t n = devs_of("cuda:0=1GiB,cpu=1GiB", devs);
	devs[1].struct_size = 0;
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, devs, n, &q), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "device 1: struct_size 0"));
	n = devs_of("cuda:0=1GiB,cpu=1GiB", devs);
	strcpy(devs[1].name, "cuda:0");
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, devs, n, &q), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "plan: device cuda:0 is given twice (0 and 1)");
	strcpy(devs[1].name, "c u");
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, devs, n, &q), -EINVAL);
	memset(devs[1].name, 'x', sizeof(devs[1].name));
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, devs, n, &q), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "longer than 31"));
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, devs, 0, &q), -EINVAL);
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, NULL, 1, &q), -EINVAL);
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, devs, 1, NULL), -EINVAL);
	struct plan_unit big2[2] = { { .nbytes = UINT64_MAX }, { .component = 2, .nbytes = 1 } };
	n = devs_of("cuda:0=1GiB,cpu=1GiB", devs);
	ck_assert_int_eq(plan_build(big2, 2, NULL, NULL, NULL, devs, n, &q), -EOVERFLOW);
	L.l[0].component = 9;
	n = devs_of("cuda:0=1GiB,cpu=1GiB", devs);
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, NULL, devs, n, &q), -EINVAL);
	ck_assert_ptr_null(q);

	/* public entry points with bad arguments */
	ck_assert_int_eq(vram_plan_create(NULL, NULL, devs, n, &q), -EINVAL);
	ck_assert_int_eq(vram_plan_layer_device(NULL, 0), -EINVAL);
	ck_assert_int_eq(vram_plan_compute_device(NULL, 0), -EINVAL);
	ck_assert_uint_eq(vram_plan_bytes(NULL, 0, 0), 0);
	ck_assert_uint_eq(vram_plan_device_count(NULL), 0);
	ck_assert_ptr_null(vram_plan_device_name(NULL, 0));
	ck_assert_uint_eq(vram_plan_flags(NULL), 0);
	char *js = NULL;
	ck_assert_int_eq(vram_plan_to_json(NULL, &js), -EINVAL);
	vram_plan_free(NULL);
	vram_plan_options_init(NULL);
}
END_TEST

START_TEST(test_empty)
{
	struct layers L = { .n = 0 };
	vram_plan *p = plan_ok(&L, NULL, "cuda:0=1GiB,cpu=1GiB");
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++)
		ck_assert_uint_eq(vram_plan_bytes(p, c, 0) + vram_plan_bytes(p, c, 1), 0);
	ck_assert_int_eq(vram_plan_layer_device(p, 0), -EINVAL);
	char *js = NULL;
	ck_assert_int_eq(vram_plan_to_json(p, &js), 0);
	free(js);
	vram_plan_free(p);

	/* zero-byte layers of an otherwise empty component stay on its compute device */
	add_layer(&L, VRAM_COMP_UNET, 0, 0);
	add_layer(&L, VRAM_COMP_CLIP, 0, 0);
	p = plan_ok(&L, NULL, "cuda:0=1GiB,cpu=1GiB");
	ck_assert_int_eq(vram_plan_layer_device(p, 0), 0);
	ck_assert_int_eq(vram_plan_layer_device(p, 1), 1);
	vram_plan_free(p);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* device lists                                                            */

START_TEST(test_devices_parse)
{
	struct vram_plan_device d[4];
	uint32_t n = 99;
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=24GiB,cuda:1=12GiB,cpu=64GiB", d, 4, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(d[0].name, "cuda:0");
	ck_assert_uint_eq(d[0].total, 24 * GiB);
	ck_assert_uint_eq(d[0].available, 24 * GiB);
	ck_assert_uint_eq(d[0].struct_size, sizeof(d[0]));
	ck_assert_str_eq(d[2].name, "cpu");
	ck_assert_uint_eq(d[2].total, 64 * GiB);
	ck_assert_int_eq(vram_plan_devices_parse(" cuda:0 = 24GiB / 20 GiB , cpu=1000MB", d, 4, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(d[0].total, 24 * GiB);
	ck_assert_uint_eq(d[0].available, 20 * GiB);
	ck_assert_uint_eq(d[1].total, 1000000000ull);  /* size_parse: MB is decimal */

	n = 99;
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=24GiB,cpu=64GiB", d, 1, &n), -ENOBUFS);
	ck_assert_uint_eq(n, 99);
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=24GiB,,cpu=1GiB", d, 4, &n), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "device list \"cuda:0=24GiB,,cpu=1GiB\": entry 2: is empty (expected name=size)");
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0", d, 4, &n), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "entry 1: \"cuda:0\" has no size"));
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=lots", d, 4, &n), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "\"lots\" is not a size"));
	ck_assert_int_eq(vram_plan_devices_parse("cpu=1GiB,cpu=2GiB", d, 4, &n), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "entry 2: cpu is already given in entry 1"));
	ck_assert_int_eq(vram_plan_devices_parse("=1GiB", d, 4, &n), -EINVAL);
	ck_assert_int_eq(vram_plan_devices_parse("a;b=1GiB", d, 4, &n), -EINVAL);
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=1GiB/2GiB", d, 4, &n), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "more available than in total"));
	ck_assert_int_eq(vram_plan_devices_parse("cuda:0=1GiB/x", d, 4, &n), -EINVAL);
	ck_assert_int_eq(vram_plan_devices_parse("a-very-long-device-name-of-40-chars=1GiB", d, 4, &n), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "longer than 31"));
	ck_assert_int_eq(vram_plan_devices_parse(NULL, d, 4, &n), -EINVAL);
	ck_assert_int_eq(vram_plan_devices_parse("cpu=1GiB", NULL, 4, &n), -EINVAL);
	ck_assert_int_eq(vram_plan_devices_parse("", d, 4, &n), -EINVAL);
	ck_assert_int_eq(vram_plan_devices_from_client(NULL, d, 4, &n), -EINVAL);
}
END_TEST

/* Devices from a real broker (simulated GPUs): names, totals, available =
 * total - used, and a plan against them. */
START_TEST(test_devices_from_broker)
{
	char prog[512];
	snprintf(prog, sizeof(prog), "%s/bin/vramd", t_build());
	if (access(prog, X_OK) != 0) {
		fprintf(stderr, "test_devices_from_broker: skipped: %s not built (make all)\n", prog);
		return;
	}
	struct t_broker b;
	const char *const args[] = { "--sim-gpus", "64MiB,32MiB", "--host-pool", "128MiB", NULL };
	t_broker_start(&b, args);
	vram_client *c = NULL;
	ck_assert_int_eq(vram_connect(b.sock, "test-plan", &c), 0);

	struct vram_plan_device devs[PLAN_MAX_DEVICES];
	uint32_t n = 0;
	ck_assert_int_eq(vram_plan_devices_from_client(c, devs, PLAN_MAX_DEVICES, &n), 0);
	ck_assert_uint_eq(n, (uint32_t)vram_device_count(c));
	int g0 = -1, g1 = -1, cpu = -1;
	for (uint32_t i = 0; i < n; i++) {
		struct vram_device_info info = { .struct_size = sizeof(info) };
		ck_assert_int_eq(vram_device_info(c, i, &info), 0);
		ck_assert_str_eq(devs[i].name, info.name);
		ck_assert_uint_eq(devs[i].total, info.total);
		ck_assert_uint_eq(devs[i].available, info.total - info.used);
		ck_assert_uint_eq(devs[i].struct_size, sizeof(devs[i]));
		if (!strcmp(devs[i].name, "cuda:0"))
			g0 = (int)i;
		else if (!strcmp(devs[i].name, "cuda:1"))
			g1 = (int)i;
		else if (!strcmp(devs[i].name, "cpu"))
			cpu = (int)i;
	}
	ck_assert(g0 >= 0 && g1 >= 0 && cpu >= 0);
	ck_assert_uint_eq(devs[g0].total, 64 * MiB);
	ck_assert_uint_eq(devs[g1].total, 32 * MiB);
	uint32_t small = 0;
	ck_assert_int_eq(vram_plan_devices_from_client(c, devs, 1, &small), -ENOBUFS);

	/* memory in use is not available (the device list is a snapshot taken
	 * at HELLO: a second client sees the first one's grant) */
	vram_grant *gr = NULL;
	vram_client *c2 = NULL;
	ck_assert_int_eq(vram_alloc(c, (uint32_t)g0, 40 * MiB, 0, &gr), 0);
	ck_assert_int_eq(vram_connect(b.sock, "test-plan-2", &c2), 0);
	ck_assert_int_eq(vram_plan_devices_from_client(c2, devs, PLAN_MAX_DEVICES, &n), 0);
	vram_close(c2);
	ck_assert_uint_eq(devs[g0].available, 64 * MiB - vram_grant_size(gr));

	struct layers L = { .n = 0 };
	for (int i = 0; i < 8; i++)
		add_layer(&L, VRAM_COMP_UNET, 4 * MiB, 0);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_virtual_vram_gb = 0;
	vram_plan *p = NULL;
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, &o, devs, n, &p), -ENOSPC);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "plan does not fit: cuda:0 needs 32.00 MiB but has 24.00 MiB"));
	o.unet_expert_mode_allocations = "cuda:0,16m;cuda:1,*";
	ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, &o, devs, n, &p), 0);
	ck_assert_uint_eq(vram_plan_bytes(p, VRAM_COMP_UNET, (uint32_t)g0), 16 * MiB);
	ck_assert_uint_eq(vram_plan_bytes(p, VRAM_COMP_UNET, (uint32_t)g1), 16 * MiB);
	vram_plan_free(p);

	ck_assert_int_eq(vram_free(c, gr), 0);
	vram_close(c);
	t_broker_stop(&b);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* JSON                                                                    */

static json_t *jget(json_t *o, const char *path)
{
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", path);
	json_t *cur = o;
	for (char *save = NULL, *t = strtok_r(buf, ".", &save); t; t = strtok_r(NULL, ".", &save)) {
		if (json_is_array(cur))
			cur = json_array_get(cur, strtoul(t, NULL, 10));
		else
			cur = json_object_get(cur, t);
		ck_assert_msg(cur != NULL, "JSON has no %s", path);
	}
	return cur;
}

static long long jint(json_t *o, const char *path)
{
	json_t *v = jget(o, path);
	ck_assert_msg(json_is_integer(v), "%s is not an integer", path);
	return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *path)
{
	json_t *v = jget(o, path);
	ck_assert_msg(json_is_string(v), "%s is not a string", path);
	return json_string_value(v);
}

START_TEST(test_json)
{
	struct layers L = { .n = 0 };
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_virtual_vram_gb = 2;
	o.clip_expert_mode_allocations = "cpu,*";
	for (int i = 0; i < 4; i++)
		add_layer(&L, VRAM_COMP_UNET, 1 * GiB, 0);
	add_layer(&L, VRAM_COMP_CLIP, 1 * MiB, VRAM_LAYER_EMBEDDING);
	add_layer(&L, VRAM_COMP_CLIP, 9 * MiB, 0);
	add_layer(&L, VRAM_COMP_VAE, 2 * MiB, 0);
	vram_plan *p = plan_ok(&L, &o, "cuda:0=8GiB,cpu=16GiB/15GiB");
	char *s = NULL;
	ck_assert_int_eq(vram_plan_to_json(p, &s), 0);
	json_error_t je;
	json_t *j = json_loads(s, 0, &je);
	ck_assert_msg(j != NULL, "bad JSON: %s", je.text);

	ck_assert_str_eq(jstr(j, "model"), "test.safetensors");
	ck_assert_str_eq(jstr(j, "devices.0.name"), "cuda:0");
	ck_assert_int_eq(jint(j, "devices.0.total"), (long long)(8 * GiB));
	ck_assert_int_eq(jint(j, "devices.0.available"), (long long)(8 * GiB));
	ck_assert_int_eq(jint(j, "devices.0.planned"), (long long)(2 * GiB + 2 * MiB));
	ck_assert_int_eq(jint(j, "devices.1.available"), (long long)(15 * GiB));
	ck_assert_int_eq(jint(j, "devices.1.planned"), (long long)(2 * GiB + 10 * MiB));
	ck_assert_str_eq(jstr(j, "placement_order.1"), "cpu");
	ck_assert(json_is_true(jget(j, "high_precision_loras")));

	ck_assert_str_eq(jstr(j, "components.unet.compute_device"), "cuda:0");
	ck_assert_str_eq(jstr(j, "components.unet.source"), "virtual_vram");
	ck_assert(json_is_null(jget(j, "components.unet.allocation")));
	ck_assert_str_eq(jstr(j, "components.unet.donor_device"), "cpu");
	ck_assert(json_real_value(jget(j, "components.unet.virtual_vram_gb")) == 2.0);
	ck_assert_int_eq(jint(j, "components.unet.bytes"), (long long)(4 * GiB));
	ck_assert_int_eq(jint(j, "components.unet.placement.cuda:0"), (long long)(2 * GiB));
	ck_assert_int_eq(jint(j, "components.unet.placement.cpu"), (long long)(2 * GiB));
	ck_assert_uint_eq(json_array_size(jget(j, "components.unet.ranges")), 2);
	ck_assert_str_eq(jstr(j, "components.unet.ranges.0.device"), "cpu");
	ck_assert_int_eq(jint(j, "components.unet.ranges.0.first_module"), 0);
	ck_assert_int_eq(jint(j, "components.unet.ranges.0.last_module"), 1);
	ck_assert_int_eq(jint(j, "components.unet.ranges.0.modules"), 2);
	ck_assert_str_eq(jstr(j, "components.unet.ranges.0.first"), "model.diffusion_model.blocks.0");
	ck_assert_str_eq(jstr(j, "components.unet.ranges.0.last"), "model.diffusion_model.blocks.1");
	ck_assert_int_eq(jint(j, "components.unet.ranges.0.bytes"), (long long)(2 * GiB));
	ck_assert_str_eq(jstr(j, "components.unet.ranges.1.device"), "cuda:0");
	ck_assert_int_eq(jint(j, "components.unet.ranges.1.first_module"), 2);
	ck_assert(json_is_null(jget(j, "components.unet.module_order"))); /* no model: no order */
	ck_assert_int_eq(jint(j, "components.unet.modules"), 4);
	ck_assert_int_eq(jint(j, "components.unet.asked.cuda:0"), (long long)(2 * GiB));
	ck_assert_int_eq(jint(j, "components.unet.asked.cpu"), (long long)(2 * GiB));
	ck_assert_int_eq(jint(j, "components.unet.difference.cuda:0"), 0);
	ck_assert(json_is_null(jget(j, "components.unet.layers.3.split")));
	ck_assert_uint_eq(json_array_size(jget(j, "components.unet.layers")), 4);
	ck_assert_int_eq(jint(j, "components.unet.layers.3.index"), 3);
	ck_assert_str_eq(jstr(j, "components.unet.layers.3.device"), "cuda:0");
	ck_assert(json_is_false(jget(j, "components.unet.layers.3.pinned")));

	ck_assert_str_eq(jstr(j, "components.clip.source"), "expert");
	ck_assert_str_eq(jstr(j, "components.clip.allocation"), "cpu,*");
	ck_assert(json_is_null(jget(j, "components.clip.donor_device")));
	ck_assert_str_eq(jstr(j, "components.clip.compute_device"), "cpu");
	ck_assert(json_is_true(jget(j, "components.clip.layers.0.pinned")));
	ck_assert_int_eq(jint(j, "components.clip.layers.0.index"), 4);
	ck_assert_int_eq(jint(j, "components.clip.pinned_bytes"), (long long)MiB);
	ck_assert_int_eq(jint(j, "components.clip.placement.cuda:0"), 0); /* every device listed */

	ck_assert_str_eq(jstr(j, "components.vae.source"), "whole");
	ck_assert_str_eq(jstr(j, "components.vae.compute_device"), "cuda:0");
	ck_assert_int_eq(jint(j, "components.vae.placement.cuda:0"), (long long)(2 * MiB));
	ck_assert_str_eq(jstr(j, "components.other.source"), "whole");
	ck_assert_uint_eq(json_array_size(jget(j, "components.other.layers")), 0);
	ck_assert_uint_eq(json_array_size(jget(j, "components.other.ranges")), 0);
	json_decref(j);
	free(s);
	vram_plan_free(p);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* property test                                                           */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: reproducible from the seed printed on failure */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static const char *rnd_ws(void)
{
	static const char *ws[] = { "", "", "", " ", "\t", "  " };
	return ws[rnd_below(ARRAY_SIZE(ws))];
}

struct gen {
	char s[2048];
	enum alloc_form form;
	uint32_t n;
	uint32_t dev[PLAN_MAX_DEVICES];
	int star;                       /* entry index or -1 */
	uint64_t bytes[PLAN_MAX_DEVICES];
	long double val[PLAN_MAX_DEVICES];  /* percent */
	uint64_t milli[PLAN_MAX_DEVICES];   /* fraction, in thousandths */
};

/* A random valid string over ndevs devices. */
static void gen_string(struct gen *g, const char *const *names, uint32_t ndevs, int have_cpu)
{
	static const char *units[] = { "b", "k", "kb", "KiB", "m", "MB", "mib", "g", "GB", "GiB" };
	static const unsigned shifts[] = { 0, 10, 10, 10, 20, 20, 20, 30, 30, 30 };
	uint32_t perm[PLAN_MAX_DEVICES];
	size_t off = 0;

	memset(g, 0, sizeof(*g));
	g->form = (enum alloc_form)(1 + rnd_below(3));
	for (uint32_t i = 0; i < ndevs; i++)
		perm[i] = i;
	for (uint32_t i = ndevs; i > 1; i--) {
		uint32_t j = (uint32_t)rnd_below(i), t = perm[i - 1];
		perm[i - 1] = perm[j];
		perm[j] = t;
	}
	g->n = 1 + (uint32_t)rnd_below(ndevs);
	g->star = rnd_below(2) ? (int)rnd_below(g->n) : -1;
	/* byte/fraction strings that may not cover the model need cpu or "*" */
	if (g->star < 0 && !have_cpu && g->form != ALLOC_FORM_RATIO)
		g->star = (int)rnd_below(g->n);
	long double pct_left = 100;
	for (uint32_t i = 0; i < g->n; i++) {
		char v[64];
		g->dev[i] = perm[i];
		if ((int)i == g->star) {
			snprintf(v, sizeof(v), "*");
		} else if (g->form == ALLOC_FORM_BYTES) {
			size_t u = rnd_below(ARRAY_SIZE(units));
			uint64_t x = rnd_below(shifts[u] >= 30 ? 8 : 4096);
			unsigned f = (unsigned)rnd_below(4);   /* tenths */
			if (shifts[u] == 0)
				f = 0;
			snprintf(v, sizeof(v), f ? "%llu.%u%s%s" : "%llu%.0u%s%s", (unsigned long long)x, f, rnd_ws(), units[u]);
			g->bytes[i] = (x << shifts[u]) + (((uint64_t)f << shifts[u]) / 10);
		} else if (g->form == ALLOC_FORM_RATIO) {
			unsigned x = (unsigned)rnd_below(g->star >= 0 ? (unsigned)pct_left + 1 : 200);
			if (g->star >= 0 && x > pct_left)
				x = 0;
			if (g->star < 0 && i == g->n - 1 && x == 0)
				x = 1;   /* a zero sum is an error: keep it positive */
			pct_left -= x;
			snprintf(v, sizeof(v), "%u%s%%", x, rnd_ws());
			g->val[i] = x;
		} else {
			unsigned x = (unsigned)rnd_below(1001);
			snprintf(v, sizeof(v), "%u.%03u", x / 1000, x % 1000);
			g->milli[i] = x;
		}
		off += (size_t)snprintf(g->s + off, sizeof(g->s) - off, "%s%s%s%s,%s%s%s%s", i ? ";" : "",
					rnd_ws(), names[g->dev[i]], rnd_ws(), rnd_ws(), v, rnd_ws(), "");
	}
}

/* The quotas computed independently (long double; ratio shares within a
 * byte of exact). */
static void ref_quotas(const struct gen *g, const uint64_t *total, int cpu, uint64_t B,
		       long double *q, uint32_t ndevs)
{
	for (uint32_t d = 0; d < ndevs; d++)
		q[d] = 0;
	long double left = (long double)B;
	if (g->form == ALLOC_FORM_RATIO) {
		long double S = 0;
		for (uint32_t i = 0; i < g->n; i++)
			if ((int)i != g->star)
				S += g->val[i];
		if (g->star >= 0)
			S = 100;
		for (uint32_t i = 0; i < g->n; i++)
			if ((int)i != g->star) {
				q[g->dev[i]] = (long double)B * g->val[i] / S;
				left -= q[g->dev[i]];
			}
	} else {
		for (uint32_t i = 0; i < g->n; i++) {
			if ((int)i == g->star)
				continue;
			long double want = g->form == ALLOC_FORM_BYTES ? (long double)g->bytes[i]
				: (long double)(uint64_t)((unsigned __int128)total[g->dev[i]] * g->milli[i] / 1000);
			long double give = want < left ? want : left;
			q[g->dev[i]] = give;
			left -= give;
		}
	}
	if (left > 0.5L)
		q[g->star >= 0 ? g->dev[g->star] : (uint32_t)cpu] += left;
}

START_TEST(test_property)
{
	const char *seed_env = getenv("VRAM_TEST_SEED");
	uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : 0x5eed1234abcdull;
	int iters = getenv("VRAM_TEST_ITERS") ? atoi(getenv("VRAM_TEST_ITERS")) : 3000;

	for (int it = 0; it < iters; it++) {
		rng_state = seed + (uint64_t)it * 0x9e3779b97f4a7c15ull;
		if (!rng_state)
			rng_state = 1;
		/* devices: cuda:0..k-1 in random order, cpu most of the time */
		char spec[512];
		size_t off = 0;
		uint32_t ngpu = 1 + (uint32_t)rnd_below(4);
		int have_cpu = rnd_below(5) != 0;
		for (uint32_t i = 0; i < ngpu; i++)
			off += (size_t)snprintf(spec + off, sizeof(spec) - off, "%scuda:%u=%lluGiB", i ? "," : "",
						(ngpu - 1 - i) % ngpu, (unsigned long long)(1 + rnd_below(80)));
		if (have_cpu)
			off += (size_t)snprintf(spec + off, sizeof(spec) - off, ",cpu=%lluGiB",
						(unsigned long long)(1 + rnd_below(512)));
		struct vram_plan_device devs[PLAN_MAX_DEVICES];
		const char *names[PLAN_MAX_DEVICES];
		uint64_t total[PLAN_MAX_DEVICES];
		uint32_t nd = names_of(devs, devs_of(spec, devs), names);
		int cpu = -1;
		for (uint32_t d = 0; d < nd; d++) {
			total[d] = devs[d].total;
			devs[d].available = UINT64_MAX;
			if (!strcmp(names[d], "cpu"))
				cpu = (int)d;
		}

		/* layers: random sizes, some tiny, clip embeddings */
		static struct layers L;
		L.n = 0;
		for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++) {
			uint32_t nl = (uint32_t)rnd_below(c < 2 ? 60 : 4);
			for (uint32_t i = 0; i < nl; i++) {
				uint64_t b;
				switch (rnd_below(5)) {
				case 0: b = rnd_below(4096); break;              /* likely tiny */
				case 1: b = rnd_below(4 * GiB); break;
				default: b = rnd_below(512 * MiB); break;
				}
				add_layer(&L, c, b, c == VRAM_COMP_CLIP && rnd_below(8) == 0 ? VRAM_LAYER_EMBEDDING : 0);
			}
		}
		/* shuffle components a bit: the planner must not assume grouping */
		if (rnd_below(4) == 0 && L.n > 1) {
			uint32_t a = (uint32_t)rnd_below(L.n), b = (uint32_t)rnd_below(L.n);
			struct plan_unit t = L.l[a];
			L.l[a] = L.l[b];
			L.l[b] = t;
		}
		uint64_t B[VRAM_COMP_COUNT] = { 0 };
		for (uint32_t i = 0; i < L.n; i++)
			B[L.l[i].component] += L.l[i].nbytes;

		struct gen gu, gc;
		gen_string(&gu, names, nd, have_cpu);
		gen_string(&gc, names, nd, have_cpu);

		/* the quotas against the reference */
		struct alloc_spec a;
		uint64_t q[PLAN_MAX_DEVICES];
		long double rq[PLAN_MAX_DEVICES];
		int r = alloc_parse("unet", gu.s, names, nd, &a);
		ck_assert_msg(r == 0, "seed %llu it %d: \"%s\": %s", (unsigned long long)seed, it, gu.s, vram_last_error());
		ck_assert_uint_eq(a.form, gu.n > (gu.star >= 0 ? 1u : 0u) ? gu.form : ALLOC_FORM_NONE);
		r = alloc_quotas("unet", gu.s, &a, total, nd, cpu, B[0], q);
		ck_assert_msg(r == 0, "\"%s\": %s", gu.s, vram_last_error());
		ref_quotas(&gu, total, cpu, B[0], rq, nd);
		uint64_t qs = 0;
		for (uint32_t d = 0; d < nd; d++) {
			qs += q[d];
			ck_assert_msg(fabsl((long double)q[d] - rq[d]) <= 1.5L, "it %d \"%s\" B=%llu dev %s: %llu vs %.1Lf",
				      it, gu.s, (unsigned long long)B[0], names[d], (unsigned long long)q[d], rq[d]);
		}
		ck_assert_uint_eq(qs, B[0]);

		/* the plan */
		struct vram_plan_options o;
		vram_plan_options_init(&o);
		o.unet_compute_device = names[rnd_below(nd)];
		o.clip_compute_device = names[rnd_below(nd)];
		o.unet_donor_device = names[rnd_below(nd)];
		o.unet_virtual_vram_gb = (double)rnd_below(1281) / 10.0;
		int use_vv = rnd_below(3) == 0;
		o.unet_expert_mode_allocations = use_vv ? "" : gu.s;
		o.clip_expert_mode_allocations = gc.s;
		vram_plan *p = NULL;
		r = plan_build(L.l, L.n, NULL, NULL, &o, devs, nd, &p);
		ck_assert_msg(r == 0, "it %d: %s", it, vram_last_error());
		check_sums(p, &L);

		uint32_t order[PLAN_MAX_DEVICES], rank[PLAN_MAX_DEVICES];
		plan_device_order(names, nd, order);
		for (uint32_t k = 0; k < nd; k++)
			rank[order[k]] = k;
		for (uint32_t c = 0; c < 2; c++) {
			uint32_t cd = (uint32_t)vram_plan_compute_device(p, c);
			if (B[c] == 0) {
				/* an empty component: its zero-byte layers stay home */
				for (uint32_t i = 0; i < L.n; i++)
					if (L.l[i].component == c)
						ck_assert_uint_eq((uint32_t)vram_plan_layer_device(p, i), cd);
				continue;
			}
			uint64_t pinned = 0, qsum = 0;
			int32_t sink = -1;
			for (uint32_t i = 0; i < L.n; i++) {
				if (L.l[i].component != c)
					continue;
				int tiny = (long double)L.l[i].nbytes * 10000.0L < (long double)B[c];
				int emb = c == VRAM_COMP_CLIP && (L.l[i].flags & VRAM_LAYER_EMBEDDING);
				ck_assert_int_eq(plan_layer_pinned(p, i), tiny || emb);
				if (tiny || emb) {
					ck_assert_uint_eq((uint32_t)vram_plan_layer_device(p, i), cd);
					pinned += L.l[i].nbytes;
				}
			}
			for (uint32_t k = 0; k < nd; k++) {
				qsum += plan_quota(p, c, order[k]);
				if (plan_quota(p, c, order[k]))
					sink = (int32_t)k;
			}
			ck_assert_uint_eq(qsum, B[c] - pinned);
			/* from the tail backwards, devices never go back in
			 * placement order: one contiguous range each */
			uint32_t last_rank = 0;
			uint64_t dist[PLAN_MAX_DEVICES] = { 0 };
			for (uint32_t i = L.n; i-- > 0;) {
				if (L.l[i].component != c || plan_layer_pinned(p, i))
					continue;
				uint32_t d = (uint32_t)vram_plan_layer_device(p, i);
				ck_assert_msg(rank[d] >= last_rank, "it %d comp %u: layer %u on %s goes back", it, c, i, names[d]);
				last_rank = rank[d];
				dist[d] += L.l[i].nbytes;
				ck_assert_int_le((int32_t)rank[d], sink);
			}
			/* devices before the last one with a quota stay within it */
			for (int32_t k = 0; k < sink; k++)
				ck_assert_uint_le(dist[order[k]], plan_quota(p, c, order[k]));
		}

		/* the fit check: exactly full fits, one byte less does not and
		 * names the first device (in placement order) that is short */
		uint64_t planned[PLAN_MAX_DEVICES] = { 0 };
		for (uint32_t i = 0; i < L.n; i++)
			planned[vram_plan_layer_device(p, i)] += L.l[i].nbytes;
		vram_plan_free(p);
		for (uint32_t d = 0; d < nd; d++)
			devs[d].available = planned[d];
		r = plan_build(L.l, L.n, NULL, NULL, &o, devs, nd, &p);
		ck_assert_msg(r == 0, "it %d exact fit: %s", it, vram_last_error());
		vram_plan_free(p);
		uint32_t d = (uint32_t)rnd_below(nd);
		if (planned[d]) {
			devs[d].available--;
			p = NULL;
			ck_assert_int_eq(plan_build(L.l, L.n, NULL, NULL, &o, devs, nd, &p), -ENOSPC);
			ck_assert_ptr_null(p);
			char want[64];
			snprintf(want, sizeof(want), "plan does not fit: %s needs ", names[d]);
			ck_assert_msg(strstr(vram_last_error(), want), "%s", vram_last_error());
			ck_assert_ptr_nonnull(strstr(vram_last_error(), "(short by 1 B)"));
		}
	}
}
END_TEST

/* Random bytes never crash the parser; every failure is -EINVAL with a
 * message naming the input. */
START_TEST(test_fuzz)
{
	static const char alphabet[] = "cpu:01,;%*.gmkbtiGB -\t9x";
	const char *names[] = { "cuda:0", "cuda:1", "cpu" };
	uint64_t total[] = { 24 * GiB, 12 * GiB, 64 * GiB };
	rng_state = 0xf00d;
	for (int it = 0; it < 20000; it++) {
		char s[40];
		size_t n = rnd_below(sizeof(s) - 1);
		for (size_t i = 0; i < n; i++)
			s[i] = alphabet[rnd_below(sizeof(alphabet) - 1)];
		s[n] = '\0';
		if (rnd_below(2)) {
			/* structured: mostly valid entries with a random mutation */
			snprintf(s, sizeof(s), "cuda:%u,%u%s;cpu,%s", (unsigned)rnd_below(3), (unsigned)rnd_below(200),
				 (const char *[]){ "%", "g", "", "mb", "x" }[rnd_below(5)],
				 (const char *[]){ "*", "1%", "0.5", "2g", "" }[rnd_below(5)]);
			if (rnd_below(3) == 0)
				s[rnd_below(strlen(s))] = alphabet[rnd_below(sizeof(alphabet) - 1)];
		}
		struct alloc_spec a;
		uint64_t q[3];
		int r = alloc_parse("clip", s, names, 3, &a);
		if (r < 0) {
			ck_assert_int_eq(r, -EINVAL);
			ck_assert_msg(!strncmp(vram_last_error(), "clip allocation \"", 17), "%s", vram_last_error());
			continue;
		}
		uint64_t B = rnd();
		r = alloc_quotas("clip", s, &a, total, 3, 2, B, q);
		ck_assert_int_eq(r, 0);
		ck_assert_uint_eq(q[0] + q[1] + q[2], B);
	}
}
END_TEST

/* ---------------------------------------------------------------------- */
/* real safetensors files                                                  */

static char *write_checkpoint(const char *dir, const char *script_body)
{
	char *path = NULL, cmd[8192];
	if (asprintf(&path, "%s/model.safetensors", dir) < 0)
		return NULL;
	snprintf(cmd, sizeof(cmd),
		 "%s -c 'import numpy as np\nfrom safetensors.numpy import save_file\nt = {}\n%s\nsave_file(t, \"%s\")' 2>&1",
		 t_python(), script_body, path);
	char out[4096];
	int rc = t_run(cmd, out, sizeof(out));
	ck_assert_msg(rc == 0, "python failed (%d): %s", rc, out);
	return path;
}

START_TEST(test_safetensors)
{
	char *dir = t_tmpdir();
	ck_assert_ptr_nonnull(dir);
	/* an SD-like checkpoint: 12 unet blocks of 64 KiB f32, a clip with an
	 * embedding, a vae, a stray tensor and a tiny unet tensor */
	char *path = write_checkpoint(dir,
		"for i in range(12):\n"
		"    t[f\"model.diffusion_model.input_blocks.{i}.0.weight\"] = np.full((128, 128), i, np.float32)\n"
		"    t[f\"model.diffusion_model.input_blocks.{i}.0.bias\"] = np.zeros((128,), np.float16)\n"
		"t[\"model.diffusion_model.out.2.bias\"] = np.zeros((1,), np.float16)\n"
		"t[\"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight\"] = np.zeros((256, 64), np.float16)\n"
		"for i in range(4):\n"
		"    t[f\"cond_stage_model.transformer.text_model.encoder.layers.{i}.mlp.fc1.weight\"] = np.zeros((64, 256), np.float16)\n"
		"t[\"first_stage_model.decoder.conv_in.weight\"] = np.zeros((64, 64), np.float32)\n"
		"t[\"alphas_cumprod\"] = np.zeros((1000,), np.float32)\n");

	vram_model *m = NULL;
	int r = vram_model_open(path, &m);
	ck_assert_msg(r == 0, "open: %d %s", r, vram_last_error());
	struct vram_plan_device devs[4];
	uint32_t nd = devs_of("cuda:0=1GiB,cpu=4GiB", devs);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_expert_mode_allocations = "cuda:0,50%;cpu,*";
	o.clip_expert_mode_allocations = "cuda:0,0.0001;cpu,*";
	vram_plan *p = NULL;
	r = vram_plan_create(m, &o, devs, nd, &p);
	ck_assert_msg(r == 0, "plan: %d %s", r, vram_last_error());

	int nl = vram_model_layer_count(m);
	ck_assert_int_gt(nl, 0);
	uint64_t sum[VRAM_COMP_COUNT][2];
	memset(sum, 0, sizeof(sum));
	int saw_embedding = 0, saw_tiny = 0;
	for (int i = 0; i < nl; i++) {
		struct vram_layer_info li = { .struct_size = sizeof(li) };
		ck_assert_int_eq(vram_model_layer(m, (uint32_t)i, &li), 0);
		int d = vram_plan_layer_device(p, (uint32_t)i);
		ck_assert(d == 0 || d == 1);
		sum[li.component][d] += li.nbytes;
		if (li.flags & VRAM_LAYER_EMBEDDING) {
			saw_embedding = 1;
			ck_assert_int_eq(plan_layer_pinned(p, (uint32_t)i), 1);
			ck_assert_int_eq(d, vram_plan_compute_device(p, VRAM_COMP_CLIP));
		}
		if (li.component == VRAM_COMP_UNET && plan_layer_pinned(p, (uint32_t)i)) {
			saw_tiny = 1;
			ck_assert_int_eq(d, 0);
		}
		if (li.component == VRAM_COMP_VAE || li.component == VRAM_COMP_OTHER)
			ck_assert_int_eq(d, 0);
	}
	ck_assert(saw_tiny);
	ck_assert(saw_embedding);
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++) {
		struct vram_component_info ci = { .struct_size = sizeof(ci) };
		ck_assert_int_eq(vram_model_component(m, c, &ci), 0);
		ck_assert_uint_eq(sum[c][0] + sum[c][1], ci.nbytes);
		ck_assert_uint_eq(vram_plan_bytes(p, c, 0), sum[c][0]);
		ck_assert_uint_eq(vram_plan_bytes(p, c, 1), sum[c][1]);
	}
	/* half the unet (less the tiny bias) on cuda:0, from the tail */
	struct vram_component_info unet = { .struct_size = sizeof(unet) };
	vram_model_component(m, VRAM_COMP_UNET, &unet);
	ck_assert_uint_le(vram_plan_bytes(p, VRAM_COMP_UNET, 0), unet.nbytes / 2 + 2);
	ck_assert_uint_gt(vram_plan_bytes(p, VRAM_COMP_UNET, 0), 0);

	char *js = NULL;
	ck_assert_int_eq(vram_plan_to_json(p, &js), 0);
	json_t *j = json_loads(js, 0, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(jstr(j, "model"), path);
	ck_assert_int_eq(jint(j, "components.unet.bytes"), (long long)unet.nbytes);
	json_decref(j);
	free(js);
	vram_plan_free(p);

	/* the model is not needed after planning; too small a GPU is caught
	 * before any byte is read */
	o.unet_expert_mode_allocations = "cuda:0,100%";
	nd = devs_of("cuda:0=64KiB,cpu=4GiB", devs);
	p = NULL;
	ck_assert_int_eq(vram_plan_create(m, &o, devs, nd, &p), -ENOSPC);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "plan does not fit: cuda:0 needs"));
	ck_assert_ptr_null(p);
	vram_model_close(m);
	free(path);
	t_rmtree(dir);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* module order                                                            */

/* Builds the modules of the tensors names[0, n) (one 1-byte tensor each,
 * in the scrambled order given), all of component comp. */
static void build_names(const char *const *names, uint32_t n, uint32_t comp, struct mod_units *u)
{
	struct mod_tensor t[128];
	ck_assert_uint_le(n, 128);
	for (uint32_t i = 0; i < n; i++)
		t[i] = (struct mod_tensor){ .name = names[i], .component = comp, .layer = 0, .nbytes = 1 };
	ck_assert_int_eq(modules_build(t, n, u), 0);
}

/* Position of the unit called name, failing when there is none. */
static uint32_t unit_pos(const struct mod_units *u, const char *name)
{
	for (uint32_t i = 0; i < u->nunits; i++)
		if (!strcmp(u->units[i].name, name))
			return i;
	ck_abort_msg("no module %s", name);
	return 0;
}

/* The modules in want[] (NULL-terminated) come in this order. */
static void assert_order(const struct mod_units *u, const char *prefix, const char *const *want)
{
	char a[256], b[256];
	for (uint32_t i = 0; want[i] && want[i + 1]; i++) {
		snprintf(a, sizeof(a), "%s%s", prefix, want[i]);
		snprintf(b, sizeof(b), "%s%s", prefix, want[i + 1]);
		ck_assert_msg(unit_pos(u, a) < unit_pos(u, b), "%s should come before %s", a, b);
	}
}

/* Each family in ComfyUI's registration order, whatever the order of the
 * names; weight and bias one module; parameters of a module that has
 * submodules a module each; the family told by its names. */
START_TEST(test_module_order)
{
	static const char *const sd[] = {
		"out.2.weight", "out.0.weight", "output_blocks.2.2.conv.weight", "output_blocks.0.0.in_layers.0.weight",
		"middle_block.0.in_layers.0.weight", "input_blocks.10.0.in_layers.0.weight", "input_blocks.3.0.op.weight",
		"input_blocks.1.1.proj_out.weight", "input_blocks.1.1.transformer_blocks.1.attn1.to_q.weight",
		"input_blocks.1.1.transformer_blocks.0.norm3.weight", "input_blocks.1.1.transformer_blocks.0.norm1.weight",
		"input_blocks.1.1.transformer_blocks.0.norm2.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
		"input_blocks.1.1.transformer_blocks.0.ff.net.2.weight", "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
		"input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight", "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
		"input_blocks.1.1.proj_in.weight", "input_blocks.1.1.norm.weight", "input_blocks.1.0.skip_connection.weight",
		"input_blocks.1.0.out_layers.3.weight", "input_blocks.1.0.out_layers.0.weight", "input_blocks.1.0.emb_layers.1.weight",
		"input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.in_layers.2.bias", "input_blocks.1.0.in_layers.0.weight",
		"input_blocks.0.0.weight", "label_emb.0.0.weight", "time_embed.2.weight", "time_embed.0.weight",
	};
	static const char *const sd_want[] = {
		"time_embed.0", "time_embed.2", "label_emb.0.0", "input_blocks.0.0", "input_blocks.1.0.in_layers.0",
		"input_blocks.1.0.in_layers.2", "input_blocks.1.0.emb_layers.1", "input_blocks.1.0.out_layers.0",
		"input_blocks.1.0.out_layers.3", "input_blocks.1.0.skip_connection", "input_blocks.1.1.norm",
		"input_blocks.1.1.proj_in", "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
		"input_blocks.1.1.transformer_blocks.0.attn1.to_out.0", "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj",
		"input_blocks.1.1.transformer_blocks.0.ff.net.2", "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
		"input_blocks.1.1.transformer_blocks.0.norm2", "input_blocks.1.1.transformer_blocks.0.norm1",
		"input_blocks.1.1.transformer_blocks.0.norm3", "input_blocks.1.1.transformer_blocks.1.attn1.to_q",
		"input_blocks.1.1.proj_out", "input_blocks.3.0.op", "input_blocks.10.0.in_layers.0",
		"middle_block.0.in_layers.0", "output_blocks.0.0.in_layers.0", "output_blocks.2.2.conv", "out.0", "out.2", NULL,
	};
	static const char *const flux[] = {
		"final_layer.adaLN_modulation.1.weight", "final_layer.linear.weight", "single_blocks.2.linear1.weight",
		"single_blocks.0.modulation.lin.weight", "single_blocks.0.norm.query_norm.scale", "single_blocks.0.linear2.weight",
		"single_blocks.0.linear1.weight", "double_blocks.10.img_mod.lin.weight", "double_blocks.1.img_mod.lin.weight",
		"double_blocks.0.txt_mlp.2.weight", "double_blocks.0.txt_attn.qkv.weight", "double_blocks.0.txt_mod.lin.weight",
		"double_blocks.0.img_mlp.2.weight", "double_blocks.0.img_mlp.0.weight", "double_blocks.0.img_attn.proj.weight",
		"double_blocks.0.img_attn.norm.key_norm.scale", "double_blocks.0.img_attn.norm.query_norm.scale",
		"double_blocks.0.img_attn.qkv.weight", "double_blocks.0.img_mod.lin.weight", "txt_in.weight",
		"guidance_in.in_layer.weight", "vector_in.in_layer.weight", "time_in.out_layer.weight", "time_in.in_layer.weight",
		"img_in.weight",
	};
	static const char *const flux_want[] = {
		"img_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "guidance_in.in_layer", "txt_in",
		"double_blocks.0.img_mod.lin", "double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.norm.query_norm",
		"double_blocks.0.img_attn.norm.key_norm", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
		"double_blocks.0.img_mlp.2", "double_blocks.0.txt_mod.lin", "double_blocks.0.txt_attn.qkv",
		"double_blocks.0.txt_mlp.2", "double_blocks.1.img_mod.lin", "double_blocks.10.img_mod.lin",
		"single_blocks.0.linear1", "single_blocks.0.linear2", "single_blocks.0.norm.query_norm",
		"single_blocks.0.modulation.lin", "single_blocks.2.linear1", "final_layer.linear",
		"final_layer.adaLN_modulation.1", NULL,
	};
	static const char *const wan[] = {
		"head.modulation", "head.head.weight", "blocks.0.modulation", "blocks.0.ffn.2.weight", "blocks.0.ffn.0.weight",
		"blocks.0.cross_attn.k_img.weight", "blocks.0.cross_attn.q.weight", "blocks.0.norm3.weight",
		"blocks.0.self_attn.norm_k.weight", "blocks.0.self_attn.o.weight", "blocks.0.self_attn.q.weight",
		"time_projection.1.weight", "time_embedding.0.weight", "text_embedding.0.weight", "patch_embedding.weight",
	};
	static const char *const wan_want[] = {
		"patch_embedding", "text_embedding.0", "time_embedding.0", "time_projection.1", "blocks.0.self_attn.q",
		"blocks.0.self_attn.o", "blocks.0.self_attn.norm_k", "blocks.0.norm3", "blocks.0.cross_attn.q",
		"blocks.0.cross_attn.k_img", "blocks.0.ffn.0", "blocks.0.ffn.2", "blocks.0.modulation", "head.head",
		"head.modulation", NULL,
	};
	static const char *const text[] = {
		"t5xxl.transformer.shared.weight", "t5xxl.transformer.encoder.final_layer_norm.weight",
		"t5xxl.transformer.encoder.block.1.layer.0.SelfAttention.q.weight",
		"t5xxl.transformer.encoder.block.0.layer.1.layer_norm.weight",
		"t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense.wo.weight",
		"t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
		"t5xxl.transformer.encoder.block.0.layer.0.layer_norm.weight",
		"t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
		"t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.o.weight",
		"t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
		"clip_l.transformer.text_projection.weight", "clip_l.transformer.text_model.final_layer_norm.weight",
		"clip_l.transformer.text_model.encoder.layers.1.layer_norm1.weight",
		"clip_l.transformer.text_model.encoder.layers.0.mlp.fc2.weight",
		"clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
		"clip_l.transformer.text_model.encoder.layers.0.layer_norm2.weight",
		"clip_l.transformer.text_model.encoder.layers.0.self_attn.out_proj.weight",
		"clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
		"clip_l.transformer.text_model.encoder.layers.0.layer_norm1.weight",
		"clip_l.transformer.text_model.embeddings.token_embedding.weight",
		"clip_g.model.logit_scale", "clip_g.model.text_projection", "clip_g.model.ln_final.weight",
		"clip_g.model.transformer.resblocks.0.mlp.c_proj.weight", "clip_g.model.transformer.resblocks.0.mlp.c_fc.weight",
		"clip_g.model.transformer.resblocks.0.ln_2.weight", "clip_g.model.transformer.resblocks.0.attn.out_proj.weight",
		"clip_g.model.transformer.resblocks.0.attn.in_proj_weight", "clip_g.model.transformer.resblocks.0.ln_1.weight",
		"clip_g.model.positional_embedding", "clip_g.model.token_embedding.weight",
	};
	static const char *const text_want[] = {
		"clip_l.transformer.text_model.embeddings.token_embedding",
		"clip_l.transformer.text_model.encoder.layers.0.layer_norm1",
		"clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj",
		"clip_l.transformer.text_model.encoder.layers.0.self_attn.out_proj",
		"clip_l.transformer.text_model.encoder.layers.0.layer_norm2",
		"clip_l.transformer.text_model.encoder.layers.0.mlp.fc1", "clip_l.transformer.text_model.encoder.layers.0.mlp.fc2",
		"clip_l.transformer.text_model.encoder.layers.1.layer_norm1", "clip_l.transformer.text_model.final_layer_norm",
		"clip_l.transformer.text_projection", "clip_g.model.token_embedding", "clip_g.model.positional_embedding",
		"clip_g.model.transformer.resblocks.0.ln_1", "clip_g.model.transformer.resblocks.0.attn.in_proj_weight",
		"clip_g.model.transformer.resblocks.0.attn.out_proj", "clip_g.model.transformer.resblocks.0.ln_2",
		"clip_g.model.transformer.resblocks.0.mlp.c_fc", "clip_g.model.transformer.resblocks.0.mlp.c_proj",
		"clip_g.model.ln_final", "clip_g.model.text_projection", "clip_g.model.logit_scale",
		"t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q",
		"t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.o",
		"t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
		"t5xxl.transformer.encoder.block.0.layer.0.layer_norm",
		"t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense.wi_0",
		"t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense.wo", "t5xxl.transformer.encoder.block.0.layer.1.layer_norm",
		"t5xxl.transformer.encoder.block.1.layer.0.SelfAttention.q", "t5xxl.transformer.encoder.final_layer_norm",
		"t5xxl.transformer.shared", NULL,
	};
	static const char *const odd[] = { "foo.b.weight", "foo.a.weight", "foo.10.weight", "foo.9.weight" };
	static const char *const odd_want[] = { "foo.9", "foo.10", "foo.a", "foo.b", NULL };
	static const struct {
		const char *const *names;
		uint32_t n, comp;
		const char *const *want;
		const char *family;
	} cases[] = {
		{ sd, ARRAY_SIZE(sd), VRAM_COMP_UNET, sd_want, "sd-unet" },
		{ flux, ARRAY_SIZE(flux), VRAM_COMP_UNET, flux_want, "flux" },
		{ wan, ARRAY_SIZE(wan), VRAM_COMP_UNET, wan_want, "wan" },
		{ text, ARRAY_SIZE(text), VRAM_COMP_CLIP, text_want, "text-encoders" },
		{ odd, ARRAY_SIZE(odd), VRAM_COMP_UNET, odd_want, "natural" },
	};
	for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
		struct mod_units u;
		build_names(cases[c].names, cases[c].n, cases[c].comp, &u);
		ck_assert_str_eq(mod_family_name(u.family[cases[c].comp]), cases[c].family);
		assert_order(&u, "", cases[c].want);
		if (c == 0) { /* weight and bias are one module */
			uint32_t i = unit_pos(&u, "input_blocks.1.0.in_layers.2");
			ck_assert_uint_eq(u.units[i].nbytes, 2);
			ck_assert_uint_eq(u.nunits, cases[c].n - 1);
		}
		if (c == 3) { /* embeddings, also T5's and OpenCLIP's */
			ck_assert(u.units[unit_pos(&u, "t5xxl.transformer.shared")].flags & VRAM_LAYER_EMBEDDING);
			ck_assert(u.units[unit_pos(&u, "clip_g.model.positional_embedding")].flags & VRAM_LAYER_EMBEDDING);
			ck_assert(!(u.units[unit_pos(&u, "clip_g.model.ln_final")].flags & VRAM_LAYER_EMBEDDING));
		}
		/* every tensor maps to the unit of its name */
		for (uint32_t t = 0; t < cases[c].n; t++)
			ck_assert(!strncmp(cases[c].names[t], u.units[u.tensor_unit[t]].name,
					   strlen(u.units[u.tensor_unit[t]].name)));
		modules_free(&u);
	}
}
END_TEST

/* ---------------------------------------------------------------------- */
/* granularity on SDXL- and Flux-shaped checkpoints (issue 15)             */

static char *shaped_dir;

static void shaped_setup(void)
{
	const char *src = getenv("VRAM_SRCDIR");
	char cmd[2048];
	shaped_dir = t_tmpdir();
	for (int f = 0; f < 2; f++) {
		const char *arch = f ? "flux" : "sdxl";
		snprintf(cmd, sizeof(cmd), "%s %s/tests/make_checkpoint.py --out %s/%s.safetensors --size 2000000000 "
			 "--arch %s --sparse >/dev/null 2>&1", t_python(), src && *src ? src : ".", shaped_dir, arch, arch);
		if (t_run(cmd, NULL, 0) != 0)
			fprintf(stderr, "test-plan: make_checkpoint.py --arch %s failed\n", arch);
	}
}

static void shaped_teardown(void)
{
	t_rmtree(shaped_dir);
}

static const struct {
	const char *unet, *clip;         /* expert strings (NULL: virtual VRAM) */
	double unet_vv, clip_vv;
	const char *unet_donor, *clip_dev, *clip_donor;
} shaped_plans[] = {
	{ "cuda:0,50%;cpu,*", "cuda:0,50%;cpu,*", 0, 0, NULL, NULL, NULL },
	{ "cuda:0,30%;cuda:1,30%;cpu,*", "cuda:0,30%;cuda:1,30%;cpu,*", 0, 0, NULL, NULL, NULL },
	{ "cuda:0,70%;cuda:1,30%", "cuda:1,50%;cpu,50%", 0, 0, NULL, NULL, NULL },      /* facts.md §1 */
	{ "cuda:0,8%;cuda:1,8%;cpu,4%", "cuda:0,0.01;cpu,*", 0, 0, NULL, NULL, NULL },   /* plan.md */
	{ "cuda:0,500mb;cuda:1,300mb;cpu,*", "cuda:1,100mb;cpu,*", 0, 0, NULL, NULL, NULL }, /* bytes */
	{ "cuda:0,0.02;cpu,*", "cuda:1,0.01;cuda:0,0.005", 0, 0, NULL, NULL, NULL },     /* fractions */
	{ NULL, NULL, 0.5, 0.1, "cpu", "cuda:0", "cpu" },                                  /* virtual VRAM */
	{ NULL, NULL, 8.0, 2.0, "cuda:1", "cuda:1", "cpu" },                               /* facts.md §1 */
	{ NULL, NULL, 1.0, 0.2, "cuda:1", "cuda:1", "cpu" },
};

/* Every device gets what it was asked to within 2 % of the component's
 * bytes, and every device before the last one asked for anything gets
 * what it was asked less under one module (never more, past the pinned
 * modules its own quota took); the compute device holds the tail. */
START_TEST(test_granularity)
{
	int f = _i / (int)ARRAY_SIZE(shaped_plans), k = _i % (int)ARRAY_SIZE(shaped_plans);
	char path[512];
	snprintf(path, sizeof(path), "%s/%s.safetensors", shaped_dir, f ? "flux" : "sdxl");
	vram_model *m = NULL;
	ck_assert_msg(vram_model_open(path, &m) == 0, "%s", vram_last_error());
	struct vram_plan_device devs[4];
	uint32_t nd = devs_of("cuda:0=24GiB,cuda:1=12GiB,cpu=64GiB", devs);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_expert_mode_allocations = shaped_plans[k].unet;
	o.clip_expert_mode_allocations = shaped_plans[k].clip;
	if (!shaped_plans[k].unet) {
		o.unet_virtual_vram_gb = shaped_plans[k].unet_vv;
		o.clip_virtual_vram_gb = shaped_plans[k].clip_vv;
		o.unet_donor_device = shaped_plans[k].unet_donor;
		o.clip_compute_device = shaped_plans[k].clip_dev;
		o.clip_donor_device = shaped_plans[k].clip_donor;
	}
	vram_plan *p = NULL;
	ck_assert_msg(vram_plan_create(m, &o, devs, nd, &p) == 0, "%s", vram_last_error());
	struct mod_units mu;
	ck_assert_int_eq(modules_from_model(m, 0, 0, &mu), 0);
	ck_assert_uint_eq(mu.family[VRAM_COMP_UNET], f ? MOD_FLUX : MOD_SD_UNET);
	uint64_t biggest[VRAM_COMP_COUNT] = { 0 };
	for (uint32_t i = 0; i < mu.nunits; i++)
		biggest[mu.units[i].component] = MAX(biggest[mu.units[i].component], mu.units[i].nbytes);
	const uint32_t order[] = { 0, 1, 2 }; /* cuda:0, cuda:1, cpu as listed */
	char *js = NULL;
	ck_assert_int_eq(vram_plan_to_json(p, &js), 0);
	json_t *j = json_loads(js, 0, NULL);
	free(js);
	for (uint32_t c = VRAM_COMP_UNET; c <= VRAM_COMP_CLIP; c++) {
		struct vram_component_info ci = { .struct_size = sizeof(ci) };
		ck_assert_int_eq(vram_model_component(m, c, &ci), 0);
		int cd = vram_plan_compute_device(p, c), last = -1;
		uint64_t sum = 0, pinned = (uint64_t)jint(j, c ? "components.clip.pinned_bytes" : "components.unet.pinned_bytes");
		for (uint32_t d = 0; d < nd; d++)
			if (vram_plan_asked_bytes(p, c, order[d]))
				last = (int)d;
		for (uint32_t d = 0; d < nd; d++) {
			/* What was asked, the pinned modules (tiny layers, a text
			 * encoder's embeddings: DisTorch2 keeps them on the compute
			 * device) moved there: placement is judged against that. */
			uint64_t asked = plan_quota(p, c, order[d]) + ((int)order[d] == cd ? pinned : 0);
			uint64_t placed = vram_plan_bytes(p, c, order[d]);
			uint64_t diff = asked > placed ? asked - placed : placed - asked;
			sum += placed;
			ck_assert_msg(diff * 50 <= ci.nbytes, "%s %s: %s asked %llu, placed %llu (more than 2%% off)",
				      path, c ? "clip" : "unet", devs[order[d]].name, (unsigned long long)asked,
				      (unsigned long long)placed);
			if ((int)d >= last || (int)order[d] == cd)
				continue;
			ck_assert_msg(placed <= asked && asked - placed < biggest[c], "%s %s: %s asked %llu, placed %llu",
				      path, c ? "clip" : "unet", devs[order[d]].name, (unsigned long long)asked,
				      (unsigned long long)placed);
		}
		ck_assert_uint_eq(sum, ci.nbytes);
	}
	/* tail first: the unet's last module is on the first device asked
	 * for anything, its first distributed one on the last */
	const char *tail = f ? "model.diffusion_model.final_layer.adaLN_modulation.1.weight"
			     : "model.diffusion_model.output_blocks.8.0.skip_connection.weight";
	const char *head = f ? "model.diffusion_model.time_in.out_layer.weight" : "model.diffusion_model.time_embed.0.weight";
	int first_dev = -1, last_dev = -1;
	for (uint32_t d = 0; d < nd; d++)
		if (vram_plan_asked_bytes(p, VRAM_COMP_UNET, order[d])) {
			if (first_dev < 0)
				first_dev = (int)order[d];
			last_dev = (int)order[d];
		}
	ck_assert_int_eq(vram_plan_tensor_device(p, (uint32_t)vram_model_find_tensor(m, tail)), first_dev);
	ck_assert_int_eq(vram_plan_tensor_device(p, (uint32_t)vram_model_find_tensor(m, head)), last_dev);
	json_decref(j);
	modules_free(&mu);
	vram_plan_free(p);
	vram_model_close(m);
}
END_TEST

/* A plan of modules splits a layer where a device's share ends: the JSON
 * shows it (split, the device with most of it), the tensors each go where
 * their module went, and asked / placed / difference add up. */
START_TEST(test_split_json)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/sdxl.safetensors", shaped_dir);
	vram_model *m = NULL;
	ck_assert_msg(vram_model_open(path, &m) == 0, "%s", vram_last_error());
	struct vram_plan_device devs[4];
	uint32_t nd = devs_of("cuda:0=24GiB,cpu=64GiB", devs);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_expert_mode_allocations = "cuda:0,50%;cpu,*";
	vram_plan *p = NULL;
	ck_assert_msg(vram_plan_create(m, &o, devs, nd, &p) == 0, "%s", vram_last_error());
	char *s = NULL;
	ck_assert_int_eq(vram_plan_to_json(p, &s), 0);
	json_t *j = json_loads(s, 0, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(jstr(j, "components.unet.module_order"), "sd-unet");
	ck_assert_str_eq(jstr(j, "components.clip.module_order"), "text-encoders");
	long long asked = jint(j, "components.unet.asked.cuda:0"), placed = jint(j, "components.unet.placement.cuda:0");
	ck_assert_int_eq(jint(j, "components.unet.difference.cuda:0"), placed - asked);
	ck_assert_int_eq(jint(j, "components.unet.difference.cpu"), asked - placed);
	ck_assert_uint_eq(json_array_size(jget(j, "components.unet.ranges")), 2); /* one run per device */
	ck_assert_str_eq(jstr(j, "components.unet.ranges.1.device"), "cuda:0");
	ck_assert_str_eq(jstr(j, "components.unet.ranges.0.first"), "model.diffusion_model.time_embed.0");
	json_t *layers = jget(j, "components.unet.layers"), *l;
	size_t i;
	int splits = 0;
	json_array_foreach(layers, i, l) {
		json_t *sp = json_object_get(l, "split");
		uint32_t li = (uint32_t)json_integer_value(json_object_get(l, "index"));
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		ck_assert_int_eq(vram_model_layer(m, li, &info), 0);
		uint64_t on[2] = { 0, 0 };
		for (uint32_t t = info.first_tensor; t < info.first_tensor + info.ntensors; t++) {
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			vram_model_tensor(m, t, &ti);
			on[vram_plan_tensor_device(p, t)] += ti.nbytes;
		}
		if (json_is_null(sp)) {
			ck_assert(!on[0] || !on[1]);
			continue;
		}
		splits++;
		ck_assert_int_eq(json_integer_value(json_object_get(sp, "cuda:0")), (long long)on[0]);
		ck_assert_int_eq(json_integer_value(json_object_get(sp, "cpu")), (long long)on[1]);
		ck_assert_int_eq(vram_plan_layer_device(p, li), on[0] >= on[1] ? 0 : 1);
	}
	ck_assert_int_eq(splits, 1);
	json_decref(j);
	free(s);
	vram_plan_free(p);
	vram_model_close(m);
}
END_TEST

static Suite *plan_suite(void)
{
	Suite *s = suite_create("plan");
	TCase *tc = tcase_create("allocstr");
	tcase_add_test(tc, test_byte_form);
	tcase_add_test(tc, test_units);
	tcase_add_test(tc, test_ratio_form);
	tcase_add_test(tc, test_fraction_form);
	tcase_add_test(tc, test_parse_errors);
	suite_add_tcase(s, tc);

	tc = tcase_create("placement");
	tcase_add_test(tc, test_virtual_vram_default);
	tcase_add_test(tc, test_documented_virtual_vram);
	tcase_add_test(tc, test_expert_wins);
	tcase_add_test(tc, test_device_order);
	tcase_add_test(tc, test_pinned);
	tcase_add_test(tc, test_contiguous);
	tcase_add_test(tc, test_fit);
	tcase_add_test(tc, test_option_errors);
	tcase_add_test(tc, test_empty);
	tcase_add_test(tc, test_devices_parse);
	tcase_add_test(tc, test_devices_from_broker);
	tcase_add_test(tc, test_json);
	suite_add_tcase(s, tc);

	tc = tcase_create("property");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_property);
	tcase_add_test(tc, test_fuzz);
	suite_add_tcase(s, tc);

	tc = tcase_create("safetensors");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_safetensors);
	tcase_add_test(tc, test_module_order);
	suite_add_tcase(s, tc);

	tc = tcase_create("granularity");
	tcase_set_timeout(tc, 60);
	tcase_add_unchecked_fixture(tc, shaped_setup, shaped_teardown);
	tcase_add_loop_test(tc, test_granularity, 0, 2 * (int)ARRAY_SIZE(shaped_plans));
	tcase_add_test(tc, test_split_json);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(plan_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
