/* SPDX-License-Identifier: MIT */
/*
 * Shared read-only copies (issue 13) against a real vramd and real client
 * processes: one copy for every process that loads a file, its bytes the
 * file's, read-only to everyone, private copies of a tensor writable and
 * apart, a new copy when the file changes, no copy without the file, no
 * way for one client to put bytes into what another maps, single flight,
 * the budget and its eviction order, killed fillers and waiters, drops.
 */
#include <grp.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <utime.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/vram.h"
#include "testlib-raw.h"
#include "testlib.h"

#define MiB (1ull << 20)

/* ---- helpers -------------------------------------------------------------------- */

struct fx {
	struct t_broker b;
	char file[300];
};

/* A broker with a sim GPU and a cpu pool, and a checkpoint of blocks x
 * (rows x 1024 F16 + bias) in its dir. */
static void fx_start(struct fx *f, const char *cache_max, int blocks, int rows)
{
	const char *const args[] = { "--sim-gpus", "256MiB", "--host-pool", "256MiB", "--cache-max", cache_max, NULL };
	t_broker_start(&f->b, args);
	snprintf(f->file, sizeof(f->file), "%s/model.safetensors", f->b.dir);
	ck_assert_int_eq(t_write_checkpoint(f->file, blocks, rows, 1024, 7), 0);
}

static void fx_stop(struct fx *f)
{
	t_broker_stop(&f->b);
}

/* Loads f->file on device dev with flags (shared unless told); checks every
 * tensor against the file.  Returns the load's stats' share counters
 * folded: 'h' hit only, 'f' filled only, 'w' waited only, 'p' private,
 * 'm' mixed, or 'E' on failure (message on stderr). */
static char load_check(const char *sock, const char *file, uint32_t dev, uint32_t flags, vram_client **keep_c,
		       vram_loaded **keep_l, vram_model **keep_m)
{
	vram_client *c;
	vram_model *m;
	vram_loaded *l;
	if (vram_connect(sock, "share-test", &c) < 0 || vram_model_open(file, &m) < 0) {
		fprintf(stderr, "load_check: %s\n", vram_last_error());
		return 'E';
	}
	struct vram_load_options o;
	vram_load_options_init(&o);
	o.flags = flags;
	if (vram_load(c, m, NULL, dev, &o, &l) < 0) {
		fprintf(stderr, "load_check: load: %s\n", vram_last_error());
		return 'E';
	}
	size_t flen;
	_cleanup_free_ uint8_t *fb = t_read_file(file, &flen);
	for (int i = 0; i < vram_model_tensor_count(m); i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		const uint8_t *p = vram_loaded_tensor_host_ptr(l, (uint32_t)i);
		if (!fb || !p || memcmp(p, fb + ti.file_offset, ti.nbytes)) {
			fprintf(stderr, "load_check: tensor %s differs from the file\n", ti.name);
			return 'E';
		}
	}
	struct vram_load_stats st = { .struct_size = sizeof(st) };
	vram_loaded_stats(l, &st);
	char how = st.share_refused ? 'p' /* a chunk (or all) loaded privately */
		   : st.share_hits && !st.share_filled && !st.share_waited ? 'h'
		   : st.share_filled && !st.share_hits && !st.share_waited ? 'f'
		   : st.share_waited && !st.share_hits && !st.share_filled ? 'w'
		   : st.shared_bytes ? 'm' : 'p';
	if (keep_l) {
		*keep_c = c;
		*keep_l = l;
		*keep_m = m;
	} else {
		vram_unload(l);
		vram_model_close(m);
		vram_close(c);
	}
	return how;
}

static struct vram_status *status_of(const char *sock)
{
	vram_client *o;
	struct vram_status *s;
	ck_assert_int_eq(vram_connect(sock, "observer", &o), 0);
	ck_assert_int_eq(vram_get_status(o, &s), 0);
	vram_close(o);
	return s;
}

