/* SPDX-License-Identifier: MIT */
/*
 * Loading checkpoints into broker grants, end to end against a real vramd
 * process: every tensor's bytes compared with the file in every I/O mode and
 * on every kind of device, placement by plan, vramctl load --hash against
 * XXH64 of the file's bytes, clean failure (no room, file changed), and a
 * client killed in the middle of a load.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <xxhash.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/vram.h"
#include "kernels/kernels.h"
#include "testlib.h"

#define MiB (1ull << 20)

/* A vramd of the test's own (testlib.h) and the checkpoint's path in its
 * dir; dir and sock are b's. */
struct env {
	struct t_broker b;
	const char *dir, *sock;
	char file[256];
};

static void write_checkpoint(const char *path, int blocks, int rows, int seed)
{
	ck_assert_int_eq(t_write_checkpoint(path, blocks, rows, 129, seed), 0);
}

static void env_start(struct env *e, const char *sim, const char *host)
{
	const char *const args[] = { "--sim-gpus", sim, "--host-pool", host, NULL };
	t_broker_start(&e->b, args);
	e->dir = e->b.dir;
	e->sock = e->b.sock;
	snprintf(e->file, sizeof(e->file), "%s/model.safetensors", e->dir);
}

static void env_stop(struct env *e)
{
	t_broker_stop(&e->b);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	uint8_t *b = t_read_file(path, len);
	ck_assert_ptr_nonnull(b);
	return b;
}

/* Every tensor's bytes where the load put them equal fb (flen bytes). */
static void compare_bytes(const vram_model *m, const vram_loaded *l, const uint8_t *fb, size_t flen)
{
	int n = vram_model_tensor_count(m);
	ck_assert_int_gt(n, 0);
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		ck_assert_int_eq(vram_model_tensor(m, (uint32_t)i, &ti), 0);
		const uint8_t *p = vram_loaded_tensor_host_ptr(l, (uint32_t)i);
		ck_assert_ptr_nonnull(p);
		ck_assert_uint_le(ti.file_offset + ti.nbytes, flen);
		ck_assert_msg(memcmp(p, fb + ti.file_offset, ti.nbytes) == 0, "tensor %s differs", ti.name);
	}
}

/* Every tensor's bytes where the load put them equal the file's bytes. */
static void compare_all(const vram_model *m, const vram_loaded *l, const char *path)
{
	size_t flen;
	_cleanup_free_ uint8_t *fb = read_file(path, &flen);
	compare_bytes(m, l, fb, flen);
}

static void assert_idle(vram_client *c)
{
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	for (uint32_t d = 0; d < s->ndevices; d++)
		ck_assert_msg(s->devices[d].used == 0, "%s still has %llu bytes used", s->devices[d].name,
			      (unsigned long long)s->devices[d].used);
	ck_assert_uint_eq(s->grants, 0);
	vram_status_free(s);
}

/* A plan of m on the broker's devices with options o; fails the test with
 * the library's message if the planner refuses. */
static vram_plan *plan_on(vram_client *c, const vram_model *m, const struct vram_plan_options *o)
{
	struct vram_plan_device devs[8];
	uint32_t nd;
	for (int i = 0; i < 8; i++)
		devs[i].struct_size = sizeof(devs[i]);
	ck_assert_int_eq(vram_plan_devices_from_client(c, devs, 8, &nd), 0);
	vram_plan *p;
	ck_assert_msg(vram_plan_create(m, o, devs, nd, &p) == 0, "%s", vram_last_error());
	return p;
}

