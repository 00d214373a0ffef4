/* SPDX-License-Identifier: MIT */
/*
 * The pager against a real vramd with simulated GPUs: every byte seen
 * through acquire equals the file, prefetch depth and ordering, the learned
 * order replacing file order, a window smaller than one layer, reclaim
 * during a pass (direct and from another client through the broker),
 * dropped layers read back from the file, a client killed while copies are
 * in flight.
 */
#include <pthread.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/vram.h"
#include "kernels/kernels.h"
#include "testlib.h"

#define MiB (1ull << 20)

struct fx {
	char *dir;
	char sock[256];
	char file[256];
	pid_t pid;
	vram_model *m;
	vram_client *c;
	vram_plan *plan;
	vram_loaded *l;
	uint8_t *bytes;
	size_t len;
	uint32_t nunet;          /* unet layers (paged ones among them) */
};

/* cast_to for the next fx_start's load (0: none). */
static uint32_t fx_cast_to;

/* blocks of ~1 MiB each (512 x 1024 F16 + bias); unet compute cuda:0 with
 * vvram_mib of it donated by cpu. */
static void fx_start(struct fx *f, const char *sim, const char *host, int blocks, double vvram_gb)
{
	memset(f, 0, sizeof(*f));
	setenv("TMPDIR", access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp", 1);
	f->dir = t_tmpdir();
	ck_assert_ptr_nonnull(f->dir);
	snprintf(f->sock, sizeof(f->sock), "%s/vramd.sock", f->dir);
	snprintf(f->file, sizeof(f->file), "%s/model.safetensors", f->dir);
	char log[300];
	snprintf(log, sizeof(log), "%s/vramd.log", f->dir);
	/* a deadline no loaded machine (or sanitizer) can miss: these tests
	 * are about what reclaim does, not how fast */
	const char *const args[] = { "--sim-gpus", sim, "--host-pool", host, "--no-cuda", "--reclaim-deadline-ms", "20000",
				     NULL };
	f->pid = t_start_vramd(f->sock, log, args);
	ck_assert_int_gt(f->pid, 0);
	ck_assert_int_eq(t_write_checkpoint(f->file, blocks, 512, 1024, 11), 0);
	f->bytes = t_read_file(f->file, &f->len);
	ck_assert_ptr_nonnull(f->bytes);
	ck_assert_int_eq(vram_model_open(f->file, &f->m), 0);
	ck_assert_int_eq(vram_connect(f->sock, "pager-test", &f->c), 0);
	struct vram_plan_device devs[8];
	uint32_t nd;
	for (int i = 0; i < 8; i++)
		devs[i].struct_size = sizeof(devs[i]);
	ck_assert_int_eq(vram_plan_devices_from_client(f->c, devs, 8, &nd), 0);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_compute_device = "cuda:0";
	o.unet_virtual_vram_gb = vvram_gb;
	ck_assert_msg(vram_plan_create(f->m, &o, devs, nd, &f->plan) == 0, "%s", vram_last_error());
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = VRAM_LOAD_RECLAIMABLE;
	lo.cast_to = fx_cast_to;
	ck_assert_msg(vram_load(f->c, f->m, f->plan, 0, &lo, &f->l) == 0, "%s", vram_last_error());
	struct vram_component_info ci = { .struct_size = sizeof(ci) };
	vram_model_component(f->m, VRAM_COMP_UNET, &ci);
	f->nunet = ci.nlayers;
}

static void fx_stop(struct fx *f)
{
	vram_unload(f->l);
	vram_plan_free(f->plan);
	vram_close(f->c);
	vram_model_close(f->m);
	free(f->bytes);
	int st = t_stop(f->pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	t_rmtree(f->dir);
}

static int paged_layers(struct fx *f)
{
	int n = 0;
	for (uint32_t li = 0; li < f->nunet; li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(f->m, li, &info);
		int pd = vram_plan_layer_device(f->plan, li);
		if (strcmp(vram_plan_device_name(f->plan, (uint32_t)pd), "cuda:0") != 0)
			n++;
	}
	return n;
}

/* Compares every tensor of acquired layer li with the file (converted as
 * the load converted it, by the C reference). */
static void compare_layer(struct fx *f, vram_pager *p, uint32_t li)
{
	struct vram_layer_info info = { .struct_size = sizeof(info) };
	vram_model_layer(f->m, li, &info);
	for (uint32_t t = info.first_tensor; t < info.first_tensor + info.ntensors; t++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(f->m, t, &ti);
		const uint8_t *h = vram_pager_tensor_host_ptr(p, t);
		ck_assert_ptr_nonnull(h);
		int dt = vram_loaded_tensor_dtype(f->l, t);
		if (dt == (int)ti.dtype) {
			ck_assert_msg(memcmp(h, f->bytes + ti.file_offset, ti.nbytes) == 0, "tensor %s differs", ti.name);
			continue;
		}
		uint64_t n = ti.nbytes / (vram_dtype_bits(ti.dtype) / 8), nb = n * (vram_dtype_bits((uint32_t)dt) / 8);
		ck_assert_uint_eq(vram_loaded_tensor_nbytes(f->l, t), nb);
		uint8_t *want = malloc(nb + 1);
		ck_assert_ptr_nonnull(want);
		ck_assert_int_eq(vk_cast(f->bytes + ti.file_offset, ti.dtype, want, (uint32_t)dt, n), 0);
		ck_assert_msg(memcmp(h, want, nb) == 0, "converted tensor %s differs", ti.name);
		free(want);
	}
}

/* Acquires layer, compares it with the file, releases. */
static void check_layer(struct fx *f, vram_pager *p, uint32_t li)
{
	ck_assert_msg(vram_pager_acquire(p, li) == 0, "%s", vram_last_error());
	compare_layer(f, p, li);
	ck_assert_int_eq(vram_pager_release(p, li), 0);
	struct vram_layer_info info = { .struct_size = sizeof(info) };
	vram_model_layer(f->m, li, &info);
	/* after release the pointers are no longer handed out */
	if (info.ntensors)
		ck_assert_ptr_null(vram_pager_tensor_host_ptr(p, info.first_tensor));
}

static void pass(struct fx *f, vram_pager *p)
{
	for (uint32_t li = 0; li < f->nunet; li++)
		check_layer(f, p, li);
	vram_pager_end_pass(p);
}

START_TEST(test_bytes_and_stats)
{
	struct fx f;
	fx_start(&f, "64MiB", "128MiB", 24, 0.016); /* ~16 MiB donated */
	int np = paged_layers(&f);
	ck_assert_int_ge(np, 10);
	vram_pager *p;
	ck_assert_msg(vram_pager_create(f.l, f.plan, NULL, &p) == 0, "%s", vram_last_error());
	for (int k = 0; k < 3; k++)
		pass(&f, p);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(p, &st);
	ck_assert_uint_eq(st.acquires, 3 * f.nunet);
	ck_assert_uint_eq(st.hits + st.late + st.misses, st.acquires);
	ck_assert_uint_ge(st.bytes_paged, 3ull * (uint64_t)np * MiB);
	ck_assert_uint_eq(st.passes, 3);
	ck_assert_uint_eq(st.window_slots, 4); /* two layers + depth 2 */
	ck_assert_uint_gt(st.prefetches, 0);
	ck_assert_uint_le(st.prefetch_used, st.prefetches);
	/* misuse */
	ck_assert_int_eq(vram_pager_release(p, 0), -EINVAL);
	ck_assert_int_eq(vram_pager_acquire(p, 100000), -EINVAL);
	ck_assert_int_eq(vram_pager_release_on_stream(p, 0, NULL), -EINVAL);
	ck_assert_str_eq(vram_last_error(), "layer 0 is not acquired");
	ck_assert_int_eq(vram_pager_release_on_stream(p, 100000, NULL), -EINVAL);
	/* On simulated GPUs a release on a stream is a release (the stream,
	 * which would be a CUstream, is never looked at): slots are reused at
	 * once, and the next pass reads the right bytes. */
	for (uint32_t li = 0; li < f.nunet; li++) {
		ck_assert_int_eq(vram_pager_acquire(p, li), 0);
		ck_assert_int_eq(vram_pager_release_on_stream(p, li, (void *)(uintptr_t)0xdead), 0);
		ck_assert_int_eq(vram_pager_release(p, li), -EINVAL);
	}
	pass(&f, p);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

/* With prefetch depth K, acquiring a donor layer starts the next
 * max(K, window slots - 1) donor layers; once they land, acquiring them is a
 * hit, never a miss. */
START_TEST(test_prefetch_depth)
{
	struct fx f;
	fx_start(&f, "64MiB", "128MiB", 24, 0.016);
	struct vram_pager_options o;
	vram_pager_options_init(&o);
	o.prefetch_depth = 3;
	vram_pager *p;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, &o, &p), 0);
	uint32_t first = UINT32_MAX;
	for (uint32_t li = 0; li < f.nunet && first == UINT32_MAX; li++) {
		int pd = vram_plan_layer_device(f.plan, li);
		if (strcmp(vram_plan_device_name(f.plan, (uint32_t)pd), "cuda:0"))
			first = li;
	}
	ck_assert_int_eq(vram_pager_acquire(p, first), 0);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(p, &st);
	ck_assert_uint_eq(st.misses, 1);
	ck_assert_uint_eq(st.window_slots, 5); /* two + depth 3 */
	uint32_t ahead = st.window_slots - 1;
	ck_assert_uint_eq(st.prefetches, ahead);
	/* wait until the prefetched copies are done (bounded) */
	for (int i = 0; i < 500; i++) {
		vram_pager_stats(p, &st);
		if (st.bytes_paged >= (ahead + 1) * MiB)
			break;
		t_sleep_ms(5);
	}
	ck_assert_int_eq(vram_pager_release(p, first), 0);
	for (uint32_t k = 1; k <= ahead; k++)
		check_layer(&f, p, first + k);
	vram_pager_stats(p, &st);
	ck_assert_uint_eq(st.misses, 1);
	ck_assert_uint_ge(st.prefetch_used, ahead);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

/* The first complete pass's order replaces the file order. */
START_TEST(test_learned_order)
{
	struct fx f;
	fx_start(&f, "64MiB", "128MiB", 24, 0.016);
	vram_pager *p;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, NULL, &p), 0);
	ck_assert_int_eq(vram_pager_order(p, 0), 0);
	/* pass 1: reverse order */
	for (uint32_t k = 0; k < f.nunet; k++)
		check_layer(&f, p, f.nunet - 1 - k);
	/* the pass ends when a layer comes again */
	check_layer(&f, p, f.nunet - 1);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(p, &st);
	ck_assert_uint_eq(st.order_learned, 1);
	ck_assert_uint_eq(st.passes, 1);
	for (uint32_t k = 0; k < f.nunet; k++)
		ck_assert_int_eq(vram_pager_order(p, k), (int)(f.nunet - 1 - k));
	/* pass 2 in the learned order: prefetch runs ahead, so (once copies
	 * land) acquires are hits */
	uint64_t misses_before = st.misses;
	for (uint32_t k = 1; k < f.nunet; k++) {
		uint32_t li = f.nunet - 1 - k;
		for (int i = 0; i < 200; i++) { /* let the copy thread get ahead */
			vram_pager_stats(p, &st);
			if (st.prefetches == 0 || st.bytes_paged > 0)
				break;
		}
		t_sleep_ms(3);
		check_layer(&f, p, li);
	}
	vram_pager_stats(p, &st);
	ck_assert_uint_le(st.misses - misses_before, 1);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST


/* Uneven layers: consecutive small donor layers are paged as one group
 * (sharing a slot); every byte is still right, in file order and in a
 * learned order that visits a group's members apart. */
START_TEST(test_groups)
{
	struct fx f;
	memset(&f, 0, sizeof(f));
	setenv("TMPDIR", access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp", 1);
	f.dir = t_tmpdir();
	snprintf(f.sock, sizeof(f.sock), "%s/vramd.sock", f.dir);
	snprintf(f.file, sizeof(f.file), "%s/model.safetensors", f.dir);
	char log[300];
	snprintf(log, sizeof(log), "%s/vramd.log", f.dir);
	const char *const args[] = { "--sim-gpus", "64MiB", "--host-pool", "128MiB", "--no-cuda", NULL };
	f.pid = t_start_vramd(f.sock, log, args);
	ck_assert_int_gt(f.pid, 0);
	/* rows per block: small ones, then a big one, small, big */
	ck_assert_int_eq(t_write_st(f.file, 3,
				    "rows = [3, 5, 2, 7, 400, 4, 6, 390, 1, 9]\n"
				    "t = {f'model.diffusion_model.input_blocks.{i}.0.weight': "
				    "r.standard_normal((n, 1024)).astype(np.float16) for i, n in enumerate(rows)}\n"
				    "t.update({f'model.diffusion_model.input_blocks.{i}.0.bias': "
				    "r.standard_normal(13).astype(np.float32) for i in range(len(rows))})\n"), 0);
	f.bytes = t_read_file(f.file, &f.len);
	ck_assert_int_eq(vram_model_open(f.file, &f.m), 0);
	ck_assert_int_eq(vram_connect(f.sock, "pager-test", &f.c), 0);
	struct vram_plan_device devs[8];
	uint32_t nd;
	for (int i = 0; i < 8; i++)
		devs[i].struct_size = sizeof(devs[i]);
	ck_assert_int_eq(vram_plan_devices_from_client(f.c, devs, 8, &nd), 0);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_compute_device = "cuda:0";
	o.unet_virtual_vram_gb = 1.0; /* everything donated */
	ck_assert_int_eq(vram_plan_create(f.m, &o, devs, nd, &f.plan), 0);
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	ck_assert_int_eq(vram_load(f.c, f.m, f.plan, 0, &lo, &f.l), 0);
	struct vram_component_info ci = { .struct_size = sizeof(ci) };
	vram_model_component(f.m, VRAM_COMP_UNET, &ci);
	f.nunet = ci.nlayers;
	vram_pager *p;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, NULL, &p), 0);
	for (int k = 0; k < 3; k++)
		pass(&f, p);
	/* a learned order that visits members of a group apart */
	uint32_t order[] = { 9, 0, 8, 1, 7, 2, 6, 3, 5, 4 };
	for (int k = 0; k < 3; k++) {
		for (uint32_t i = 0; i < 10 && i < f.nunet; i++)
			check_layer(&f, p, order[i]);
		vram_pager_end_pass(p);
	}
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(p, &st);
	ck_assert_uint_eq(st.acquires, 3 * f.nunet + 30);
	/* groups make the small layers ride along: fewer copies than acquires */
	ck_assert_uint_lt(st.misses + st.prefetches, st.acquires);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

START_TEST(test_window_too_small)
{
	struct fx f;
	fx_start(&f, "64MiB", "128MiB", 24, 0.016);
	struct vram_pager_options o;
	vram_pager_options_init(&o);
	o.window_bytes = 512 * 1024; /* a layer is ~1 MiB */
	vram_pager *p;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, &o, &p), -EINVAL);
	ck_assert_msg(strstr(vram_last_error(), "smaller than its largest donor layer"), "%s", vram_last_error());
	/* nothing leaked into the broker */
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(f.c, &s), 0);
	ck_assert_uint_eq(s->grants, f.l ? s->grants : 0);
	uint64_t used = s->devices[0].used;
	vram_status_free(s);
	o.window_bytes = 4 * MiB;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, &o, &p), 0);
	pass(&f, p);
	vram_pager_free(p);
	ck_assert_int_eq(vram_get_status(f.c, &s), 0);
	ck_assert_uint_eq(s->devices[0].used, used);
	vram_status_free(s);
	fx_stop(&f);
}
END_TEST

