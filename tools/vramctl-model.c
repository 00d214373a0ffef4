/* SPDX-License-Identifier: MIT */
/* vramctl inspect / plan / load: checkpoints, placement, loading. */
#include <errno.h>
#include <stdbool.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/util.h"
#include "tools/vramctl-plan.h"
#include "tools/vramctl.h"

/* Opens FILE, printing the one-line error; returns an exit code or 0. */
static int open_model(const char *path, vram_model **ret)
{
	int r = vram_model_open(path, ret);
	if (r == 0)
		return 0;
	fprintf(stderr, "%s\n", vram_last_error());
	if (r == -ENOENT || r == -EACCES || r == -EISDIR || r == -ENOTDIR)
		return EX_NOINPUT_;
	if (r == -EIO)
		return EX_IOERR_;
	return EX_DATAERR_;
}

/* ======================================================================
 * inspect
 * ====================================================================== */

/* The file's own description: safetensors' modelspec keys, GGUF's general
 * keys (docs/formats.md).  The licence comes first. */
static const struct {
	const char *label;
	const char *keys[2];
} describe[] = {
	{ "license", { "modelspec.license", "general.license" } },
	{ "title", { "modelspec.title", "general.name" } },
	{ "architecture", { "modelspec.architecture", "general.architecture" } },
	{ "author", { "modelspec.author", "general.author" } },
	{ "date", { "modelspec.date", "general.date" } },
	{ "quantisation", { NULL, "general.file_type" } },
};

static const char *meta_get(const vram_model *m, const char *key)
{
	int n = vram_model_metadata_count(m);
	for (int i = 0; key && i < n; i++) {
		const char *k, *v;
		if (vram_model_metadata(m, (uint32_t)i, &k, &v) == 0 && !strcmp(k, key))
			return v;
	}
	return NULL;
}

static const char *describe_get(const vram_model *m, size_t i)
{
	const char *v = meta_get(m, describe[i].keys[0]);
	return v ? v : meta_get(m, describe[i].keys[1]);
}

/* What the header of m's format is, for "header: N bytes WHAT". */
static const char *header_what(const vram_model *m)
{
	const char *f = vram_model_format(m);
	if (!strcmp(f, "gguf"))
		return "of metadata and tensor infos";
	if (!strcmp(f, "pytorch"))
		return "of pickle (data.pkl)";
	return "of JSON";
}

/* Tensors and bytes per dtype, and the components' totals. */
struct inspect_sums {
	uint64_t dt_count[VRAM_DTYPE_COUNT], dt_bytes[VRAM_DTYPE_COUNT];
	struct vram_component_info ci[VRAM_COMP_COUNT];
};

static void inspect_sum(const vram_model *m, struct inspect_sums *s)
{
	int nt = vram_model_tensor_count(m);

	memset(s, 0, sizeof(*s));
	for (int i = 0; i < nt; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		s->dt_count[ti.dtype]++;
		s->dt_bytes[ti.dtype] += ti.nbytes;
	}
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		s->ci[k].struct_size = sizeof(s->ci[k]);
		vram_model_component(m, k, &s->ci[k]);
	}
}

static void inspect_json(const vram_model *m, const char *file, const struct inspect_sums *s)
{
	json_auto_t *root = json_object();
	json_t *dts = json_object(), *comps = json_object(), *md = json_object();
	json_object_set_new(root, "file", json_string(file));
	json_object_set_new(root, "format", json_string(vram_model_format(m)));
	json_object_set_new(root, "file_size", json_integer((json_int_t)vram_model_file_size(m)));
	json_object_set_new(root, "header_size", json_integer((json_int_t)vram_model_header_size(m)));
	json_object_set_new(root, "data_offset", json_integer((json_int_t)vram_model_data_offset(m)));
	json_object_set_new(root, "data_size", json_integer((json_int_t)vram_model_data_size(m)));
	json_object_set_new(root, "tensors", json_integer(vram_model_tensor_count(m)));
	json_object_set_new(root, "layers", json_integer(vram_model_layer_count(m)));
	for (uint32_t d = 0; d < VRAM_DTYPE_COUNT; d++) {
		if (!s->dt_count[d])
			continue;
		json_t *o = json_object();
		json_object_set_new(o, "tensors", json_integer((json_int_t)s->dt_count[d]));
		json_object_set_new(o, "bytes", json_integer((json_int_t)s->dt_bytes[d]));
		json_object_set_new(dts, vram_dtype_name(d), o);
	}
	json_object_set_new(root, "dtypes", dts);
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		json_t *o = json_object();
		json_object_set_new(o, "tensors", json_integer(s->ci[k].ntensors));
		json_object_set_new(o, "layers", json_integer(s->ci[k].nlayers));
		json_object_set_new(o, "bytes", json_integer((json_int_t)s->ci[k].nbytes));
		json_object_set_new(comps, vram_component_name(k), o);
	}
	json_object_set_new(root, "components", comps);
	int nm = vram_model_metadata_count(m);
	for (int i = 0; i < nm; i++) {
		const char *k, *v;
		if (vram_model_metadata(m, (uint32_t)i, &k, &v) == 0)
			json_object_set_new(md, k, json_string(v));
	}
	json_object_set_new(root, "metadata", md);
	json_t *dsc = json_object();
	for (size_t i = 0; i < ARRAY_SIZE(describe); i++) {
		const char *v = describe_get(m, i);
		if (v)
			json_object_set_new(dsc, describe[i].label, json_string(v));
	}
	json_object_set_new(root, "description", dsc);
	_cleanup_free_ char *txt = json_dumps(root, JSON_INDENT(2));
	puts(txt ? txt : "{}");
}

