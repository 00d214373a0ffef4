/* SPDX-License-Identifier: MIT */
/*
 * The broker, in-process over socketpair and a temp socket, and as a real
 * vramd process: alloc/free, exhaustion, limits, SIGKILL mid-session,
 * 1,000 malformed messages, fd leaks, memory isolation between grants.
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#include "broker/broker.h"
#include "broker/fair.h"
#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"
#include "runtime/vram.h"
#include "testlib-holder.h"
#include "testlib.h"

#define MiB (1ull << 20)

/* ---- an in-process broker on a thread ---------------------------------- */

struct live {
	struct broker *b;
	pthread_t th;
	atomic_int stop;
	char *dir;
	char sock[256];
};

static void *loop(void *arg)
{
	struct live *l = arg;
	while (!atomic_load(&l->stop))
		broker_step(l->b, 20);
	return NULL;
}

static void live_start(struct live *l, const struct broker_config *extra)
{
	struct broker_config cfg;
	memset(l, 0, sizeof(*l));
	l->dir = t_tmpdir();
	ck_assert_ptr_nonnull(l->dir);
	snprintf(l->sock, sizeof(l->sock), "%s/vramd.sock", l->dir);
	if (extra)
		cfg = *extra;
	else {
		broker_config_init(&cfg);
		cfg.nsim = 2;
		cfg.sim_gpus[0] = 64 * MiB;
		cfg.sim_gpus[1] = 32 * MiB;
		cfg.host_pool = 64 * MiB;
	}
	cfg.no_cuda = true;
	cfg.socket_path = l->sock;
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

/* Waits (bounded) until the broker has n clients. */
static void wait_clients(struct broker *b, uint32_t n)
{
	for (int i = 0; i < 500 && broker_client_count(b) != n; i++)
		t_sleep_ms(10);
	ck_assert_uint_eq(broker_client_count(b), n);
}

/* ---- raw protocol helpers ------------------------------------------------ */

static int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

static void raw_hello(int fd)
{
	struct vramd_hello h;
	memset(&h, 0, sizeof(h));
	proto_hdr_init(&h.hdr, VRAMD_HELLO, sizeof(h), 1);
	strcpy(h.name, "raw");
	ck_assert_int_eq(proto_send(fd, &h, sizeof(h), -1, 0), 0);
	char buf[VRAMD_MSG_MAX];
	int fds[4], nfds;
	ssize_t n = proto_recv(fd, buf, sizeof(buf), fds, &nfds, 0);
	ck_assert_int_gt(n, 0);
	ck_assert_uint_eq(((struct vramd_hdr *)buf)->opcode, VRAMD_HELLO_REPLY);
}

/* 1 if the broker closed fd within 5 s. */
static int closed_by_peer(int fd)
{
	char buf[VRAMD_MSG_MAX];
	int fds[4], nfds;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	for (int i = 0; i < 50; i++) {
		if (poll(&p, 1, 100) > 0) {
			ssize_t n = proto_recv(fd, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT);
			for (int k = 0; k < nfds; k++)
				close(fds[k]);
			if (n == 0 || n == -ECONNRESET)
				return 1;
		}
	}
	return 0;
}

/* ---- tests ------------------------------------------------------------- */

START_TEST(test_hello_devices)
{
	struct live l;
	live_start(&l, NULL);
	vram_client *c;
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	ck_assert_int_eq(vram_device_count(c), 3);
	struct vram_device_info d;
	ck_assert_int_eq(vram_device_info(c, 0, &d), 0);
	ck_assert_str_eq(d.name, "cuda:0");
	ck_assert_uint_eq(d.backend, VRAM_BACKEND_SIM);
	ck_assert(d.flags & VRAM_DEV_SIMULATED);
	ck_assert_uint_eq(d.total, 64 * MiB);
	ck_assert_uint_eq(d.granularity, 2 * MiB);
	ck_assert_int_eq(vram_device_info(c, 2, &d), 0);
	ck_assert_str_eq(d.name, "cpu");
	ck_assert_uint_eq(d.backend, VRAM_BACKEND_CPU);
	ck_assert(!(d.flags & VRAM_DEV_SIMULATED));
	ck_assert_int_eq(vram_device_find(c, "cuda:1"), 1);
	ck_assert_int_eq(vram_device_find(c, "mps"), -ENODEV);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuda:0, cuda:1, cpu"));
	/* by UUID */
	char u[64];
	ck_assert_int_eq(vram_device_info(c, 1, &d), 0);
	for (int i = 0; i < 16; i++)
		sprintf(u + 2 * i, "%02x", d.uuid[i]);
	ck_assert_int_eq(vram_device_find(c, u), 1);
	ck_assert_str_eq(vram_client_note(c), "CUDA disabled by configuration");
	vram_close(c);
	live_stop(&l);
}
END_TEST

START_TEST(test_alloc_free_accounting)
{
	struct live l;
	live_start(&l, NULL);
	vram_client *c;
	vram_grant *g, *g2;
	struct vram_status *s;
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 3 * MiB, 0, &g), 0);
	ck_assert_uint_eq(vram_grant_size(g), 4 * MiB); /* rounded to 2 MiB */
	ck_assert_ptr_nonnull(vram_grant_host_ptr(g));
	memset(vram_grant_host_ptr(g), 0xab, vram_grant_size(g));
	ck_assert_int_eq(vram_alloc(c, 2, 1, VRAM_ALLOC_RECLAIMABLE, &g2), 0);
	ck_assert_uint_eq(vram_grant_size(g2), 2 * MiB);

	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_eq(s->devices[0].used, 4 * MiB);
	ck_assert_uint_eq(s->devices[2].used, 2 * MiB);
	ck_assert_uint_eq(s->devices[2].reclaimable, 2 * MiB);
	ck_assert_uint_eq(s->grants, 2);
	ck_assert_uint_eq(s->nclients, 1);
	ck_assert_uint_eq(s->clients[0].held, 6 * MiB);
	ck_assert_uint_eq(s->clients[0].held_dev[0], 4 * MiB);
	ck_assert_uint_eq(s->clients[0].reclaimable, 2 * MiB);
	ck_assert(s->clients[0].flags & VRAM_CLIENT_SELF);
	ck_assert_str_eq(s->clients[0].name, "t");
	ck_assert_int_eq(s->clients[0].pid, getpid());
	vram_status_free(s);

	ck_assert_int_eq(vram_free(c, g), 0);
	ck_assert_int_eq(vram_free(c, g2), 0);
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	for (uint32_t i = 0; i < s->ndevices; i++) {
		ck_assert_uint_eq(s->devices[i].used, 0);
		ck_assert_uint_eq(s->devices[i].reclaimable, 0);
	}
	ck_assert_uint_eq(s->grants, 0);
	vram_status_free(s);

	/* bad requests get errors, not disconnects */
	ck_assert_int_eq(vram_alloc(c, 9, MiB, 0, &g), -ENODEV);
	ck_assert_int_eq(vram_alloc(c, 0, 0, 0, &g), -EINVAL);
	ck_assert_int_eq(vram_alloc(c, 0, UINT64_MAX, 0, &g), -EOVERFLOW);
	ck_assert_int_eq(vram_alloc(c, 0, MiB, 0, &g), 0);
	vram_close(c);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	live_stop(&l);
}
END_TEST