/* Reclaim in the middle of a pass: slots, then resident chunks (moved to
 * the donor); the pass goes on and every byte is still right. */
START_TEST(test_reclaim_mid_pass)
{
	struct fx f;
	fx_start(&f, "64MiB", "256MiB", 24, 0.008);
	vram_pager *p;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, NULL, &p), 0);
	for (uint32_t li = 0; li < f.nunet / 2; li++)
		check_layer(&f, p, li);
	uint64_t freed = vram_pager_reclaim(p, 0, 24 * MiB);
	ck_assert_uint_ge(freed, 24 * MiB);
	for (uint32_t li = f.nunet / 2; li < f.nunet; li++)
		check_layer(&f, p, li);
	vram_pager_end_pass(p);
	pass(&f, p);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(p, &st);
	/* the mover copies the dropped layers to the donor after the answer */
	for (int i = 0; i < 1000 && st.demoted == 0; i++) {
		t_sleep_ms(5);
		vram_pager_stats(p, &st);
	}
	ck_assert_uint_gt(st.dropped, 0);
	ck_assert_uint_gt(st.demoted, 0);
	ck_assert_uint_ge(st.reclaimed_bytes, 24 * MiB);
	pass(&f, p); /* from the donor now */
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

/* No room on the donor: resident layers are dropped and read again from
 * the file.  Also (_i 1) for a load converted while streaming (F32 -> F16):
 * demoted and dropped layers come back as the load converted them (the
 * file's bytes converted again). */
