/* SPDX-License-Identifier: MIT */
/* Helpers for the suites that page models against a real vramd process
 * (header-only, static): a broker and a checkpoint in a temp dir, a model
 * loaded and paged by a client, every acquired byte checked against the
 * file. */
#ifndef VRAM_TESTLIB_PAGER_H
#define VRAM_TESTLIB_PAGER_H

#include <pthread.h>
#include <stdatomic.h>

#include "runtime/vram.h"
#include "kernels/kernels.h"
#include "testlib.h"

#ifndef MiB
#define MiB (1ull << 20)
#endif

/* A vramd process and a checkpoint, in a temp dir. */
struct tp_env {
	char *dir;
	char sock[256];
	char admin[300];
	char log[300];
	char file[256];
	pid_t pid;
	const char *args[16];    /* vramd's arguments, for restarts */
	uint8_t *bytes;          /* the checkpoint */
	size_t len;
};

/* Starts vramd with args (NULL-terminated, at most 15) in a fresh dir. */
static inline void tp_env_start(struct tp_env *e, const char *const *args)
{
	memset(e, 0, sizeof(*e));
	setenv("TMPDIR", access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp", 1);
	e->dir = t_tmpdir();
	ck_assert_ptr_nonnull(e->dir);
	snprintf(e->sock, sizeof(e->sock), "%s/vramd.sock", e->dir);
	snprintf(e->file, sizeof(e->file), "%s/model.safetensors", e->dir);
	snprintf(e->log, sizeof(e->log), "%s/vramd.log", e->dir);
	snprintf(e->admin, sizeof(e->admin), "%s/admin.sock", e->dir);
	for (int i = 0; args[i] && i < 15; i++)
		e->args[i] = args[i];
	e->pid = t_start_vramd(e->sock, e->log, e->args);
	ck_assert_int_gt(e->pid, 0);
}

/* The checkpoint: t_write_checkpoint's (blocks of rows x cols F16). */
static inline void tp_env_checkpoint(struct tp_env *e, int blocks, int rows, int cols)
{
	ck_assert_int_eq(t_write_checkpoint(e->file, blocks, rows, cols, 11), 0);
	e->bytes = t_read_file(e->file, &e->len);
	ck_assert_ptr_nonnull(e->bytes);
}

/* SIGKILLs vramd and starts it again on the same socket. */
static inline void tp_env_restart(struct tp_env *e)
{
	kill(e->pid, SIGKILL);
	waitpid(e->pid, NULL, 0);
	e->pid = t_start_vramd(e->sock, e->log, e->args);
	ck_assert_int_gt(e->pid, 0);
}

static inline void tp_env_stop(struct tp_env *e)
{
	free(e->bytes);
	int st = t_stop(e->pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	t_rmtree(e->dir);
}

/* Lines of the broker's log that contain needle. */
static inline int tp_log_count(const struct tp_env *e, const char *needle)
{
	size_t len;
	char *txt = (char *)t_read_file(e->log, &len);
	int n = 0;
	if (!txt)
		return -1;
	txt[len] = '\0';
	for (char *s = txt; (s = strstr(s, needle)); s++)
		n++;
	free(txt);
	return n;
}

/* A model loaded (reclaimable) and paged by its own client. */
struct tp_model {
	vram_model *m;
	vram_client *c;
	vram_plan *plan;
	vram_loaded *l;
	vram_pager *p;
	uint32_t nunet;
};

/* Connects as name, plans the unet on cuda:0 (vvram_gb of it donated to
 * the cpu; expert: an expert allocation string instead, or NULL), loads
 * with load_flags (VRAM_LOAD_*; VRAM_LOAD_RECLAIMABLE always) and makes
 * the pager (flags: VRAM_PAGER_*).  0, or the failing call's error (the
 * model is then released). */
static inline int tp_model_open_ex(struct tp_model *t, const struct tp_env *e, const char *name, double vvram_gb,
				   const char *expert, uint32_t flags, uint32_t load_flags)
{
	memset(t, 0, sizeof(*t));
	int r = vram_model_open(e->file, &t->m);
	if (r == 0)
		r = vram_connect(e->sock, name, &t->c);
	struct vram_plan_device devs[8];
	uint32_t nd = 0;
	for (int i = 0; i < 8; i++)
		devs[i].struct_size = sizeof(devs[i]);
	if (r == 0)
		r = vram_plan_devices_from_client(t->c, devs, 8, &nd);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_compute_device = "cuda:0";
	o.unet_virtual_vram_gb = vvram_gb;
	o.unet_expert_mode_allocations = expert;
	if (r == 0)
		r = vram_plan_create(t->m, &o, devs, nd, &t->plan);
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = VRAM_LOAD_RECLAIMABLE | load_flags;
	if (r == 0)
		r = vram_load(t->c, t->m, t->plan, 0, &lo, &t->l);
	struct vram_pager_options po;
	vram_pager_options_init(&po);
	po.flags = flags;
	if (r == 0)
		r = vram_pager_create(t->l, t->plan, &po, &t->p);
	struct vram_component_info ci = { .struct_size = sizeof(ci) };
	if (t->m)
		vram_model_component(t->m, VRAM_COMP_UNET, &ci);
	t->nunet = ci.nlayers;
	if (r < 0) {
		vram_pager_free(t->p);
		vram_unload(t->l);
		vram_plan_free(t->plan);
		vram_close(t->c);
		vram_model_close(t->m);
		memset(t, 0, sizeof(*t));
	}
	return r;
}

/* tp_model_open_ex with a private load. */
static inline int tp_model_open(struct tp_model *t, const struct tp_env *e, const char *name, double vvram_gb,
				const char *expert, uint32_t flags)
{
	return tp_model_open_ex(t, e, name, vvram_gb, expert, flags, 0);
}

static inline void tp_model_close(struct tp_model *t)
{
	vram_pager_free(t->p);
	vram_unload(t->l);
	vram_plan_free(t->plan);
	vram_close(t->c);
	vram_model_close(t->m);
	memset(t, 0, sizeof(*t));
}

/* Every tensor of acquired layer li against the file (converted as the
 * load converted it, by the C reference); 0, or -1 with why set. */
static inline int tp_layer_differs(const struct tp_env *e, const struct tp_model *t, uint32_t li, char *why,
				   size_t len)
{
	struct vram_layer_info info = { .struct_size = sizeof(info) };
	vram_model_layer(t->m, li, &info);
	for (uint32_t k = info.first_tensor; k < info.first_tensor + info.ntensors; k++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(t->m, k, &ti);
		const uint8_t *h = vram_pager_tensor_host_ptr(t->p, k);
		if (!h) {
			snprintf(why, len, "tensor %s has no address while acquired", ti.name);
			return -1;
		}
		int dt = vram_loaded_tensor_dtype(t->l, k);
		if (dt == (int)ti.dtype) {
			if (memcmp(h, e->bytes + ti.file_offset, ti.nbytes) != 0) {
				snprintf(why, len, "tensor %s differs from the file", ti.name);
				return -1;
			}
			continue;
		}
		uint64_t n = ti.nbytes / (vram_dtype_bits(ti.dtype) / 8), nb = n * (vram_dtype_bits((uint32_t)dt) / 8);
		uint8_t *want = malloc(nb + 1);
		int bad = !want || vk_cast(e->bytes + ti.file_offset, ti.dtype, want, (uint32_t)dt, n) != 0 ||
			  memcmp(h, want, nb) != 0;
		free(want);
		if (bad) {
			snprintf(why, len, "converted tensor %s differs", ti.name);
			return -1;
		}
	}
	return 0;
}

/* Acquires li, checks it against the file, releases (asserting). */
static inline void tp_check_layer(const struct tp_env *e, struct tp_model *t, uint32_t li)
{
	char why[256];
	ck_assert_msg(vram_pager_acquire(t->p, li) == 0, "layer %u: %s", li, vram_last_error());
	ck_assert_msg(tp_layer_differs(e, t, li, why, sizeof(why)) == 0, "layer %u: %s", li, why);
	ck_assert_int_eq(vram_pager_release(t->p, li), 0);
}

/* One pass over the unet's layers, every byte checked. */
static inline void tp_pass(const struct tp_env *e, struct tp_model *t)
{
	for (uint32_t li = 0; li < t->nunet; li++)
		tp_check_layer(e, t, li);
	vram_pager_end_pass(t->p);
}

/* This client's (by name) entry of st, or NULL. */
static inline const struct vram_client_status *tp_client(const struct vram_status *st, const char *name)
{
	for (uint32_t i = 0; i < st->nclients; i++)
		if (!strcmp(st->clients[i].name, name))
			return &st->clients[i];
	return NULL;
}

/* Waits (bounded: 15 s) until the broker has no grant and no client but
 * the observer o; asserts it. */
static inline void tp_wait_empty(vram_client *o)
{
	struct vram_status *s = NULL;
	for (int i = 0; i < 1500; i++) {
		ck_assert_int_eq(vram_get_status(o, &s), 0);
		int idle = s->grants == 0 && s->nclients == 1;
		for (uint32_t d = 0; idle && d < s->ndevices; d++)
			idle = s->devices[d].used == 0;
		if (idle)
			break;
		vram_status_free(s);
		s = NULL;
		t_sleep_ms(10);
	}
	ck_assert_msg(s != NULL, "the broker still accounts grants or clients");
	vram_status_free(s);
}

/* Asserts, as a fresh observer, that nothing is left accounted, then
 * stops vramd. */
static inline void tp_env_stop_empty(struct tp_env *e)
{
	vram_client *o;
	ck_assert_int_eq(vram_connect(e->sock, "observer", &o), 0);
	tp_wait_empty(o);
	vram_close(o);
	tp_env_stop(e);
}

/* A thread running passes over a model until told to stop; every acquired
 * byte checked. */
struct tp_busy {
	const struct tp_env *e;
	struct tp_model *t;
	pthread_t th;
	atomic_int stop;
	atomic_int passes;
	char err[256];
};

static inline void *tp_busy_main(void *arg)
{
	struct tp_busy *b = arg;
	while (!atomic_load(&b->stop) && !b->err[0]) {
		for (uint32_t li = 0; li < b->t->nunet && !b->err[0]; li++) {
			if (vram_pager_acquire(b->t->p, li) < 0) {
				snprintf(b->err, sizeof(b->err), "acquire %u: %s", li, vram_last_error());
				break;
			}
			if (tp_layer_differs(b->e, b->t, li, b->err, sizeof(b->err)) < 0)
				break;
			vram_pager_release(b->t->p, li);
		}
		vram_pager_end_pass(b->t->p);
		atomic_fetch_add(&b->passes, 1);
	}
	return NULL;
}

static inline void tp_busy_start(struct tp_busy *b, const struct tp_env *e, struct tp_model *t)
{
	memset(b, 0, sizeof(*b));
	b->e = e;
	b->t = t;
	ck_assert_int_eq(pthread_create(&b->th, NULL, tp_busy_main, b), 0);
}

/* Lets it run n more passes, stops it, asserts it never failed. */
static inline void tp_busy_stop(struct tp_busy *b, int n)
{
	int p0 = atomic_load(&b->passes);
	while (atomic_load(&b->passes) < p0 + n && !b->err[0])
		t_sleep_ms(2);
	atomic_store(&b->stop, 1);
	pthread_join(b->th, NULL);
	ck_assert_msg(!b->err[0], "%s", b->err);
}

#endif