/* The device called name in s. */
static const struct vram_device_info *dev_of(const struct vram_status *s, const char *name)
{
	for (uint32_t i = 0; i < s->ndevices; i++)
		if (!strcmp(s->devices[i].name, name))
			return &s->devices[i];
	ck_abort_msg("no device %s", name);
	return NULL;
}

/* A child that loads (shared) and holds the load until its stdin-pipe
 * closes: says 'h'/'f'/'w'/'p'/'E' on its out pipe once loaded. */
struct holder_arg {
	const char *sock, *file;
	uint32_t dev;
	int out, in;
	int in_w, out_r;         /* the parent's ends: closed in the child */
};

static int holder(void *a)
{
	struct holder_arg *h = a;
	close(h->in_w);
	close(h->out_r);
	vram_client *c = NULL;
	vram_loaded *l = NULL;
	vram_model *m = NULL;
	char how = load_check(h->sock, h->file, h->dev, VRAM_LOAD_SHARED, &c, &l, &m);
	if (write(h->out, &how, 1) != 1)
		return 3;
	char x;
	if (read(h->in, &x, 1) < 0)
		return 4;
	if (how == 'E')
		return 2;
	vram_unload(l);
	vram_model_close(m);
	vram_close(c);
	return 0;
}

/* A SHARE sent by hand (tests/testlib-raw.h) on a fresh connection: one
 * run of file on dev.  Returns the reply's opcode; *ret_fd the copy's fd
 * (or -1), buf the reply. */
static int raw_share(const char *sock, const char *file, int open_flags, uint32_t dev,
		     const struct vramd_share_run *run, char *buf, int *ret_fd)
{
	struct {
		struct vramd_share m;
		struct vramd_share_run r;
	} req = { 0 };
	int s = tr_connect(sock);
	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(tr_hello(s, "raw"), 0);
	proto_hdr_init(&req.m.hdr, VRAMD_SHARE, sizeof(req), 5);
	req.m.device = dev;
	req.m.nruns = 1;
	req.r = *run;
	int ffd = open(file, open_flags | O_CLOEXEC);
	ck_assert_int_ge(ffd, 0);
	*ret_fd = -1;
	int op = tr_request(s, &req, sizeof(req), ffd, buf, ret_fd);
	close(ffd);
	close(s);
	return op;
}

/* ---- tests -------------------------------------------------------------------------- */

/* Four processes load the same file, on the cpu pool and on a simulated
 * GPU: one copy per device (its use is the copy, once), every tensor's
 * bytes the file's; the first fills, the others hit. */
START_TEST(test_four_processes_one_copy)
{
	struct fx f;
	fx_start(&f, "50%", 24, 1024);
	for (uint32_t dev = 0; dev < 2; dev++) {
		int out[2], in[2];
		ck_assert_int_eq(pipe(out), 0);
		ck_assert_int_eq(pipe(in), 0);
		struct holder_arg ha = { f.b.sock, f.file, dev, out[1], in[0], in[1], out[0] };
		pid_t kids[4];
		char hows[5] = "";
		for (int k = 0; k < 4; k++) {
			kids[k] = t_fork(holder, &ha);
			ck_assert_int_eq(read(out[0], &hows[k], 1), 1); /* one after the other */
		}
		ck_assert_msg(!strcmp(hows, "fhhh"), "loads were %s", hows);
		struct vram_status *s = status_of(f.b.sock);
		const struct vram_device_info *d = dev_of(s, dev ? "cpu" : "cuda:0");
		ck_assert_uint_gt(d->cache, 24 * 2 * MiB);
		ck_assert_uint_eq(d->used, d->cache); /* the copy, counted once */
		uint64_t shared = 0;
		for (uint32_t i = 0; i < s->nclients; i++)
			shared += s->clients[i].shared_dev[d->index];
		ck_assert_uint_eq(shared, 4 * d->cache); /* each of the four maps all of it */
		vram_status_free(s);
		close(in[1]);
		for (int k = 0; k < 4; k++)
			ck_assert_int_eq(t_wait(kids[k], 20000), 0);
		close(in[0]);
		close(out[0]);
		close(out[1]);
	}
	/* unused copies stay, as cache */
	struct vram_status *s = status_of(f.b.sock);
	ck_assert_uint_gt(dev_of(s, "cpu")->cache, 0);
	uint64_t chunks = dev_of(s, "cpu")->cache_fills; /* one copy per chunk of the load */
	ck_assert_uint_ge(chunks, 1);
	ck_assert_uint_eq(dev_of(s, "cpu")->cache_hits, 3 * chunks);
	vram_status_free(s);
	fx_stop(&f);
}
END_TEST