static void inspect_text(const vram_model *m, const char *file, const struct inspect_sums *s)
{
	char a[32], b[32];
	printf("file:        %s\n", file);
	printf("format:      %s\n", vram_model_format(m));
	/* The licence first: shared checkpoints often carry research-only or
	 * non-commercial terms. */
	for (size_t i = 0; i < ARRAY_SIZE(describe); i++) {
		const char *v = describe_get(m, i);
		if (v && i == 0)
			printf("LICENSE:     %s  (the file's own terms: read them before use)\n", v);
		else if (v) {
			char lab[32];
			snprintf(lab, sizeof(lab), "%s:", describe[i].label);
			printf("%-12s %s\n", lab, v);
		}
	}
	printf("size:        %s (%llu bytes)\n", ctl_size(vram_model_file_size(m), a, sizeof(a)),
	       (unsigned long long)vram_model_file_size(m));
	printf("header:      %llu bytes %s\n", (unsigned long long)vram_model_header_size(m), header_what(m));
	printf("tensors:     %d\n", vram_model_tensor_count(m));
	printf("layers:      %d\n", vram_model_layer_count(m));
	printf("dtypes:     ");
	for (uint32_t d = 0; d < VRAM_DTYPE_COUNT; d++)
		if (s->dt_count[d])
			printf(" %s x%llu (%s)", vram_dtype_name(d), (unsigned long long)s->dt_count[d],
			       ctl_size(s->dt_bytes[d], b, sizeof(b)));
	printf("\n\n%-10s %8s %8s %14s\n", "COMPONENT", "TENSORS", "LAYERS", "BYTES");
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++)
		printf("%-10s %8u %8u %14s\n", vram_component_name(k), s->ci[k].ntensors, s->ci[k].nlayers,
		       ctl_size(s->ci[k].nbytes, a, sizeof(a)));
}

int cmd_inspect(struct ctl *ctl)
{
	_cleanup_(vram_model_closep) vram_model *m = NULL;
	struct inspect_sums sums;
	const char *file = NULL;
	for (int i = 1; i < ctl->argc; i++) {
		if (!strcmp(ctl->argv[i], "--json"))
			ctl->json = true;
		else if (ctl->argv[i][0] == '-' || file) {
			fprintf(stderr, "vramctl inspect: unexpected argument \"%s\"\n", ctl->argv[i]);
			return EX_USAGE_;
		} else
			file = ctl->argv[i];
	}
	if (!file) {
		fprintf(stderr, "vramctl inspect: FILE missing\n");
		return EX_USAGE_;
	}
	int r = open_model(file, &m);
	if (r)
		return r;
	inspect_sum(m, &sums);
	if (ctl->json)
		inspect_json(m, file, &sums);
	else
		inspect_text(m, file, &sums);
	return 0;
}

/* ======================================================================
 * plan flags (shared by plan, load and bench pager)
 * ====================================================================== */

void plan_args_init(struct plan_args *pa)
{
	memset(pa, 0, sizeof(*pa));
	vram_plan_options_init(&pa->opts);
}

static int parse_gb(const char *flag, const char *v, double *ret)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	if (errno || end == v || *end || isnan(x)) {
		fprintf(stderr, "vramctl: %s: \"%s\" is not a number of GB\n", flag, v);
		return -1;
	}
	*ret = x;
	return 0;
}

/* A dtype by its safetensors name, any case; -1 if none. */
static int dtype_parse(const char *v)
{
	for (uint32_t d = 0; d < VRAM_DTYPE_COUNT; d++)
		if (!strcasecmp(v, vram_dtype_name(d)))
			return (int)d;
	return -1;
}

