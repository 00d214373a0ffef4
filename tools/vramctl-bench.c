/* SPDX-License-Identifier: MIT */
/*
 * vramctl bench pager: simulated forward passes through the pager.
 *
 * Loads FILE by the plan, then runs N passes: acquire each layer in order,
 * spin for X ms per GB of the layer (standing in for compute), release.
 * Prints per pass the wall time, time stalled in acquire, bytes paged and
 * paging GB/s, next to the same pass with every layer resident (compute
 * alone) and to a single-thread memcpy of the same donor bytes measured in
 * the same run: the ceiling for paging on a simulated GPU.
 *
 * --uvm runs the same passes through the UVM pager (managed memory,
 * advise + prefetch; CUDA compute devices only) instead: stall is then the
 * time spent in acquire as this tool measures it, and "paged" the donor
 * bytes acquired (what the driver migrates is its business).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "tools/vramctl-plan.h"
#include "tools/vramctl.h"

static void spin_ns(uint64_t ns)
{
	uint64_t end = now_ns() + ns;
	while (now_ns() < end)
		;
}

/* memcpy of every donor layer's tensors into nbuf rotating buffers (the
 * window's footprint), as the pager's copy thread does; GB/s. */
static double memcpy_gbps(const vram_model *m, const vram_loaded *l, const vram_plan *p, vram_client *c,
			  uint32_t nbuf)
{
	int nl = vram_model_layer_count(m);
	uint64_t biggest = 0, total = 0;
	for (int li = 0; li < nl; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(m, (uint32_t)li, &info);
		biggest = MAX(biggest, info.nbytes + 256 * (uint64_t)info.ntensors);
	}
	if (nbuf == 0)
		nbuf = 1;
	uint8_t *bufs = malloc(nbuf * (biggest + 4096));
	if (!bufs)
		return 0;
	memset(bufs, 1, nbuf * (biggest + 4096)); /* fault in: the pager's slots are warm after pass 1 */
	uint32_t turn = 0;
	uint64_t best_ns = UINT64_MAX;
	for (int rep = 0; rep < 3; rep++) {
		uint64_t t0 = now_ns();
		total = 0;
		for (int li = 0; li < nl; li++) {
			struct vram_layer_info info = { .struct_size = sizeof(info) };
			vram_model_layer(m, (uint32_t)li, &info);
			int cd = vram_plan_compute_device(p, info.component);
			int home = info.ntensors ? vram_loaded_tensor_device(l, info.first_tensor) : -1;
			if (cd < 0 || home < 0 || !info.nbytes)
				continue;
			struct vram_device_info di = { .struct_size = sizeof(di) };
			vram_device_info(c, (uint32_t)home, &di);
			if (!strcmp(di.name, vram_plan_device_name(p, (uint32_t)cd)))
				continue; /* resident */
			uint8_t *buf = bufs + (turn++ % nbuf) * (biggest + 4096);
			uint64_t off = 0;
			for (uint32_t t = info.first_tensor; t < info.first_tensor + info.ntensors; t++) {
				struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
				vram_model_tensor(m, t, &ti);
				off = (off + 255) / 256 * 256;
				const void *src = vram_loaded_tensor_host_ptr(l, t);
				if (src)
					memcpy(buf + off, src, ti.nbytes);
				off += ti.nbytes;
				total += ti.nbytes;
			}
		}
		best_ns = MIN(best_ns, now_ns() - t0);
	}
	free(bufs);
	return best_ns && total ? (double)total / (double)best_ns : 0;
}

struct pass_result {
	double wall, stall, resident_wall, gbps;
	uint64_t paged;
};