START_TEST(test_reclaim_drops_to_file)
{
	struct fx f;
	fx_cast_to = _i ? VRAM_DTYPE_F16 : 0;
	fx_start(&f, "64MiB", "24MiB", 24, 0.008);
	fx_cast_to = 0;
	struct vram_load_stats ls = { .struct_size = sizeof(ls) };
	vram_loaded_stats(f.l, &ls);
	ck_assert(_i ? ls.converted > 0 : ls.converted == 0);
	vram_pager *p;
	ck_assert_msg(vram_pager_create(f.l, f.plan, NULL, &p) == 0, "%s", vram_last_error());
	pass(&f, p);
	ck_assert_uint_ge(vram_pager_reclaim(p, 0, 16 * MiB), 16 * MiB);
	pass(&f, p);
	ck_assert_uint_ge(vram_pager_reclaim(p, 1, 8 * MiB), 1);
	pass(&f, p);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(p, &st);
	ck_assert_uint_gt(st.dropped, 0);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

/* The checkpoint replaced under its path after the load (another file of
 * the same size renamed over it): layers dropped by reclaim are read back
 * from the file the model parsed (its fd), never the new one.  That file
 * then modified in place (a byte and the mtime): an acquire that must read
 * it back fails with -ESTALE naming the file; every acquire that succeeds
 * still serves the original bytes. */
START_TEST(test_file_replaced_after_load)
{
	struct fx f;
	fx_start(&f, "64MiB", "24MiB", 24, 0.008);
	vram_pager *p;
	ck_assert_msg(vram_pager_create(f.l, f.plan, NULL, &p) == 0, "%s", vram_last_error());
	pass(&f, p);
	char tmp[300];
	snprintf(tmp, sizeof(tmp), "%s.new", f.file);
	ck_assert_int_eq(t_write_checkpoint(tmp, 24, 512, 1024, 12), 0);
	size_t len;
	uint8_t *other = t_read_file(tmp, &len);
	ck_assert_ptr_nonnull(other);
	ck_assert_uint_eq(len, f.len);
	ck_assert(memcmp(other, f.bytes, len) != 0);
	free(other);
	ck_assert_int_eq(rename(tmp, f.file), 0);
	ck_assert_uint_ge(vram_pager_reclaim(p, 0, 16 * MiB), 16 * MiB);
	pass(&f, p); /* against f.bytes: the original file */
	ck_assert_uint_ge(vram_pager_reclaim(p, 1, 8 * MiB), 1);
	pass(&f, p);
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	vram_pager_stats(p, &st);
	ck_assert_uint_gt(st.dropped, 0);

	/* in place, through the model's own inode (the path names the new
	 * file now) */
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", vram_model_fd(f.m));
	int wfd = open(self, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(wfd, 0);
	struct stat sb;
	ck_assert_int_eq(fstat(wfd, &sb), 0);
	uint8_t byte = (uint8_t)~f.bytes[vram_model_data_offset(f.m)];
	ck_assert_int_eq(pwrite(wfd, &byte, 1, (off_t)vram_model_data_offset(f.m)), 1);
	struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_sec = sb.st_mtim.tv_sec + 7 } };
	ck_assert_int_eq(futimens(wfd, ts), 0);
	close(wfd);
	uint32_t stale = 0;
	for (uint32_t li = 0; li < f.nunet; li++) {
		int r = vram_pager_acquire(p, li);
		if (r == 0) {
			compare_layer(&f, p, li);
			ck_assert_int_eq(vram_pager_release(p, li), 0);
			continue;
		}
		ck_assert_msg(r == -ESTALE, "layer %u: %d %s", li, r, vram_last_error());
		ck_assert_msg(strstr(vram_last_error(), f.file) &&
			      strstr(vram_last_error(), "changed since it was opened"), "%s", vram_last_error());
		stale++;
	}
	ck_assert_uint_gt(stale, 0);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

struct other {
	const char *sock;
	uint64_t size;
	int rc;
	char err[1024];          /* the thread's vram_last_error() */
	vram_client *c;
	vram_grant *g;
};

static void *other_alloc(void *arg)
{
	struct other *o = arg;
	o->rc = vram_connect(o->sock, "newcomer", &o->c);
	if (o->rc == 0)
		o->rc = vram_alloc(o->c, 0, o->size, 0, &o->g);
	snprintf(o->err, sizeof(o->err), "%s", vram_last_error());
	return NULL;
}

/* Another client's ALLOC is satisfied by RECLAIM from the pager, which
 * answers from its dispatch thread while a pass runs.  The newcomer asks
 * for 16 MiB of the 40: within its fair share (20 MiB: the two want more
 * than the device has, and split it). */
START_TEST(test_reclaim_through_broker)
{
	struct fx f;
	fx_start(&f, "40MiB", "256MiB", 24, 0.004);
	vram_pager *p;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, NULL, &p), 0);
	pass(&f, p);
	struct other o = { .sock = f.sock, .size = 16 * MiB };
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, other_alloc, &o), 0);
	for (int k = 0; k < 3; k++)
		pass(&f, p);
	pthread_join(th, NULL);
	ck_assert_msg(o.rc == 0, "newcomer: %d %s", o.rc, o.err);
	pass(&f, p);
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(f.c, &s), 0);
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "pager-test"))
			ck_assert_uint_ge(s->clients[i].reclaims_answered, 1);
	vram_status_free(s);
	vram_close(o.c);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