int plan_args_parse(struct plan_args *pa, int argc, char **argv, int *i)
{
	const char *a = argv[*i];
	const char *v = NULL;
	/* Conversion while loading: the plan counts converted sizes, the
	 * load converts (not a placement flag: no conflict with --device). */
	if (!strcmp(a, "--cast") || !strcmp(a, "--cast-from")) {
		if (*i + 1 >= argc) {
			fprintf(stderr, "vramctl: %s needs a value\n", a);
			return -1;
		}
		v = argv[++*i];
		if (!strcmp(a, "--cast")) {
			int d = dtype_parse(v);
			if (d <= (int)VRAM_DTYPE_BOOL) {
				fprintf(stderr, "vramctl: --cast: \"%s\" is not a dtype (F16, BF16, F32, F8_E4M3, F8_E5M2)\n", v);
				return -1;
			}
			pa->opts.cast_to = (uint32_t)d;
			return 1;
		}
		char buf[256], *save = NULL;
		snprintf(buf, sizeof(buf), "%s", v);
		for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			int d = dtype_parse(t);
			if (d < 0) {
				fprintf(stderr, "vramctl: --cast-from: \"%s\" is not a dtype\n", t);
				return -1;
			}
			if (d >= 32) { /* block-quantised: not in the 32-bit set, never converted */
				fprintf(stderr, "vramctl: --cast-from: %s is block-quantised and never converted "
					"(F8_E4M3, F8_E5M2, F16, BF16, F32 are)\n", vram_dtype_name((uint32_t)d));
				return -1;
			}
			pa->opts.cast_from |= 1u << d;
		}
		return 1;
	}
	static const char *const with_value[] = {
		"--unet-compute-device", "--unet-virtual-vram-gb", "--unet-donor-device", "--clip-compute-device",
		"--clip-virtual-vram-gb", "--clip-donor-device", "--vae-device", "--unet-expert-mode-allocations",
		"--clip-expert-mode-allocations", "--devices", "--high-precision-loras",
	};
	size_t k = 0, alen = strcspn(a, "=");
	for (; k < sizeof(with_value) / sizeof(with_value[0]); k++)
		if (strlen(with_value[k]) == alen && !strncmp(a, with_value[k], alen))
			break;
	if (k == sizeof(with_value) / sizeof(with_value[0])) {
		if (!strcmp(a, "--no-high-precision-loras")) {
			pa->opts.flags &= ~VRAM_PLAN_HIGH_PRECISION_LORAS;
			pa->given = true;
			return 1;
		}
		return 0;
	}
	if (a[alen] == '=')
		v = a + alen + 1;
	else if (!strcmp(with_value[k], "--high-precision-loras")) {
		/* a bare flag means true */
		if (*i + 1 < argc && (!strcmp(argv[*i + 1], "true") || !strcmp(argv[*i + 1], "false")))
			v = argv[++*i];
		else
			v = "true";
	} else if (*i + 1 < argc)
		v = argv[++*i];
	else {
		fprintf(stderr, "vramctl: %s needs a value\n", with_value[k]);
		return -1;
	}
	pa->given = true;
	switch (k) {
	case 0: pa->opts.unet_compute_device = v; break;
	case 1: return parse_gb(with_value[k], v, &pa->opts.unet_virtual_vram_gb) < 0 ? -1 : 1;
	case 2: pa->opts.unet_donor_device = v; break;
	case 3: pa->opts.clip_compute_device = v; break;
	case 4: return parse_gb(with_value[k], v, &pa->opts.clip_virtual_vram_gb) < 0 ? -1 : 1;
	case 5: pa->opts.clip_donor_device = v; break;
	case 6: pa->opts.vae_device = v; break;
	case 7: pa->opts.unet_expert_mode_allocations = v; break;
	case 8: pa->opts.clip_expert_mode_allocations = v; break;
	case 9: pa->devices = v; break;
	case 10:
		if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes"))
			pa->opts.flags |= VRAM_PLAN_HIGH_PRECISION_LORAS;
		else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no"))
			pa->opts.flags &= ~VRAM_PLAN_HIGH_PRECISION_LORAS;
		else {
			fprintf(stderr, "vramctl: --high-precision-loras: \"%s\" is not true or false\n", v);
			return -1;
		}
		break;
	}
	return 1;
}

