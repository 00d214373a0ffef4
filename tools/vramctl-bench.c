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
 *
 * Sharing a device with other clients, it also reports what the broker
 * says of this client after each pass (what it holds on the unet's compute
 * device and its fair share there, averaged over the passes), the RECLAIMs
 * it answered (the broker's answer times, p50/p99, and the pager's own
 * longest), and how long the load took to get every grant.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
	_cleanup_free_ uint8_t *bufs = malloc(nbuf * (biggest + 4096));
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
			if (cd < 0 || !info.nbytes)
				continue;
			/* paged (as the pager does) when any of it is off the
			 * compute device: the plan may split a layer */
			bool donor = false;
			for (uint32_t t = info.first_tensor; t < info.first_tensor + info.ntensors; t++)
				donor = donor || vram_plan_tensor_device(p, t) != cd;
			if (!donor)
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
	return best_ns && total ? (double)total / (double)best_ns : 0;
}

struct pass_result {
	double wall, stall, resident_wall, gbps;
	uint64_t paged;
	uint64_t held, share;    /* on the unet's compute device, after the pass */
};

/* What the broker says of this client at the end (vram_get_status). */
struct share_report {
	bool have;
	uint32_t answered, missed, p50_us, p99_us;
	uint64_t asked, freed;
};

/* vramctl bench pager's arguments. */
struct bench_args {
	struct plan_args pa;
	const char *file, *ready_file, *go_file;
	uint64_t window;
	unsigned passes, depth;
	double ms_per_gb;
	bool uvm;
};

/* What a run holds; bench_done releases it (pagers before the load before
 * the plan, the connection and the model). */
struct bench {
	vram_model *m;
	vram_client *c;
	vram_plan *p;
	vram_loaded *l;
	vram_pager *pg;          /* the explicit pager, or */
	vram_uvm_pager *up;      /* the UVM one (--uvm) */
	int dev;                 /* broker device of the unet's compute device, or -1 */
	uint64_t load_t0;        /* when the load began */
	uint64_t grants_ns;      /* from then to its first bytes: every grant allocated */
	struct vram_load_stats ls; /* the load's (ALLOC answer times) */
	int nl;                  /* layers */
	uint64_t *spin;          /* per layer: compute time, ns */
	uint64_t *donor;         /* per layer: bytes paged (donor layers), else 0 */
	struct pass_result *res; /* per pass */
};

static void bench_done(struct bench *b)
{
	free(b->res);
	free(b->donor);
	free(b->spin);
	vram_pager_free(b->pg);
	vram_uvm_pager_free(b->up);
	vram_unload(b->l);
	vram_plan_free(b->p);
	vram_close(b->c);
	vram_model_close(b->m);
}

/* One option of bench pager (not a placement flag) at argv[*i], its value
 * consumed: 1, 0 when it is none of them, or -1 (message printed). */
static int bench_option(struct ctl *ctl, struct bench_args *ba, int *i)
{
	const char *a = ctl->argv[*i], *v = *i + 1 < ctl->argc ? ctl->argv[*i + 1] : NULL;
	char *end = NULL;
	if (!strcmp(a, "--json")) {
		ctl->json = true;
		return 1;
	}
	if (!strcmp(a, "--uvm")) {
		ba->uvm = true;
		return 1;
	}
	if (!v)
		return 0;
	if (!strcmp(a, "--window")) {
		if (size_parse(v, &ba->window) < 0) {
			fprintf(stderr, "vramctl bench pager: --window: \"%s\" is not a size\n", v);
			return -1;
		}
	} else if (!strcmp(a, "--passes")) {
		ba->passes = (unsigned)strtoul(v, &end, 10);
		if (*end || ba->passes < 1 || ba->passes > 1000) {
			fprintf(stderr, "vramctl bench pager: --passes: \"%s\" is not 1-1000\n", v);
			return -1;
		}
	} else if (!strcmp(a, "--ready-file")) {
		ba->ready_file = v; /* written once loaded, before the passes */
	} else if (!strcmp(a, "--go-file")) {
		ba->go_file = v; /* the passes start once it exists */
	} else if (!strcmp(a, "--prefetch-depth")) {
		ba->depth = (unsigned)strtoul(v, &end, 10);
		if (*end || ba->depth > 64) {
			fprintf(stderr, "vramctl bench pager: --prefetch-depth: \"%s\" is not 0-64\n", v);
			return -1;
		}
	} else if (!strcmp(a, "--compute-ms-per-gb")) {
		ba->ms_per_gb = strtod(v, &end);
		if (*end || !(ba->ms_per_gb >= 0) || ba->ms_per_gb > 1e6) {
			fprintf(stderr, "vramctl bench pager: --compute-ms-per-gb: \"%s\" is not a number >= 0\n", v);
			return -1;
		}
	} else {
		return 0;
	}
	++*i;
	return 1;
}