START_TEST(test_exhaustion_keeps_pool_intact)
{
	struct live l;
	live_start(&l, NULL);
	vram_client *c;
	vram_grant *g[40];
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	int n = 0;
	for (; n < 40; n++)
		if (vram_alloc(c, 1, 4 * MiB, 0, &g[n]) < 0)
			break;
	ck_assert_int_eq(n, 8); /* 32 MiB / 4 MiB */
	ck_assert_int_eq(vram_alloc(c, 1, 4 * MiB, 0, &g[n]), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "cuda:1"));
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "free of 32.00 MiB"));
	ck_assert_uint_eq(broker_pool(l.b, 1)->used, 32 * MiB);
	ck_assert_int_eq(vram_free(c, g[3]), 0);
	ck_assert_int_eq(vram_alloc(c, 1, 4 * MiB, 0, &g[3]), 0);
	ck_assert_uint_eq(broker_pool(l.b, 1)->used, 32 * MiB);
	/* other devices are unaffected */
	vram_grant *h;
	ck_assert_int_eq(vram_alloc(c, 0, 4 * MiB, 0, &h), 0);
	vram_close(c);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 1)->used, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	live_stop(&l);
}
END_TEST

START_TEST(test_limits)
{
	struct live l;
	struct broker_config cfg;
	broker_config_init(&cfg);
	cfg.nsim = 1;
	cfg.sim_gpus[0] = 64 * MiB;
	cfg.host_pool = 64 * MiB;
	cfg.max_grants = 3;
	cfg.client_max = 10 * MiB;
	cfg.max_clients = 2;
	live_start(&l, &cfg);
	vram_client *c, *c2, *c3;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 8 * MiB, 0, &g), -EDQUOT); /* 12 MiB > 10 */
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "client limit"));
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g), 0);
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &g), -EDQUOT); /* 4th grant */
	ck_assert_ptr_nonnull(strstr(vram_last_error(), "grant limit"));
	/* a client over the connection limit is turned away with the
	 * reason, others go on; root (an admin) has 8 more */
	ck_assert_int_eq(vram_connect(l.sock, "t2", &c2), 0);
	vram_client *more[8];
	int extra = getuid() == 0 ? 8 : 0;
	for (int i = 0; i < extra; i++)
		ck_assert_int_eq(vram_connect(l.sock, "admin-room", &more[i]), 0);
	ck_assert_msg(vram_connect(l.sock, "t3", &c3) == -EUSERS, "%s", vram_last_error());
	ck_assert_msg(strstr(vram_last_error(), "max-clients 2"), "%s", vram_last_error());
	for (int i = 0; i < extra; i++)
		vram_close(more[i]);
	ck_assert_int_eq(vram_alloc(c2, 0, 2 * MiB, 0, &g), 0);
	vram_close(c2);
	vram_close(c);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	live_stop(&l);
}
END_TEST

/* Write through one grant; a second grant of the same kind, in this client
 * or another one, never sees it (also after the first is freed). */
START_TEST(test_memory_isolation)
{
	struct live l;
	live_start(&l, NULL);
	vram_client *a, *b;
	vram_grant *g1, *g2, *g3;
	ck_assert_int_eq(vram_connect(l.sock, "a", &a), 0);
	ck_assert_int_eq(vram_connect(l.sock, "b", &b), 0);
	for (uint32_t dev = 0; dev < 3; dev += 2) {
		ck_assert_int_eq(vram_alloc(a, dev, 8 * MiB, 0, &g1), 0);
		ck_assert_int_eq(vram_alloc(a, dev, 8 * MiB, 0, &g2), 0);
		memset(vram_grant_host_ptr(g1), 0x5a, 8 * MiB);
		ck_assert(mem_is_zero(vram_grant_host_ptr(g2), 8 * MiB));
		ck_assert_int_eq(vram_free(a, g1), 0);
		ck_assert_int_eq(vram_alloc(b, dev, 8 * MiB, 0, &g3), 0);
		ck_assert(mem_is_zero(vram_grant_host_ptr(g3), 8 * MiB));
		ck_assert_int_eq(vram_free(b, g3), 0);
		ck_assert_int_eq(vram_free(a, g2), 0);
	}
	vram_close(a);
	vram_close(b);
	live_stop(&l);
}
END_TEST