int plan_args_make(struct ctl *ctl, struct plan_args *pa, const vram_model *m, vram_client *c, vram_plan **ret)
{
	struct vram_plan_device devs[VRAM_MAX_PLAN_DEVICES];
	uint32_t n = 0;
	int r;
	for (uint32_t i = 0; i < VRAM_MAX_PLAN_DEVICES; i++)
		devs[i].struct_size = sizeof(devs[i]);
	if (pa->devices)
		r = vram_plan_devices_parse(pa->devices, devs, VRAM_MAX_PLAN_DEVICES, &n);
	else if ((r = vram_refresh_devices(c)) == 0)
		r = vram_plan_devices_from_client(c, devs, VRAM_MAX_PLAN_DEVICES, &n);
	if (r < 0) {
		fprintf(stderr, "vramctl: --devices: %s\n", vram_last_error());
		return EX_USAGE_;
	}
	r = vram_plan_create(m, &pa->opts, devs, n, ret);
	if (r == -EINVAL) {
		fprintf(stderr, "vramctl: %s\n", vram_last_error());
		return EX_USAGE_;
	}
	if (r < 0) {
		fprintf(stderr, "vramctl: %s\n", vram_last_error());
		return 1;
	}
	return 0;
}

/* ======================================================================
 * plan
 * ====================================================================== */

int cmd_plan(struct ctl *ctl)
{
	_cleanup_(vram_model_closep) vram_model *m = NULL;
	_cleanup_(vram_closep) vram_client *c = NULL;
	_cleanup_(vram_plan_freep) vram_plan *p = NULL;
	struct plan_args pa;
	const char *file = NULL;
	plan_args_init(&pa);
	for (int i = 1; i < ctl->argc; i++) {
		int r = plan_args_parse(&pa, ctl->argc, ctl->argv, &i);
		if (r < 0)
			return EX_USAGE_;
		if (r > 0)
			continue;
		if (!strcmp(ctl->argv[i], "--json"))
			ctl->json = true;
		else if (ctl->argv[i][0] == '-' || file) {
			fprintf(stderr, "vramctl plan: unexpected argument \"%s\"\n", ctl->argv[i]);
			return EX_USAGE_;
		} else
			file = ctl->argv[i];
	}
	if (!file) {
		fprintf(stderr, "vramctl plan: FILE missing\n");
		return EX_USAGE_;
	}
	int r = open_model(file, &m);
	if (r)
		return r;
	if (!pa.devices && (r = ctl_connect(ctl, &c)) != 0) {
		fprintf(stderr, "vramctl plan: give --devices \"cuda:0=24GiB,cpu=64GiB\" to plan without a broker\n");
		return r;
	}
	if ((r = plan_args_make(ctl, &pa, m, c, &p)) != 0)
		return r;
	if (!ctl->json) {
		plan_print(p, m);
		return 0;
	}
	_cleanup_free_ char *txt = NULL;
	if (vram_plan_to_json(p, &txt) < 0) {
		fprintf(stderr, "vramctl: %s\n", vram_last_error());
		return EX_SOFTWARE_;
	}
	puts(txt);
	return 0;
}

/* Length of the dotted prefix all of comp's module names share ("model.
 * diffusion_model."), which the table leaves out. */
static size_t common_prefix(json_t *ranges)
{
	const char *first = NULL;
	size_t n = 0;
	json_t *r;
	size_t i;
	json_array_foreach(ranges, i, r) {
		const char *names[2] = { json_string_value(json_object_get(r, "first")),
					 json_string_value(json_object_get(r, "last")) };
		for (int k = 0; k < 2 && names[k]; k++) {
			if (!first) {
				first = names[k];
				n = strlen(first);
			}
			size_t j = 0;
			while (j < n && names[k][j] == first[j])
				j++;
			n = j;
		}
	}
	while (n && first[n - 1] != '.')
		n--;
	return n;
}

/* One device's line: asked, placed, the difference, its modules (first
 * and last in placement order, over its runs). */
static void plan_print_device(json_t *c, const char *dev, uint64_t bytes, size_t skip)
{
	char a[32], b[32], d[40];
	uint64_t asked = (uint64_t)json_integer_value(json_object_get(json_object_get(c, "asked"), dev));
	uint64_t placed = (uint64_t)json_integer_value(json_object_get(json_object_get(c, "placement"), dev));
	json_t *ranges = json_object_get(c, "ranges"), *r;
	const char *first = NULL, *last = NULL;
	long long modules = 0, runs = 0;
	size_t i;
	json_array_foreach(ranges, i, r) {
		if (strcmp(json_string_value(json_object_get(r, "device")), dev))
			continue;
		if (!first)
			first = json_string_value(json_object_get(r, "first"));
		last = json_string_value(json_object_get(r, "last"));
		modules += json_integer_value(json_object_get(r, "modules"));
		runs++;
	}
	uint64_t diff = placed > asked ? placed - asked : asked - placed;
	snprintf(d, sizeof(d), "%s%s %+.2f%%", placed >= asked ? "+" : "-", ctl_size(diff, b, sizeof(b)),
		 bytes ? 100.0 * ((double)placed - (double)asked) / (double)bytes : 0.0);
	printf("%-6s %-10s %12s %12s %20s  ", "", dev, ctl_size(asked, a, sizeof(a)), ctl_size(placed, b, sizeof(b)), d);
	if (!modules)
		printf("-\n");
	else if (first == last || !strcmp(first, last))
		printf("%lld: %s\n", modules, first + MIN(skip, strlen(first)));
	else
		printf("%lld: %s .. %s%s\n", modules, first + MIN(skip, strlen(first)), last + MIN(skip, strlen(last)),
		       runs > 1 ? " (not all consecutive)" : "");
}