/* Parses "bench pager FILE ..." into *ba: 0, or EX_USAGE_ with the message
 * printed. */
static int bench_args_parse(struct ctl *ctl, struct bench_args *ba)
{
	memset(ba, 0, sizeof(*ba));
	ba->passes = 5;
	plan_args_init(&ba->pa);
	if (ctl->argc < 2 || strcmp(ctl->argv[1], "pager")) {
		fprintf(stderr, "vramctl bench: only \"bench pager FILE ...\" exists\n");
		return EX_USAGE_;
	}
	for (int i = 2; i < ctl->argc; i++) {
		int r = plan_args_parse(&ba->pa, ctl->argc, ctl->argv, &i);
		if (r == 0)
			r = bench_option(ctl, ba, &i);
		if (r < 0)
			return EX_USAGE_;
		if (r > 0)
			continue;
		if (ctl->argv[i][0] == '-' || ba->file) {
			fprintf(stderr, "vramctl bench pager: unexpected argument \"%s\"\n", ctl->argv[i]);
			return EX_USAGE_;
		}
		ba->file = ctl->argv[i];
	}
	if (!ba->file) {
		fprintf(stderr, "vramctl bench pager: FILE missing\n");
		return EX_USAGE_;
	}
	return 0;
}

/* vram_load's progress: the first call marks every grant allocated. */
static int load_progress(void *user, uint64_t done, uint64_t total)
{
	struct bench *b = user;
	if (!b->grants_ns)
		b->grants_ns = MAX(now_ns() - b->load_t0, 1);
	return 0;
}

/* Opens FILE, plans, loads (reclaimable, for the explicit pager) and makes
 * the pager.  0, or the exit code with the message printed. */
static int bench_setup(struct ctl *ctl, struct bench_args *ba, struct bench *b)
{
	int r = vram_model_open(ba->file, &b->m);
	if (r < 0) {
		fprintf(stderr, "%s\n", vram_last_error());
		return EX_DATAERR_;
	}
	if ((r = ctl_connect(ctl, &b->c)) != 0 || (r = plan_args_make(ctl, &ba->pa, b->m, b->c, &b->p)) != 0)
		return r;
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = ba->uvm ? 0 : VRAM_LOAD_RECLAIMABLE; /* nothing pages a UVM pager's load itself */
	lo.cast_to = ba->pa.opts.cast_to;
	lo.cast_from = ba->pa.opts.cast_from;
	lo.progress = load_progress;
	lo.user = b;
	int cd = vram_plan_compute_device(b->p, VRAM_COMP_UNET);
	b->dev = cd < 0 ? -1 : vram_device_find(b->c, vram_plan_device_name(b->p, (uint32_t)cd));
	b->load_t0 = now_ns();
	struct vram_pager_options po;
	vram_pager_options_init(&po);
	po.window_bytes = ba->window;
	if (ba->depth)
		po.prefetch_depth = ba->depth;
	if ((r = vram_load(b->c, b->m, b->p, 0, &lo, &b->l)) < 0 ||
	    (r = ba->uvm ? vram_uvm_pager_create(b->l, b->p, ba->depth ? ba->depth : 2, &b->up)
			 : vram_pager_create(b->l, b->p, &po, &b->pg)) < 0) {
		fprintf(stderr, "vramctl bench pager: %s\n", vram_last_error());
		return r == -EINVAL ? EX_USAGE_ : 1;
	}
	b->ls.struct_size = sizeof(b->ls);
	vram_loaded_stats(b->l, &b->ls);
	return 0;
}