START_TEST(test_fd_leak)
{
	int before = t_count_fds();
	struct live l;
	/* The ready reserve's memfds come and go in this process as it
	 * refills: counted without it (test-reserve counts them). */
	struct broker_config cfg;
	broker_config_init(&cfg);
	cfg.nsim = 2;
	cfg.sim_gpus[0] = 64 * MiB;
	cfg.sim_gpus[1] = 32 * MiB;
	cfg.host_pool = 64 * MiB;
	cfg.ready_reserve = (struct broker_amount){ 0 };
	live_start(&l, &cfg);
	int during = t_count_fds();
	for (int round = 0; round < 20; round++) {
		vram_client *c;
		vram_grant *g;
		ck_assert_int_eq(vram_connect(l.sock, "t", &c), 0);
		for (int i = 0; i < 5; i++)
			ck_assert_int_eq(vram_alloc(c, (uint32_t)(i % 3), MiB, 0, &g), 0);
		ck_assert_int_eq(vram_free(c, g), 0);
		vram_close(c);
		/* raw malformed client too */
		int fd = raw_connect(l.sock);
		uint32_t junk[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
		send(fd, junk, sizeof(junk), MSG_NOSIGNAL);
		ck_assert(closed_by_peer(fd));
		close(fd);
	}
	wait_clients(l.b, 0);
	ck_assert_int_eq(t_count_fds(), during);
	live_stop(&l);
	ck_assert_int_eq(t_count_fds(), before);
}
END_TEST

/* 1,000 malformed messages, each from its own raw client, while a good
 * client keeps working. */
START_TEST(test_malformed_flood)
{
	struct live l;
	live_start(&l, NULL);
	vram_client *good;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "good", &good), 0);
	ck_assert_int_eq(vram_alloc(good, 0, 2 * MiB, 0, &g), 0);
	srand(1234);
	for (int i = 0; i < 1000; i++) {
		int fd = raw_connect(l.sock);
		int kind = i % 10;
		if (kind >= 5)
			raw_hello(fd); /* violations after a good handshake too */
		union {
			struct vramd_alloc a;
			char raw[VRAMD_MSG_MAX + 64];
		} m;
		memset(&m, 0, sizeof(m));
		proto_hdr_init(&m.a.hdr, VRAMD_ALLOC, sizeof(m.a), 9);
		m.a.size = MiB;
		size_t len = sizeof(m.a);
		int sendfd = -1;
		switch (kind) {
		case 0: m.a.hdr.magic = (uint32_t)rand(); break;
		case 1: m.a.hdr.version = 77; break;
		case 2: len = (size_t)(rand() % 23); break;          /* truncated header */
		case 3: m.a.hdr.opcode = (uint16_t)(40 + rand() % 1000); break;
		case 4: m.a.hdr.size = 12345; break;
		case 5: m.a.reserved[0] = 1; break;
		case 6: len = VRAMD_MSG_MAX + 32; m.a.hdr.size = (uint32_t)len; break; /* too big */
		case 7: sendfd = 0; break;                          /* unexpected fd */
		case 8: m.a.hdr.opcode = VRAMD_HELLO; break;        /* second HELLO, wrong size */
		case 9: m.a.hdr.opcode = VRAMD_ALLOC_REPLY; break;  /* broker-only opcode */
		}
		if (len == 0)
			len = 1;
		if (proto_send(fd, &m, len, sendfd, 0) == 0)
			ck_assert_msg(closed_by_peer(fd), "case %d not disconnected", kind);
		close(fd);
		if (i % 100 == 0) {
			vram_grant *t;
			ck_assert_int_eq(vram_alloc(good, 0, 2 * MiB, 0, &t), 0);
			ck_assert_int_eq(vram_free(good, t), 0);
		}
	}
	wait_clients(l.b, 1);
	ck_assert_uint_eq(broker_protocol_errors(l.b), 1000);
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(good, &s), 0);
	ck_assert_uint_eq(s->protocol_errors, 1000);
	ck_assert_uint_eq(s->devices[0].used, 2 * MiB);
	vram_status_free(s);
	vram_close(good);
	live_stop(&l);
}
END_TEST

/* A client that sends requests without reading replies does not block the
 * broker for others. */
START_TEST(test_slow_reader)
{
	struct live l;
	live_start(&l, NULL);
	int fd = raw_connect(l.sock);
	raw_hello(fd);
	int sz = 4096;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	struct vramd_status s;
	memset(&s, 0, sizeof(s));
	for (int i = 0; i < 2000; i++) {
		proto_hdr_init(&s.hdr, VRAMD_STATUS, sizeof(s), (uint64_t)i + 2);
		if (proto_send(fd, &s, sizeof(s), -1, MSG_DONTWAIT) < 0)
			break;
	}
	vram_client *c;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "other", &c), 0);
	ck_assert_int_eq(vram_alloc(c, 0, MiB, 0, &g), 0);
	vram_close(c);
	close(fd);
	wait_clients(l.b, 0);
	live_stop(&l);
}
END_TEST



/* More clients than one STATUS reply holds: vram_get_status pages through
 * them, every one listed once, oldest first. */
START_TEST(test_status_paging)
{
	struct live l;
	struct broker_config cfg;
	broker_config_init(&cfg);
	cfg.nsim = 1;
	cfg.sim_gpus[0] = 64 * MiB;
	cfg.host_pool = 64 * MiB;
	cfg.max_clients = 400;
	live_start(&l, &cfg);
	enum { N = 300 };
	int fds[N];
	for (int i = 0; i < N; i++) {
		fds[i] = raw_connect(l.sock);
		raw_hello(fds[i]);
	}
	vram_client *c;
	struct vram_status *st;
	ck_assert_int_eq(vram_connect(l.sock, "counter", &c), 0);
	ck_assert_int_eq(vram_get_status(c, &st), 0);
	ck_assert_uint_eq(st->nclients, N + 1);
	for (uint32_t i = 1; i < st->nclients; i++)
		ck_assert_uint_lt(st->clients[i - 1].id, st->clients[i].id);
	ck_assert(st->clients[N].flags & VRAM_CLIENT_SELF);
	vram_status_free(st);
	vram_close(c);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	wait_clients(l.b, 0);
	live_stop(&l);
}
END_TEST

/* ---- cooperative reclaim -------------------------------------------------- */


static void reclaim_broker(struct live *l, uint32_t deadline_ms)
{
	struct broker_config cfg;
	broker_config_init(&cfg);
	cfg.nsim = 1;
	cfg.sim_gpus[0] = 64 * MiB;
	cfg.host_pool = 64 * MiB;
	cfg.reclaim_deadline_ms = deadline_ms;
	live_start(l, &cfg);
}