/* A load that converts makes every tensor a run of its own: a component of
 * more tensors than a copy describes is cut into chunks that each can be
 * shared (once, it was loaded privately), and a second load hits them all
 * with the same converted bytes. */
START_TEST(test_many_converted_tensors_shared)
{
	struct fx f;
	fx_start(&f, "50%", 700, 1); /* 1,400 unet tensors, F16 weights */
	vram_client *c[3];
	vram_model *m[3];
	vram_loaded *l[3]; /* filled, hit, private (what the copies must hold) */
	for (int k = 0; k < 3; k++) {
		ck_assert_int_eq(vram_connect(f.b.sock, "share-cast", &c[k]), 0);
		ck_assert_int_eq(vram_model_open(f.file, &m[k]), 0);
		struct vram_load_options o;
		vram_load_options_init(&o);
		o.flags = k < 2 ? VRAM_LOAD_SHARED : 0;
		o.cast_to = VRAM_DTYPE_BF16;
		o.cast_from = 1u << VRAM_DTYPE_F16;
		ck_assert_msg(vram_load(c[k], m[k], NULL, 1 /* cpu */, &o, &l[k]) == 0, "%s", vram_last_error());
		struct vram_load_stats st = { .struct_size = sizeof(st) };
		vram_loaded_stats(l[k], &st);
		if (k == 2)
			break;
		ck_assert_msg(st.share_refused == 0, "refused: %s", st.share_why);
		ck_assert_uint_ge(k ? st.share_hits : st.share_filled, 2); /* more than one chunk */
		ck_assert_uint_eq(k ? st.share_filled : st.share_hits, 0);
	}
	int n = vram_model_tensor_count(m[0]), converted = 0;
	for (int i = 0; i < n; i++) {
		uint64_t nb = vram_loaded_tensor_nbytes(l[2], (uint32_t)i);
		for (int k = 0; k < 2; k++) {
			ck_assert_uint_eq(vram_loaded_tensor_nbytes(l[k], (uint32_t)i), nb);
			ck_assert_msg(!nb || !memcmp(vram_loaded_tensor_host_ptr(l[k], (uint32_t)i),
						     vram_loaded_tensor_host_ptr(l[2], (uint32_t)i), nb),
				      "tensor %d of load %d differs from the private load", i, k);
		}
		converted += vram_loaded_tensor_dtype(l[0], (uint32_t)i) == VRAM_DTYPE_BF16;
	}
	ck_assert_int_ge(converted, 700);
	for (int k = 0; k < 3; k++) {
		vram_unload(l[k]);
		vram_model_close(m[k]);
		vram_close(c[k]);
	}
	fx_stop(&f);
}
END_TEST

static sigjmp_buf fault_jump;

static void on_fault(int sig)
{
	siglongjmp(fault_jump, 1);
}

/* 1 if writing a byte at p faults. */
static int write_faults(volatile uint8_t *p)
{
	struct sigaction sa = { .sa_handler = on_fault }, o1, o2;
	sigaction(SIGSEGV, &sa, &o1);
	sigaction(SIGBUS, &sa, &o2);
	int r = 1;
	if (!sigsetjmp(fault_jump, 1)) {
		*p = 0x77;
		r = 0;
	}
	sigaction(SIGSEGV, &o1, NULL);
	sigaction(SIGBUS, &o2, NULL);
	return r;
}