START_TEST(test_load_every_mode_and_device)
{
	struct env e;
	env_start(&e, "64MiB", "128MiB");
	write_checkpoint(e.file, 40, 301, 1);
	vram_model *m;
	vram_client *c;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	static const uint32_t modes[] = { VRAM_IO_AUTO, VRAM_IO_DIRECT, VRAM_IO_BUFFERED };
	for (int dev = 0; dev < 2; dev++) { /* cuda:0 (staged), cpu (direct) */
		for (size_t k = 0; k < 3; k++) {
			struct vram_load_options o;
			vram_load_options_init(&o);
			o.io_mode = modes[k];
			o.chunk_size = 64 * 1024; /* many reads even for a small file */
			vram_loaded *l;
			ck_assert_msg(vram_load(c, m, NULL, (uint32_t)dev, &o, &l) == 0, "%s", vram_last_error());
			for (int i = 0; i < vram_model_tensor_count(m); i++)
				ck_assert_int_eq(vram_loaded_tensor_device(l, (uint32_t)i), dev);
			compare_all(m, l, e.file);
			struct vram_load_stats st = { .struct_size = sizeof(st) };
			vram_loaded_stats(l, &st);
			ck_assert_uint_eq(st.bytes, vram_model_data_size(m));
			if (modes[k] != VRAM_IO_AUTO)
				ck_assert_uint_eq(st.io_mode_used, modes[k]);
			vram_unload(l);
			assert_idle(c);
		}
	}
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

START_TEST(test_load_by_plan)
{
	struct env e;
	env_start(&e, "8MiB,8MiB", "64MiB");
	write_checkpoint(e.file, 60, 511, 2);
	vram_model *m;
	vram_client *c;
	vram_plan *p;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_expert_mode_allocations = "cuda:0,40%;cuda:1,30%;cpu,*";
	o.clip_compute_device = "cuda:1";
	o.clip_virtual_vram_gb = 0;
	o.vae_device = "cpu";
	p = plan_on(c, m, &o);
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = VRAM_LOAD_RECLAIMABLE;
	vram_loaded *l;
	ck_assert_msg(vram_load(c, m, p, 0, &lo, &l) == 0, "%s", vram_last_error());
	compare_all(m, l, e.file);
	/* each tensor sits where the plan put its module */
	uint64_t per_dev[8] = { 0 };
	for (int i = 0; i < vram_model_tensor_count(m); i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		int pd = vram_plan_tensor_device(p, (uint32_t)i);
		int bd = vram_loaded_tensor_device(l, (uint32_t)i);
		struct vram_device_info di = { .struct_size = sizeof(di) };
		vram_device_info(c, (uint32_t)bd, &di);
		ck_assert_str_eq(di.name, vram_plan_device_name(p, (uint32_t)pd));
		per_dev[bd] += ti.nbytes;
	}
	ck_assert_uint_gt(per_dev[0], 0);
	ck_assert_uint_gt(per_dev[1], 0);
	ck_assert_uint_gt(per_dev[2], 0);
	/* with VRAM_LOAD_RECLAIMABLE every grant of the load is reclaimable */
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	for (int d = 0; d < 3; d++)
		ck_assert_uint_eq(s->devices[d].reclaimable, s->devices[d].used);
	ck_assert_uint_gt(s->devices[2].reclaimable, 0);
	vram_status_free(s);
	vram_unload(l);
	assert_idle(c);
	vram_plan_free(p);
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

/* A plan places modules, so it splits the blocks where a device's share
 * ends (an SDXL-shaped file on cuda:0 40%, cuda:1 30%, cpu): the load puts
 * every tensor where its module went, byte for byte; the explicit pager
 * pages a split block whole (its part on the compute device too) and the
 * UVM pager refuses nothing; every acquired tensor reads as in the file. */
START_TEST(test_load_split_layers)
{
	struct env e;
	env_start(&e, "16MiB,16MiB", "64MiB");
	const char *src = getenv("VRAM_SRCDIR");
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "%s %s/tests/make_checkpoint.py --out %s --size 6000000 --seed 4 >/dev/null 2>&1",
		 t_python(), src && *src ? src : ".", e.file);
	ck_assert_int_eq(t_run(cmd, NULL, 0), 0);
	size_t flen;
	_cleanup_free_ uint8_t *fb = read_file(e.file, &flen);
	vram_model *m;
	vram_client *c;
	vram_plan *p;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_expert_mode_allocations = "cuda:0,40%;cuda:1,30%;cpu,*";
	/* computed on cuda:1: the block between cuda:0's share (the tail) and
	 * cuda:1's starts on the compute device */
	o.unet_compute_device = _i ? "cuda:1" : "cuda:0";
	o.vae_device = "cpu";
	p = plan_on(c, m, &o);
	int split = 0;
	for (int li = 0; li < vram_model_layer_count(m); li++) {
		struct vram_layer_info info = { .struct_size = sizeof(info) };
		vram_model_layer(m, (uint32_t)li, &info);
		int d0 = vram_plan_tensor_device(p, info.first_tensor);
		for (uint32_t t = info.first_tensor + 1; t < info.first_tensor + info.ntensors; t++)
			if (vram_plan_tensor_device(p, t) != d0) {
				split++;
				break;
			}
	}
	ck_assert_int_ge(split, 1);
	vram_loaded *l;
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = VRAM_LOAD_RECLAIMABLE;
	ck_assert_msg(vram_load(c, m, p, 0, &lo, &l) == 0, "%s", vram_last_error());
	compare_bytes(m, l, fb, flen);
	for (int i = 0; i < vram_model_tensor_count(m); i++) {
		struct vram_device_info di = { .struct_size = sizeof(di) };
		vram_device_info(c, (uint32_t)vram_loaded_tensor_device(l, (uint32_t)i), &di);
		ck_assert_str_eq(di.name, vram_plan_device_name(p, (uint32_t)vram_plan_tensor_device(p, (uint32_t)i)));
	}
	vram_pager *pg;
	ck_assert_msg(vram_pager_create(l, p, NULL, &pg) == 0, "%s", vram_last_error());
	for (int pass = 0; pass < 2; pass++) {
		for (int li = 0; li < vram_model_layer_count(m); li++) {
			struct vram_layer_info info = { .struct_size = sizeof(info) };
			vram_model_layer(m, (uint32_t)li, &info);
			ck_assert_msg(vram_pager_acquire(pg, (uint32_t)li) == 0, "%s", vram_last_error());
			for (uint32_t t = info.first_tensor; t < info.first_tensor + info.ntensors; t++) {
				struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
				vram_model_tensor(m, t, &ti);
				const uint8_t *hp = vram_pager_tensor_host_ptr(pg, t);
				ck_assert_ptr_nonnull(hp);
				/* off the compute device: served from the window */
				if (vram_plan_tensor_device(p, t) != vram_plan_compute_device(p, ti.component))
					ck_assert_msg(hp != vram_loaded_tensor_host_ptr(l, t), "%s not paged", ti.name);
				ck_assert_msg(!memcmp(hp, fb + ti.file_offset, ti.nbytes), "pass %d: %s differs", pass, ti.name);
			}
			vram_pager_release(pg, (uint32_t)li);
		}
		vram_pager_end_pass(pg);
	}
	struct vram_pager_stats st = { .struct_size = sizeof(st) };
	ck_assert_int_eq(vram_pager_stats(pg, &st), 0);
	ck_assert_uint_gt(st.bytes_paged, 0);
	vram_pager_free(pg);
	vram_unload(l);
	assert_idle(c);
	vram_plan_free(p);
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

/* The reference conversions, written by numpy next to the checkpoint:
 * exp-f16 (F32 -> F16, numpy's astype: round to nearest even), exp-bf16
 * (F32 -> BF16 by the RNE bit formula, stored as U16: numpy has no bf16),
 * exp-f32 (F16 -> F32, exact).  Other tensors as in the file. */
static void write_expected(const char *file, const char *dir)
{
	char cmd[4096];
	snprintf(cmd, sizeof(cmd),
		 "%s -c \"\n"
		 "import numpy as np\n"
		 "from safetensors.numpy import load_file, save_file\n"
		 "t = load_file('%s')\n"
		 "def bf16(a):\n"
		 "  u = a.view(np.uint32).astype(np.uint64)\n"
		 "  return ((u + 0x7fff + ((u >> 16) & 1)) >> 16).astype(np.uint16)\n"
		 "save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in t.items()}, '%s/exp-f16')\n"
		 "save_file({k: (bf16(v) if v.dtype == np.float32 else v) for k, v in t.items()}, '%s/exp-bf16')\n"
		 "save_file({k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in t.items()}, '%s/exp-f32')\n"
		 "\"",
		 t_python(), file, dir, dir, dir);
	ck_assert_int_eq(t_run(cmd, NULL, 0), 0);
}

/* Tensors of l equal those of the reference file ref (same names), and
 * have the dtype the conversion gives. */
static void compare_converted(const vram_model *m, const vram_loaded *l, const char *ref, uint32_t to, uint32_t from_mask)
{
	vram_model *x;
	ck_assert_msg(vram_model_open(ref, &x) == 0, "%s", vram_last_error());
	size_t flen;
	_cleanup_free_ uint8_t *fb = read_file(ref, &flen);
	int n = vram_model_tensor_count(m), converted = 0;
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) }, tx = { .struct_size = sizeof(tx) };
		ck_assert_int_eq(vram_model_tensor(m, (uint32_t)i, &ti), 0);
		int j = vram_model_find_tensor(x, ti.name);
		ck_assert_int_ge(j, 0);
		ck_assert_int_eq(vram_model_tensor(x, (uint32_t)j, &tx), 0);
		bool conv = (from_mask & (1u << ti.dtype)) && ti.dtype != to;
		converted += conv;
		ck_assert_int_eq(vram_loaded_tensor_dtype(l, (uint32_t)i), conv ? (int)to : (int)ti.dtype);
		ck_assert_uint_eq(vram_loaded_tensor_nbytes(l, (uint32_t)i), tx.nbytes);
		const uint8_t *p = vram_loaded_tensor_host_ptr(l, (uint32_t)i);
		ck_assert_ptr_nonnull(p);
		ck_assert_msg(memcmp(p, fb + tx.file_offset, tx.nbytes) == 0, "tensor %s differs from %s", ti.name, ref);
	}
	ck_assert_int_gt(converted, 0);
	struct vram_load_stats st = { .struct_size = sizeof(st) };
	ck_assert_int_eq(vram_loaded_stats(l, &st), 0);
	ck_assert_uint_eq(st.converted, (uint64_t)converted);
	vram_model_close(x);
}