START_TEST(test_reclaim_cooperative)
{
	struct live l;
	struct holder h = { 0 };
	reclaim_broker(&l, 5000);
	holder_fill(&h, l.sock, 6);
	vram_grant *pinned;
	ck_assert_int_eq(vram_alloc(h.c, 0, 8 * MiB, 0, &pinned), 0); /* not reclaimable */
	vram_set_reclaim_handler(h.c, give_back, &h);
	ck_assert_int_eq(pthread_create(&h.th, NULL, dispatcher, &h), 0);

	vram_client *b;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "newcomer", &b), 0);
	/* 56 MiB used, 8 free: 32 MiB needs 24 MiB back from the holder */
	ck_assert_msg(vram_alloc(b, 0, 32 * MiB, 0, &g) == 0, "%s", vram_last_error());
	ck_assert_int_ge(atomic_load(&h.calls), 1);
	ck_assert_int_eq(h.n, 3);
	struct vram_status *s;
	/* RECLAIM_DONE follows the FREEs that satisfied us: wait for it. */
	for (int tries = 0;; tries++) {
		ck_assert_int_eq(vram_get_status(b, &s), 0);
		int answered = 0;
		for (uint32_t i = 0; i < s->nclients; i++)
			if (!strcmp(s->clients[i].name, "holder"))
				answered = s->clients[i].reclaims_answered == 1;
		if (answered || tries == 200)
			break;
		vram_status_free(s);
		t_sleep_ms(10);
	}
	ck_assert_uint_eq(s->devices[0].used, 64 * MiB);
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "holder")) {
			ck_assert_uint_eq(s->clients[i].reclaims_answered, 1);
			ck_assert_uint_eq(s->clients[i].reclaims_missed, 0);
			ck_assert_uint_eq(s->clients[i].reclaimable, 24 * MiB);
		}
	vram_status_free(s);
	/* more than all reclaimable memory: refused at once */
	ck_assert_int_eq(vram_alloc(b, 0, 48 * MiB, 0, &g), -ENOMEM);
	atomic_store(&h.stop, 1);
	pthread_join(h.th, NULL);
	vram_close(h.c);
	vram_close(b);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	live_stop(&l);
}
END_TEST

/* A client with reclaimable grants but no reclaim handler yet (a pager
 * still being made) says "0 freed" once half the deadline has passed
 * (it used to leave the RECLAIM unanswered: missed, the asker waiting out
 * the whole deadline); the asker is refused, the client counts as having
 * answered. */
static void *dispatch_always(void *arg)
{
	struct holder *h = arg;
	while (!atomic_load(&h->stop)) {
		vram_dispatch(h->c);
		t_sleep_ms(20);
	}
	return NULL;
}

START_TEST(test_reclaim_without_handler)
{
	struct live l;
	struct holder h = { 0 };
	reclaim_broker(&l, 2000);
	holder_fill(&h, l.sock, 7);
	ck_assert_int_eq(pthread_create(&h.th, NULL, dispatch_always, &h), 0);
	vram_client *b;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "newcomer", &b), 0);
	ck_assert_int_eq(vram_alloc(b, 0, 16 * MiB, 0, &g), -ENOMEM);
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(b, &s), 0);
	bool seen = false;
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "holder")) {
			seen = true;
			ck_assert_uint_eq(s->clients[i].reclaims_missed, 0);
			ck_assert_uint_ge(s->clients[i].reclaims_answered, 1); /* and a second ask, for whole grants */
		}
	ck_assert(seen);
	vram_status_free(s);
	atomic_store(&h.stop, 1);
	pthread_join(h.th, NULL);
	vram_close(h.c);
	vram_close(b);
	wait_clients(l.b, 0);
	live_stop(&l);
}
END_TEST

/* The level-filling of fair shares (broker/fair.h), by hand. */
START_TEST(test_fair_fill)
{
	uint64_t share[4];
	/* wanting less than there is: everyone gets what it wants */
	uint64_t b1[] = { 0, 0 }, c1[] = { 10, 20 };
	fair_fill(b1, c1, share, 2, 64);
	ck_assert_uint_eq(share[0], 10);
	ck_assert_uint_eq(share[1], 20);
	/* two who want it all split it */
	uint64_t c2[] = { 64, 64 };
	fair_fill(b1, c2, share, 2, 64);
	ck_assert_uint_eq(share[0], 32);
	ck_assert_uint_eq(share[1], 32);
	/* one who wants little gets it; the others split the rest */
	uint64_t b3[] = { 0, 0, 0 }, c3[] = { 4, 64, 64 };
	fair_fill(b3, c3, share, 3, 64);
	ck_assert_uint_eq(share[0], 4);
	ck_assert_uint_eq(share[1], 30);
	ck_assert_uint_eq(share[2], 30);
	/* a floor (base) above the level is kept; the rest is levelled */
	uint64_t b4[] = { 40, 0, 0 }, c4[] = { 64, 64, 64 };
	fair_fill(b4, c4, share, 3, 64);
	ck_assert_uint_eq(share[0], 40);
	ck_assert_uint_eq(share[1], 12);
	ck_assert_uint_eq(share[2], 12);
	/* bases that exceed the device: bases */
	uint64_t b5[] = { 40, 40 }, c5[] = { 64, 64 };
	fair_fill(b5, c5, share, 2, 64);
	ck_assert_uint_eq(share[0], 40);
	ck_assert_uint_eq(share[1], 40);
	/* the shares never sum past the device when the bases fit */
	uint64_t b6[] = { 3, 7, 0, 1 }, c6[] = { 100, 9, 33, 50 };
	fair_fill(b6, c6, share, 4, 77);
	ck_assert_uint_le(share[0] + share[1] + share[2] + share[3], 77);
	ck_assert_uint_ge(share[0] + share[1] + share[2] + share[3], 74); /* within one level step per client */
}
END_TEST

/* A client that holds the whole device keeps its fair share: a newcomer
 * that asks past its own share (half: both want more than there is) is
 * refused at once, naming the share; one that asks within it is served by
 * RECLAIM from the holder. */
START_TEST(test_fair_share_refusal)
{
	struct live l;
	struct holder h = { 0 };
	reclaim_broker(&l, 5000);
	holder_fill(&h, l.sock, 7);
	vram_set_reclaim_handler(h.c, give_back, &h);
	ck_assert_int_eq(pthread_create(&h.th, NULL, dispatcher, &h), 0);
	vram_client *b;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "newcomer", &b), 0);
	uint64_t t0 = now_ns();
	ck_assert_int_eq(vram_alloc(b, 0, 40 * MiB, 0, &g), -ENOMEM);
	ck_assert_uint_lt(now_ns() - t0, 2000 * 1000000ull); /* at once, not after the 5 s deadline */
	ck_assert_msg(strstr(vram_last_error(), "its fair share is 32.00 MiB"), "%s", vram_last_error());
	ck_assert_int_eq(atomic_load(&h.calls), 0);
	ck_assert_msg(vram_alloc(b, 0, 32 * MiB, 0, &g) == 0, "%s", vram_last_error());
	ck_assert_int_ge(atomic_load(&h.calls), 1);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 64 * MiB);
	atomic_store(&h.stop, 1);
	pthread_join(h.th, NULL);
	vram_close(h.c);
	vram_close(b);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	live_stop(&l);
}
END_TEST

