/* SPDX-License-Identifier: MIT */
/* vramctl inspect / plan / load: checkpoints, placement, loading. */
#include <errno.h>
#include <stdbool.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
 * keys (docs/formats.md). */
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

static const char *header_what(const vram_model *m)
{
	const char *f = vram_model_format(m);
	if (!strcmp(f, "gguf"))
		return "of metadata and tensor infos";
	if (!strcmp(f, "pytorch"))
		return "of pickle (data.pkl)";
	return "of JSON";
}

int cmd_inspect(struct ctl *ctl)
{
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
	vram_model *m;
	int r = open_model(file, &m);
	if (r)
		return r;

	int nt = vram_model_tensor_count(m), nl = vram_model_layer_count(m);
	uint64_t dt_count[VRAM_DTYPE_COUNT] = { 0 }, dt_bytes[VRAM_DTYPE_COUNT] = { 0 };
	for (int i = 0; i < nt; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		dt_count[ti.dtype]++;
		dt_bytes[ti.dtype] += ti.nbytes;
	}
	struct vram_component_info ci[VRAM_COMP_COUNT];
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		ci[k].struct_size = sizeof(ci[k]);
		vram_model_component(m, k, &ci[k]);
	}

	if (ctl->json) {
		json_t *root = json_object(), *dts = json_object(), *comps = json_object(), *md = json_object();
		json_object_set_new(root, "file", json_string(file));
		json_object_set_new(root, "format", json_string(vram_model_format(m)));
		json_object_set_new(root, "file_size", json_integer((json_int_t)vram_model_file_size(m)));
		json_object_set_new(root, "header_size", json_integer((json_int_t)vram_model_header_size(m)));
		json_object_set_new(root, "data_offset", json_integer((json_int_t)vram_model_data_offset(m)));
		json_object_set_new(root, "data_size", json_integer((json_int_t)vram_model_data_size(m)));
		json_object_set_new(root, "tensors", json_integer(nt));
		json_object_set_new(root, "layers", json_integer(nl));
		for (uint32_t d = 0; d < VRAM_DTYPE_COUNT; d++) {
			if (!dt_count[d])
				continue;
			json_t *o = json_object();
			json_object_set_new(o, "tensors", json_integer((json_int_t)dt_count[d]));
			json_object_set_new(o, "bytes", json_integer((json_int_t)dt_bytes[d]));
			json_object_set_new(dts, vram_dtype_name(d), o);
		}
		json_object_set_new(root, "dtypes", dts);
		for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
			json_t *o = json_object();
			json_object_set_new(o, "tensors", json_integer(ci[k].ntensors));
			json_object_set_new(o, "layers", json_integer(ci[k].nlayers));
			json_object_set_new(o, "bytes", json_integer((json_int_t)ci[k].nbytes));
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
		json_t *desc = json_object();
		for (size_t i = 0; i < sizeof(describe) / sizeof(describe[0]); i++) {
			const char *v = describe_get(m, i);
			if (v)
				json_object_set_new(desc, describe[i].label, json_string(v));
		}
		json_object_set_new(root, "description", desc);
		char *txt = json_dumps(root, JSON_INDENT(2));
		json_decref(root);
		puts(txt ? txt : "{}");
		free(txt);
		vram_model_close(m);
		return 0;
	}

	char a[32], b[32];
	printf("file:        %s\n", file);
	printf("format:      %s\n", vram_model_format(m));
	/* The licence first: shared checkpoints often carry research-only or
	 * non-commercial terms. */
	for (size_t i = 0; i < sizeof(describe) / sizeof(describe[0]); i++) {
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
	printf("tensors:     %d\n", nt);
	printf("layers:      %d\n", nl);
	printf("dtypes:     ");
	for (uint32_t d = 0; d < VRAM_DTYPE_COUNT; d++)
		if (dt_count[d])
			printf(" %s x%llu (%s)", vram_dtype_name(d), (unsigned long long)dt_count[d],
			       ctl_size(dt_bytes[d], b, sizeof(b)));
	printf("\n\n%-10s %8s %8s %14s\n", "COMPONENT", "TENSORS", "LAYERS", "BYTES");
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++)
		printf("%-10s %8u %8u %14s\n", vram_component_name(k), ci[k].ntensors, ci[k].nlayers,
		       ctl_size(ci[k].nbytes, a, sizeof(a)));
	vram_model_close(m);
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
	vram_model *m;
	int r = open_model(file, &m);
	if (r)
		return r;
	vram_client *c = NULL;
	if (!pa.devices && (r = ctl_connect(ctl, &c)) != 0) {
		fprintf(stderr, "vramctl plan: give --devices \"cuda:0=24GiB,cpu=64GiB\" to plan without a broker\n");
		vram_model_close(m);
		return r;
	}
	vram_plan *p;
	r = plan_args_make(ctl, &pa, m, c, &p);
	if (r) {
		vram_close(c);
		vram_model_close(m);
		return r;
	}
	if (ctl->json) {
		char *txt;
		if (vram_plan_to_json(p, &txt) < 0) {
			fprintf(stderr, "vramctl: %s\n", vram_last_error());
			r = EX_SOFTWARE_;
		} else {
			puts(txt);
			free(txt);
		}
	} else {
		plan_print(p, m);
	}
	vram_plan_free(p);
	vram_close(c);
	vram_model_close(m);
	return r;
}

