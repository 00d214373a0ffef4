/* SPDX-License-Identifier: MIT */
/*
 * The ready reserve of memfd pools (broker/pool-reserve.c): its settings;
 * at the pool's level, filling, yielding to grants, stopping while the pool
 * is full and resuming when memory is freed, learning the sizes asked; and
 * through a broker, that reserve memory is free to everyone (never used),
 * never more than its size, zero in every grant, and that under memory
 * pressure (a small pool, or ready-min-free raised by a reload) it shrinks
 * rather than failing an ALLOC.
 *
 * Waits for the refill are bounded polls for an event, never timings.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "broker/broker.h"
#include "broker/config.h"
#include "broker/pool.h"
#include "common/util.h"
#include "runtime/vram.h"
#include "testlib.h"

#define MiB (1ull << 20)
#define WAIT_MS 90000 /* the refill runs at nice 19, on busy machines too */

/* ---- settings ------------------------------------------------------------ */

START_TEST(test_config_keys)
{
	struct broker_config c;
	char err[256];
	broker_config_init(&c);
	/* defaults: 25% of each pool, 5% left free, no rate cap */
	ck_assert(c.ready_reserve.share);
	ck_assert_uint_eq(broker_amount_of(&c.ready_reserve, 64 * MiB), 16 * MiB);
	ck_assert_uint_eq(broker_amount_of(&c.ready_min_free, 100 * MiB), 5 * MiB);
	ck_assert_uint_eq(c.ready_refill_rate, 0);

	ck_assert_int_eq(broker_config_set(&c, "ready-reserve", "12.5%", err, sizeof(err)), 0);
	ck_assert_uint_eq(broker_amount_of(&c.ready_reserve, 80 * MiB), 10 * MiB);
	ck_assert_int_eq(broker_config_set(&c, "ready-reserve", "4GiB", err, sizeof(err)), 0);
	ck_assert(!c.ready_reserve.share);
	ck_assert_uint_eq(broker_amount_of(&c.ready_reserve, 1), 4ull << 30);
	ck_assert_int_eq(broker_config_set(&c, "ready-reserve", "0", err, sizeof(err)), 0);
	ck_assert_uint_eq(broker_amount_of(&c.ready_reserve, 64 * MiB), 0);
	ck_assert_int_eq(broker_config_set(&c, "ready-min-free", "100%", err, sizeof(err)), 0);
	ck_assert_uint_eq(broker_amount_of(&c.ready_min_free, UINT64_MAX), UINT64_MAX);
	ck_assert_int_eq(broker_config_set(&c, "ready-refill-rate", "2GiB", err, sizeof(err)), 0);
	ck_assert_uint_eq(c.ready_refill_rate, 2ull << 30);

	static const char *const bad[] = { "150%", "abc%", "-5%", "5.%", "5.125%", "%", "lots", "1XB" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(broker_config_set(&c, "ready-reserve", bad[i], err, sizeof(err)) == -EINVAL, "%s", bad[i]);
		ck_assert_msg(strstr(err, "ready-reserve") && strstr(err, bad[i]), "%s: %s", bad[i], err);
	}
	ck_assert_int_eq(broker_config_set(&c, "ready-refill-rate", "5%", err, sizeof(err)), -EINVAL);
	/* a failed set leaves the value as it was */
	ck_assert_uint_eq(broker_amount_of(&c.ready_reserve, 64 * MiB), 0);
}
END_TEST

/* ---- at the pool's level (the test plays the broker's loop) -------------- */

static struct broker_config reserve_cfg(const char *size)
{
	struct broker_config c;
	char err[256];
	broker_config_init(&c);
	ck_assert_int_eq(broker_config_set(&c, "ready-reserve", size, err, sizeof(err)), 0);
	ck_assert_int_eq(broker_config_set(&c, "ready-min-free", "0", err, sizeof(err)), 0);
	return c;
}

static struct vramd_device pool_info(const struct pool *p)
{
	struct vramd_device d;
	pool_describe(p, &d);
	ck_assert_uint_le(d.ready, d.ready_target);
	ck_assert_uint_le(d.used + d.ready, d.total);
	return d;
}

/* Polls until the reserve holds at least (or, less, at most) bytes. */
static struct vramd_device pool_wait(const struct pool *p, uint64_t bytes, bool at_least)
{
	struct vramd_device d = pool_info(p);
	for (int i = 0; i < WAIT_MS / 10 && (at_least ? d.ready < bytes : d.ready > bytes); i++) {
		t_sleep_ms(10);
		d = pool_info(p);
	}
	ck_assert_msg(at_least ? d.ready >= bytes : d.ready <= bytes, "ready %llu, waited for %s %llu",
		      (unsigned long long)d.ready, at_least ? "at least" : "at most", (unsigned long long)bytes);
	return d;
}