/* Per layer: the compute time to spin, and the bytes paged (layers not on
 * their component's compute device).  0 or EX_SOFTWARE_ (printed). */
static int bench_layers(const struct bench_args *ba, struct bench *b)
{
	b->nl = vram_model_layer_count(b->m);
	b->spin = calloc((size_t)b->nl + 1, sizeof(*b->spin));
	b->donor = calloc((size_t)b->nl + 1, sizeof(*b->donor));
	b->res = calloc(ba->passes, sizeof(*b->res));
	if (!b->spin || !b->donor || !b->res) {
		fprintf(stderr, "vramctl: out of memory\n");
		return EX_SOFTWARE_;
	}
	for (int li = 0; li < b->nl; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(b->m, (uint32_t)li, &info);
		b->spin[li] = (uint64_t)(ba->ms_per_gb * 1e6 * (double)info.nbytes / 1e9);
		int cd = vram_plan_compute_device(b->p, info.component);
		b->donor[li] = 0; /* its bytes off the compute device (a layer may be split) */
		for (uint32_t t = info.first_tensor; cd >= 0 && t < info.first_tensor + info.ntensors; t++) {
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			if (vram_plan_tensor_device(b->p, t) != cd && vram_model_tensor(b->m, t, &ti) == 0)
				b->donor[li] += ti.nbytes;
		}
	}
	return 0;
}

/* This client's entry in the broker's status, into *ret_self (0), or
 * -errno. */
static int self_status(struct bench *b, struct vram_client_status *ret_self)
{
	struct vram_status *st;
	int r = vram_get_status(b->c, &st);
	if (r < 0)
		return r;
	r = -ENOENT;
	for (uint32_t i = 0; i < st->nclients; i++)
		if (st->clients[i].flags & VRAM_CLIENT_SELF) {
			*ret_self = st->clients[i];
			r = 0;
		}
	vram_status_free(st);
	return r;
}

/* What this client holds on the unet's compute device and its fair share
 * there, now (0, 0 when the broker does not say). */
static void sample_share(struct bench *b, struct pass_result *res)
{
	struct vram_client_status me;
	if (b->dev < 0 || b->dev >= 16 || self_status(b, &me) < 0)
		return;
	res->held = me.held_dev[b->dev];
	res->share = me.share_dev[b->dev];
}

/* Pass k: every layer acquired in order, computed (spun), released; then
 * the same compute with every layer resident.  0 or the failed acquire's
 * error (printed); the pass's figures are filled either way. */