void plan_print(const vram_plan *p, const vram_model *m)
{
	char a[32];
	uint32_t nd = vram_plan_device_count(p);
	int nl = vram_model_layer_count(m);
	printf("%-6s %-10s %14s  %s\n", "PART", "DEVICE", "BYTES", "LAYERS");
	for (uint32_t k = 0; k < VRAM_COMP_COUNT; k++) {
		struct vram_component_info ci = { .struct_size = sizeof(ci) };
		vram_model_component(m, k, &ci);
		if (!ci.nbytes && !ci.nlayers)
			continue;
		int cd = vram_plan_compute_device(p, k);
		printf("%-6s compute on %s, %s\n", vram_component_name(k), cd >= 0 ? vram_plan_device_name(p, (uint32_t)cd) : "-",
		       ctl_size(ci.nbytes, a, sizeof(a)));
		for (uint32_t d = 0; d < nd; d++) {
			uint64_t bytes = vram_plan_bytes(p, k, d);
			if (!bytes)
				continue;
			/* layer ranges on this device */
			char ranges[512] = "";
			int start = -1, prev = -1;
			for (int li = 0; li <= nl; li++) {
				struct vram_layer_info l = { .struct_size = sizeof(l) };
				bool here = false;
				if (li < nl && vram_model_layer(m, (uint32_t)li, &l) == 0)
					here = l.component == k && vram_plan_layer_device(p, (uint32_t)li) == (int)d;
				if (here && start < 0)
					start = li;
				if (here)
					prev = li;
				if (!here && start >= 0) {
					char one[48];
					if (start == prev)
						snprintf(one, sizeof(one), "%s%d", ranges[0] ? "," : "", start);
					else
						snprintf(one, sizeof(one), "%s%d-%d", ranges[0] ? "," : "", start, prev);
					if (strlen(ranges) + strlen(one) < sizeof(ranges) - 4)
						strcat(ranges, one);
					else if (!strstr(ranges, "..."))
						strcat(ranges, ",...");
					start = -1;
				}
			}
			printf("%-6s %-10s %14s  %s\n", "", vram_plan_device_name(p, d), ctl_size(bytes, a, sizeof(a)),
			       ranges);
		}
	}
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

int cmd_load(struct ctl *ctl)
{
	struct plan_args pa;
	const char *file = NULL, *device = NULL;
	bool hash = false;
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	plan_args_init(&pa);
	for (int i = 1; i < ctl->argc; i++) {
		int r = plan_args_parse(&pa, ctl->argc, ctl->argv, &i);
		if (r < 0)
			return EX_USAGE_;
		if (r > 0)
			continue;
		const char *a = ctl->argv[i];
		if (!strcmp(a, "--json"))
			ctl->json = true;
		else if (!strcmp(a, "--hash"))
			hash = true;
		else if (!strcmp(a, "--device") && i + 1 < ctl->argc)
			device = ctl->argv[++i];
		else if (!strcmp(a, "--io") && i + 1 < ctl->argc) {
			const char *v = ctl->argv[++i];
			if (!strcmp(v, "auto"))
				lo.io_mode = VRAM_IO_AUTO;
			else if (!strcmp(v, "direct"))
				lo.io_mode = VRAM_IO_DIRECT;
			else if (!strcmp(v, "buffered"))
				lo.io_mode = VRAM_IO_BUFFERED;
			else {
				fprintf(stderr, "vramctl load: --io: \"%s\" is not auto, direct or buffered\n", v);
				return EX_USAGE_;
			}
		} else if (!strcmp(a, "--chunk") && i + 1 < ctl->argc) {
			if (size_parse(ctl->argv[++i], &lo.chunk_size) < 0) {
				fprintf(stderr, "vramctl load: --chunk: \"%s\" is not a size\n", ctl->argv[i]);
				return EX_USAGE_;
			}
		} else if (!strcmp(a, "--staging") && i + 1 < ctl->argc) {
			if (parse_1_1024(a, ctl->argv[++i], &lo.staging_slots) < 0)
				return EX_USAGE_;
		} else if (!strcmp(a, "--depth") && i + 1 < ctl->argc) {
			if (parse_1_1024(a, ctl->argv[++i], &lo.queue_depth) < 0)
				return EX_USAGE_;
		} else if (a[0] == '-' || file) {
			fprintf(stderr, "vramctl load: unexpected argument \"%s\"\n", a);
			return EX_USAGE_;
		} else
			file = a;
	}
	if (!file) {
		fprintf(stderr, "vramctl load: FILE missing\n");
		return EX_USAGE_;
	}
	lo.cast_to = pa.opts.cast_to;
	lo.cast_from = pa.opts.cast_from;
	if (lo.cast_from && !lo.cast_to) {
		fprintf(stderr, "vramctl load: --cast-from needs --cast\n");
		return EX_USAGE_;
	}
	if (device && pa.given) {
		fprintf(stderr, "vramctl load: --device puts everything on one device; it cannot be combined with placement flags\n");
		return EX_USAGE_;
	}
	vram_model *m;
	int r = open_model(file, &m);
	if (r)
		return r;
	vram_client *c;
	if ((r = ctl_connect(ctl, &c)) != 0) {
		vram_model_close(m);
		return r;
	}
	vram_plan *p = NULL;
	int dev = -1;
	if (device) {
		dev = vram_device_find(c, device);
		if (dev < 0) {
			fprintf(stderr, "vramctl load: --device: %s\n", vram_last_error());
			vram_close(c);
			vram_model_close(m);
			return EX_USAGE_;
		}
	} else if ((r = plan_args_make(ctl, &pa, m, c, &p)) != 0) {
		vram_close(c);
		vram_model_close(m);
		return r;
	}

	/* CUDA devices of the load set up first (driver, primary context,
	 * kernels), as in a process where PyTorch already runs: the load's
	 * time is then the load's, and the setup is reported apart. */
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
			vram_plan_free(p);
			vram_close(c);
			vram_model_close(m);
			return 1;
		}
	}
	double prep_s = (double)(now_ns() - p0) / 1e9;

	struct progress pr = { .tty = isatty(STDERR_FILENO) && !ctl->json, .t0 = now_ns(), .last_pct = -1 };
	lo.progress = on_progress;
	lo.user = &pr;
	vram_loaded *l;
	r = vram_load(c, m, p, dev < 0 ? 0 : (uint32_t)dev, &lo, &l);
	if (r < 0) {
		if (pr.tty && pr.last_pct >= 0)
			fputc('\n', stderr);
		fprintf(stderr, "vramctl load: %s\n", vram_last_error());
		vram_plan_free(p);
		vram_close(c);
		vram_model_close(m);
		return r == -EINVAL || r == -ESTALE ? EX_DATAERR_ : r == -EIO ? EX_IOERR_ : 1;
	}
	struct vram_load_stats st = { .struct_size = sizeof(st) };
	vram_loaded_stats(l, &st);
	double secs = (double)st.ns / 1e9;
	double gbps = secs > 0 ? (double)st.bytes / secs / 1e9 : 0;
	int nt = vram_model_tensor_count(m);

	json_t *root = ctl->json ? json_object() : NULL, *hashes = ctl->json ? json_object() : NULL;
	if (hash) {
		for (int i = 0; i < nt; i++) {
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			vram_model_tensor(m, (uint32_t)i, &ti);
			const void *h = vram_loaded_tensor_host_ptr(l, (uint32_t)i);
			uint64_t nb = vram_loaded_tensor_nbytes(l, (uint32_t)i);
			if (!h && nb) {
				fprintf(stderr, "vramctl load: --hash: tensor \"%s\" is not in host-visible memory\n", ti.name);
				r = 1;
				break;
			}
			char hex[17];
			snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)XXH64(h ? h : "", nb, 0));
			if (root)
				json_object_set_new(hashes, ti.name, json_string(hex));
			else
				printf("%s\t%s\n", ti.name, hex);
		}
	}
	if (root) {
		json_object_set_new(root, "file", json_string(file));
		json_object_set_new(root, "bytes", json_integer((json_int_t)st.bytes));
		json_object_set_new(root, "seconds", json_real(secs));
		json_object_set_new(root, "gbps", json_real(gbps));
		json_object_set_new(root, "cpu_seconds", json_real((double)st.cpu_ns / 1e9));
		json_object_set_new(root, "io_mode", json_string(io_mode_name(st.io_mode_used)));
		json_object_set_new(root, "grants", json_integer((json_int_t)st.grants));
		json_object_set_new(root, "converted", json_integer((json_int_t)st.converted));
		json_object_set_new(root, "prepare_seconds", json_real(prep_s));
		if (lo.cast_to)
			json_object_set_new(root, "cast_to", json_string(vram_dtype_name(lo.cast_to)));
		json_t *pl = json_object();
		for (int i = 0; i < nt; i++) {
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			vram_model_tensor(m, (uint32_t)i, &ti);
			struct vram_device_info di = { .struct_size = sizeof(di) };
			vram_device_info(c, (uint32_t)vram_loaded_tensor_device(l, (uint32_t)i), &di);
			json_t *x = json_object_get(pl, di.name);
			json_object_set_new(pl, di.name,
					    json_integer((x ? json_integer_value(x) : 0) +
							 (json_int_t)vram_loaded_tensor_nbytes(l, (uint32_t)i)));
		}
		json_object_set_new(root, "placement", pl);
		if (hash)
			json_object_set_new(root, "hashes", hashes);
		else
			json_decref(hashes);
		char *txt = json_dumps(root, JSON_INDENT(2));
		json_decref(root);
		puts(txt ? txt : "{}");
		free(txt);
	} else {
		char a[32];
		fprintf(hash ? stderr : stdout, "loaded %s: %s in %.3f s, %.2f GB/s (%s I/O, %llu grants, %.2f CPU s)\n",
			file, ctl_size(st.bytes, a, sizeof(a)), secs, gbps, io_mode_name(st.io_mode_used),
			(unsigned long long)st.grants, (double)st.cpu_ns / 1e9);
		if (st.converted)
			fprintf(hash ? stderr : stdout, "converted %llu tensors to %s\n",
				(unsigned long long)st.converted, vram_dtype_name(lo.cast_to));
	}
	vram_unload(l);
	vram_plan_free(p);
	vram_close(c);
	vram_model_close(m);
	return r;
}