struct asker {
	const char *sock, *name;
	uint64_t size;
	int rc;
	char err[256];
	vram_client *c;
	vram_grant *g;
};

static void *ask(void *arg)
{
	struct asker *a = arg;
	a->rc = vram_connect(a->sock, a->name, &a->c);
	if (a->rc == 0)
		a->rc = vram_alloc(a->c, 0, a->size, 0, &a->g);
	snprintf(a->err, sizeof(a->err), "%s", vram_last_error());
	return NULL;
}

/* A request that would fit on its own, made while a larger one is parked
 * on the device, is parked behind it (not refused: the free space was
 * once computed by subtracting past it) and both are served once the
 * holder gives memory back. */
START_TEST(test_reclaim_queue_behind_parked)
{
	struct live l;
	struct holder h = { 0 };
	reclaim_broker(&l, 5000);
	holder_fill(&h, l.sock, 6);
	vram_grant *pinned;
	ck_assert_int_eq(vram_alloc(h.c, 0, 8 * MiB, 0, &pinned), 0);
	vram_set_reclaim_handler(h.c, give_back, &h); /* answers once dispatching starts */

	struct asker big = { .sock = l.sock, .name = "big", .size = 32 * MiB };
	struct asker small = { .sock = l.sock, .name = "small", .size = 2 * MiB };
	pthread_t tb, ts;
	ck_assert_int_eq(pthread_create(&tb, NULL, ask, &big), 0);
	t_sleep_ms(300); /* big is parked: 8 MiB free */
	ck_assert_int_eq(pthread_create(&ts, NULL, ask, &small), 0);
	t_sleep_ms(300);
	ck_assert_int_eq(pthread_create(&h.th, NULL, dispatcher, &h), 0);
	pthread_join(tb, NULL);
	pthread_join(ts, NULL);
	ck_assert_msg(big.rc == 0, "big: %d %s", big.rc, big.err);
	ck_assert_msg(small.rc == 0, "small: %d %s", small.rc, small.err);
	atomic_store(&h.stop, 1);
	pthread_join(h.th, NULL);
	vram_close(h.c);
	vram_close(big.c);
	vram_close(small.c);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	live_stop(&l);
}
END_TEST

START_TEST(test_reclaim_ignored)
{
	struct live l;
	reclaim_broker(&l, 200);
	vram_client *a, *b;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "deaf", &a), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 60 * MiB, VRAM_ALLOC_RECLAIMABLE, &g), 0);
	ck_assert_int_eq(vram_connect(l.sock, "newcomer", &b), 0);
	uint64_t t0 = now_ns();
	ck_assert_int_eq(vram_alloc(b, 0, 32 * MiB, 0, &g), -ENOMEM);
	ck_assert_uint_ge(now_ns() - t0, 150 * 1000000ull); /* it waited for the deadline */
	ck_assert_msg(strstr(vram_last_error(), "deadline"), "%s", vram_last_error());
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(b, &s), 0);
	int seen = 0;
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!strcmp(s->clients[i].name, "deaf")) {
			seen = 1;
			ck_assert_uint_eq(s->clients[i].reclaims_missed, 1);
			ck_assert(s->clients[i].flags & VRAM_CLIENT_RECLAIM_LATE);
			ck_assert_uint_eq(s->clients[i].held, 60 * MiB); /* not taken by force */
		}
	ck_assert(seen);
	vram_status_free(s);
	/* the broker kept serving while it waited; b works now */
	ck_assert_int_eq(vram_alloc(b, 0, 4 * MiB, 0, &g), 0);
	vram_close(a);
	vram_close(b);
	wait_clients(l.b, 0);
	live_stop(&l);
}
END_TEST

/* The holder dies instead of answering: the parked request gets the room
 * its death frees. */
START_TEST(test_reclaim_holder_dies)
{
	struct live l;
	reclaim_broker(&l, 5000);
	int pfd[2];
	ck_assert_int_eq(pipe(pfd), 0);
	pid_t child = fork();
	if (child == 0) {
		vram_client *a;
		vram_grant *g;
		if (vram_connect(l.sock, "doomed", &a) < 0 || vram_alloc(a, 0, 60 * MiB, VRAM_ALLOC_RECLAIMABLE, &g) < 0)
			_exit(1);
		if (write(pfd[1], "x", 1) != 1)
			_exit(2);
		pause();
		_exit(0);
	}
	char x;
	ck_assert_int_eq(read(pfd[0], &x, 1), 1);
	vram_client *b;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "newcomer", &b), 0);
	pid_t killer = fork();
	if (killer == 0) {
		t_sleep_ms(100);
		kill(child, SIGKILL);
		_exit(0);
	}
	ck_assert_msg(vram_alloc(b, 0, 32 * MiB, 0, &g) == 0, "%s", vram_last_error());
	waitpid(killer, NULL, 0);
	waitpid(child, NULL, 0);
	vram_close(b);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	close(pfd[0]);
	close(pfd[1]);
	live_stop(&l);
}
END_TEST