static int bench_pass(struct bench *b, unsigned k)
{
	struct vram_pager_stats s0 = { .struct_size = sizeof(s0) }, s1 = { .struct_size = sizeof(s1) };
	int r = 0;
	if (b->pg)
		vram_pager_stats(b->pg, &s0);
	uint64_t t0 = now_ns(), in_acquire = 0, donor_bytes = 0;
	for (int li = 0; li < b->nl; li++) {
		uint64_t a0 = now_ns();
		r = b->pg ? vram_pager_acquire(b->pg, (uint32_t)li) : vram_uvm_pager_acquire(b->up, (uint32_t)li);
		in_acquire += now_ns() - a0;
		if (r < 0) {
			fprintf(stderr, "vramctl bench pager: %s\n", vram_last_error());
			break;
		}
		donor_bytes += b->donor[li];
		spin_ns(b->spin[li]);
		if (b->pg)
			vram_pager_release(b->pg, (uint32_t)li);
		else
			vram_uvm_pager_release(b->up, (uint32_t)li);
	}
	if (b->pg)
		vram_pager_end_pass(b->pg);
	uint64_t wall = now_ns() - t0;
	if (b->pg) {
		vram_pager_stats(b->pg, &s1);
	} else {
		s1.stall_ns = in_acquire;
		s1.bytes_paged = donor_bytes;
	}
	/* the same pass with every layer resident: compute alone */
	uint64_t t1 = now_ns();
	for (int li = 0; li < b->nl; li++)
		spin_ns(b->spin[li]);
	uint64_t rwall = now_ns() - t1;
	struct pass_result *res = &b->res[k];
	if (b->pg)
		sample_share(b, res);
	res->wall = (double)wall / 1e9;
	res->stall = (double)(s1.stall_ns - s0.stall_ns) / 1e9;
	res->paged = s1.bytes_paged - s0.bytes_paged;
	res->gbps = wall ? (double)res->paged / (double)wall : 0;
	res->resident_wall = (double)rwall / 1e9;
	return r;
}

/* The steady state: the passes after the first. */
struct bench_summary {
	double memcpy_gbps, best_gbps, stall_frac;
	double stall_total;              /* all passes */
	double held_avg, share_avg;      /* over the passes, bytes */
	struct vram_pager_stats st;
	struct share_report sh;
};

static void bench_report_json(const struct bench_args *ba, const struct bench *b, const struct bench_summary *sum)
{
	const struct vram_pager_stats *st = &sum->st;
	json_auto_t *root = json_object();
	json_t *arr = json_array();
	for (unsigned k = 0; k < ba->passes; k++) {
		json_t *o = json_object();
		json_object_set_new(o, "pass", json_integer(k + 1));
		json_object_set_new(o, "wall_s", json_real(b->res[k].wall));
		json_object_set_new(o, "stall_s", json_real(b->res[k].stall));
		json_object_set_new(o, "bytes_paged", json_integer((json_int_t)b->res[k].paged));
		json_object_set_new(o, "paging_gbps", json_real(b->res[k].gbps));
		json_object_set_new(o, "resident_wall_s", json_real(b->res[k].resident_wall));
		json_array_append_new(arr, o);
	}
	json_object_set_new(root, "file", json_string(ba->file));
	json_object_set_new(root, "compute_ms_per_gb", json_real(ba->ms_per_gb));
	json_object_set_new(root, "mode", json_string(ba->uvm ? "uvm" : "explicit"));
	json_object_set_new(root, "window_bytes", json_integer((json_int_t)st->window_bytes));
	json_object_set_new(root, "window_slots", json_integer(st->window_slots));
	json_object_set_new(root, "passes", arr);
	json_object_set_new(root, "memcpy_gbps", json_real(sum->memcpy_gbps));
	json_object_set_new(root, "paging_to_memcpy",
			    json_real(sum->memcpy_gbps > 0 ? sum->best_gbps / sum->memcpy_gbps : 0));
	json_object_set_new(root, "stall_fraction", json_real(sum->stall_frac));
	json_object_set_new(root, "copy_thread_gbps",
			    json_real(st->copy_ns ? (double)st->bytes_paged / (double)st->copy_ns : 0));
	json_object_set_new(root, "stall_total_s", json_real(sum->stall_total));
	json_object_set_new(root, "grants_s", json_real((double)b->grants_ns / 1e9));
	json_object_set_new(root, "first_alloc_ms", json_real((double)b->ls.first_alloc_ns / 1e6));
	json_object_set_new(root, "max_alloc_ms", json_real((double)b->ls.max_alloc_ns / 1e6));
	json_object_set_new(root, "held_avg", json_integer((json_int_t)sum->held_avg));
	json_object_set_new(root, "share_avg", json_integer((json_int_t)sum->share_avg));
	json_object_set_new(root, "reclaims", json_integer((json_int_t)st->reclaims));
	json_object_set_new(root, "reclaim_max_ms", json_real((double)st->reclaim_ns_max / 1e6));
	json_object_set_new(root, "reclaim_avg_ms",
			    json_real(st->reclaims ? (double)st->reclaim_ns / (double)st->reclaims / 1e6 : 0));
	json_object_set_new(root, "dropped", json_integer((json_int_t)st->dropped));
	json_object_set_new(root, "demoted", json_integer((json_int_t)st->demoted));
	json_object_set_new(root, "promoted", json_integer((json_int_t)st->promoted));
	json_object_set_new(root, "offers", json_integer((json_int_t)st->offers));
	if (sum->sh.have) {
		json_t *o = json_object();
		json_object_set_new(o, "answered", json_integer(sum->sh.answered));
		json_object_set_new(o, "missed", json_integer(sum->sh.missed));
		json_object_set_new(o, "p50_ms", json_real(sum->sh.p50_us / 1e3));
		json_object_set_new(o, "p99_ms", json_real(sum->sh.p99_us / 1e3));
		json_object_set_new(o, "asked", json_integer((json_int_t)sum->sh.asked));
		json_object_set_new(o, "freed", json_integer((json_int_t)sum->sh.freed));
		json_object_set_new(root, "broker_reclaims", o);
	}
	json_object_set_new(root, "hits", json_integer((json_int_t)st->hits));
	json_object_set_new(root, "late", json_integer((json_int_t)st->late));
	json_object_set_new(root, "misses", json_integer((json_int_t)st->misses));
	json_object_set_new(root, "prefetches", json_integer((json_int_t)st->prefetches));
	json_object_set_new(root, "prefetch_used", json_integer((json_int_t)st->prefetch_used));
	_cleanup_free_ char *txt = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
	puts(txt ? txt : "{}");
}