/* A grant as the broker's loop makes one (grant, then used += size). */
static void *pool_grant(struct pool *p, uint64_t size, int *ret_fd)
{
	void *h = NULL;
	const char *why = "";
	int r = p->ops->grant(p, size, ret_fd, &h, &why);
	ck_assert_msg(r == 0, "grant of %llu: %s", (unsigned long long)size, why);
	struct stat st;
	ck_assert_int_eq(fstat(*ret_fd, &st), 0);
	ck_assert_uint_eq((uint64_t)st.st_size, size);
	p->used += size;
	return h;
}

static void pool_ungrant(struct pool *p, void *h, int fd, uint64_t size)
{
	close(fd);
	p->ops->revoke(p, h, size);
	p->ops->release(p, h, size);
	p->used -= size;
}

/* The reserve fills to its size, counts as free (never used), yields to
 * a grant of the whole pool, stays empty (no refill) while the pool is
 * full, and fills again once the grant is freed. */
START_TEST(test_pool_fill_yield_resume)
{
	struct pool *p = pool_memfd_new_sim(0, 64 * MiB);
	ck_assert_ptr_nonnull(p);
	struct broker_config c = reserve_cfg("50%");
	pool_configure(p, &c);
	struct vramd_device d = pool_wait(p, 32 * MiB, true);
	ck_assert_uint_eq(d.ready, 32 * MiB);
	ck_assert_uint_eq(d.ready_target, 32 * MiB);
	ck_assert_uint_eq(d.used, 0);
	ck_assert_uint_eq(pool_room(p), 64 * MiB); /* reserve memory is free memory */

	int fd;
	void *h = pool_grant(p, 64 * MiB, &fd);
	d = pool_info(p);
	ck_assert_uint_eq(d.ready, 0); /* yielded at once */
	uint64_t refilled = d.ready_refilled;
	for (int i = 0; i < 30; i++) { /* full: the refill makes nothing */
		t_sleep_ms(10);
		d = pool_info(p);
		ck_assert_uint_eq(d.ready, 0);
		ck_assert_uint_eq(d.ready_refilled, refilled);
	}
	pool_ungrant(p, h, fd, 64 * MiB);
	d = pool_wait(p, 32 * MiB, true);
	ck_assert_uint_gt(d.ready_refilled, refilled);

	/* half the pool granted: the reserve may have the other half */
	h = pool_grant(p, 48 * MiB, &fd);
	d = pool_wait(p, 16 * MiB, true);
	ck_assert_uint_le(d.ready, 16 * MiB);
	pool_ungrant(p, h, fd, 48 * MiB);
	pool_free(p);
}
END_TEST

/* ALLOC takes a memfd that fits (cut to the size asked), makes small
 * grants fresh without counting them, and the refill learns the sizes
 * asked: a size missed once is found the next time. */
START_TEST(test_pool_learns_sizes)
{
	struct pool *p = pool_memfd_new_sim(0, 128 * MiB);
	ck_assert_ptr_nonnull(p);
	struct broker_config c = reserve_cfg("64MiB");
	pool_configure(p, &c);
	struct vramd_device d = pool_wait(p, 64 * MiB, true); /* one block of 64 */
	ck_assert_uint_eq(d.ready_hits + d.ready_misses, 0);

	int fd;
	void *h = pool_grant(p, 2 * MiB, &fd); /* small: fresh, not counted */
	d = pool_info(p);
	ck_assert_uint_eq(d.ready_hits + d.ready_misses, 0);
	pool_ungrant(p, h, fd, 2 * MiB);

	h = pool_grant(p, 48 * MiB, &fd); /* 64 <= 1.5 x 48: taken, cut to 48 */
	ck_assert_uint_eq(pool_info(p).ready_hits, 1);
	pool_ungrant(p, h, fd, 48 * MiB);
	pool_wait(p, 64 * MiB, true); /* the 48 asked, and 16 to fill up */

	h = pool_grant(p, 24 * MiB, &fd); /* neither 48 nor 16 fits 24: a miss */
	d = pool_info(p);
	ck_assert_uint_eq(d.ready_hits, 1);
	ck_assert_uint_eq(d.ready_misses, 1);
	pool_ungrant(p, h, fd, 24 * MiB);
	pool_wait(p, 64 * MiB, true); /* the oldest (48) made way for a 24 */

	for (uint64_t i = 0; i < 2; i++) {
		h = pool_grant(p, 24 * MiB, &fd);
		d = pool_info(p);
		ck_assert_uint_eq(d.ready_hits, 2 + i);
		ck_assert_uint_eq(d.ready_misses, 1);
		pool_ungrant(p, h, fd, 24 * MiB);
		pool_wait(p, 64 * MiB, true);
	}
	pool_free(p);
}
END_TEST