START_TEST(test_load_convert)
{
	struct env e;
	env_start(&e, "64MiB", "128MiB");
	write_checkpoint(e.file, 23, 301, 5);
	write_expected(e.file, e.dir);
	vram_model *m;
	vram_client *c;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	static const struct { uint32_t to, from; const char *ref; } cases[] = {
		{ VRAM_DTYPE_F16, 0, "exp-f16" },
		{ VRAM_DTYPE_BF16, 0, "exp-bf16" },
		{ VRAM_DTYPE_F32, 1u << VRAM_DTYPE_F16, "exp-f32" },
	};
	static const uint32_t modes[] = { VRAM_IO_DIRECT, VRAM_IO_BUFFERED };
	for (size_t k = 0; k < 3; k++)
		for (int dev = 0; dev < 2; dev++) /* cuda:0 (simulated), cpu */
			for (size_t mi = 0; mi < 2; mi++) {
				struct vram_load_options o;
				vram_load_options_init(&o);
				o.io_mode = modes[mi];
				o.chunk_size = 64 * 1024;
				o.cast_to = cases[k].to;
				o.cast_from = cases[k].from;
				o.staging_slots = (uint32_t)(1 + k); /* 1, 2, 3 slots */
				vram_loaded *l;
				ck_assert_msg(vram_load(c, m, NULL, (uint32_t)dev, &o, &l) == 0, "%s", vram_last_error());
				char ref[300];
				snprintf(ref, sizeof(ref), "%s/%s", e.dir, cases[k].ref);
				compare_converted(m, l, ref, cases[k].to, cases[k].from ? cases[k].from
											  : VRAM_LOAD_CAST_DEFAULT_FROM);
				vram_unload(l);
				assert_idle(c);
			}

	/* A converted load can be paged (test-pager checks the bytes). */
	struct vram_plan_options po;
	vram_plan_options_init(&po);
	po.unet_expert_mode_allocations = "cuda:0,50%;cpu,*";
	vram_plan *p = plan_on(c, m, &po);
	struct vram_load_options o;
	vram_load_options_init(&o);
	o.cast_to = VRAM_DTYPE_F16;
	vram_loaded *l;
	ck_assert_msg(vram_load(c, m, p, 0, &o, &l) == 0, "%s", vram_last_error());
	vram_pager *pg;
	ck_assert_msg(vram_pager_create(l, p, NULL, &pg) == 0, "%s", vram_last_error());
	vram_pager_free(pg);
	vram_unload(l);

	/* The plan counts converted sizes: F16 -> F32 doubles the unet's
	 * weights; a device that holds the file's unet but not the widened
	 * one is refused before anything is read. */
	{
		uint64_t file_unet = 0, wide_unet = 0;
		for (int i = 0; i < vram_model_tensor_count(m); i++) {
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			vram_model_tensor(m, (uint32_t)i, &ti);
			if (ti.component != VRAM_COMP_UNET)
				continue;
			file_unet += ti.nbytes;
			wide_unet += ti.dtype == VRAM_DTYPE_F16 ? 2 * ti.nbytes : ti.nbytes;
		}
		char spec[128];
		snprintf(spec, sizeof(spec), "cuda:0=%lluB,cpu=1GiB", (unsigned long long)(file_unet + wide_unet) / 2);
		struct vram_plan_device pd[4];
		uint32_t npd;
		for (int i = 0; i < 4; i++)
			pd[i].struct_size = sizeof(pd[i]);
		ck_assert_int_eq(vram_plan_devices_parse(spec, pd, 4, &npd), 0);
		struct vram_plan_options wo;
		vram_plan_options_init(&wo);
		wo.unet_virtual_vram_gb = 0;
		wo.clip_compute_device = "cpu";
		wo.vae_device = "cpu";
		vram_plan *wp;
		ck_assert_msg(vram_plan_create(m, &wo, pd, npd, &wp) == 0, "%s", vram_last_error());
		ck_assert_uint_eq(vram_plan_bytes(wp, VRAM_COMP_UNET, 0), file_unet);
		vram_plan_free(wp);
		wo.cast_to = VRAM_DTYPE_F32;
		wo.cast_from = 1u << VRAM_DTYPE_F16;
		ck_assert_int_eq(vram_plan_create(m, &wo, pd, npd, &wp), -ENOSPC);
		ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuda:0"));
		snprintf(spec, sizeof(spec), "cuda:0=%lluB,cpu=1GiB", (unsigned long long)wide_unet);
		ck_assert_int_eq(vram_plan_devices_parse(spec, pd, 4, &npd), 0);
		ck_assert_msg(vram_plan_create(m, &wo, pd, npd, &wp) == 0, "%s", vram_last_error());
		ck_assert_uint_eq(vram_plan_bytes(wp, VRAM_COMP_UNET, 0), wide_unet);
		vram_plan_free(wp);
		/* an older caller's plan options (no cast fields) still plan */
		wo.struct_size = offsetof(struct vram_plan_options, cast_to);
		ck_assert_msg(vram_plan_create(m, &wo, pd, npd, &wp) == 0, "%s", vram_last_error());
		ck_assert_uint_eq(vram_plan_bytes(wp, VRAM_COMP_UNET, 0), file_unet);
		vram_plan_free(wp);
	}

	/* Bad conversions are refused before anything is allocated. */
	o.cast_to = VRAM_DTYPE_I32;
	ck_assert_int_eq(vram_load(c, m, NULL, 0, &o, &l), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cannot convert to I32"));
	o.cast_to = VRAM_DTYPE_F16;
	o.cast_from = 1u << VRAM_DTYPE_F64;
	ck_assert_int_eq(vram_load(c, m, NULL, 0, &o, &l), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cast_from"));
	o.cast_from = 0;
	o.staging_slots = 1025;
	ck_assert_int_eq(vram_load(c, m, NULL, 0, &o, &l), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "staging_slots"));
	o.staging_slots = 0;
	/* An old caller's smaller struct: no conversion fields, no conversion. */
	o.cast_from = 0;
	o.struct_size = offsetof(struct vram_load_options, cast_to);
	ck_assert_msg(vram_load(c, m, NULL, 0, &o, &l) == 0, "%s", vram_last_error());
	compare_all(m, l, e.file);
	vram_unload(l);
	o.struct_size = 8;
	ck_assert_int_eq(vram_load(c, m, NULL, 0, &o, &l), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "struct_size"));
	assert_idle(c);
	vram_plan_free(p);
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

/* A hand-written checkpoint of every F8 and F16 bit pattern (at odd
 * offsets), loaded onto the cpu pool and a simulated GPU with each target
 * dtype: every element equals the C reference's conversion (the loader
 * converts 8- and 16-bit sources through a table built from it). */
START_TEST(test_load_convert_patterns)
{
	struct env e;
	env_start(&e, "64MiB", "64MiB");
	static const struct t_tensor t[] = {
		{ "model.diffusion_model.input_blocks.0.0.weight", "F8_E4M3", 256 * 3 + 1, 1 },
		{ "model.diffusion_model.input_blocks.0.0.bias", "F16", 65536, 2 },
		{ "model.diffusion_model.input_blocks.1.0.weight", "F8_E5M2", 256, 1 },
		{ "model.diffusion_model.input_blocks.1.0.bias", "BF16", 65536, 2 },
	};
	static const uint32_t tdt[] = { VRAM_DTYPE_F8_E4M3, VRAM_DTYPE_F16, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_BF16 };
	size_t off = 0, at = 0;
	for (size_t i = 0; i < 4; i++)
		off += t[i].elems * t[i].esize;
	_cleanup_free_ uint8_t *data = malloc(off);
	ck_assert_ptr_nonnull(data);
	for (size_t i = 0; i < 4; i++) /* every bit pattern in turn */
		for (size_t k = 0; k < t[i].elems; k++, at += t[i].esize) {
			data[at] = (uint8_t)k;
			if (t[i].esize == 2)
				data[at + 1] = (uint8_t)(k >> 8);
		}
	ck_assert_uint_eq(t_write_safetensors(e.file, t, 4, data), off);

	vram_model *m;
	vram_client *c;
	ck_assert_msg(vram_model_open(e.file, &m) == 0, "%s", vram_last_error());
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	static const uint32_t to[] = { VRAM_DTYPE_BF16, VRAM_DTYPE_F16, VRAM_DTYPE_F32, VRAM_DTYPE_F8_E5M2,
				       VRAM_DTYPE_F8_E4M3 };
	const uint32_t all = (1u << VRAM_DTYPE_F8_E4M3) | (1u << VRAM_DTYPE_F8_E5M2) | (1u << VRAM_DTYPE_F16) |
			     (1u << VRAM_DTYPE_BF16);
	for (size_t k = 0; k < 5; k++)
		for (int dev = 0; dev < 2; dev++) {
			struct vram_load_options o;
			vram_load_options_init(&o);
			o.cast_to = to[k];
			o.cast_from = all;
			vram_loaded *l;
			ck_assert_msg(vram_load(c, m, NULL, (uint32_t)dev, &o, &l) == 0, "%s", vram_last_error());
			at = 0;
			for (uint32_t i = 0; i < 4; i++) {
				int ti = vram_model_find_tensor(m, t[i].name);
				ck_assert_int_ge(ti, 0);
				size_t nb = t[i].elems * (vram_dtype_bits(to[k]) / 8);
				_cleanup_free_ uint8_t *want = malloc(nb);
				ck_assert_int_eq(vk_cast(data + at, tdt[i], want, to[k], t[i].elems), 0);
				ck_assert_int_eq(vram_loaded_tensor_dtype(l, (uint32_t)ti), (int)to[k]);
				ck_assert_uint_eq(vram_loaded_tensor_nbytes(l, (uint32_t)ti), nb);
				const uint8_t *p = vram_loaded_tensor_host_ptr(l, (uint32_t)ti);
				ck_assert_msg(memcmp(p, want, nb) == 0, "%s -> %s on device %d differs", t[i].dtype,
					      vram_dtype_name(to[k]), dev);
				at += t[i].elems * t[i].esize;
			}
			vram_unload(l);
		}
	assert_idle(c);
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

START_TEST(test_load_failures_clean)
{
	struct env e;
	env_start(&e, "4MiB", "64MiB");
	write_checkpoint(e.file, 40, 301, 3); /* ~3.2 MiB unet */
	vram_model *m;
	vram_client *c;
	vram_loaded *l;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	/* no room on the device: clear error, nothing left behind */
	write_checkpoint(e.file, 80, 301, 3);
	vram_model_close(m);
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_load(c, m, NULL, 0, NULL, &l), -ENOMEM);
	ck_assert_msg(strstr(vram_last_error(), "cuda:0"), "%s", vram_last_error());
	assert_idle(c);
	/* file changed between open and load */
	write_checkpoint(e.file, 10, 301, 4);
	ck_assert_int_eq(vram_load(c, m, NULL, 1, NULL, &l), -ESTALE);
	ck_assert_msg(strstr(vram_last_error(), "changed"), "%s", vram_last_error());
	assert_idle(c);
	/* bad options */
	struct vram_load_options o;
	vram_load_options_init(&o);
	o.io_mode = 9;
	ck_assert_int_eq(vram_load(c, m, NULL, 1, &o, &l), -EINVAL);
	/* a read size past the engine's limit: refused before any staging
	 * ring is asked for */
	o.io_mode = 0;
	o.chunk_size = 512 * MiB;
	ck_assert_int_eq(vram_load(c, m, NULL, 0, &o, &l), -EINVAL);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "chunk_size"));
	assert_idle(c);
	o.chunk_size = 0;
	ck_assert_int_eq(vram_load(c, m, NULL, 7, NULL, &l), -ENODEV);
	assert_idle(c);
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