static void bench_report_text(const struct bench_args *ba, const struct bench *b, const struct bench_summary *sum)
{
	const struct vram_pager_stats *st = &sum->st;
	char a[32];
	if (ba->uvm)
		printf("UVM pager (managed memory, advise + prefetch), compute %.1f ms/GB\n", ba->ms_per_gb);
	else
		printf("window %s in %u slots, compute %.1f ms/GB\n", ctl_size(st->window_bytes, a, sizeof(a)),
		       st->window_slots, ba->ms_per_gb);
	printf("%4s %10s %10s %12s %10s %12s\n", "PASS", "WALL s", "STALL s", "PAGED", "GB/s", "RESIDENT s");
	for (unsigned k = 0; k < ba->passes; k++)
		printf("%4u %10.4f %10.4f %12s %10.2f %12.4f\n", k + 1, b->res[k].wall, b->res[k].stall,
		       ctl_size(b->res[k].paged, a, sizeof(a)), b->res[k].gbps, b->res[k].resident_wall);
	printf("memcpy (same bytes, one thread): %.2f GB/s; paging/memcpy %.3f\n", sum->memcpy_gbps,
	       sum->memcpy_gbps > 0 ? sum->best_gbps / sum->memcpy_gbps : 0);
	if (ba->uvm) {
		printf("stall (time in acquire) after the first pass: %.2f%% of wall\n", sum->stall_frac * 100);
		return;
	}
	printf("copy thread: %.2f GB/s while copying\n",
	       st->copy_ns ? (double)st->bytes_paged / (double)st->copy_ns : 0);
	printf("stall after the first pass: %.2f%% of wall; hits %llu, late %llu, misses %llu, prefetch used %llu/%llu\n",
	       sum->stall_frac * 100, (unsigned long long)st->hits, (unsigned long long)st->late,
	       (unsigned long long)st->misses, (unsigned long long)st->prefetch_used,
	       (unsigned long long)st->prefetches);
	printf("load: first ALLOC answered in %.1f ms, slowest %.1f ms, every grant in %.3f s; stall in all passes %.3f s\n",
	       (double)b->ls.first_alloc_ns / 1e6, (double)b->ls.max_alloc_ns / 1e6, (double)b->grants_ns / 1e9,
	       sum->stall_total);
	if (!st->reclaims && !st->offers && !sum->sh.have)
		return;
	char h[32], sh[32];
	printf("sharing: held %s on average, fair share %s; %llu reclaims (longest %.2f ms), "
	       "layers dropped %llu, demoted %llu, promoted %llu, %llu offers\n",
	       ctl_size((uint64_t)sum->held_avg, h, sizeof(h)), ctl_size((uint64_t)sum->share_avg, sh, sizeof(sh)),
	       (unsigned long long)st->reclaims, (double)st->reclaim_ns_max / 1e6, (unsigned long long)st->dropped,
	       (unsigned long long)st->demoted, (unsigned long long)st->promoted, (unsigned long long)st->offers);
	if (sum->sh.have)
		printf("broker: RECLAIMs answered %u, missed %u, answer p50 %.2f ms, p99 %.2f ms\n", sum->sh.answered,
		       sum->sh.missed, sum->sh.p50_us / 1e3, sum->sh.p99_us / 1e3);
}