/* Two newcomers asking at nearly the same time: the second RECLAIM arrives
 * while the pager is still handling the first (inside a vram_free of a
 * demotion).  Handlers run one at a time, so the second waits its turn
 * instead of waiting, nested, for the first one's demotion (a deadlock). */
START_TEST(test_reclaim_twice_at_once)
{
	struct fx f;
	fx_start(&f, "40MiB", "256MiB", 24, 0.004);
	vram_pager *p;
	ck_assert_int_eq(vram_pager_create(f.l, f.plan, NULL, &p), 0);
	pass(&f, p);
	struct other o1 = { .sock = f.sock, .size = 12 * MiB }, o2 = { .sock = f.sock, .size = 12 * MiB };
	pthread_t t1, t2;
	ck_assert_int_eq(pthread_create(&t1, NULL, other_alloc, &o1), 0);
	t_sleep_ms(3);
	ck_assert_int_eq(pthread_create(&t2, NULL, other_alloc, &o2), 0);
	for (int k = 0; k < 3; k++)
		pass(&f, p);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	ck_assert_msg(o1.rc == 0, "first: %d %s", o1.rc, o1.err);
	/* the second may be refused: what is left idle of the pager (whole
	 * chunks) may not fit even when it is asked for whole grants */
	ck_assert_msg(o2.rc == 0 || (o2.rc == -ENOMEM && strstr(o2.err, "freed too little")), "second: %d %s", o2.rc,
		      o2.err);
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(f.c, &s), 0);
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "pager-test")) {
			/* each newcomer's ALLOC asks it once, and once more for
			 * whole grants when that freed too little */
			ck_assert_uint_ge(s->clients[i].reclaims_answered, 2);
			ck_assert_uint_le(s->clients[i].reclaims_answered, 4);
			ck_assert_uint_eq(s->clients[i].reclaims_missed, 0);
		}
	vram_status_free(s);
	pass(&f, p);
	vram_close(o1.c);
	vram_close(o2.c);
	vram_pager_free(p);
	fx_stop(&f);
}
END_TEST