/* Layers the plan split between devices (it places modules), up to four. */
static void plan_print_split(json_t *c, size_t skip)
{
	json_t *layers = json_object_get(c, "layers"), *l;
	size_t i, n = 0;
	json_array_foreach(layers, i, l) {
		json_t *split = json_object_get(l, "split");
		if (!json_is_object(split))
			continue;
		if (n++ == 4) {
			printf("%-6s %s\n", "", "(more split layers in --json)");
			break;
		}
		const char *name = json_string_value(json_object_get(l, "name"));
		printf("%-6s split: %s (", "", name + MIN(skip, strlen(name)));
		const char *dev;
		json_t *v;
		bool first = true;
		json_object_foreach(split, dev, v) {
			char a[32];
			printf("%s%s %s", first ? "" : ", ", dev, ctl_size((uint64_t)json_integer_value(v), a, sizeof(a)));
			first = false;
		}
		printf(")\n");
	}
}

/* The plan as a table: per component, what each device was asked and
 * given, the difference, and its modules (docs/plan.md). */
void plan_print(const vram_plan *p, const vram_model *m)
{
	_cleanup_free_ char *txt = NULL;
	if (vram_plan_to_json(p, &txt) < 0) {
		fprintf(stderr, "vramctl: %s\n", vram_last_error());
		return;
	}
	json_auto_t *root = json_loads(txt, 0, NULL);
	json_t *comps = json_object_get(root, "components"), *devs = json_object_get(root, "placement_order");
	char a[32];
	printf("%-6s %-10s %12s %12s %20s  %s\n", "PART", "DEVICE", "ASKED", "PLACED", "DIFFERENCE", "MODULES");
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		json_t *c = json_object_get(comps, vram_component_name(k));
		uint64_t bytes = (uint64_t)json_integer_value(json_object_get(c, "bytes"));
		if (!c || !json_array_size(json_object_get(c, "layers")))
			continue;
		const char *order = json_string_value(json_object_get(c, "module_order"));
		const char *alloc = json_string_value(json_object_get(c, "allocation"));
		printf("%-6s compute on %s, %s, %lld modules in %s order, tail first", vram_component_name(k),
		       json_string_value(json_object_get(c, "compute_device")), ctl_size(bytes, a, sizeof(a)),
		       json_integer_value(json_object_get(c, "modules")), order ? order : "natural");
		if (alloc)
			printf(" (\"%s\")", alloc);
		printf("\n");
		size_t skip = common_prefix(json_object_get(c, "ranges")), i;
		json_t *dv;
		json_array_foreach(devs, i, dv) {
			const char *dev = json_string_value(dv);
			if (json_integer_value(json_object_get(json_object_get(c, "asked"), dev)) ||
			    json_integer_value(json_object_get(json_object_get(c, "placement"), dev)))
				plan_print_device(c, dev, bytes, skip);
		}
		uint64_t pinned = (uint64_t)json_integer_value(json_object_get(c, "pinned_bytes"));
		if (pinned && strcmp(json_string_value(json_object_get(c, "source")), "whole"))
			printf("%-6s pinned on %s: %s (tiny layers%s, DisTorch2's rule; part of that device's bytes)\n", "",
			       json_string_value(json_object_get(c, "compute_device")), ctl_size(pinned, a, sizeof(a)),
			       k == VRAM_COMP_CLIP ? " and embeddings" : "");
		plan_print_split(c, skip);
	}
	(void)m;
}

/* ======================================================================
 * load
 * ====================================================================== */

struct progress {
	bool tty;
	uint64_t t0;
	int last_pct;
};

static int on_progress(void *user, uint64_t done, uint64_t total)
{
	struct progress *pr = user;
	if (!pr->tty || !total)
		return 0;
	int pct = (int)(done * 100 / total);
	if (pct == pr->last_pct)
		return 0;
	pr->last_pct = pct;
	double s = (double)(now_ns() - pr->t0) / 1e9;
	char bar[41];
	int fill = pct * 40 / 100;
	for (int i = 0; i < 40; i++)
		bar[i] = i < fill ? '#' : ' ';
	bar[40] = 0;
	fprintf(stderr, "\r[%s] %3d%% %6.2f GB/s", bar, pct, s > 0 ? (double)done / s / 1e9 : 0.0);
	if (done == total)
		fputc('\n', stderr);
	return 0;
}