/* The requester dies while parked: nothing stays behind. */
START_TEST(test_reclaim_requester_dies)
{
	struct live l;
	reclaim_broker(&l, 300);
	vram_client *a;
	vram_grant *g;
	ck_assert_int_eq(vram_connect(l.sock, "deaf", &a), 0);
	ck_assert_int_eq(vram_alloc(a, 0, 60 * MiB, VRAM_ALLOC_RECLAIMABLE, &g), 0);
	pid_t child = fork();
	if (child == 0) {
		vram_client *b;
		vram_grant *gb;
		if (vram_connect(l.sock, "impatient", &b) < 0)
			_exit(1);
		vram_alloc(b, 0, 32 * MiB, 0, &gb); /* parks */
		_exit(0);
	}
	t_sleep_ms(50);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	wait_clients(l.b, 1);
	t_sleep_ms(400); /* past the deadline: the unanswered RECLAIM expires */
	ck_assert_int_eq(vram_free(a, g), 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	vram_close(a);
	wait_clients(l.b, 0);
	live_stop(&l);
}
END_TEST

/* ---- as a real process --------------------------------------------------- */

/* A vramd process (tests/testlib.h's harness), its socket removed when it
 * stops. */
#define proc t_broker

static void proc_start(struct proc *p, const char *const *args)
{
	t_broker_start(p, args);
}

static void proc_stop(struct proc *p)
{
	char sock[256];
	str_copy(sock, p->sock, sizeof(sock));
	t_broker_stop(p);
	ck_assert_int_ne(access(sock, F_OK), 0); /* socket removed */
}

static const char *const proc_args[] = { "--sim-gpus", "64MiB,32MiB", "--host-pool", "64MiB", "--no-cuda", NULL };

/* A client killed with SIGKILL in the middle of a session releases
 * everything, at once. */
START_TEST(test_sigkill_releases)
{
	struct proc p;
	proc_start(&p, proc_args);
	int pipefd[2];
	ck_assert_int_eq(pipe(pipefd), 0);
	pid_t child = fork();
	if (child == 0) {
		vram_client *c;
		vram_grant *g;
		if (vram_connect(p.sock, "victim", &c) < 0)
			_exit(1);
		for (int i = 0; i < 6; i++)
			if (vram_alloc(c, (uint32_t)(i % 3), 4 * MiB, i & 1, &g) < 0)
				_exit(2);
		if (write(pipefd[1], "x", 1) != 1)
			_exit(3);
		/* keep issuing requests until killed */
		for (;;) {
			struct vram_status *s;
			if (vram_get_status(c, &s) == 0)
				vram_status_free(s);
		}
	}
	char x;
	ck_assert_int_eq(read(pipefd[0], &x, 1), 1);
	vram_client *c;
	struct vram_status *s;
	ck_assert_int_eq(vram_connect(p.sock, "observer", &c), 0);
	ck_assert_int_eq(vram_get_status(c, &s), 0);
	ck_assert_uint_eq(s->nclients, 2);
	ck_assert_uint_eq(s->grants, 6);
	vram_status_free(s);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	int ok = 0;
	for (int i = 0; i < 300 && !ok; i++) {
		ck_assert_int_eq(vram_get_status(c, &s), 0);
		ok = s->nclients == 1 && s->grants == 0;
		for (uint32_t d = 0; d < s->ndevices; d++)
			ok = ok && s->devices[d].used == 0 && s->devices[d].reclaimable == 0;
		vram_status_free(s);
		if (!ok)
			t_sleep_ms(10);
	}
	ck_assert_msg(ok, "grants of a killed client were not released");
	vram_close(c);
	close(pipefd[0]);
	close(pipefd[1]);
	proc_stop(&p);
}
END_TEST


/* The broker is killed (or restarted) while a client holds memory: the
 * client's mappings stay valid, it reconnects on its own and re-registers
 * what it holds, and the accounting afterwards equals the accounting
 * before. */
static void restart_survival(int sig)
{
	struct proc p;
	proc_start(&p, proc_args);
	vram_client *c;
	vram_grant *g[4];
	ck_assert_int_eq(vram_connect(p.sock, "survivor", &c), 0);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(vram_alloc(c, (uint32_t)(i % 3), (uint64_t)(i + 1) * 2 * MiB, i & 1, &g[i]), 0);
		memset(vram_grant_host_ptr(g[i]), 0x40 + i, vram_grant_size(g[i]));
	}
	struct vram_status *before, *after;
	ck_assert_int_eq(vram_get_status(c, &before), 0);

	kill(p.pid, sig);
	waitpid(p.pid, NULL, 0);
	t_broker_run(&p, proc_args);

	/* the next call notices, reconnects and re-registers */
	ck_assert_msg(vram_get_status(c, &after) == 0, "%s", vram_last_error());
	ck_assert_uint_eq(after->ndevices, before->ndevices);
	for (uint32_t d = 0; d < after->ndevices; d++) {
		ck_assert_uint_eq(after->devices[d].used, before->devices[d].used);
		ck_assert_uint_eq(after->devices[d].reclaimable, before->devices[d].reclaimable);
	}
	ck_assert_uint_eq(after->grants, 4);
	ck_assert_uint_eq(after->nclients, 1);
	ck_assert_uint_eq(after->clients[0].held, before->clients[0].held);
	ck_assert_uint_eq(after->clients[0].reclaimable, before->clients[0].reclaimable);
	vram_status_free(before);
	vram_status_free(after);
	/* the memory is the same memory */
	for (int i = 0; i < 4; i++) {
		const uint8_t *h = vram_grant_host_ptr(g[i]);
		for (uint64_t k = 0; k < vram_grant_size(g[i]); k += 4096)
			ck_assert_uint_eq(h[k], 0x40 + i);
	}
	/* and it keeps working: free by the new ids, allocate more */
	ck_assert_int_eq(vram_free(c, g[0]), 0);
	vram_grant *n;
	ck_assert_int_eq(vram_alloc(c, 0, 2 * MiB, 0, &n), 0);
	vram_close(c);
	vram_client *o;
	ck_assert_int_eq(vram_connect(p.sock, "observer", &o), 0);
	for (int i = 0; i < 300; i++) {
		struct vram_status *s;
		ck_assert_int_eq(vram_get_status(o, &s), 0);
		int idle = s->grants == 0;
		vram_status_free(s);
		if (idle)
			break;
		t_sleep_ms(10);
	}
	struct vram_status *s;
	ck_assert_int_eq(vram_get_status(o, &s), 0);
	ck_assert_uint_eq(s->grants, 0);
	vram_status_free(s);
	vram_close(o);
	proc_stop(&p);
}

START_TEST(test_restart_sigkill)
{
	restart_survival(SIGKILL);
}
END_TEST

START_TEST(test_restart_sigterm)
{
	restart_survival(SIGTERM);
}
END_TEST