static int cancel_at_half(void *user, uint64_t done, uint64_t total)
{
	return done * 2 >= total;
}

/* The checkpoint replaced under its path between open and load (another
 * file of the same size renamed over it): -ESTALE naming the file, never a
 * load of the new bytes at the old header's offsets; a model opened again
 * loads the new file.  The model's file modified in place instead (same
 * size, new mtime): -ESTALE too; nothing left behind either time. */
START_TEST(test_load_file_replaced)
{
	struct env e;
	env_start(&e, "64MiB", "128MiB");
	write_checkpoint(e.file, 12, 301, 1);
	size_t len, len2;
	_cleanup_free_ uint8_t *orig = read_file(e.file, &len);
	vram_model *m;
	vram_client *c;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	char tmp[300];
	snprintf(tmp, sizeof(tmp), "%s.new", e.file);
	write_checkpoint(tmp, 12, 301, 2); /* the same header, other bytes */
	_cleanup_free_ uint8_t *other = read_file(tmp, &len2);
	ck_assert_uint_eq(len2, len);
	ck_assert(memcmp(orig, other, len) != 0);
	ck_assert_int_eq(rename(tmp, e.file), 0);
	struct stat a, b;
	ck_assert_int_eq(fstat(vram_model_fd(m), &a), 0);
	ck_assert_int_eq(stat(e.file, &b), 0);
	ck_assert(a.st_ino != b.st_ino); /* the path names the new file now */

	vram_loaded *l = NULL;
	for (int dev = 0; dev < 2; dev++) { /* cuda:0 (staged), cpu (direct) */
		ck_assert_int_eq(vram_load(c, m, NULL, (uint32_t)dev, NULL, &l), -ESTALE);
		ck_assert_ptr_null(l);
		ck_assert_msg(strstr(vram_last_error(), e.file) && strstr(vram_last_error(), "names another file"),
			      "%s", vram_last_error());
		assert_idle(c);
	}
	vram_model_close(m);
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_msg(vram_load(c, m, NULL, 1, NULL, &l) == 0, "%s", vram_last_error());
	compare_bytes(m, l, other, len);
	vram_unload(l);
	l = NULL;

	/* in place: one byte of tensor data and the mtime, the size kept */
	int wfd = open(e.file, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(wfd, 0);
	ck_assert_int_eq(pwrite(wfd, "x", 1, (off_t)vram_model_data_offset(m)), 1);
	struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_sec = b.st_mtim.tv_sec + 7 } };
	ck_assert_int_eq(futimens(wfd, ts), 0);
	close(wfd);
	ck_assert_int_eq(vram_load(c, m, NULL, 1, NULL, &l), -ESTALE);
	ck_assert_ptr_null(l);
	ck_assert_msg(strstr(vram_last_error(), e.file) && strstr(vram_last_error(), "changed since it was opened"),
		      "%s", vram_last_error());
	assert_idle(c);
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