/* A copy is read-only to its users: writing a tensor faults, the copy's
 * fd cannot be mapped writable nor made so; a private copy of a tensor is
 * writable, and nobody else sees what is written there. */
START_TEST(test_read_only_and_private)
{
	struct fx f;
	fx_start(&f, "50%", 8, 256);
	vram_client *c;
	vram_loaded *l;
	vram_model *m;
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, &c, &l, &m), 'f');
	ck_assert_int_eq(vram_loaded_tensor_shared(l, 0), 1);
	uint8_t *p = vram_loaded_tensor_host_ptr(l, 0);
	ck_assert(write_faults(p));
	/* the fd itself, asked for raw: no writable mapping, no mprotect */
	static char buf[VRAMD_MSG_MAX];
	int cfd;
	struct vramd_share_run run = { .file_off = 8, .len = 4096 };
	ck_assert_int_eq(raw_share(f.b.sock, f.file, O_RDONLY, 1, &run, buf, &cfd), VRAMD_SHARE_REPLY);
	ck_assert_int_ge(cfd, 0);
	const struct vramd_share_reply *rep = (const void *)buf;
	ck_assert(mmap(NULL, rep->size, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0) == MAP_FAILED);
	void *ro = mmap(NULL, rep->size, PROT_READ, MAP_SHARED, cfd, 0);
	ck_assert(ro != MAP_FAILED);
	ck_assert_int_ne(mprotect(ro, rep->size, PROT_READ | PROT_WRITE), 0);
	ck_assert_int_lt(ftruncate(cfd, 0), 0);
	ck_assert_int_lt(pwrite(cfd, "x", 1, 0), 0);
	munmap(ro, rep->size);
	close(cfd);
	/* Not while a pager serves the load: its tables are the load's grants
	 * as they were when it was made. */
	struct vram_plan_device devs[8];
	uint32_t nd = 0;
	for (int i = 0; i < 8; i++)
		devs[i].struct_size = sizeof(devs[i]);
	ck_assert_int_eq(vram_plan_devices_from_client(c, devs, 8, &nd), 0);
	struct vram_plan_options po;
	vram_plan_options_init(&po);
	vram_plan *plan;
	ck_assert_msg(vram_plan_create(m, &po, devs, nd, &plan) == 0, "%s", vram_last_error());
	struct vram_pager_options pgo;
	vram_pager_options_init(&pgo);
	pgo.flags = VRAM_PAGER_NO_RECLAIM;
	vram_pager *pg;
	ck_assert_msg(vram_pager_create(l, plan, &pgo, &pg) == 0, "%s", vram_last_error());
	ck_assert_int_eq(vram_loaded_make_private(l, 0), -EBUSY);
	ck_assert_str_eq(vram_last_error(), "tensor 0: a pager serves this load (free it before making a tensor private)");
	ck_assert_int_eq(vram_loaded_tensor_shared(l, 0), 1);
	vram_pager_free(pg);
	vram_plan_free(plan);
	/* a private copy: writable, the shared one untouched */
	ck_assert_int_eq(vram_loaded_make_private(l, 0), 0);
	ck_assert_int_eq(vram_loaded_tensor_shared(l, 0), 0);
	uint8_t *q = vram_loaded_tensor_host_ptr(l, 0);
	ck_assert_ptr_ne(q, p);
	ck_assert(!write_faults(q));
	memset(q, 0x5a, 64);
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'h');
	vram_unload(l);
	vram_model_close(m);
	vram_close(c);
	fx_stop(&f);
}
END_TEST

/* The file changes (new mtime, new inode): the next load makes a new copy;
 * the old one, unused, is evicted first when room is needed. */