/* REGISTER must come with a sealed memfd of the size claimed. */
START_TEST(test_register_forged)
{
	struct live l;
	live_start(&l, NULL);
	int fd = raw_connect(l.sock);
	raw_hello(fd);
	struct vram_client *c;
	ck_assert_int_eq(vram_connect(l.sock, "peek", &c), 0);
	struct vram_device_info di = { .struct_size = sizeof(di) };
	vram_device_info(c, 0, &di);
	vram_close(c);
	struct vramd_register m;
	char buf[VRAMD_MSG_MAX];
	int fds[4], nfds;
	const char *cases[] = { "unsealed", "wrong size", "sealed ok" };
	for (int k = 0; k < 3; k++) {
		int mfd = memfd_create("forged", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		ck_assert_int_eq(ftruncate(mfd, k == 1 ? 3 * MiB : 2 * MiB), 0);
		if (k >= 1)
			ck_assert_int_eq(fcntl(mfd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
		memset(&m, 0, sizeof(m));
		proto_hdr_init(&m.hdr, VRAMD_REGISTER, sizeof(m), 100 + k);
		memcpy(m.uuid, di.uuid, 16);
		m.size = 2 * MiB;
		ck_assert_int_eq(proto_send(fd, &m, sizeof(m), mfd, 0), 0);
		close(mfd);
		ssize_t n = proto_recv(fd, buf, sizeof(buf), fds, &nfds, 0);
		ck_assert_int_gt(n, 0);
		uint16_t op = ((struct vramd_hdr *)buf)->opcode;
		if (k < 2) {
			ck_assert_msg(op == VRAMD_ERROR, "%s accepted", cases[k]);
			ck_assert_int_eq(((struct vramd_error *)buf)->error, -EINVAL);
		} else {
			ck_assert_uint_eq(op, VRAMD_ALLOC_REPLY); /* it only counts against itself */
			ck_assert_int_eq(nfds, 0);
		}
	}
	/* the same memfd twice: counted once */
	{
		int mfd = memfd_create("twice", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		ck_assert_int_eq(ftruncate(mfd, 2 * MiB), 0);
		ck_assert_int_eq(fcntl(mfd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
		for (int k = 0; k < 2; k++) {
			proto_hdr_init(&m.hdr, VRAMD_REGISTER, sizeof(m), 150 + k);
			ck_assert_int_eq(proto_send(fd, &m, sizeof(m), mfd, 0), 0);
			ck_assert_int_gt(proto_recv(fd, buf, sizeof(buf), fds, &nfds, 0), 0);
			uint16_t op = ((struct vramd_hdr *)buf)->opcode;
			if (k == 0)
				ck_assert_uint_eq(op, VRAMD_ALLOC_REPLY);
			else {
				ck_assert_uint_eq(op, VRAMD_ERROR);
				ck_assert_int_eq(((struct vramd_error *)buf)->error, -EEXIST);
			}
		}
		close(mfd);
	}
	/* a sparse memfd claiming more than the pool: refused, nothing counted */
	{
		uint64_t before = broker_pool(l.b, 0)->used;
		int mfd = memfd_create("sparse", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		ck_assert_int_eq(ftruncate(mfd, (off_t)(1ull << 40)), 0);
		ck_assert_int_eq(fcntl(mfd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
		proto_hdr_init(&m.hdr, VRAMD_REGISTER, sizeof(m), 160);
		m.size = 1ull << 40;
		ck_assert_int_eq(proto_send(fd, &m, sizeof(m), mfd, 0), 0);
		close(mfd);
		ck_assert_int_gt(proto_recv(fd, buf, sizeof(buf), fds, &nfds, 0), 0);
		ck_assert_uint_eq(((struct vramd_hdr *)buf)->opcode, VRAMD_ERROR);
		ck_assert_int_eq(((struct vramd_error *)buf)->error, -ENOMEM);
		ck_assert_uint_eq(broker_pool(l.b, 0)->used, before);
		m.size = 2 * MiB;
	}
	/* without its fd: a violation */
	proto_hdr_init(&m.hdr, VRAMD_REGISTER, sizeof(m), 200);
	ck_assert_int_eq(proto_send(fd, &m, sizeof(m), -1, 0), 0);
	ck_assert(closed_by_peer(fd));
	close(fd);
	wait_clients(l.b, 0);
	ck_assert_uint_eq(broker_pool(l.b, 0)->used, 0);
	live_stop(&l);
}
END_TEST

START_TEST(test_process_lifecycle)
{
	struct proc p;
	proc_start(&p, proc_args);
	/* A second broker on a live socket refuses to start. */
	char out[4096], cmd[600];
	snprintf(cmd, sizeof(cmd),
		 "%s/bin/vramd --socket %s --admin-socket %s/admin2.sock --state-dir %s/state2 --no-cuda "
		 "--host-pool 8MiB 2>&1",
		 t_build(), p.sock, p.dir, p.dir);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "another vramd is listening"), "%s", out);
	/* A stale socket (broker killed) is replaced by the next broker. */
	kill(p.pid, SIGKILL);
	waitpid(p.pid, NULL, 0);
	ck_assert_int_eq(access(p.sock, F_OK), 0);
	t_broker_run(&p, proc_args);
	proc_stop(&p);
}
END_TEST

START_TEST(test_bad_options)
{
	char out[4096], cmd[1024];
	const char *bad[] = {
		"--sim-gpus 8GiB,4apples", "--host-pool lots", "--sim-gpus 1KiB", "--max-clients 0", "--frobnicate",
		"--socket relative.sock", "--socket-mode 0", "--socket-mode 000", "--socket-mode 0999",
	};
	const char *want[] = {
		"\"4apples\" is not a size", "\"lots\" is not a size", "smaller than 2 MiB", "not a number",
		"unrecognized option", "not an absolute path", "socket-mode: 0 lets nobody but root connect",
		"socket-mode: 0 lets nobody but root connect", "not an octal mode",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		snprintf(cmd, sizeof(cmd), "%s/bin/vramd %s --no-cuda --state-dir /nonexistent/never --admin-socket /nonexistent/a.sock 2>&1", t_build(), bad[i]);
		int rc = t_run(cmd, out, sizeof(out));
		ck_assert_int_eq(rc, 2);
		ck_assert_msg(strstr(out, want[i]), "%s: got %s", bad[i], out);
	}
	/* config file errors name the line */
	char *d = t_tmpdir();
	snprintf(cmd, sizeof(cmd),
		 "printf '[vramd]\\n# comment\\nhost-pool = 8MiB\\nsim-gpus = 2GiB, 8XB\\n' > %s/c.ini && "
		 "%s/bin/vramd --config %s/c.ini --no-cuda --state-dir /nonexistent/never 2>&1",
		 d, t_build(), d);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "c.ini:4:"), "%s", out);
	snprintf(cmd, sizeof(cmd), "printf 'colour = blue\\n' > %s/c.ini && %s/bin/vramd --config %s/c.ini --state-dir /nonexistent/never 2>&1", d,
		 t_build(), d);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "unknown key \"colour\""), "%s", out);
	t_rmtree(d);
}
END_TEST

/* --socket naming an existing file that is not a socket: an error naming
 * it, and the file is left alone (only a stale socket is replaced). */
START_TEST(test_socket_path_not_a_socket)
{
	char *d = t_tmpdir();
	char path[512], cmd[1200], out[4096];
	snprintf(path, sizeof(path), "%s/precious.txt", d);
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("keep me\n", f);
	fclose(f);
	snprintf(cmd, sizeof(cmd),
		 "%s/bin/vramd --socket %s --no-cuda --host-pool 8MiB --state-dir %s/state --admin-socket %s/a.sock 2>&1",
		 t_build(), path, d, d);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "precious.txt exists and is not a socket"), "%s", out);
	size_t len;
	_cleanup_free_ uint8_t *b = t_read_file(path, &len);
	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(len, 8);
	ck_assert(!memcmp(b, "keep me\n", 8));
	/* the same for the admin socket */
	snprintf(cmd, sizeof(cmd),
		 "%s/bin/vramd --socket %s/s.sock --no-cuda --host-pool 8MiB --state-dir %s/state --admin-socket %s 2>&1",
		 t_build(), d, d, path);
	ck_assert_int_eq(t_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "is not a socket"), "%s", out);
	ck_assert_int_eq(access(path, F_OK), 0);
	t_rmtree(d);
}
END_TEST