/* The summary of the passes (the steady state: those after the first),
 * and the broker's figures for this client. */
static void bench_summarize(const struct bench_args *ba, struct bench *b, struct bench_summary *sum)
{
	double stall_sum = 0, wall_sum = 0;
	for (unsigned k = ba->passes > 1 ? 1 : 0; k < ba->passes; k++) {
		sum->best_gbps = MAX(sum->best_gbps, b->res[k].gbps);
		stall_sum += b->res[k].stall;
		wall_sum += b->res[k].wall;
	}
	sum->stall_frac = wall_sum > 0 ? stall_sum / wall_sum : 0;
	for (unsigned k = 0; k < ba->passes; k++) {
		sum->stall_total += b->res[k].stall;
		sum->held_avg += (double)b->res[k].held / ba->passes;
		sum->share_avg += (double)b->res[k].share / ba->passes;
	}
	struct vram_client_status me;
	if (b->pg && self_status(b, &me) == 0) {
		sum->sh = (struct share_report){ .have = true, .answered = me.reclaims_answered,
						 .missed = me.reclaims_missed, .p50_us = me.reclaim_p50_us,
						 .p99_us = me.reclaim_p99_us, .asked = me.reclaim_asked,
						 .freed = me.reclaim_freed };
	}
}

int cmd_bench(struct ctl *ctl)
{
	_cleanup_(bench_done) struct bench b = { 0 };
	struct bench_summary sum = { .st = { .struct_size = sizeof(sum.st) } };
	struct bench_args ba;
	int r = bench_args_parse(ctl, &ba);
	if (r || (r = bench_setup(ctl, &ba, &b)) != 0 || (r = bench_layers(&ba, &b)) != 0)
		return r;
	struct vram_pager_stats w = { .struct_size = sizeof(w) };
	if (b.pg)
		vram_pager_stats(b.pg, &w);
	sum.memcpy_gbps = memcpy_gbps(b.m, b.l, b.p, b.c, b.pg ? w.window_slots : 2);
	if (ba.ready_file) {
		FILE *rf = fopen(ba.ready_file, "w");
		if (rf)
			fclose(rf);
	}
	while (ba.go_file && access(ba.go_file, F_OK) != 0) {
		struct timespec ts = { 0, 10000000L };
		nanosleep(&ts, NULL);
	}
	for (unsigned k = 0; k < ba.passes && r == 0; k++)
		r = bench_pass(&b, k);
	if (b.pg)
		vram_pager_stats(b.pg, &sum.st);
	bench_summarize(&ba, &b, &sum);
	if (ctl->json)
		bench_report_json(&ba, &b, &sum);
	else
		bench_report_text(&ba, &b, &sum);
	return r < 0 ? 1 : 0;
}