/* A client killed while copies are in flight leaves nothing accounted. */
START_TEST(test_killed_while_paging)
{
	struct fx f;
	fx_start(&f, "64MiB", "128MiB", 24, 0.016);
	pid_t child = fork();
	if (child == 0) {
		vram_model *m;
		vram_client *c;
		vram_loaded *l;
		vram_pager *p;
		if (vram_model_open(f.file, &m) || vram_connect(f.sock, "victim", &c))
			_exit(1);
		struct vram_load_options lo;
		vram_load_options_init(&lo);
		lo.flags = VRAM_LOAD_RECLAIMABLE;
		if (vram_load(c, m, f.plan, 0, &lo, &l) || vram_pager_create(l, f.plan, NULL, &p))
			_exit(2);
		for (;;)
			for (uint32_t li = 0; li < f.nunet; li++) {
				vram_pager_acquire(p, li);
				vram_pager_release(p, li);
			}
	}
	t_sleep_ms(300);
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(f.c, &s), 0);
	ck_assert_uint_eq(s->nclients, 2);
	vram_status_free(s);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	int ok = 0;
	for (int i = 0; i < 300 && !ok; i++) {
		ck_assert_int_eq(vram_get_status(f.c, &s), 0);
		ok = s->nclients == 1;
		vram_status_free(s);
		if (!ok)
			t_sleep_ms(10);
	}
	ck_assert(ok);
	fx_stop(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pager");
	TCase *tc = tcase_create("pager");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_bytes_and_stats);
	tcase_add_test(tc, test_prefetch_depth);
	tcase_add_test(tc, test_learned_order);
	tcase_add_test(tc, test_window_too_small);
	tcase_add_test(tc, test_groups);
	tcase_add_test(tc, test_reclaim_mid_pass);
	tcase_add_loop_test(tc, test_reclaim_drops_to_file, 0, 2);
	tcase_add_test(tc, test_file_replaced_after_load);
	tcase_add_test(tc, test_reclaim_through_broker);
	tcase_add_test(tc, test_reclaim_twice_at_once);
	tcase_add_test(tc, test_killed_while_paging);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