START_TEST(test_config_file_used)
{
	char *d = t_tmpdir();
	char ini[512], sock[512], cmd[1024];
	snprintf(ini, sizeof(ini), "%s/vramd.conf", d);
	snprintf(sock, sizeof(sock), "%s/s.sock", d);
	FILE *f = fopen(ini, "w");
	fprintf(f, "[vramd]\nsim-gpus = 16MiB\nhost-pool = 8MiB\ncuda = no\n");
	fclose(f);
	const char *const args[] = { "--config", ini, NULL };
	pid_t pid = t_start_vramd(sock, NULL, args);
	ck_assert_int_gt(pid, 0);
	vram_client *c;
	struct vram_device_info di;
	ck_assert_int_eq(vram_connect(sock, "t", &c), 0);
	ck_assert_int_eq(vram_device_count(c), 2);
	ck_assert_int_eq(vram_device_info(c, 0, &di), 0);
	ck_assert_uint_eq(di.total, 16 * MiB);
	ck_assert_int_eq(vram_device_info(c, 1, &di), 0);
	ck_assert_uint_eq(di.total, 8 * MiB);
	vram_close(c);
	ck_assert_int_eq(WEXITSTATUS(t_stop(pid)), 0);
	snprintf(cmd, sizeof(cmd), "%s", d);
	t_rmtree(d);
}
END_TEST

/* A reload re-reads the config file into a fresh configuration: the paths
 * the running broker uses (here --state-dir, which overrides the file's)
 * stay what they were (they once shared storage with the parse and
 * turned into the file's). */
START_TEST(test_reload_keeps_paths)
{
	char *d = t_tmpdir();
	char ini[512], sock[512], admin[512], a_dir[512], b_dir[512];
	snprintf(ini, sizeof(ini), "%s/vramd.conf", d);
	snprintf(sock, sizeof(sock), "%s/s.sock", d);
	snprintf(admin, sizeof(admin), "%s/admin.sock", d);
	snprintf(a_dir, sizeof(a_dir), "%s/state-a", d);
	snprintf(b_dir, sizeof(b_dir), "%s/state-b", d);
	FILE *f = fopen(ini, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "[vramd]\nsim-gpus = 16MiB\nhost-pool = 8MiB\ncuda = no\nstate-dir = %s\n", a_dir);
	fclose(f);
	const char *const args[] = { "--config", ini, "--state-dir", b_dir, "--admin-socket", admin, NULL };
	pid_t pid = t_start_vramd(sock, NULL, args);
	ck_assert_int_gt(pid, 0);
	vram_client *a;
	ck_assert_int_eq(vram_connect(admin, "admin", &a), 0);
	ck_assert_msg(vram_quota_set(a, "name:x", "cuda:0", VRAM_QUOTA_CEILING, 0, 4 * MiB) == 0, "%s",
		      vram_last_error());
	ck_assert_int_eq(vram_reload(a), 0);
	char *json = NULL;
	ck_assert_int_eq(vram_quota_list(a, &json), 0);
	ck_assert_msg(strstr(json, "name:x") != NULL, "quotas after reload: %s", json);
	free(json);
	char qa[600];
	snprintf(qa, sizeof(qa), "%s/quotas.json", a_dir);
	ck_assert_int_ne(access(qa, F_OK), 0); /* nothing went to the file's state dir */
	vram_close(a);
	ck_assert_int_eq(WEXITSTATUS(t_stop(pid)), 0);
	t_rmtree(d);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("broker");
	TCase *tc = tcase_create("in-process");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_hello_devices);
	tcase_add_test(tc, test_alloc_free_accounting);
	tcase_add_test(tc, test_exhaustion_keeps_pool_intact);
	tcase_add_test(tc, test_limits);
	tcase_add_test(tc, test_memory_isolation);
	tcase_add_test(tc, test_fd_leak);
	tcase_add_test(tc, test_malformed_flood);
	tcase_add_test(tc, test_slow_reader);
	tcase_add_test(tc, test_status_paging);
	tcase_add_test(tc, test_reclaim_cooperative);
	tcase_add_test(tc, test_reclaim_without_handler);
	tcase_add_test(tc, test_reclaim_queue_behind_parked);
	tcase_add_test(tc, test_fair_fill);
	tcase_add_test(tc, test_fair_share_refusal);
	tcase_add_test(tc, test_reclaim_ignored);
	tcase_add_test(tc, test_reclaim_holder_dies);
	tcase_add_test(tc, test_reclaim_requester_dies);
	suite_add_tcase(s, tc);
	TCase *tp = tcase_create("process");
	tcase_set_timeout(tp, 60);
	tcase_add_test(tp, test_sigkill_releases);
	tcase_add_test(tp, test_process_lifecycle);
	tcase_add_test(tp, test_restart_sigkill);
	tcase_add_test(tp, test_restart_sigterm);
	tcase_add_test(tc, test_register_forged);
	tcase_add_test(tp, test_bad_options);
	tcase_add_test(tp, test_config_file_used);
	tcase_add_test(tp, test_socket_path_not_a_socket);
	tcase_add_test(tp, test_reload_keeps_paths);
	suite_add_tcase(s, tp);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