START_TEST(test_load_cancel)
{
	struct env e;
	env_start(&e, "64MiB", "64MiB");
	write_checkpoint(e.file, 40, 301, 5);
	vram_model *m;
	vram_client *c;
	vram_loaded *l;
	ck_assert_int_eq(vram_model_open(e.file, &m), 0);
	ck_assert_int_eq(vram_connect(e.sock, "t", &c), 0);
	struct vram_load_options o;
	vram_load_options_init(&o);
	o.chunk_size = 64 * 1024;
	o.progress = cancel_at_half;
	ck_assert_int_eq(vram_load(c, m, NULL, 0, &o, &l), -ECANCELED);
	assert_idle(c);
	vram_close(c);
	vram_model_close(m);
	env_stop(&e);
}
END_TEST

/* A client killed in the middle of a load leaves nothing accounted. */
static int signal_then_stall(void *user, uint64_t done, uint64_t total)
{
	int *fd = user;
	if (done * 4 >= total && *fd >= 0) {
		if (write(*fd, "x", 1) != 1)
			_exit(5);
		close(*fd);
		*fd = -1;
		pause(); /* wait to be killed mid-load */
	}
	return 0;
}

START_TEST(test_killed_mid_load)
{
	struct env e;
	env_start(&e, "64MiB", "64MiB");
	write_checkpoint(e.file, 40, 301, 6);
	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	pid_t child = fork();
	if (child == 0) {
		close(pfd[0]);
		vram_model *m;
		vram_client *c;
		vram_loaded *l;
		if (vram_model_open(e.file, &m) < 0 || vram_connect(e.sock, "victim", &c) < 0)
			_exit(1);
		struct vram_load_options o;
		vram_load_options_init(&o);
		o.chunk_size = 64 * 1024;
		o.progress = signal_then_stall;
		o.user = &pfd[1];
		vram_load(c, m, NULL, 0, &o, &l);
		_exit(2);
	}
	close(pfd[1]);
	char x;
	ck_assert_int_eq(read(pfd[0], &x, 1), 1);
	close(pfd[0]);
	vram_client *c;
	struct vram_status *s;
	ck_assert_int_eq(vram_connect(e.sock, "observer", &c), 0);
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_gt(s->devices[0].used, 0); /* the victim holds memory now */
	vram_status_free(s);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	int ok = 0;
	for (int i = 0; i < 300 && !ok; i++) {
		ck_assert_int_eq(vram_get_status(c, &s), 0);
		ok = s->nclients == 1 && s->grants == 0 && s->devices[0].used == 0 && s->devices[1].used == 0;
		vram_status_free(s);
		if (!ok)
			t_sleep_ms(10);
	}
	ck_assert_msg(ok, "the killed client's grants were not released");
	vram_close(c);
	env_stop(&e);
}
END_TEST