static const char *io_mode_name(uint32_t m)
{
	return m == VRAM_IO_DIRECT ? "direct" : m == VRAM_IO_BUFFERED ? "buffered" : "auto";
}

/* A count in 1..1024 for flag; -1 with the message printed. */
static int parse_1_1024(const char *flag, const char *v, uint32_t *ret)
{
	char *end;
	unsigned long d = strtoul(v, &end, 10);
	if (*end || !d || d > 1024) {
		fprintf(stderr, "vramctl load: %s: \"%s\" is not 1-1024\n", flag, v);
		return -1;
	}
	*ret = (uint32_t)d;
	return 0;
}

/* vramctl load's arguments. */
struct load_args {
	struct plan_args pa;
	const char *file, *device;
	bool hash;
	uint32_t hold_ms;        /* keep the load this long before exiting */
	struct vram_load_options lo;
};

/* One option of load (not a placement flag) at argv[*i], its value
 * consumed: 1, 0 when it is none of them, or -1 (message printed). */
static int load_option(struct ctl *ctl, struct load_args *la, int *i)
{
	const char *a = ctl->argv[*i], *v = *i + 1 < ctl->argc ? ctl->argv[*i + 1] : NULL;
	if (!strcmp(a, "--json")) {
		ctl->json = true;
		return 1;
	}
	if (!strcmp(a, "--hash")) {
		la->hash = true;
		return 1;
	}
	if (!strcmp(a, "--private")) {
		la->lo.flags &= ~VRAM_LOAD_SHARED;
		return 1;
	}
	if (!v)
		return 0;
	if (!strcmp(a, "--device")) {
		la->device = v;
	} else if (!strcmp(a, "--io")) {
		if (!strcmp(v, "auto"))
			la->lo.io_mode = VRAM_IO_AUTO;
		else if (!strcmp(v, "direct"))
			la->lo.io_mode = VRAM_IO_DIRECT;
		else if (!strcmp(v, "buffered"))
			la->lo.io_mode = VRAM_IO_BUFFERED;
		else {
			fprintf(stderr, "vramctl load: --io: \"%s\" is not auto, direct or buffered\n", v);
			return -1;
		}
	} else if (!strcmp(a, "--chunk")) {
		if (size_parse(v, &la->lo.chunk_size) < 0) {
			fprintf(stderr, "vramctl load: --chunk: \"%s\" is not a size\n", v);
			return -1;
		}
	} else if (!strcmp(a, "--staging")) {
		if (parse_1_1024(a, v, &la->lo.staging_slots) < 0)
			return -1;
	} else if (!strcmp(a, "--depth")) {
		if (parse_1_1024(a, v, &la->lo.queue_depth) < 0)
			return -1;
	} else if (!strcmp(a, "--hold-ms")) {
		char *end;
		unsigned long ms = strtoul(v, &end, 10);
		if (*end || end == v || ms > 86400000) {
			fprintf(stderr, "vramctl load: --hold-ms: \"%s\" is not a number of milliseconds\n", v);
			return -1;
		}
		la->hold_ms = (uint32_t)ms;
	} else {
		return 0;
	}
	++*i;
	return 1;
}

/* Parses vramctl load's command line into *la: 0, or EX_USAGE_ with the
 * message printed. */
static int load_args_parse(struct ctl *ctl, struct load_args *la)
{
	memset(la, 0, sizeof(*la));
	vram_load_options_init(&la->lo);
	la->lo.flags |= VRAM_LOAD_SHARED; /* --private opts out */
	plan_args_init(&la->pa);
	for (int i = 1; i < ctl->argc; i++) {
		int r = plan_args_parse(&la->pa, ctl->argc, ctl->argv, &i);
		if (r == 0)
			r = load_option(ctl, la, &i);
		if (r < 0)
			return EX_USAGE_;
		if (r > 0)
			continue;
		if (ctl->argv[i][0] == '-' || la->file) {
			fprintf(stderr, "vramctl load: unexpected argument \"%s\"\n", ctl->argv[i]);
			return EX_USAGE_;
		}
		la->file = ctl->argv[i];
	}
	if (!la->file) {
		fprintf(stderr, "vramctl load: FILE missing\n");
		return EX_USAGE_;
	}
	la->lo.cast_to = la->pa.opts.cast_to;
	la->lo.cast_from = la->pa.opts.cast_from;
	if (la->lo.cast_from && !la->lo.cast_to) {
		fprintf(stderr, "vramctl load: --cast-from needs --cast\n");
		return EX_USAGE_;
	}
	if (la->device && la->pa.given) {
		fprintf(stderr, "vramctl load: --device puts everything on one device; it cannot be combined with placement flags\n");
		return EX_USAGE_;
	}
	return 0;
}