START_TEST(test_file_changed_new_copy)
{
	struct fx f;
	fx_start(&f, "50%", 8, 256);
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f');
	struct vram_status *s0 = status_of(f.b.sock);
	uint64_t chunks = dev_of(s0, "cpu")->cache_fills;
	vram_status_free(s0);
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'h');
	struct utimbuf ut = { .actime = 1000000000, .modtime = 1000000000 };
	ck_assert_int_eq(utime(f.file, &ut), 0);
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f');
	ck_assert_int_eq(t_write_checkpoint(f.file, 8, 256, 1024, 99), 0); /* new content, new inode */
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f');
	struct vram_status *s = status_of(f.b.sock);
	ck_assert_uint_eq(dev_of(s, "cpu")->cache_fills, 3 * chunks);
	vram_status_free(s);
	fx_stop(&f);
}
END_TEST

/* No fd, no copy: a user who cannot read the file cannot ask for its copy
 * (it has nothing to pass), a write-only fd is refused, and another file's
 * fd gets that file's copy, never this one's. */
START_TEST(test_no_access_no_copy)
{
	struct fx f;
	fx_start(&f, "50%", 8, 256);
	ck_assert_int_eq(chmod(f.file, 0600), 0);
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f');
	if (getuid() == 0) {
		pid_t kid = fork();
		if (kid == 0) {
			if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
				_exit(10);
			vram_model *m;
			_exit(vram_model_open(f.file, &m) == -EACCES ? 0 : 11);
		}
		ck_assert_int_eq(t_wait(kid, 10000), 0);
	} else {
		fprintf(stderr, "test_no_access_no_copy: the other-user half skipped, needs root\n");
	}
	static char buf[VRAMD_MSG_MAX];
	int cfd;
	struct vramd_share_run run = { .file_off = 8, .len = 4096 };
	ck_assert_int_eq(raw_share(f.b.sock, f.file, O_WRONLY, 1, &run, buf, &cfd), VRAMD_ERROR);
	ck_assert_int_eq(((struct vramd_error *)buf)->error, -EBADF);
	fx_stop(&f);
}
END_TEST

/* No poisoning: a client that asks for a copy of the same ranges under a
 * conversion it made up gets a copy of its own (the runs are the key), a
 * client of another uid maps the real one read-only, and a later load
 * still sees the file's bytes. */