/* vramctl load --hash prints XXH64 of each tensor as it sits in memory;
 * compare with XXH64 of the file's bytes. */
START_TEST(test_vramctl_hash)
{
	struct env e;
	env_start(&e, "64MiB", "64MiB");
	write_checkpoint(e.file, 30, 257, 7);
	write_expected(e.file, e.dir);
	char ref[300];
	snprintf(ref, sizeof(ref), "%s/exp-bf16", e.dir);
	vram_model *files[2];
	ck_assert_int_eq(vram_model_open(e.file, &files[0]), 0);
	ck_assert_int_eq(vram_model_open(ref, &files[1]), 0);
	size_t flen;
	_cleanup_free_ uint8_t *fb0 = read_file(e.file, &flen);
	_cleanup_free_ uint8_t *fb1 = read_file(ref, &flen);
	const uint8_t *fbs[2] = { fb0, fb1 };
	const char *devs[] = { "cuda:0", "cpu" };
	/* as in the file, then converted to BF16 (against numpy's) */
	for (int k = 0; k < 4; k++) {
		char cmd[1024];
		int cast = k / 2;
		vram_model *m = files[cast];
		_cleanup_free_ char *out = malloc(1 << 20);
		snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --device %s %s --hash 2>/dev/null", t_build(),
			 e.sock, e.file, devs[k % 2], cast ? "--cast bf16" : "");
		ck_assert_int_eq(t_run(cmd, out, 1 << 20), 0);
		int n = vram_model_tensor_count(m), lines = 0;
		for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
			char *tab = strchr(line, '\t');
			ck_assert_ptr_nonnull(tab);
			*tab = 0;
			int i = vram_model_find_tensor(m, line);
			ck_assert_int_ge(i, 0);
			struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
			vram_model_tensor(m, (uint32_t)i, &ti);
			char want[17];
			snprintf(want, sizeof(want), "%016llx",
				 (unsigned long long)XXH64(fbs[cast] + ti.file_offset, ti.nbytes, 0));
			ck_assert_msg(!strcmp(tab + 1, want), "%s on %s%s: %s, want %s", line, devs[k % 2],
				      cast ? " --cast bf16" : "", tab + 1, want);
			lines++;
		}
		ck_assert_int_eq(lines, n);
	}
	char cmd[1024], out[4096];
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --cast int7 2>&1", t_build(), e.sock, e.file);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 64);
	ck_assert_ptr_nonnull(strstr(out, "--cast: \"int7\" is not a dtype"));
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --cast-from f32 2>&1", t_build(), e.sock, e.file);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 64);
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --device cpu --cast i32 2>&1", t_build(),
		 e.sock, e.file);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 65);
	ck_assert_ptr_nonnull(strstr(out, "cannot convert to I32"));
	vram_model_close(files[0]);
	vram_model_close(files[1]);
	env_stop(&e);
}
END_TEST