/* Reserve memfds are memfds of the pool's kind, sealed like any grant. */
START_TEST(test_pool_grant_sealed)
{
	struct pool *p = pool_memfd_new_sim(0, 64 * MiB);
	struct broker_config c = reserve_cfg("32MiB");
	pool_configure(p, &c);
	pool_wait(p, 32 * MiB, true);
	int fd;
	void *h = pool_grant(p, 32 * MiB, &fd);
	ck_assert_uint_eq(pool_info(p).ready_hits, 1);
	int seals = fcntl(fd, F_GET_SEALS);
	ck_assert_int_eq(seals & (F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_GROW | F_SEAL_SEAL);
	ck_assert_int_eq(seals & F_SEAL_SHRINK, 0); /* revocable */
	ck_assert_int_ne(ftruncate(fd, 64 * MiB), 0);
	uint8_t *m = mmap(NULL, 32 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(m, MAP_FAILED);
	ck_assert(mem_is_zero(m, 32 * MiB));
	munmap(m, 32 * MiB);
	pool_ungrant(p, h, fd, 32 * MiB);
	pool_free(p);
}
END_TEST

/* What the pool says about transparent huge pages is what the kernel's
 * shmem setting allows. */
START_TEST(test_thp_flag)
{
	char buf[160] = "";
	int want = 0;
	const char *knobs[] = { "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled",
				"/sys/kernel/mm/transparent_hugepage/shmem_enabled" };
	for (int i = 0; i < 2; i++) {
		FILE *f = fopen(knobs[i], "re");
		if (!f || !fgets(buf, sizeof(buf), f)) {
			if (f)
				fclose(f);
			continue;
		}
		fclose(f);
		if (strstr(buf, "[inherit]"))
			continue;
		want = strstr(buf, "[always]") || strstr(buf, "[within_size]") || strstr(buf, "[advise]") ||
		       strstr(buf, "[force]");
		break;
	}
	struct pool *p = pool_memfd_new_sim(0, 64 * MiB);
	struct broker_config c = reserve_cfg("0");
	pool_configure(p, &c);
	ck_assert_int_eq(!!(p->flags & VRAMD_DEV_THP), want);
	ck_assert_int_eq(!!strstr(p->label, "thp"), want);
	pool_free(p);
}
END_TEST

/* ---- through a broker ------------------------------------------------------ */

struct live {
	struct broker *b;
	pthread_t th;
	atomic_int stop;
	char *dir;
	char sock[256], admin[256], conf[256];
};

static void *loop(void *arg)
{
	struct live *l = arg;
	while (!atomic_load(&l->stop))
		broker_step(l->b, 20);
	return NULL;
}

/* A broker with one simulated GPU and a cpu pool of pool bytes each,
 * settings from a config file (conf, re-read on reload). */
static void live_start(struct live *l, uint64_t pool, const char *conf)
{
	memset(l, 0, sizeof(*l));
	l->dir = t_tmpdir();
	ck_assert_ptr_nonnull(l->dir);
	snprintf(l->sock, sizeof(l->sock), "%s/vramd.sock", l->dir);
	snprintf(l->admin, sizeof(l->admin), "%s/admin.sock", l->dir);
	snprintf(l->conf, sizeof(l->conf), "%s/vramd.conf", l->dir);
	FILE *f = fopen(l->conf, "w");
	ck_assert_ptr_nonnull(f);
	fputs(conf, f);
	fclose(f);
	struct broker_config cfg;
	char err[256];
	broker_config_init(&cfg);
	ck_assert_msg(broker_config_load(&cfg, l->conf, err, sizeof(err)) == 0, "%s", err);
	cfg.config_path = l->conf;
	cfg.nsim = 1;
	cfg.sim_gpus[0] = pool;
	cfg.host_pool = pool;
	cfg.no_cuda = true;
	cfg.socket_path = l->sock;
	cfg.admin_socket = l->admin;
	broker_log_level = 0;
	l->b = broker_new(&cfg);
	ck_assert_ptr_nonnull(l->b);
	ck_assert_int_eq(pthread_create(&l->th, NULL, loop, l), 0);
}

static void live_stop(struct live *l)
{
	atomic_store(&l->stop, 1);
	pthread_join(l->th, NULL);
	broker_free(l->b);
	t_rmtree(l->dir);
}

/* Device d's figures; checks the reserve's bounds each time. */
static struct vram_device_info info(vram_client *c, uint32_t d)
{
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_lt(d, s->ndevices);
	struct vram_device_info x = s->devices[d];
	vram_status_free(s);
	ck_assert_uint_le(x.ready, x.ready_target);      /* never more than its size */
	ck_assert_uint_le(x.used + x.ready, x.total);    /* never overcommits the pool */
	return x;
}

static struct vram_device_info wait_ready(vram_client *c, uint32_t d, uint64_t bytes, bool at_least)
{
	struct vram_device_info x = info(c, d);
	for (int i = 0; i < WAIT_MS / 10 && (at_least ? x.ready < bytes : x.ready > bytes); i++) {
		t_sleep_ms(10);
		x = info(c, d);
	}
	ck_assert_msg(at_least ? x.ready >= bytes : x.ready <= bytes, "%s: ready %llu, waited for %s %llu", x.name,
		      (unsigned long long)x.ready, at_least ? "at least" : "at most", (unsigned long long)bytes);
	return x;
}

/* Reserve memory is free memory: not in used, not in anyone's held, and a
 * client may take the whole pool while the reserve is full. */
START_TEST(test_reserve_is_free_memory)
{
	struct live l;
	live_start(&l, 64 * MiB, "ready-reserve = 50%\nready-min-free = 0\n");
	vram_client *c;
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	for (uint32_t d = 0; d < 2; d++) {
		struct vram_device_info x = wait_ready(c, d, 32 * MiB, true);
		ck_assert_uint_eq(x.used, 0);
		ck_assert_uint_eq(x.ready_target, 32 * MiB);
		vram_grant *g;
		ck_assert_msg(vram_alloc(c, d, 64 * MiB, 0, &g) == 0, "%s", vram_last_error());
		x = info(c, d);
		ck_assert_uint_eq(x.used, 64 * MiB);
		ck_assert_uint_eq(x.ready, 0);
		ck_assert_int_eq(vram_free(c, g), 0);
		wait_ready(c, d, 32 * MiB, true);
	}
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_eq(s->clients[0].held, 0);
	vram_status_free(s);
	vram_close(c);
	live_stop(&l);
}
END_TEST

/* Every grant from the reserve is zero, whatever other grants (held or
 * freed, by this client or another) had written. */
START_TEST(test_reserve_grants_zeroed)
{
	struct live l;
	live_start(&l, 128 * MiB, "ready-reserve = 64MiB\nready-min-free = 0\n");
	vram_client *a, *b;
	ck_assert_int_eq(vram_connect(l.sock, "a", &a), 0);
	ck_assert_int_eq(vram_connect(l.sock, "b", &b), 0);
	for (uint32_t d = 0; d < 2; d++) {
		vram_grant *ga, *gb;
		wait_ready(a, d, 64 * MiB, true);
		uint64_t hits = info(a, d).ready_hits;
		for (int round = 0; round < 3; round++) {
			ck_assert_int_eq(vram_alloc(a, d, 32 * MiB, 0, &ga), 0);
			ck_assert(mem_is_zero(vram_grant_host_ptr(ga), 32 * MiB));
			memset(vram_grant_host_ptr(ga), 0xa5, 32 * MiB);
			ck_assert_int_eq(vram_alloc(b, d, 32 * MiB, 0, &gb), 0); /* while a holds its own */
			ck_assert(mem_is_zero(vram_grant_host_ptr(gb), 32 * MiB));
			memset(vram_grant_host_ptr(gb), 0x5a, 32 * MiB);
			ck_assert_int_eq(vram_free(a, ga), 0);
			ck_assert_int_eq(vram_free(b, gb), 0);
			wait_ready(a, d, 64 * MiB, true);
		}
		/* the grants above came from the reserve: the test saw it at work */
		ck_assert_uint_ge(info(a, d).ready_hits, hits + 4);
	}
	vram_close(a);
	vram_close(b);
	live_stop(&l);
}
END_TEST

/* Grants of many sizes come and go: the reserve never passes its size nor
 * the pool's room, and no ALLOC that fits the pool fails for it. */
START_TEST(test_reserve_churn)
{
	struct live l;
	live_start(&l, 128 * MiB, "ready-reserve = 50%\nready-min-free = 0\n");
	vram_client *c;
	vram_grant *g[16] = { 0 };
	uint64_t held = 0;
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	srand(7);
	for (int i = 0; i < 200; i++) {
		int k = rand() % 16;
		if (g[k]) {
			held -= vram_grant_size(g[k]);
			ck_assert_int_eq(vram_free(c, g[k]), 0);
			g[k] = NULL;
		} else {
			uint64_t size = (uint64_t)(1 + rand() % 20) * 2 * MiB;
			int r = vram_alloc(c, (uint32_t)(i & 1), size, 0, &g[k]);
			if (r == 0)
				held += size;
			/* only a pool without room may refuse */
			ck_assert_msg(r == 0 || r == -ENOMEM, "%s", vram_last_error());
		}
		info(c, 0);
		info(c, 1);
		if (i % 50 == 0)
			t_sleep_ms(20); /* let the refill run */
	}
	vram_close(c);
	live_stop(&l);
}
END_TEST

/* Memory pressure: with ready-min-free raised (a reload) the reserve
 * shrinks to nothing, ALLOCs go on working, and it fills again when the
 * pressure is gone.  A pool the reserve fills entirely still grants all of
 * itself. */
START_TEST(test_reserve_pressure)
{
	struct live l;
	live_start(&l, 64 * MiB, "ready-reserve = 100%\nready-min-free = 0\n");
	vram_client *c, *adm;
	vram_grant *g[4];
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	ck_assert_int_eq(vram_connect(l.admin, "admin", &adm), 0);
	wait_ready(c, 1, 64 * MiB, true);
	for (int i = 0; i < 4; i++)
		ck_assert_msg(vram_alloc(c, 1, 16 * MiB, 0, &g[i]) == 0, "%s", vram_last_error());
	ck_assert_uint_eq(info(c, 1).ready, 0);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(vram_free(c, g[i]), 0);
	wait_ready(c, 1, 64 * MiB, true);

	FILE *f = fopen(l.conf, "w");
	fputs("ready-reserve = 100%\nready-min-free = 100%\n", f);
	fclose(f);
	ck_assert_msg(vram_reload(adm) == 0, "%s", vram_last_error());
	wait_ready(c, 0, 0, false);
	wait_ready(c, 1, 0, false);
	for (int i = 0; i < 4; i++)
		ck_assert_msg(vram_alloc(c, 1, 16 * MiB, 0, &g[i]) == 0, "%s", vram_last_error());
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(vram_free(c, g[i]), 0);
	struct vram_device_info x = info(c, 1);
	uint64_t refilled = x.ready_refilled;
	t_sleep_ms(200);
	x = info(c, 1);
	ck_assert_uint_eq(x.ready, 0); /* no refill under pressure */
	ck_assert_uint_eq(x.ready_refilled, refilled);

	f = fopen(l.conf, "w");
	fputs("ready-reserve = 100%\nready-min-free = 0\n", f);
	fclose(f);
	ck_assert_msg(vram_reload(adm) == 0, "%s", vram_last_error());
	wait_ready(c, 1, 64 * MiB, true);
	vram_close(adm);
	vram_close(c);
	live_stop(&l);
}
END_TEST

/* ready-reserve = 0: no reserve, no figures. */
START_TEST(test_reserve_off)
{
	struct live l;
	live_start(&l, 64 * MiB, "ready-reserve = 0\n");
	vram_client *c;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 32 * MiB, 0, &g), 0);
	ck_assert_int_eq(vram_free(c, g), 0);
	t_sleep_ms(50);
	struct vram_device_info x = info(c, 0);
	ck_assert_uint_eq(x.ready_target, 0);
	ck_assert_uint_eq(x.ready, 0);
	ck_assert_uint_eq(x.ready_hits + x.ready_misses + x.ready_refilled, 0);
	vram_close(c);
	live_stop(&l);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("reserve");
	TCase *tc = tcase_create("reserve");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_config_keys);
	tcase_add_test(tc, test_pool_fill_yield_resume);
	tcase_add_test(tc, test_pool_learns_sizes);
	tcase_add_test(tc, test_pool_grant_sealed);
	tcase_add_test(tc, test_thp_flag);
	tcase_add_test(tc, test_reserve_is_free_memory);
	tcase_add_test(tc, test_reserve_grants_zeroed);
	tcase_add_test(tc, test_reserve_churn);
	tcase_add_test(tc, test_reserve_pressure);
	tcase_add_test(tc, test_reserve_off);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