START_TEST(test_no_poisoning)
{
	struct fx f;
	fx_start(&f, "50%", 8, 256);
	ck_assert_int_eq(chmod(f.file, 0644), 0); /* safetensors writes 0600 */
	ck_assert_int_eq(load_check(f.b.sock, f.file, 0, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f');
	if (getuid() == 0) {
		pid_t kid = fork();
		if (kid == 0) {
			if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
				_exit(10);
			vram_client *c;
			vram_loaded *l;
			vram_model *m;
			if (load_check(f.b.sock, f.file, 0, VRAM_LOAD_SHARED, &c, &l, &m) != 'h')
				_exit(11);
			if (!write_faults(vram_loaded_tensor_host_ptr(l, 1)))
				_exit(12);
			_exit(0);
		}
		ck_assert_int_eq(t_wait(kid, 20000), 0);
	} else {
		fprintf(stderr, "test_no_poisoning: the other-uid half skipped, needs root\n");
	}
	/* a made-up conversion of real bytes: a copy of its own */
	static char buf[VRAMD_MSG_MAX];
	int cfd;
	struct vramd_share_run run = { .file_off = 4096, .len = 8192, .flags = VRAMD_SHARE_RUN_SOLO,
				       .src_dtype = VRAM_DTYPE_F8_E4M3, .dst_dtype = VRAM_DTYPE_F32 };
	ck_assert_int_eq(raw_share(f.b.sock, f.file, O_RDONLY, 0, &run, buf, &cfd), VRAMD_SHARE_REPLY);
	ck_assert_int_eq(((struct vramd_share_reply *)buf)->how, VRAMD_SHARE_FILLED);
	close(cfd);
	ck_assert_int_eq(load_check(f.b.sock, f.file, 0, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'h');
	fx_stop(&f);
}
END_TEST

/* The budget: unused copies are evicted least recently used first to make
 * room; copies in use never are, and a copy that does not fit then is
 * refused (the load goes private, saying why). */
START_TEST(test_budget_and_eviction)
{
	struct fx f;
	fx_start(&f, "48MiB", 4, 1024); /* copies of ~14 MiB a file (2 MiB grains): 3 fit */
	char other[3][320];
	for (int i = 0; i < 3; i++) {
		snprintf(other[i], sizeof(other[i]), "%s/m%d.safetensors", f.b.dir, i);
		ck_assert_int_eq(t_write_checkpoint(other[i], 4, 1024, 1024, 20 + i), 0);
		ck_assert_int_eq(load_check(f.b.sock, other[i], 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f');
	}
	/* use m1 again: m0 is now the least recently used */
	ck_assert_int_eq(load_check(f.b.sock, other[1], 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'h');
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f');
	ck_assert_int_eq(load_check(f.b.sock, other[1], 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'h');
	ck_assert_int_eq(load_check(f.b.sock, other[2], 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'h');
	ck_assert_int_eq(load_check(f.b.sock, other[0], 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'f'); /* evicted */
	struct vram_status *s = status_of(f.b.sock);
	ck_assert_uint_ge(dev_of(s, "cpu")->cache_evictions, 2);
	ck_assert_uint_le(dev_of(s, "cpu")->cache, 48 * MiB);
	vram_status_free(s);
	/* all three held: a fourth file does not fit (its largest chunk at
	 * least), and loads privately, saying why */
	vram_client *c[3];
	vram_loaded *l[3];
	vram_model *m[3];
	for (int i = 0; i < 3; i++)
		ck_assert_int_ne(load_check(f.b.sock, other[i], 1, VRAM_LOAD_SHARED, &c[i], &l[i], &m[i]), 'E');
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, NULL, NULL, NULL), 'p');
	for (int i = 0; i < 3; i++) {
		vram_unload(l[i]);
		vram_model_close(m[i]);
		vram_close(c[i]);
	}
	fx_stop(&f);
}
END_TEST

/* Loads f->file shared by a plan of the whole UNet on cuda:0 (the seed
 * node's inputs), made on the broker's devices as they are now; checks
 * every tensor against the file; the load's stats in *st. */
static void plan_load(const struct fx *f, vram_client **c, vram_model **m, vram_plan **p, vram_loaded **l,
		      struct vram_load_stats *st)
{
	ck_assert_int_eq(vram_connect(f->b.sock, "instance", c), 0);
	ck_assert_int_eq(vram_model_open(f->file, m), 0);
	struct vram_plan_device devs[8];
	uint32_t nd;
	for (int i = 0; i < 8; i++)
		devs[i].struct_size = sizeof(devs[i]);
	ck_assert_int_eq(vram_plan_devices_from_client(*c, devs, 8, &nd), 0);
	struct vram_plan_options o;
	vram_plan_options_init(&o);
	o.unet_compute_device = "cuda:0";
	o.unet_virtual_vram_gb = 0;
	ck_assert_msg(vram_plan_create(*m, &o, devs, nd, p) == 0, "%s", vram_last_error());
	struct vram_load_options lo;
	vram_load_options_init(&lo);
	lo.flags = VRAM_LOAD_SHARED;
	ck_assert_msg(vram_load(*c, *m, *p, 0, &lo, l) == 0, "%s", vram_last_error());
	st->struct_size = sizeof(*st);
	vram_loaded_stats(*l, st);
	size_t flen;
	_cleanup_free_ uint8_t *fb = t_read_file(f->file, &flen);
	for (int i = 0; i < vram_model_tensor_count(*m); i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(*m, (uint32_t)i, &ti);
		ck_assert_msg(!memcmp(vram_loaded_tensor_host_ptr(*l, (uint32_t)i), fb + ti.file_offset, ti.nbytes),
			      "%s differs", ti.name);
	}
}

/* A second instance plans the model its first instance filled onto a GPU
 * that cannot hold it twice (the whole UNet on cuda:0): the plan counts
 * the shared copy as room (it was -ENOSPC), and the load maps the copy. */
START_TEST(test_second_instance_plans_onto_full_gpu)
{
	struct fx f;
	fx_start(&f, "100%", 40, 2048); /* ~160 MiB on a 256 MiB GPU */
	vram_client *c[2];
	vram_model *m[2];
	vram_plan *p[2];
	vram_loaded *l[2];
	struct vram_load_stats st[2];
	for (int k = 0; k < 2; k++)
		plan_load(&f, &c[k], &m[k], &p[k], &l[k], &st[k]);
	ck_assert_uint_gt(st[0].share_filled, 0);
	ck_assert_uint_gt(st[1].share_hits, 0);
	ck_assert_uint_eq(st[1].share_filled + st[1].share_waited + st[1].share_refused, 0);
	struct vram_status *s = status_of(f.b.sock);
	ck_assert_uint_lt(dev_of(s, "cuda:0")->used, 256 * MiB); /* one copy */
	vram_status_free(s);
	for (int k = 1; k >= 0; k--) {
		vram_unload(l[k]);
		vram_plan_free(p[k]);
		vram_model_close(m[k]);
		vram_close(c[k]);
	}
	fx_stop(&f);
}
END_TEST

/* With no copy cached (d drops them all), starts a holder on a new pipe
 * in (its end in ha) that begins to fill; returns its pid. */
static pid_t first_filler(struct holder_arg *ha, vram_client *d, int in[2])
{
	ck_assert_int_eq(vram_cache_drop(d, -1, VRAM_CACHE_DROP_ALL), 0);
	ck_assert_int_eq(pipe(in), 0);
	ha->in = in[0];
	ha->in_w = in[1];
	pid_t a = t_fork(holder, ha);
	t_sleep_ms(40);
	return a;
}

/* A first filler SIGKILLed with a second asker started before the kill
 * (join: it waits on the fill) or after it: the second's load succeeds,
 * whichever way it got its copy. */
static void second_of_killed(struct holder_arg *ha, vram_client *d, int in[2], bool join, const char *who)
{
	pid_t a = first_filler(ha, d, in), b = 0;
	if (join) {
		b = t_fork(holder, ha);
		t_sleep_ms(20);
	}
	kill(a, SIGKILL);
	if (!join)
		b = t_fork(holder, ha);
	char h;
	ck_assert_int_eq(read(ha->out_r, &h, 1), 1);
	ck_assert_msg(h == 'w' || h == 'f' || h == 'm' || h == 'h', "%s's load was %c", who, h);
	close(in[1]);
	ck_assert_int_eq(t_wait(b, 20000), 0);
	t_wait(a, 1000);
	close(in[0]);
}

/* Single flight: a load that asks while another fills waits, and the file
 * is read once; a killed filler does not stop the fill for its waiter; a
 * fill nobody waits for is abandoned and leaves nothing. */
START_TEST(test_single_flight_and_kills)
{
	struct fx f;
	fx_start(&f, "100%", 48, 2048); /* ~200 MiB: a fill takes a while */
	int out[2], in[2];
	ck_assert_int_eq(pipe(out), 0);
	ck_assert_int_eq(pipe(in), 0);
	struct holder_arg ha = { f.b.sock, f.file, 1, out[1], in[0], in[1], out[0] };
	pid_t a = t_fork(holder, &ha);
	t_sleep_ms(30);
	pid_t b = t_fork(holder, &ha);
	char h1, h2;
	ck_assert_int_eq(read(out[0], &h1, 1), 1);
	ck_assert_int_eq(read(out[0], &h2, 1), 1);
	ck_assert_msg((h1 == 'f' && (h2 == 'w' || h2 == 'm')) || (h2 == 'f' && (h1 == 'w' || h1 == 'm')) ||
			      (h1 == 'm' && h2 == 'm'),
		      "loads were %c %c", h1, h2);
	close(in[1]);
	ck_assert_int_eq(t_wait(a, 20000), 0);
	ck_assert_int_eq(t_wait(b, 20000), 0);
	struct vram_status *s = status_of(f.b.sock);
	ck_assert_uint_le(dev_of(s, "cpu")->cache_fills, 3); /* each chunk filled once */
	vram_status_free(s);

	/* the filler killed mid-fill, its waiter still gets the copy */
	vram_client *d;
	ck_assert_int_eq(vram_connect(f.b.admin, "admin", &d), 0);
	second_of_killed(&ha, d, in, true, "the waiter");

	/* a fill abandoned (its only waiter killed) and asked for again while
	 * its threads wind down is filled anew: the second asker does not
	 * find its memory still taken (the pool holds one copy, not two) */
	second_of_killed(&ha, d, in, false, "the second asker");

	/* a fill whose only waiter is killed is abandoned: nothing is left */
	a = first_filler(&ha, d, in);
	kill(a, SIGKILL);
	t_wait(a, 1000);
	uint64_t cache = 1;
	for (int i = 0; i < 300 && cache; i++) {
		s = status_of(f.b.sock);
		cache = dev_of(s, "cpu")->cache;
		vram_status_free(s);
		if (cache)
			t_sleep_ms(10);
	}
	/* abandoned, or finished just before the kill and kept unused: never half */
	ck_assert(cache == 0 || t_log_has(&f.b, "filled"));
	vram_close(d);
	close(in[1]);
	close(in[0]);
	close(out[0]);
	close(out[1]);
	fx_stop(&f);
}
END_TEST

/* cache drop: refused while a copy is mapped, unless forced (an admin: its
 * users are asked to let go); an unused copy goes at once, by anyone who
 * can open the file. */
START_TEST(test_cache_drop)
{
	struct fx f;
	fx_start(&f, "50%", 8, 256);
	vram_client *c, *a;
	vram_loaded *l;
	vram_model *m;
	ck_assert_int_eq(load_check(f.b.sock, f.file, 1, VRAM_LOAD_SHARED, &c, &l, &m), 'f');
	ck_assert_int_eq(vram_connect(f.b.sock, "dropper", &a), 0);
	int fd = open(f.file, O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(vram_cache_drop(a, fd, 0), -EBUSY);
	ck_assert_msg(strstr(vram_last_error(), "in use") && strstr(vram_last_error(), "--force"), "%s",
		      vram_last_error());
	char *json;
	ck_assert_int_eq(vram_cache_list(a, &json), 0); /* root: an admin, sees every copy */
	ck_assert_msg(strstr(json, "\"users\":1") && strstr(json, "model.safetensors"), "%s", json);
	free(json);
	vram_unload(l);
	vram_model_close(m);
	vram_close(c);
	ck_assert_int_eq(vram_cache_drop(a, fd, 0), 0);
	struct vram_status *s = status_of(f.b.sock);
	ck_assert_uint_eq(dev_of(s, "cpu")->cache, 0);
	ck_assert_uint_eq(dev_of(s, "cpu")->used, 0);
	vram_status_free(s);
	close(fd);
	vram_close(a);
	fx_stop(&f);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("share");
	TCase *tc = tcase_create("share");
	tcase_add_test(tc, test_four_processes_one_copy);
	tcase_add_test(tc, test_many_converted_tensors_shared);
	tcase_add_test(tc, test_second_instance_plans_onto_full_gpu);
	tcase_add_test(tc, test_read_only_and_private);
	tcase_add_test(tc, test_file_changed_new_copy);
	tcase_add_test(tc, test_no_access_no_copy);
	tcase_add_test(tc, test_no_poisoning);
	tcase_add_test(tc, test_budget_and_eviction);
	tcase_add_test(tc, test_single_flight_and_kills);
	tcase_add_test(tc, test_cache_drop);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