/* vramctl bench pager runs both pagers (the explicit one and --uvm) to the
 * end on a simulated GPU and says which it ran. */
START_TEST(test_vramctl_bench_pager)
{
	struct env e;
	env_start(&e, "64MiB", "64MiB");
	write_checkpoint(e.file, 30, 257, 8);
	for (int uvm = 0; uvm < 2; uvm++) {
		char cmd[1024];
		_cleanup_free_ char *out = malloc(1 << 16);
		snprintf(cmd, sizeof(cmd),
			 "%s/bin/vramctl --socket %s bench pager %s --unet-virtual-vram-gb 0.001 --passes 2 %s --json",
			 t_build(), e.sock, e.file, uvm ? "--uvm" : "");
		ck_assert_int_eq(t_run(cmd, out, 1 << 16), 0);
		ck_assert_ptr_nonnull(strstr(out, uvm ? "\"mode\": \"uvm\"" : "\"mode\": \"explicit\""));
		ck_assert_ptr_nonnull(strstr(out, "\"bytes_paged\": "));
		ck_assert_ptr_null(strstr(out, "\"bytes_paged\": 0,"));
	}
	env_stop(&e);
}
END_TEST

/* vramctl load --hash's output (NAME\tHASH lines, cut up in place): every
 * tensor of m once, each hash that of its bytes in fb (the file, flen
 * bytes), except tensors of the dtypes in the set `converted` (1 << dtype),
 * whose loaded bytes must differ from the file's. */
static void check_hash_lines(const vram_model *m, char *out, const uint8_t *fb, size_t flen, uint64_t converted,
			     const char *what)
{
	int lines = 0;
	for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		char *tab = strchr(line, '\t'), want[17];
		ck_assert_ptr_nonnull(tab);
		*tab = 0;
		int i = vram_model_find_tensor(m, line);
		ck_assert_int_ge(i, 0);
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		ck_assert_uint_le(ti.file_offset + ti.nbytes, flen);
		snprintf(want, sizeof(want), "%016llx", (unsigned long long)XXH64(fb + ti.file_offset, ti.nbytes, 0));
		if (converted & (1ull << ti.dtype))
			ck_assert_msg(strcmp(tab + 1, want), "%s: %s (%s) not converted", what, line,
				      vram_dtype_name(ti.dtype));
		else
			ck_assert_msg(!strcmp(tab + 1, want), "%s: %s (%s) differs from the file", what, line,
				      vram_dtype_name(ti.dtype));
		lines++;
	}
	ck_assert_int_eq(lines, vram_model_tensor_count(m));
}

/* A quantised GGUF is served from shared copies (the second load of it on
 * a device is a hit) and --cast converts its F32 tensors only, never its
 * quantised blocks; private loads after the copies (which evict them) and
 * a bench pager still work. */
static void check_gguf_shared(const struct env *e, const char *gg, const vram_model *m, const uint8_t *fb,
			      size_t flen)
{
	const char *devs[] = { "cuda:0", "cpu" };
	_cleanup_free_ char *out = malloc(1 << 20);
	char cmd[1400];
	for (int k = 0; k < 2; k++) {
		for (int pass = 0; pass < 2; pass++) {
			snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --device %s 2>&1", t_build(),
				 e->sock, gg, devs[k]);
			ck_assert_int_eq(t_run(cmd, out, 1 << 20), 0);
			ck_assert_msg(strstr(out, pass ? "shared copy: hit (" : "shared copy: "), "%s: %s", devs[k], out);
		}
		snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --device %s --cast bf16 --private --hash "
			 "2>/dev/null", t_build(), e->sock, gg, devs[k]);
		ck_assert_int_eq(t_run(cmd, out, 1 << 20), 0);
		check_hash_lines(m, out, fb, flen, 1ull << VRAM_DTYPE_F32, devs[k]);
	}
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --cast bf16 --cast-from q8_k 2>&1", t_build(),
		 e->sock, gg);
	ck_assert_int_eq(t_run(cmd, out, 1 << 20), 64);
	ck_assert_msg(strstr(out, "Q8_K is block-quantised and never converted"), "%s", out);
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --cast bf16 --cast-from q4_k 2>&1", t_build(),
		 e->sock, gg);
	ck_assert_int_eq(t_run(cmd, out, 1 << 20), 64);
	ck_assert_msg(strstr(out, "cannot convert from Q4_K"), "%s", out);
}

/* GGUF (quantised blocks) and PyTorch (overlapping views of one storage)
 * load as they are in the file, on a simulated GPU and on the host, and
 * plan, bench pager and inspect take them. */