int cmd_bench(struct ctl *ctl)
{
	struct plan_args pa;
	const char *file = NULL, *ready_file = NULL;
	uint64_t window = 0;
	unsigned passes = 5, depth = 0;
	double ms_per_gb = 0;
	bool uvm = false;
	plan_args_init(&pa);
	if (ctl->argc < 2 || strcmp(ctl->argv[1], "pager")) {
		fprintf(stderr, "vramctl bench: only \"bench pager FILE ...\" exists\n");
		return EX_USAGE_;
	}
	for (int i = 2; i < ctl->argc; i++) {
		int r = plan_args_parse(&pa, ctl->argc, ctl->argv, &i);
		if (r < 0)
			return EX_USAGE_;
		if (r > 0)
			continue;
		const char *a = ctl->argv[i];
		const char *v = i + 1 < ctl->argc ? ctl->argv[i + 1] : NULL;
		char *end = NULL;
		if (!strcmp(a, "--json")) {
			ctl->json = true;
		} else if (!strcmp(a, "--uvm")) {
			uvm = true;
		} else if (!strcmp(a, "--window") && v) {
			if (size_parse(v, &window) < 0) {
				fprintf(stderr, "vramctl bench pager: --window: \"%s\" is not a size\n", v);
				return EX_USAGE_;
			}
			i++;
		} else if (!strcmp(a, "--passes") && v) {
			passes = (unsigned)strtoul(v, &end, 10);
			if (*end || passes < 1 || passes > 1000) {
				fprintf(stderr, "vramctl bench pager: --passes: \"%s\" is not 1-1000\n", v);
				return EX_USAGE_;
			}
			i++;
		} else if (!strcmp(a, "--ready-file") && v) {
			ready_file = v; /* written once loaded, before the passes */
			i++;
		} else if (!strcmp(a, "--prefetch-depth") && v) {
			depth = (unsigned)strtoul(v, &end, 10);
			if (*end || depth > 64) {
				fprintf(stderr, "vramctl bench pager: --prefetch-depth: \"%s\" is not 0-64\n", v);
				return EX_USAGE_;
			}
			i++;
		} else if (!strcmp(a, "--compute-ms-per-gb") && v) {
			ms_per_gb = strtod(v, &end);
			if (*end || !(ms_per_gb >= 0) || ms_per_gb > 1e6) {
				fprintf(stderr, "vramctl bench pager: --compute-ms-per-gb: \"%s\" is not a number >= 0\n", v);
				return EX_USAGE_;
			}
			i++;
		} else if (a[0] == '-' || file) {
			fprintf(stderr, "vramctl bench pager: unexpected argument \"%s\"\n", a);
			return EX_USAGE_;
		} else {
			file = a;
		}
	}
	if (!file) {
		fprintf(stderr, "vramctl bench pager: FILE missing\n");
		return EX_USAGE_;
	}
	vram_model *m;
	vram_client *c;
	vram_plan *p;
	vram_loaded *l;
	vram_pager *pg = NULL;
	vram_uvm_pager *up = NULL;
	int r = vram_model_open(file, &m);
	if (r < 0) {
		fprintf(stderr, "%s\n", vram_last_error());
		return EX_DATAERR_;
	}
	if ((r = ctl_connect(ctl, &c)) != 0) {
		vram_model_close(m);
		return r;
	}
	if ((r = plan_args_make(ctl, &pa, m, c, &p)) != 0) {
		vram_close(c);
		vram_model_close(m);
		return r;
	}
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = VRAM_LOAD_RECLAIMABLE;
	lo.cast_to = pa.opts.cast_to;
	lo.cast_from = pa.opts.cast_from;
	struct vram_pager_options po;
	vram_pager_options_init(&po);
	po.window_bytes = window;
	if (depth)
		po.prefetch_depth = depth;
	if (uvm)
		lo.flags = 0; /* nothing pages the load itself */
	l = NULL;
	if ((r = vram_load(c, m, p, 0, &lo, &l)) < 0 ||
	    (r = uvm ? vram_uvm_pager_create(l, p, depth ? depth : 2, &up) : vram_pager_create(l, p, &po, &pg)) < 0) {
		fprintf(stderr, "vramctl bench pager: %s\n", vram_last_error());
		vram_unload(l);
		if (r != -EINVAL)
			r = 1;
		else
			r = EX_USAGE_;
		vram_plan_free(p);
		vram_close(c);
		vram_model_close(m);
		return r;
	}
	/* after a failed pager create the load is still ours */

	int nl = vram_model_layer_count(m);
	uint64_t *spin = calloc((size_t)nl + 1, sizeof(*spin));
	struct pass_result *res = calloc(passes, sizeof(*res));
	if (!spin || !res) {
		fprintf(stderr, "vramctl: out of memory\n");
		return EX_SOFTWARE_;
	}
	for (int li = 0; li < nl; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(m, (uint32_t)li, &info);
		spin[li] = (uint64_t)(ms_per_gb * 1e6 * (double)info.nbytes / 1e9);
	}
	/* donor layers: those not on their component's compute device */
	uint64_t *donor = calloc((size_t)nl + 1, sizeof(*donor));
	if (!donor) {
		fprintf(stderr, "vramctl: out of memory\n");
		return EX_SOFTWARE_;
	}
	for (int li = 0; li < nl; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(m, (uint32_t)li, &info);
		int cd = vram_plan_compute_device(p, info.component);
		int ld = vram_plan_layer_device(p, (uint32_t)li);
		donor[li] = cd >= 0 && ld >= 0 && cd != ld ? info.nbytes : 0;
	}
	struct vram_pager_stats w = { .struct_size = sizeof(w) };
	if (pg)
		vram_pager_stats(pg, &w);
	double mc = memcpy_gbps(m, l, p, c, pg ? w.window_slots : 2);
	if (ready_file) {
		FILE *rf = fopen(ready_file, "w");
		if (rf)
			fclose(rf);
	}

	for (unsigned k = 0; k < passes && r == 0; k++) {
		struct vram_pager_stats s0 = { .struct_size = sizeof(s0) }, s1 = { .struct_size = sizeof(s1) };
		if (pg)
			vram_pager_stats(pg, &s0);
		uint64_t t0 = now_ns(), in_acquire = 0, donor_bytes = 0;
		for (int li = 0; li < nl; li++) {
			uint64_t a0 = now_ns();
			r = pg ? vram_pager_acquire(pg, (uint32_t)li) : vram_uvm_pager_acquire(up, (uint32_t)li);
			in_acquire += now_ns() - a0;
			if (r < 0) {
				fprintf(stderr, "vramctl bench pager: %s\n", vram_last_error());
				break;
			}
			donor_bytes += donor[li];
			spin_ns(spin[li]);
			if (pg)
				vram_pager_release(pg, (uint32_t)li);
			else
				vram_uvm_pager_release(up, (uint32_t)li);
		}
		if (pg)
			vram_pager_end_pass(pg);
		uint64_t wall = now_ns() - t0;
		if (pg) {
			vram_pager_stats(pg, &s1);
		} else {
			s1.stall_ns = in_acquire;
			s1.bytes_paged = donor_bytes;
		}
		/* the same pass with every layer resident: compute alone */
		uint64_t t1 = now_ns();
		for (int li = 0; li < nl; li++)
			spin_ns(spin[li]);
		uint64_t rwall = now_ns() - t1;
		res[k].wall = (double)wall / 1e9;
		res[k].stall = (double)(s1.stall_ns - s0.stall_ns) / 1e9;
		res[k].paged = s1.bytes_paged - s0.bytes_paged;
		res[k].gbps = wall ? (double)res[k].paged / (double)wall : 0;
		res[k].resident_wall = (double)rwall / 1e9;
	}
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	if (pg)
		vram_pager_stats(pg, &st);

	/* Steady state: the passes after the first. */
	double best_gbps = 0, stall_sum = 0, wall_sum = 0;
	for (unsigned k = passes > 1 ? 1 : 0; k < passes; k++) {
		best_gbps = MAX(best_gbps, res[k].gbps);
		stall_sum += res[k].stall;
		wall_sum += res[k].wall;
	}
	double stall_frac = wall_sum > 0 ? stall_sum / wall_sum : 0;
	char a[32];
	if (ctl->json) {
		json_t *root = json_object(), *arr = json_array();
		for (unsigned k = 0; k < passes; k++) {
			json_t *o = json_object();
			json_object_set_new(o, "pass", json_integer(k + 1));
			json_object_set_new(o, "wall_s", json_real(res[k].wall));
			json_object_set_new(o, "stall_s", json_real(res[k].stall));
			json_object_set_new(o, "bytes_paged", json_integer((json_int_t)res[k].paged));
			json_object_set_new(o, "paging_gbps", json_real(res[k].gbps));
			json_object_set_new(o, "resident_wall_s", json_real(res[k].resident_wall));
			json_array_append_new(arr, o);
		}
		json_object_set_new(root, "file", json_string(file));
		json_object_set_new(root, "compute_ms_per_gb", json_real(ms_per_gb));
		json_object_set_new(root, "mode", json_string(uvm ? "uvm" : "explicit"));
		json_object_set_new(root, "window_bytes", json_integer((json_int_t)st.window_bytes));
		json_object_set_new(root, "window_slots", json_integer(st.window_slots));
		json_object_set_new(root, "passes", arr);
		json_object_set_new(root, "memcpy_gbps", json_real(mc));
		json_object_set_new(root, "paging_to_memcpy", json_real(mc > 0 ? best_gbps / mc : 0));
		json_object_set_new(root, "stall_fraction", json_real(stall_frac));
		json_object_set_new(root, "copy_thread_gbps",
				    json_real(st.copy_ns ? (double)st.bytes_paged / (double)st.copy_ns : 0));
		json_object_set_new(root, "hits", json_integer((json_int_t)st.hits));
		json_object_set_new(root, "late", json_integer((json_int_t)st.late));
		json_object_set_new(root, "misses", json_integer((json_int_t)st.misses));
		json_object_set_new(root, "prefetches", json_integer((json_int_t)st.prefetches));
		json_object_set_new(root, "prefetch_used", json_integer((json_int_t)st.prefetch_used));
		char *txt = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
		json_decref(root);
		puts(txt ? txt : "{}");
		free(txt);
	} else {
		if (uvm)
			printf("UVM pager (managed memory, advise + prefetch), compute %.1f ms/GB\n", ms_per_gb);
		else
			printf("window %s in %u slots, compute %.1f ms/GB\n", ctl_size(st.window_bytes, a, sizeof(a)),
			       st.window_slots, ms_per_gb);
		printf("%4s %10s %10s %12s %10s %12s\n", "PASS", "WALL s", "STALL s", "PAGED", "GB/s", "RESIDENT s");
		for (unsigned k = 0; k < passes; k++)
			printf("%4u %10.4f %10.4f %12s %10.2f %12.4f\n", k + 1, res[k].wall, res[k].stall,
			       ctl_size(res[k].paged, a, sizeof(a)), res[k].gbps, res[k].resident_wall);
		printf("memcpy (same bytes, one thread): %.2f GB/s; paging/memcpy %.3f\n", mc,
		       mc > 0 ? best_gbps / mc : 0);
		if (uvm) {
			printf("stall (time in acquire) after the first pass: %.2f%% of wall\n", stall_frac * 100);
		} else {
			printf("copy thread: %.2f GB/s while copying\n",
			       st.copy_ns ? (double)st.bytes_paged / (double)st.copy_ns : 0);
			printf("stall after the first pass: %.2f%% of wall; hits %llu, late %llu, misses %llu, prefetch used %llu/%llu\n",
			       stall_frac * 100, (unsigned long long)st.hits, (unsigned long long)st.late,
			       (unsigned long long)st.misses, (unsigned long long)st.prefetch_used,
			       (unsigned long long)st.prefetches);
		}
	}
	free(spin);
	free(res);
	free(donor);
	vram_pager_free(pg);
	vram_uvm_pager_free(up);
	vram_unload(l);
	vram_plan_free(p);
	vram_close(c);
	vram_model_close(m);
	return r < 0 ? 1 : 0;
}