/* CUDA devices of the load set up first (driver, primary context,
 * kernels), as in a process where PyTorch already runs: the load's time
 * is then the load's, and the setup is reported apart (*ret_s).  dev: the
 * --device index, or -1 for the plan p.  0, or 1 with the message printed. */
static int load_prepare(vram_client *c, const vram_plan *p, int dev, double *ret_s)
{
	uint64_t p0 = now_ns();
	for (int d = 0; d < vram_device_count(c); d++) {
		struct vram_device_info di = { .struct_size = sizeof(di) };
		bool used = d == dev;
		vram_device_info(c, (uint32_t)d, &di);
		for (uint32_t pd = 0; p && !used && pd < vram_plan_device_count(p); pd++)
			if (!strcmp(vram_plan_device_name(p, pd), di.name))
				for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++)
					used = used || vram_plan_bytes(p, k, pd) > 0;
		if (used && di.backend == VRAM_BACKEND_CUDA && vram_device_prepare(c, (uint32_t)d) < 0) {
			fprintf(stderr, "vramctl load: %s: %s\n", di.name, vram_last_error());
			return 1;
		}
	}
	*ret_s = (double)(now_ns() - p0) / 1e9;
	return 0;
}

/* --hash: each tensor's XXH64 as loaded, into hashes (JSON) or printed.
 * 0, or 1 when a tensor is not in host-visible memory (printed). */
static int load_hashes(const vram_model *m, const vram_loaded *l, json_t *hashes)
{
	int nt = vram_model_tensor_count(m);
	for (int i = 0; i < nt; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		const void *h = vram_loaded_tensor_host_ptr(l, (uint32_t)i);
		uint64_t nb = vram_loaded_tensor_nbytes(l, (uint32_t)i);
		if (!h && nb) {
			fprintf(stderr, "vramctl load: --hash: tensor \"%s\" is not in host-visible memory\n", ti.name);
			return 1;
		}
		char hex[17];
		snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)XXH64(h ? h : "", nb, 0));
		if (hashes)
			json_object_set_new(hashes, ti.name, json_string(hex));
		else
			printf("%s\t%s\n", ti.name, hex);
	}
	return 0;
}

/* Bytes loaded per device name, as a JSON object. */
static json_t *load_placement(vram_client *c, const vram_model *m, const vram_loaded *l)
{
	json_t *pl = json_object();
	int nt = vram_model_tensor_count(m);
	for (int i = 0; i < nt; i++) {
		struct vram_device_info di = { .struct_size = sizeof(di) };
		vram_device_info(c, (uint32_t)vram_loaded_tensor_device(l, (uint32_t)i), &di);
		json_t *x = json_object_get(pl, di.name);
		json_object_set_new(pl, di.name,
				    json_integer((x ? json_integer_value(x) : 0) +
						 (json_int_t)vram_loaded_tensor_nbytes(l, (uint32_t)i)));
	}
	return pl;
}

/* The summary of a load: JSON on stdout (into root, hashes last when
 * given; takes them), else one or two lines (on stderr when hashes took
 * stdout).  open_s: the file's open and parse, prep_s: load_prepare(). */