START_TEST(test_vramctl_formats)
{
	struct env e;
	env_start(&e, "64MiB", "64MiB");
	char gg[300], ck[300], cmd[1400];
	snprintf(gg, sizeof(gg), "%s/flux.gguf", e.dir);
	snprintf(ck, sizeof(ck), "%s/sd.ckpt", e.dir);
	_cleanup_free_ char *out = malloc(1 << 20);
	const char *src = getenv("VRAM_SRCDIR");
	snprintf(cmd, sizeof(cmd), "%s %s/tests/make_formats.py %s %s 2>&1", t_python(), src && *src ? src : ".", gg,
		 ck);
	int rc = t_run(cmd, out, 1 << 20);
	ck_assert_msg(rc == 0 || rc == 3, "make_formats.py: %d %s", rc, out);
	if (rc == 3)
		printf("test-load: test_vramctl_formats: no torch in %s, the PyTorch half skipped\n", t_python());
	const char *files[] = { gg, ck };
	const char *devs[] = { "cuda:0", "cpu" };
	for (int f = 0; f < (rc == 3 ? 1 : 2); f++) {
		vram_model *m;
		size_t flen;
		ck_assert_int_eq(vram_model_open(files[f], &m), 0);
		_cleanup_free_ uint8_t *fb = read_file(files[f], &flen);
		for (int k = 0; k < 2; k++) {
			snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s load %s --device %s --hash 2>/dev/null",
				 t_build(), e.sock, files[f], devs[k]);
			ck_assert_int_eq(t_run(cmd, out, 1 << 20), 0);
			check_hash_lines(m, out, fb, flen, 0, devs[k]);
		}
		if (f == 0)
			check_gguf_shared(&e, gg, m, fb, flen);
		snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s plan %s --unet-virtual-vram-gb 0.001 >/dev/null && "
			 "%s/bin/vramctl --socket %s bench pager %s --unet-virtual-vram-gb 0.001 --passes 2 --json",
			 t_build(), e.sock, files[f], t_build(), e.sock, files[f]);
		ck_assert_msg(t_run(cmd, out, 1 << 20) == 0, "%s", out);
		const char *bp = strstr(out, "\"bytes_paged\": "); /* the first pass pages the donor layers */
		ck_assert_msg(bp && bp[15] >= '1' && bp[15] <= '9', "%s: %s", files[f], out);
		vram_model_close(m);
	}
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl inspect %s", t_build(), gg);
	ck_assert_int_eq(t_run(cmd, out, 1 << 20), 0);
	ck_assert_msg(strstr(out, "format:      gguf\nLICENSE:     flux-1-dev-non-commercial-license"), "%s", out);
	ck_assert_msg(strstr(out, "quantisation: 15 (Q4_K_M)"), "%s", out);
	ck_assert_msg(strstr(out, " Q4_K x12 "), "%s", out);
	env_stop(&e);
}
END_TEST

START_TEST(test_vramctl_exit_codes)
{
	char out[4096], cmd[1024];
	char *d = t_tmpdir();
	/* invalid file: exit 65 and exactly one line FILE: invalid safetensors: REASON */
	snprintf(cmd, sizeof(cmd), "printf 'abc' > %s/bad.safetensors; %s/bin/vramctl inspect %s/bad.safetensors 2>&1", d,
		 t_build(), d);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 65);
	ck_assert_msg(strstr(out, "/bad.safetensors: invalid safetensors: "), "%s", out);
	ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1);
	/* missing file */
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl inspect %s/none.safetensors 2>&1", t_build(), d);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 66);
	/* broker not reachable: 69, naming the socket */
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s/no.sock status 2>&1", t_build(), d);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 69);
	ck_assert_msg(strstr(out, "no.sock"), "%s", out);
	snprintf(cmd, sizeof(cmd), "VRAMD_SOCKET=%s/env.sock %s/bin/vramctl status 2>&1", d, t_build());
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 69);
	ck_assert_msg(strstr(out, "env.sock"), "%s", out);
	/* usage */
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl frobnicate 2>&1", t_build());
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 64);
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl status --bogus 2>&1", t_build());
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 64);
	t_rmtree(d);
}
END_TEST

START_TEST(test_vramctl_status_json)
{
	struct env e;
	env_start(&e, "8GiB,4GiB", "64MiB");
	char cmd[1024];
	_cleanup_free_ char *out = malloc(65536);
	snprintf(cmd, sizeof(cmd),
		 "%s/bin/vramctl --socket %s status --json | %s -c \"import json,sys; d=json.load(sys.stdin); "
		 "print(len(d['devices']), d['devices'][0]['name'], d['devices'][0]['simulated'], "
		 "d['devices'][0]['total'], d['devices'][2]['backend'], d['devices'][2]['simulated'], "
		 "d['clients'][0]['name'])\"",
		 t_build(), e.sock, t_python());
	ck_assert_int_eq(t_run(cmd, out, 65536), 0);
	ck_assert_str_eq(out, "3 cuda:0 True 8589934592 cpu False vramctl\n");
	snprintf(cmd, sizeof(cmd), "%s/bin/vramctl --socket %s status", t_build(), e.sock);
	ck_assert_int_eq(t_run(cmd, out, 65536), 0);
	ck_assert_ptr_nonnull(strstr(out, "[SIMULATED]"));
	env_stop(&e);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("load");
	TCase *tc = tcase_create("load");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_load_every_mode_and_device);
	tcase_add_test(tc, test_load_by_plan);
	tcase_add_loop_test(tc, test_load_split_layers, 0, 2);
	tcase_add_test(tc, test_load_convert);
	tcase_add_test(tc, test_load_convert_patterns);
	tcase_add_test(tc, test_load_failures_clean);
	tcase_add_test(tc, test_load_file_replaced);
	tcase_add_test(tc, test_load_cancel);
	tcase_add_test(tc, test_killed_mid_load);
	tcase_add_test(tc, test_vramctl_hash);
	tcase_add_test(tc, test_vramctl_formats);
	tcase_add_test(tc, test_vramctl_exit_codes);
	tcase_add_test(tc, test_vramctl_bench_pager);
	tcase_add_test(tc, test_vramctl_status_json);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