static void load_report(const struct load_args *la, vram_client *c, const vram_model *m, const vram_loaded *l,
			double open_s, double prep_s, json_t *root, json_t *hashes)
{
	struct vram_load_stats st = { .struct_size = sizeof(st) };
	vram_loaded_stats(l, &st);
	double secs = (double)st.ns / 1e9;
	double gbps = secs > 0 ? (double)st.bytes / secs / 1e9 : 0;
	if (!root) {
		FILE *out = la->hash ? stderr : stdout;
		char a[32];
		fprintf(out, "loaded %s: %s in %.3f s, %.2f GB/s (%s I/O, %llu grants, %.2f CPU s)\n", la->file,
			ctl_size(st.bytes, a, sizeof(a)), secs, gbps, io_mode_name(st.io_mode_used),
			(unsigned long long)st.grants, (double)st.cpu_ns / 1e9);
		if (st.converted)
			fprintf(out, "converted %llu tensors to %s\n", (unsigned long long)st.converted,
				vram_dtype_name(la->lo.cast_to));
		if (st.share_hits + st.share_filled + st.share_waited)
			fprintf(out, "shared copy: %s (%u hit, %u filled, %u waited; %s mapped read-only)\n",
				st.share_hits && !st.share_filled && !st.share_waited ? "hit"
				: st.share_filled && !st.share_hits && !st.share_waited ? "filled"
				: st.share_waited && !st.share_hits && !st.share_filled ? "waited" : "mixed",
				st.share_hits, st.share_filled, st.share_waited, ctl_size(st.shared_bytes, a, sizeof(a)));
		if (st.share_refused)
			fprintf(out, "loaded privately: %u chunk%s (%s)\n", st.share_refused, st.share_refused == 1 ? "" : "s",
				st.share_why);
		return;
	}
	json_t *sh = json_object();
	json_object_set_new(sh, "bytes", json_integer((json_int_t)st.shared_bytes));
	json_object_set_new(sh, "hit", json_integer(st.share_hits));
	json_object_set_new(sh, "filled", json_integer(st.share_filled));
	json_object_set_new(sh, "waited", json_integer(st.share_waited));
	json_object_set_new(sh, "private", json_integer(st.share_refused));
	if (st.share_refused)
		json_object_set_new(sh, "why", json_string(st.share_why));
	json_object_set_new(root, "shared_copy", sh);
	json_object_set_new(root, "file", json_string(la->file));
	json_object_set_new(root, "bytes", json_integer((json_int_t)st.bytes));
	json_object_set_new(root, "seconds", json_real(secs));
	json_object_set_new(root, "gbps", json_real(gbps));
	json_object_set_new(root, "cpu_seconds", json_real((double)st.cpu_ns / 1e9));
	json_object_set_new(root, "io_mode", json_string(io_mode_name(st.io_mode_used)));
	json_object_set_new(root, "grants", json_integer((json_int_t)st.grants));
	json_object_set_new(root, "converted", json_integer((json_int_t)st.converted));
	json_object_set_new(root, "open_seconds", json_real(open_s));
	json_object_set_new(root, "prepare_seconds", json_real(prep_s));
	if (la->lo.cast_to)
		json_object_set_new(root, "cast_to", json_string(vram_dtype_name(la->lo.cast_to)));
	json_object_set_new(root, "placement", load_placement(c, m, l));
	if (hashes)
		json_object_set_new(root, "hashes", hashes);
	_cleanup_free_ char *txt = json_dumps(root, JSON_INDENT(2));
	puts(txt ? txt : "{}");
}

int cmd_load(struct ctl *ctl)
{
	_cleanup_(vram_model_closep) vram_model *m = NULL;
	_cleanup_(vram_closep) vram_client *c = NULL;
	_cleanup_(vram_plan_freep) vram_plan *p = NULL;
	_cleanup_(vram_unloadp) vram_loaded *l = NULL;
	struct load_args la;
	double prep_s;
	int dev = -1;
	int r = load_args_parse(ctl, &la);
	if (r)
		return r;
	uint64_t o0 = now_ns();
	if ((r = open_model(la.file, &m)) != 0)
		return r;
	double open_s = (double)(now_ns() - o0) / 1e9;
	if ((r = ctl_connect(ctl, &c)) != 0)
		return r;
	if (la.device) {
		dev = vram_device_find(c, la.device);
		if (dev < 0) {
			fprintf(stderr, "vramctl load: --device: %s\n", vram_last_error());
			return EX_USAGE_;
		}
	} else if ((r = plan_args_make(ctl, &la.pa, m, c, &p)) != 0) {
		return r;
	}
	if ((r = load_prepare(c, p, dev, &prep_s)) != 0)
		return r;

	struct progress pr = { .tty = isatty(STDERR_FILENO) && !ctl->json, .t0 = now_ns(), .last_pct = -1 };
	la.lo.progress = on_progress;
	la.lo.user = &pr;
	r = vram_load(c, m, p, dev < 0 ? 0 : (uint32_t)dev, &la.lo, &l);
	if (r < 0) {
		if (pr.tty && pr.last_pct >= 0)
			fputc('\n', stderr);
		fprintf(stderr, "vramctl load: %s\n", vram_last_error());
		return r == -EINVAL || r == -ESTALE ? EX_DATAERR_ : r == -EIO ? EX_IOERR_ : 1;
	}
	json_auto_t *root = ctl->json ? json_object() : NULL;
	json_t *hashes = root && la.hash ? json_object() : NULL;
	if (la.hash)
		r = load_hashes(m, l, hashes);
	load_report(&la, c, m, l, open_s, prep_s, root, hashes);
	if (la.hold_ms) { /* demos and benchmarks: several processes holding one model */
		fflush(stdout);
		struct timespec ts = { la.hold_ms / 1000, (long)(la.hold_ms % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	return r;
}
