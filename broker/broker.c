/* SPDX-License-Identifier: MIT */
/*
 * The broker: one epoll loop over the listening socket, client sockets,
 * client pidfds, signals and timers.  Never blocks on a client: sockets are
 * non-blocking, replies that do not fit the socket buffer wait in a small
 * per-client queue and the client's requests are not read until it drains.
 *
 * A protocol violation disconnects the offender (logged once); a request
 * that cannot be served gets VRAMD_ERROR.  A client's grants are released
 * the moment its socket closes or its process dies (pidfd), whichever comes
 * first.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <grp.h>
#include <linux/kcmp.h>
#include <time.h>

#include "broker/broker.h"
#include "broker/quota.h"
#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"

/* ======================================================================
 * Types
 * ====================================================================== */

enum ev_kind { EV_LISTEN, EV_ADMIN_LISTEN, EV_CLIENT, EV_PIDFD, EV_SIGNAL, EV_TIMER };

struct ev {
	enum ev_kind kind;
	struct client *client; /* EV_CLIENT, EV_PIDFD */
};

struct grant {
	uint64_t id;
	struct pool *pool;
	struct client *owner;
	uint64_t size;
	uint32_t flags;
	void *handle;
	int fd;                /* the fd systemd handed back (restored), or, on an
				* fd_identity pool, the grant's own fd; else -1 */
	dev_t st_dev;          /* identity of its memory (memfd inode), for REGISTER */
	ino_t st_ino;
	bool stored;           /* in systemd's fd store under fdname */
	char fdname[96];
	struct grant *next;    /* owner's list */
};

#define TXQ_MAX 8
#define ASKS_MAX 8

/* A RECLAIM sent to a client and not yet answered. */
struct reclaim_ask {
	uint64_t id;
	uint64_t pending_id;     /* the ALLOC waiting for it */
	uint64_t deadline_ns;
	uint64_t bytes;
	uint32_t pool;
};

/* An ALLOC parked until reclaim frees room (or its deadline passes). */
struct pending {
	uint64_t id;
	struct client *c;
	struct vramd_alloc req;
	uint64_t size;           /* rounded */
	uint64_t deadline_ns;
	uint32_t waiting;        /* RECLAIMs sent for it and not answered */
	uint64_t asked;          /* bytes asked for */
	struct pending *next;
};

struct txmsg {
	void *buf;
	size_t len;
	int fd;
};

struct client {
	uint32_t id;
	int fd;
	int pidfd;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	bool hello;
	bool dead;
	char name[VRAMD_NAME_MAX];
	struct ev ev_sock, ev_pid;
	struct grant *grants;
	uint32_t ngrants;
	uint64_t held;
	uint64_t held_dev[VRAMD_MAX_DEVICES];
	uint64_t reclaimable;
	uint64_t reclaimable_dev[VRAMD_MAX_DEVICES];
	uint32_t reclaims_answered, reclaims_missed;
	bool reclaim_late;
	bool parked;             /* an ALLOC of its waits for reclaim */
	bool admin;              /* root or in the admin group */
	bool restored;           /* no connection: grants from the fd store, until pid re-registers or dies */
	bool via_admin;          /* connected on the admin socket */
	uint64_t evict_deadline_ns; /* evicted: disconnect if reclaimable memory remains by then */
	struct reclaim_ask asks[ASKS_MAX];
	uint32_t nasks;
	struct txmsg txq[TXQ_MAX];
	uint32_t ntx;
	struct client *next;
};

struct broker {
	struct broker_config cfg;
	int epfd;
	int listen_fd;
	bool own_listener;        /* we bound it (and unlink it at exit) */
	int admin_fd;             /* admin socket, -1: none */
	struct ev ev_admin;
	gid_t admin_gid;          /* (gid_t)-1: root only */
	struct quota_store quotas;
	bool fdstore;             /* grant fds go to systemd's fd store */
	int sigfd;
	int timerfd;
	struct ev ev_listen, ev_sig, ev_timer;
	struct pool *pools[VRAMD_MAX_DEVICES];
	uint32_t npools;
	char note[128];
	struct client *clients;
	uint32_t nclients;
	uint32_t next_client_id;
	uint64_t next_grant_id;
	uint64_t next_reclaim_id;
	struct pending *pending;
	uint64_t ngrants;
	uint64_t protocol_errors;
	uint64_t start_ns;
	uint64_t watchdog_usec;
	bool stop;
	void *rxbuf;
};

int broker_log_level = 1;

void broker_log(int level, const char *fmt, ...)
{
	static const char *const prefix[] = { "<3>", "<6>", "<7>" };
	va_list ap;
	if (level > broker_log_level)
		return;
	/* sd-daemon(3) prefixes: journald reads the priority from them. */
	fputs(prefix[level < 0 ? 0 : level > 2 ? 2 : level], stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void broker_config_init(struct broker_config *c)
{
	memset(c, 0, sizeof(*c));
	c->socket_path = "/run/vramd/vramd.sock";
	c->max_clients = 256;
	c->max_grants = 4096;
	c->listen_fd = -1;
	c->reclaim_deadline_ms = 2000;
	c->fdstore = 0;
}

#define CLIENT_FMT "client %u (%s, pid %d, uid %u)"
#define CLIENT_ARGS(c) (c)->id, (c)->name[0] ? (c)->name : "-", (int)(c)->pid, (unsigned)(c)->uid

/* ======================================================================
 * Sending
 * ====================================================================== */

static void client_drop(struct broker *b, struct client *c, const char *why);

static int epoll_mod_client(struct broker *b, struct client *c)
{
	struct epoll_event e = {
		.events = (c->ntx ? EPOLLOUT : 0) | (c->ntx || c->parked ? 0 : EPOLLIN) | EPOLLRDHUP,
		.data.ptr = &c->ev_sock,
	};
	return epoll_ctl(b->epfd, EPOLL_CTL_MOD, c->fd, &e);
}

/* Sends msg (and fd, which stays the caller's) to c, queueing it if the
 * socket is full.  Returns 0, or -errno when the client is gone or its
 * queue overflowed (the client is then marked dead). */
static int client_send(struct broker *b, struct client *c, const void *msg, size_t len, int fd)
{
	int r;
	if (c->dead)
		return -EPIPE;
	if (c->fd < 0) /* a restored placeholder: no connection, nothing to tell */
		return -ENOTCONN;
	if (c->ntx == 0) {
		r = proto_send(c->fd, msg, len, fd, MSG_DONTWAIT);
		if (r == 0)
			return 0;
		if (r != -EAGAIN) {
			c->dead = true;
			return r;
		}
	}
	if (c->ntx == TXQ_MAX) {
		c->dead = true;
		return -ENOBUFS;
	}
	struct txmsg *t = &c->txq[c->ntx];
	t->buf = malloc(len);
	t->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
	if (!t->buf || (fd >= 0 && t->fd < 0)) {
		free(t->buf);
		if (t->fd >= 0)
			close(t->fd);
		c->dead = true;
		return -ENOMEM;
	}
	memcpy(t->buf, msg, len);
	t->len = len;
	c->ntx++;
	if (c->ntx == 1)
		epoll_mod_client(b, c);
	return 0;
}

static void client_flush(struct broker *b, struct client *c)
{
	while (c->ntx) {
		struct txmsg *t = &c->txq[0];
		int r = proto_send(c->fd, t->buf, t->len, t->fd, MSG_DONTWAIT);
		if (r == -EAGAIN)
			return;
		free(t->buf);
		if (t->fd >= 0)
			close(t->fd);
		memmove(&c->txq[0], &c->txq[1], sizeof(c->txq[0]) * (c->ntx - 1));
		c->ntx--;
		if (r < 0) {
			c->dead = true;
			return;
		}
	}
	epoll_mod_client(b, c);
}

static int send_error(struct broker *b, struct client *c, const struct vramd_hdr *req, int err,
		      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int send_error(struct broker *b, struct client *c, const struct vramd_hdr *req, int err,
		      const char *fmt, ...)
{
	struct vramd_error m;
	va_list ap;
	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.hdr, VRAMD_ERROR, sizeof(m), req->seq);
	m.error = err;
	m.req_opcode = req->opcode;
	va_start(ap, fmt);
	vsnprintf(m.reason, sizeof(m.reason), fmt, ap);
	va_end(ap);
	broker_log(2, CLIENT_FMT ": %s failed: %s (%s)", CLIENT_ARGS(c), proto_opcode_name(req->opcode),
		   m.reason, strerror(-err));
	return client_send(b, c, &m, sizeof(m), -1);
}

static int send_ok(struct broker *b, struct client *c, const struct vramd_hdr *req)
{
	struct vramd_hdr h;
	proto_hdr_init(&h, VRAMD_OK, sizeof(h), req->seq);
	return client_send(b, c, &h, sizeof(h), -1);
}

/* ======================================================================
 * Grants
 * ====================================================================== */

/* systemd's fd store: a grant's fd is kept there while the grant lives,
 * so that a restarted broker knows about memory that clients still hold
 * before they reconnect. */
static void fdstore_put(struct broker *b, struct grant *g, int fd)
{
	char msg[160];
	if (!b->fdstore || !g->pool->ops->adopt)
		return;
	char hex[33];
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", g->pool->uuid[i]);
	snprintf(g->fdname, sizeof(g->fdname), "grant-%d-%s-%llu-%u-%llu", (int)g->owner->pid, hex,
		 (unsigned long long)g->size, g->flags, (unsigned long long)g->id);
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", g->fdname);
	g->stored = sd_pid_notify_with_fds(0, 0, msg, &fd, 1) > 0;
}

static void fdstore_drop(struct grant *g)
{
	char msg[160];
	if (!g->stored)
		return;
	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", g->fdname);
	sd_notify(0, msg);
	g->stored = false;
}

/* Records what tells g's memory apart when an fd comes back (REGISTER):
 * the inode of a memfd, or, for backends whose fds share one inode
 * (fd_identity: CUDA exports), the open file description itself, kept as
 * a duplicate of fd in g->fd (unless g->fd holds one already: the fd store's)
 * until the grant is released. */
static void grant_identify(struct grant *g, int fd)
{
	struct stat st;
	if (g->pool->ops->fd_identity) {
		if (g->fd < 0 && (g->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0) {
			int e = errno;
			broker_log(0, "grant %llu: cannot keep its fd (%s): a REGISTER of it will not be recognised",
				   (unsigned long long)g->id, strerror(e));
		}
		return;
	}
	if (fstat(fd, &st) == 0) {
		g->st_dev = st.st_dev;
		g->st_ino = st.st_ino;
	}
}

/* Adds (sign 1) or removes (sign -1) g's bytes to or from its owner's
 * accounting.  The one place a client's held/reclaimable figures change. */
static void client_account(struct client *c, const struct grant *g, int sign)
{
	uint64_t d = g->size;
	uint32_t i = g->pool->index;
	if (sign > 0) {
		c->held += d;
		c->held_dev[i] += d;
		c->ngrants++;
	} else {
		c->held -= d;
		c->held_dev[i] -= d;
		c->ngrants--;
	}
	if (g->flags & VRAMD_ALLOC_RECLAIMABLE) {
		c->reclaimable = sign > 0 ? c->reclaimable + d : c->reclaimable - d;
		c->reclaimable_dev[i] = sign > 0 ? c->reclaimable_dev[i] + d : c->reclaimable_dev[i] - d;
	}
}

static void grant_release(struct broker *b, struct grant *g)
{
	struct pool *p = g->pool;
	fdstore_drop(g);
	if (g->fd >= 0)
		close(g->fd);
	p->ops->release(p, g->handle, g->size);
	p->used -= g->size;
	if (g->flags & VRAMD_ALLOC_RECLAIMABLE)
		p->reclaimable -= g->size;
	client_account(g->owner, g, -1);
	b->ngrants--;
	free(g);
}

/* Answers an ALLOC or REGISTER with grant g (fd: the memory, or -1). */
static int send_alloc_reply(struct broker *b, struct client *c, uint64_t seq, const struct grant *g, int fd)
{
	struct vramd_alloc_reply rep;
	memset(&rep, 0, sizeof(rep));
	proto_hdr_init(&rep.hdr, VRAMD_ALLOC_REPLY, sizeof(rep), seq);
	rep.grant_id = g->id;
	rep.size = g->size;
	rep.device = g->pool->index;
	rep.flags = g->flags;
	return client_send(b, c, &rep, sizeof(rep), fd);
}

/* Asks x for bytes on pool dev by deadline, on behalf of the parked
 * request pending_id (0: an eviction).  -errno if it cannot be asked. */
static int send_reclaim(struct broker *b, struct client *x, uint32_t dev, uint64_t bytes, uint64_t pending_id,
			uint64_t deadline_ns)
{
	if (x->nasks == ASKS_MAX)
		return -EBUSY;
	struct vramd_reclaim r;
	memset(&r, 0, sizeof(r));
	proto_hdr_init(&r.hdr, VRAMD_RECLAIM, sizeof(r), 0);
	r.reclaim_id = ++b->next_reclaim_id;
	r.bytes = bytes;
	r.deadline_ms = b->cfg.reclaim_deadline_ms;
	r.device = dev;
	x->asks[x->nasks++] = (struct reclaim_ask){ r.reclaim_id, pending_id, deadline_ns, bytes, dev };
	int e = client_send(b, x, &r, sizeof(r), -1);
	if (e < 0)
		x->nasks--;
	return e;
}

/* ======================================================================
 * Quotas
 * ====================================================================== */

/* The quota entry that applies to c on p, and the bytes its bucket (every
 * client the same entry applies to) holds there. */
static const struct quota_entry *quota_of(struct broker *b, const struct client *c, const struct pool *p,
					  uint64_t *ret_bucket)
{
	struct quota_match qm;
	quota_lookup(&b->quotas, c->uid, c->name, p->name, &qm);
	*ret_bucket = 0;
	if (!qm.effective)
		return NULL;
	for (struct client *x = b->clients; x; x = x->next) {
		struct quota_match xm;
		quota_lookup(&b->quotas, x->uid, x->name, p->name, &xm);
		if (xm.effective == qm.effective)
			*ret_bucket += x->held_dev[p->index];
	}
	return qm.effective;
}

/* 0 if c may hold size more bytes on p; -EDQUOT with the reason otherwise. */
static int quota_allows(struct broker *b, const struct client *c, const struct pool *p, uint64_t size,
			char *why, size_t len)
{
	uint64_t bucket;
	const struct quota_entry *e = quota_of(b, c, p, &bucket);
	if (!e || e->ceiling == QUOTA_NO_CEILING || (bucket <= e->ceiling && size <= e->ceiling - bucket))
		return 0;
	char subj[128], s1[32], s2[32], s3[32];
	snprintf(why, len, "quota %s on %s: ceiling %s, %s held + %s asked",
		 quota_subject_format(&e->subject, subj, sizeof(subj)), p->name,
		 size_format(e->ceiling, s1, sizeof(s1)), size_format(bucket, s2, sizeof(s2)),
		 size_format(size, s3, sizeof(s3)));
	return -EDQUOT;
}

/* What RECLAIM may ask of x on p: its reclaimable memory, but never below
 * its quota's floor. */
static uint64_t reclaim_room(struct broker *b, const struct client *x, const struct pool *p)
{
	uint64_t bucket, r = x->reclaimable_dev[p->index];
	const struct quota_entry *e = quota_of(b, x, p, &bucket);
	if (e && e->floor) {
		uint64_t above = bucket > e->floor ? bucket - e->floor : 0;
		r = MIN(r, above);
	}
	return r;
}

/* Accounts a new grant of c (handle from the backend).  NULL if out of
 * memory (the caller releases the handle). */
static struct grant *grant_add(struct broker *b, struct client *c, struct pool *p, uint64_t size, uint32_t flags,
			       void *handle)
{
	struct grant *g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->id = ++b->next_grant_id;
	g->pool = p;
	g->owner = c;
	g->size = size;
	g->flags = flags;
	g->handle = handle;
	g->fd = -1;
	g->next = c->grants;
	c->grants = g;
	b->ngrants++;
	p->used += size;
	if (g->flags & VRAMD_ALLOC_RECLAIMABLE)
		p->reclaimable += size;
	client_account(c, g, 1);
	return g;
}

/* The live grant whose memory is the file (dev, ino), or NULL. */
static struct grant *grant_by_inode(struct broker *b, dev_t dev, ino_t ino, struct client **ret_owner)
{
	for (struct client *x = b->clients; x; x = x->next)
		for (struct grant *g = x->grants; g; g = g->next)
			if (g->st_ino == ino && g->st_dev == dev && g->st_ino) {
				*ret_owner = x;
				return g;
			}
	return NULL;
}

/* The live grant on fd_identity pool p whose fd is the open file
 * description of fd (kcmp KCMP_FILE), or NULL.  Without kcmp (a kernel
 * built without it, a seccomp filter) nothing is found: such memory is then
 * counted as new, never as someone else's. */
static struct grant *grant_by_file(struct broker *b, const struct pool *p, int fd, struct client **ret_owner)
{
	static bool warned;
	pid_t self = getpid();
	for (struct client *x = b->clients; x; x = x->next)
		for (struct grant *g = x->grants; g; g = g->next) {
			if (g->pool != p || g->fd < 0)
				continue;
			long r = syscall(SYS_kcmp, self, self, KCMP_FILE, g->fd, fd);
			if (r == 0) {
				*ret_owner = x;
				return g;
			}
			if (r < 0) {
				int e = errno;
				if (!warned)
					broker_log(0, "kcmp: %s: re-registered %s grants cannot be matched to "
						   "known ones", strerror(e), p->ops->name);
				warned = true;
				return NULL;
			}
		}
	return NULL;
}
static struct pool *pool_by_name(struct broker *b, const char *name)
{
	for (uint32_t i = 0; i < b->npools; i++)
		if (!strcmp(b->pools[i]->name, name))
			return b->pools[i];
	return NULL;
}

static struct pool *pool_by_uuid(struct broker *b, const uint8_t uuid[16])
{
	for (uint32_t i = 0; i < b->npools; i++)
		if (!memcmp(b->pools[i]->uuid, uuid, 16))
			return b->pools[i];
	return NULL;
}

/* Bytes the pool can still grant (0, not a wrapped difference, when more
 * is accounted than it holds: restored grants after a restart with a
 * smaller pool). */
static uint64_t pool_room(const struct pool *p)
{
	return p->used < p->total ? p->total - p->used : 0;
}

/* What an adopted grant of size adds to the capacity of a pool that
 * measured it from free memory (pool.total_max). */
static uint64_t adopt_growth(const struct pool *p, uint64_t size)
{
	return p->total_max > p->total ? MIN(size, p->total_max - p->total) : 0;
}

/* Bytes of the ALLOCs parked on pool p. */
static uint64_t pool_parked(const struct broker *b, const struct pool *p)
{
	uint64_t n = 0;
	for (const struct pending *pd = b->pending; pd; pd = pd->next)
		if (pd->req.device == p->index)
			n += pd->size;
	return n;
}


static void handle_register(struct broker *b, struct client *c, const struct vramd_register *m, int fd)
{
	const char *why = "";
	char s1[32];
	struct pool *p = pool_by_uuid(b, m->uuid);
	if (!p) {
		send_error(b, c, &m->hdr, -ENODEV, "REGISTER: no device with that UUID");
		return;
	}
	if (!m->size || m->size % p->granularity) {
		send_error(b, c, &m->hdr, -EINVAL, "REGISTER: size %llu is not a grant size of %s",
			   (unsigned long long)m->size, p->name);
		return;
	}
	if (c->ngrants >= b->cfg.max_grants) {
		send_error(b, c, &m->hdr, -EDQUOT, "grant limit: this client holds %u grants (max %u)", c->ngrants,
			   b->cfg.max_grants);
		return;
	}
	if (!p->ops->adopt) {
		send_error(b, c, &m->hdr, -EOPNOTSUPP, "%s: grants cannot be re-registered after a restart", p->name);
		return;
	}
	void *handle = NULL;
	int r = p->ops->adopt(p, fd, m->size, &handle, &why);
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "REGISTER on %s: %s", p->name, why);
		return;
	}
	/* Memory accounted already: the fd store brought it back (it changes
	 * hands from the placeholder client, counted once), or it is someone's
	 * live grant (refused: one memfd, or one CUDA export, is never counted
	 * twice). */
	struct stat st;
	struct client *x = NULL;
	struct grant *og = p->ops->fd_identity ? grant_by_file(b, p, fd, &x)
			   : fstat(fd, &st) == 0 ? grant_by_inode(b, st.st_dev, st.st_ino, &x) : NULL;
	if (og) {
		p->ops->release(p, handle, m->size);
		if (!x->restored || og->pool != p || og->size != m->size) {
			send_error(b, c, &m->hdr, -EEXIST, "REGISTER: that memory is accounted already");
			return;
		}
		for (struct grant **pp = &x->grants; *pp; pp = &(*pp)->next)
			if (*pp == og) {
				*pp = og->next;
				break;
			}
		client_account(x, og, -1);
		og->owner = c;
		og->next = c->grants;
		c->grants = og;
		client_account(c, og, 1);
		/* The fd store's fd: a memfd's is not needed any more; a CUDA
		 * export's is the grant's identity from now on. */
		if (og->fd >= 0 && !p->ops->fd_identity) {
			close(og->fd);
			og->fd = -1;
		}
		if (!x->ngrants)
			x->dead = true;
		send_alloc_reply(b, c, m->hdr.seq, og, -1);
		return;
	}
	/* New to this broker: the same limits as an ALLOC.  The size is the
	 * client's word backed only by a sealed (possibly sparse) memfd, so it
	 * must never take the pool, a quota or the per-client ceiling past
	 * their bounds. */
	char qwhy[256], s2[32], s3[32];
	if (quota_allows(b, c, p, m->size, qwhy, sizeof(qwhy)) < 0)
		r = -EDQUOT;
	else if (b->cfg.client_max && m->size > b->cfg.client_max - MIN(c->held, b->cfg.client_max)) {
		snprintf(qwhy, sizeof(qwhy), "client limit: %s held + %s registered > %s per client",
			 size_format(c->held, s1, sizeof(s1)), size_format(m->size, s2, sizeof(s2)),
			 size_format(b->cfg.client_max, s3, sizeof(s3)));
		r = -EDQUOT;
	} else if (m->size > pool_room(p) + adopt_growth(p, m->size)) {
		snprintf(qwhy, sizeof(qwhy), "%s: %s registered, %s free", p->name, size_format(m->size, s1, sizeof(s1)),
			 size_format(pool_room(p), s2, sizeof(s2)));
		r = -ENOMEM;
	}
	if (r < 0) {
		p->ops->release(p, handle, m->size);
		send_error(b, c, &m->hdr, r, "REGISTER: %s", qwhy);
		return;
	}
	uint64_t grow = adopt_growth(p, m->size);
	struct grant *g = grant_add(b, c, p, m->size, m->flags, handle);
	if (!g) {
		p->ops->release(p, handle, m->size);
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	p->total += grow;
	grant_identify(g, fd);
	fdstore_put(b, g, fd);
	send_alloc_reply(b, c, m->hdr.seq, g, -1);
	broker_log(2, CLIENT_FMT ": re-registered %s on %s as grant %llu", CLIENT_ARGS(c),
		   size_format(m->size, s1, sizeof(s1)), p->name, (unsigned long long)g->id);
}

/* Creates the grant and answers.  Room and limits were checked. */
static void do_grant(struct broker *b, struct client *c, const struct vramd_alloc *m, uint64_t size)
{
	struct pool *p = b->pools[m->device];
	const char *why = "";
	char s1[32];
	int fd = -1;
	void *handle = NULL;
	int r = p->ops->grant(p, size, &fd, &handle, &why);
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s: %s", p->name, why);
		return;
	}
	struct grant *g = grant_add(b, c, p, size, m->flags, handle);
	if (!g) {
		p->ops->release(p, handle, size);
		close(fd);
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	grant_identify(g, fd);
	fdstore_put(b, g, fd);
	send_alloc_reply(b, c, m->hdr.seq, g, fd);
	close(fd);
	/* If the client is gone the grant goes with it in client_drop. */
	broker_log(2, CLIENT_FMT ": grant %llu: %s on %s%s", CLIENT_ARGS(c), (unsigned long long)g->id,
		   size_format(size, s1, sizeof(s1)), p->name,
		   (g->flags & VRAMD_ALLOC_RECLAIMABLE) ? " (reclaimable)" : "");
}

static void unpark(struct broker *b, struct client *c)
{
	c->parked = false;
	if (!c->dead)
		epoll_mod_client(b, c);
}

static void pending_remove(struct broker *b, struct pending *pd)
{
	for (struct pending **pp = &b->pending; *pp; pp = &(*pp)->next)
		if (*pp == pd) {
			*pp = pd->next;
			break;
		}
	free(pd);
}

/* Completes parked ALLOCs that now fit, in arrival order (a later small
 * request does not overtake an earlier large one on the same device). */
static void retry_pending(struct broker *b)
{
	uint32_t blocked = 0; /* bit per pool with an earlier request still waiting */
	for (struct pending *pd = b->pending, *next; pd; pd = next) {
		next = pd->next;
		struct pool *p = b->pools[pd->req.device];
		if (blocked & (1u << p->index))
			continue;
		if (pd->size > pool_room(p)) {
			blocked |= 1u << p->index;
			continue;
		}
		struct client *c = pd->c;
		char why[256];
		if (quota_allows(b, c, p, pd->size, why, sizeof(why)) < 0) {
			/* another client of its bucket got there first */
			send_error(b, c, &pd->req.hdr, -EDQUOT, "%s", why);
			pending_remove(b, pd);
			unpark(b, c);
			continue;
		}
		broker_log(2, CLIENT_FMT ": parked ALLOC satisfied after reclaim", CLIENT_ARGS(c));
		do_grant(b, c, &pd->req, pd->size);
		pending_remove(b, pd);
		unpark(b, c);
	}
}

static void pending_fail(struct broker *b, struct pending *pd, const char *why);

/* Serves the parked requests that fit, then fails those nobody reclaims for
 * any more (every client asked has answered or gone) that still do not
 * fit.  Only the first on each device can be judged: one behind it waits
 * for that one's outcome (it may well fit after it), so after a failure
 * the rest is looked at again. */
static void settle_pending(struct broker *b, const char *why)
{
	for (bool again = true; again;) {
		again = false;
		retry_pending(b);
		uint32_t seen = 0; /* bit per pool with an earlier request */
		for (struct pending *pd = b->pending; pd; pd = pd->next) {
			uint32_t bit = 1u << b->pools[pd->req.device]->index;
			if (!(seen & bit) && pd->waiting == 0) {
				pending_fail(b, pd, why);
				again = true;
				break;
			}
			seen |= bit;
		}
	}
}

static void pending_fail(struct broker *b, struct pending *pd, const char *why)
{
	struct pool *p = b->pools[pd->req.device];
	char s1[32], s2[32];
	struct client *c = pd->c;
	send_error(b, c, &pd->req.hdr, -ENOMEM, "%s: %s asked, %s free; %s", p->name,
		   size_format(pd->size, s1, sizeof(s1)), size_format(pool_room(p), s2, sizeof(s2)), why);
	pending_remove(b, pd);
	unpark(b, c);
}

/* Asks holders of reclaimable memory on the pool for the shortfall and
 * parks the request.  Returns false when nobody can give anything back. */
struct reclaim_cand {
	struct client *x;
	uint64_t room;
};

static int cmp_room_desc(const void *a, const void *b)
{
	const struct reclaim_cand *x = a, *y = b;
	return x->room > y->room ? -1 : x->room < y->room;
}

static bool start_reclaim(struct broker *b, struct client *c, const struct vramd_alloc *m, uint64_t size)
{
	struct pool *p = b->pools[m->device];
	/* what this request lacks once the requests parked before it have
	 * what is free (they were asked for their own shortfalls) */
	uint64_t room = pool_room(p), parked = pool_parked(b, p);
	uint64_t shortfall = size - (room > parked ? MIN(room - parked, size) : 0);
	uint64_t others = 0;
	/* What each other client can give (computed once: a quota lookup
	 * walks every client). */
	_cleanup_free_ struct reclaim_cand *cand = calloc(b->nclients + 1, sizeof(*cand));
	uint32_t ncand = 0;
	if (!cand)
		return false;
	for (struct client *x = b->clients; x; x = x->next) {
		/* restored placeholders have no connection to ask */
		if (x == c || x->dead || x->restored || x->nasks == ASKS_MAX)
			continue;
		uint64_t xroom = reclaim_room(b, x, p);
		if (xroom) {
			cand[ncand++] = (struct reclaim_cand){ x, xroom };
			others += xroom;
		}
	}
	if (others < shortfall)
		return false;
	struct pending *pd = calloc(1, sizeof(*pd));
	if (!pd)
		return false;
	pd->id = ++b->next_reclaim_id;
	pd->c = c;
	pd->req = *m;
	pd->size = size;
	pd->deadline_ns = now_ns() + b->cfg.reclaim_deadline_ms * 1000000ull;
	/* Largest holders first: fewest clients disturbed. */
	qsort(cand, ncand, sizeof(*cand), cmp_room_desc);
	uint64_t left = shortfall;
	for (uint32_t i = 0; i < ncand && left; i++) {
		struct client *x = cand[i].x;
		uint64_t ask = MIN(left, cand[i].room);
		if (send_reclaim(b, x, p->index, ask, pd->id, pd->deadline_ns) < 0)
			continue;
		char s1[32];
		broker_log(1, CLIENT_FMT ": RECLAIM %s on %s for client %u", CLIENT_ARGS(x),
			   size_format(ask, s1, sizeof(s1)), p->name, c->id);
		pd->waiting++;
		pd->asked += ask;
		left -= ask;
	}
	if (!pd->waiting) {
		free(pd);
		return false;
	}
	/* Appended: FIFO order. */
	struct pending **pp = &b->pending;
	while (*pp)
		pp = &(*pp)->next;
	*pp = pd;
	c->parked = true;
	epoll_mod_client(b, c);
	return true;
}

static struct pending *pending_find(struct broker *b, uint64_t id)
{
	for (struct pending *pd = b->pending; pd; pd = pd->next)
		if (pd->id == id)
			return pd;
	return NULL;
}

static void handle_reclaim_done(struct broker *b, struct client *c, const struct vramd_reclaim_done *m)
{
	for (uint32_t i = 0; i < c->nasks; i++) {
		if (c->asks[i].id != m->reclaim_id)
			continue;
		uint64_t pid = c->asks[i].pending_id;
		c->asks[i] = c->asks[--c->nasks];
		c->reclaims_answered++;
		char s1[32];
		broker_log(2, CLIENT_FMT ": RECLAIM answered, %s freed", CLIENT_ARGS(c),
			   size_format(m->bytes_freed, s1, sizeof(s1)));
		struct pending *pd = pending_find(b, pid);
		if (pd)
			pd->waiting--;
		settle_pending(b, "the clients asked to reclaim freed too little");
		return;
	}
	/* An answer after the deadline (or to nothing): nothing to do. */
}

/* Expires parked requests and unanswered RECLAIMs; returns the time to the
 * next deadline in ms (-1: none). */
static int expire(struct broker *b)
{
	uint64_t now = now_ns(), next = UINT64_MAX;
	for (struct client *x = b->clients; x; x = x->next) {
		for (uint32_t i = 0; i < x->nasks;) {
			if (x->asks[i].deadline_ns <= now) {
				char s1[32];
				x->reclaims_missed++;
				x->reclaim_late = true;
				broker_log(1, CLIENT_FMT ": ignored RECLAIM of %s on %s past its deadline; its memory is not taken by force",
					   CLIENT_ARGS(x), size_format(x->asks[i].bytes, s1, sizeof(s1)),
					   b->pools[x->asks[i].pool]->name);
				x->asks[i] = x->asks[--x->nasks];
				continue;
			}
			next = MIN(next, x->asks[i].deadline_ns);
			i++;
		}
	}
	for (struct client *x = b->clients; x; x = x->next) {
		if (!x->evict_deadline_ns)
			continue;
		if (x->evict_deadline_ns > now) {
			next = MIN(next, x->evict_deadline_ns);
			continue;
		}
		x->evict_deadline_ns = 0;
		if (x->reclaimable) {
			broker_log(1, CLIENT_FMT ": evicted: it kept reclaimable memory past the deadline; disconnecting",
				   CLIENT_ARGS(x));
			x->dead = true;
		}
	}
	bool expired = false;
	for (struct pending *pd = b->pending, *n; pd; pd = n) {
		n = pd->next;
		if (pd->deadline_ns <= now) {
			pending_fail(b, pd, "reclaim from other clients did not free enough before the deadline");
			expired = true;
		} else {
			next = MIN(next, pd->deadline_ns);
		}
	}
	if (expired) /* the ones behind may fit now, or be done waiting */
		settle_pending(b, "the clients asked to reclaim freed too little");
	if (next == UINT64_MAX)
		return -1;
	return (int)((next - now) / 1000000 + 1);
}

static void handle_alloc(struct broker *b, struct client *c, const struct vramd_alloc *m)
{
	char s1[32], s2[32], s3[32];
	int overflow = 0;

	if (m->device >= b->npools) {
		send_error(b, c, &m->hdr, -ENODEV, "no device %u (the broker has %u)", m->device, b->npools);
		return;
	}
	struct pool *p = b->pools[m->device];
	if (m->size == 0) {
		send_error(b, c, &m->hdr, -EINVAL, "size 0");
		return;
	}
	uint64_t size = round_up_u64(m->size, p->granularity, &overflow);
	if (overflow) {
		send_error(b, c, &m->hdr, -EOVERFLOW, "size %llu overflows when rounded",
			   (unsigned long long)m->size);
		return;
	}
	if (c->ngrants >= b->cfg.max_grants) {
		send_error(b, c, &m->hdr, -EDQUOT, "grant limit: this client holds %u grants (max %u)",
			   c->ngrants, b->cfg.max_grants);
		return;
	}
	if (b->cfg.client_max && size > b->cfg.client_max - MIN(c->held, b->cfg.client_max)) {
		send_error(b, c, &m->hdr, -EDQUOT, "client limit: %s held + %s asked > %s per client",
			   size_format(c->held, s1, sizeof(s1)), size_format(size, s2, sizeof(s2)),
			   size_format(b->cfg.client_max, s3, sizeof(s3)));
		return;
	}
	char qwhy[256];
	if (quota_allows(b, c, p, size, qwhy, sizeof(qwhy)) < 0) {
		send_error(b, c, &m->hdr, -EDQUOT, "%s", qwhy);
		return;
	}
	if (size > p->total) {
		send_error(b, c, &m->hdr, -ENOMEM, "%s: %s asked, more than the device's %s", p->name,
			   size_format(size, s1, sizeof(s1)), size_format(p->total, s2, sizeof(s2)));
		return;
	}
	/* Earlier parked requests on this device go first. */
	if (size > pool_room(p) || pool_parked(b, p)) {
		if (start_reclaim(b, c, m, size))
			return;
		send_error(b, c, &m->hdr, -ENOMEM, "%s: %s asked, %s free of %s", p->name,
			   size_format(size, s1, sizeof(s1)), size_format(pool_room(p), s2, sizeof(s2)),
			   size_format(p->total, s3, sizeof(s3)));
		return;
	}
	do_grant(b, c, m, size);
}

/* ======================================================================
 * Admin operations
 * ====================================================================== */

static bool require_admin(struct broker *b, struct client *c, const struct vramd_hdr *h)
{
	if (c->admin)
		return true;
	send_error(b, c, h, -EPERM, "%s needs root or the admin group", proto_opcode_name(h->opcode));
	broker_log(1, CLIENT_FMT ": refused %s: not an admin", CLIENT_ARGS(c), proto_opcode_name(h->opcode));
	return false;
}


static void handle_quota_set(struct broker *b, struct client *c, const struct vramd_quota_set *m)
{
	char err[QUOTA_ERR_MAX];
	struct quota_subject subj;
	if (!require_admin(b, c, &m->hdr))
		return;
	int r = quota_subject_parse(m->subject, &subj, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	struct quota_update u = {
		.set_floor = m->flags & VRAMD_QUOTA_SET_FLOOR, .floor = m->floor,
		.set_ceiling = m->flags & VRAMD_QUOTA_SET_CEILING, .ceiling = m->ceiling,
	};
	struct pool *p = pool_by_name(b, m->device);
	uint64_t cap = p ? p->total : QUOTA_CAPACITY_UNKNOWN;
	if (b->cfg.state_dir)
		r = quota_set_persist(&b->quotas, b->cfg.state_dir, &subj, m->device, &u, cap, err, sizeof(err));
	else
		r = quota_store_set(&b->quotas, &subj, m->device, &u, cap, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	char st[128];
	broker_log(1, CLIENT_FMT ": quota %s on %s set", CLIENT_ARGS(c), quota_subject_format(&subj, st, sizeof(st)),
		   m->device);
	send_ok(b, c, &m->hdr);
}

static void handle_quota_rm(struct broker *b, struct client *c, const struct vramd_quota_rm *m)
{
	char err[QUOTA_ERR_MAX];
	struct quota_subject subj;
	if (!require_admin(b, c, &m->hdr))
		return;
	int r = quota_subject_parse(m->subject, &subj, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	const char *dev = m->device[0] ? m->device : NULL;
	if (b->cfg.state_dir)
		r = quota_remove_persist(&b->quotas, b->cfg.state_dir, &subj, dev, err, sizeof(err));
	else
		r = quota_store_remove(&b->quotas, &subj, dev, err, sizeof(err));
	if (r < 0) {
		send_error(b, c, &m->hdr, r, "%s", err);
		return;
	}
	send_ok(b, c, &m->hdr);
	retry_pending(b);
}

static void handle_quota_list(struct broker *b, struct client *c, const struct vramd_hdr *m)
{
	char *json = NULL;
	if (!require_admin(b, c, m))
		return;
	if (quota_store_to_json(&b->quotas, &json) < 0) {
		send_error(b, c, m, -ENOMEM, "broker out of memory");
		return;
	}
	size_t n = strlen(json);
	if (n > VRAMD_MSG_MAX - sizeof(struct vramd_text)) {
		free(json);
		send_error(b, c, m, -EFBIG, "the quota list is larger than one message");
		return;
	}
	size_t len = sizeof(struct vramd_text) + n;
	struct vramd_text *t = calloc(1, len);
	if (!t) {
		free(json);
		send_error(b, c, m, -ENOMEM, "broker out of memory");
		return;
	}
	proto_hdr_init(&t->hdr, VRAMD_TEXT, (uint32_t)len, m->seq);
	t->len = (uint32_t)n;
	memcpy(t + 1, json, n);
	client_send(b, c, t, len, -1);
	free(t);
	free(json);
}

static void handle_evict(struct broker *b, struct client *c, const struct vramd_evict *m)
{
	if (!require_admin(b, c, &m->hdr))
		return;
	struct client *x = b->clients;
	while (x && x->id != m->client_id)
		x = x->next;
	if (!x || x->dead) {
		send_error(b, c, &m->hdr, -ESRCH, "no client %u", m->client_id);
		return;
	}
	if (x->restored) {
		send_error(b, c, &m->hdr, -EINVAL, "client %u holds grants restored from the fd store for pid %d: "
			   "they go when that process exits or takes them back", m->client_id, (int)x->pid);
		return;
	}
	uint64_t deadline = now_ns() + b->cfg.reclaim_deadline_ms * 1000000ull;
	for (uint32_t d = 0; d < b->npools; d++)
		if (x->reclaimable_dev[d])
			send_reclaim(b, x, d, x->reclaimable_dev[d], 0, deadline);
	x->evict_deadline_ns = deadline;
	broker_log(1, CLIENT_FMT ": evicted by client %u: asked to release its reclaimable memory", CLIENT_ARGS(x),
		   c->id);
	send_ok(b, c, &m->hdr);
}

int broker_reload(struct broker *b, char *err, size_t errlen)
{
	struct broker_config cfg = b->cfg;
	struct quota_store q;
	int r;
	quota_store_init(&q);
	if (b->cfg.config_path) {
		broker_config_init(&cfg);
		cfg.socket_path = NULL;
		if ((r = broker_config_load(&cfg, b->cfg.config_path)) < 0) {
			snprintf(err, errlen, "%s: invalid (see the log); nothing changed", b->cfg.config_path);
			return r;
		}
	}
	if (b->cfg.state_dir && (r = quota_store_load(&q, b->cfg.state_dir, err, errlen)) < 0)
		return r;
	if (b->cfg.config_path) {
		b->cfg.client_max = cfg.client_max;
		b->cfg.max_clients = cfg.max_clients;
		b->cfg.max_grants = cfg.max_grants;
		b->cfg.reclaim_deadline_ms = cfg.reclaim_deadline_ms;
		broker_log_level = cfg.verbose ? 2 : 1;
	}
	if (b->cfg.state_dir) {
		quota_store_clear(&b->quotas);
		b->quotas = q;
	}
	broker_log(1, "reloaded%s%s", b->cfg.config_path ? " " : "", b->cfg.config_path ? b->cfg.config_path : "");
	retry_pending(b);
	return 0;
}

static void handle_reload(struct broker *b, struct client *c, const struct vramd_hdr *m)
{
	char err[QUOTA_ERR_MAX];
	if (!require_admin(b, c, m))
		return;
	int r = broker_reload(b, err, sizeof(err));
	if (r < 0)
		send_error(b, c, m, r, "%s", err);
	else
		send_ok(b, c, m);
}

static void handle_free(struct broker *b, struct client *c, const struct vramd_free *m)
{
	struct grant **pp = &c->grants;
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == m->grant_id) {
			struct grant *g = *pp;
			*pp = g->next;
			broker_log(2, CLIENT_FMT ": freed grant %llu", CLIENT_ARGS(c), (unsigned long long)g->id);
			grant_release(b, g);
			send_ok(b, c, &m->hdr);
			retry_pending(b);
			return;
		}
	}
	send_error(b, c, &m->hdr, -ENOENT, "no grant %llu held by this client",
		   (unsigned long long)m->grant_id);
}

/* ======================================================================
 * HELLO / STATUS
 * ====================================================================== */

static void handle_hello(struct broker *b, struct client *c, const struct vramd_hello *m)
{
	if (!text_printable(m->name)) {
		send_error(b, c, &m->hdr, -EINVAL, "client name has control characters");
		return;
	}
	str_copy(c->name, m->name[0] ? m->name : "-", sizeof(c->name));
	c->hello = true;

	size_t len = sizeof(struct vramd_hello_reply) + b->npools * sizeof(struct vramd_device);
	_cleanup_free_ struct vramd_hello_reply *rep = calloc(1, len);
	if (!rep) {
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	proto_hdr_init(&rep->hdr, VRAMD_HELLO_REPLY, (uint32_t)len, m->hdr.seq);
	rep->client_id = c->id;
	rep->ndevices = b->npools;
	rep->max_alloc = b->cfg.client_max;
	str_copy(rep->note, b->note, sizeof(rep->note));
	struct vramd_device *d = (void *)(rep + 1);
	for (uint32_t i = 0; i < b->npools; i++)
		pool_describe(b->pools[i], &d[i]);
	broker_log(1, CLIENT_FMT ": hello", CLIENT_ARGS(c));
	client_send(b, c, rep, len, -1);
}

/* Whether c may see x in STATUS: admins see every client, others the
 * clients of their own uid; a connection that has not said HELLO is not a
 * client yet. */
static bool visible_to(const struct client *c, const struct client *x)
{
	return x->hello && (c->admin || x->uid == c->uid);
}

static void handle_status(struct broker *b, struct client *c, const struct vramd_status *m)
{
	size_t fixed = sizeof(struct vramd_status_reply) + b->npools * sizeof(struct vramd_device);
	size_t room = (VRAMD_MSG_MAX - fixed) / sizeof(struct vramd_client_info);
	uint32_t first = m->first_client;
	uint32_t visible = 0;
	for (struct client *x = b->clients; x; x = x->next)
		visible += visible_to(c, x);
	uint32_t n = first < visible ? visible - first : 0;
	if (n > room)
		n = (uint32_t)room;
	size_t len = fixed + n * sizeof(struct vramd_client_info);
	_cleanup_free_ struct vramd_status_reply *rep = calloc(1, len);
	if (!rep) {
		send_error(b, c, &m->hdr, -ENOMEM, "broker out of memory");
		return;
	}
	proto_hdr_init(&rep->hdr, VRAMD_STATUS_REPLY, (uint32_t)len, m->hdr.seq);
	rep->ndevices = b->npools;
	rep->nclients = n;
	rep->clients_total = visible;
	rep->first_client = first;
	rep->grants = b->ngrants;
	rep->protocol_errors = b->protocol_errors;
	rep->uptime_ms = (now_ns() - b->start_ns) / 1000000;
	rep->broker_pid = (uint32_t)getpid();
	str_copy(rep->note, b->note, sizeof(rep->note));
	struct vramd_device *d = (void *)(rep + 1);
	for (uint32_t i = 0; i < b->npools; i++)
		pool_describe(b->pools[i], &d[i]);
	struct vramd_client_info *ci = (void *)(d + b->npools);
	/* The list is newest first; clients are reported oldest first: the
	 * k-th visible client of the list has index visible - 1 - k. */
	uint32_t k = 0;
	for (struct client *x = b->clients; x; x = x->next) {
		if (!visible_to(c, x))
			continue;
		uint32_t idx = visible - 1 - k++;
		if (idx < first || idx >= first + n)
			continue;
		struct vramd_client_info *o = &ci[idx - first];
		o->id = x->id;
		o->pid = x->pid;
		o->uid = x->uid;
		o->gid = x->gid;
		o->ngrants = x->ngrants;
		o->flags = (x == c ? VRAMD_CLIENT_SELF : 0) | (x->reclaim_late ? VRAMD_CLIENT_RECLAIM_LATE : 0);
		o->held = x->held;
		o->reclaimable = x->reclaimable;
		memcpy(o->held_dev, x->held_dev, sizeof(o->held_dev));
		o->reclaims_answered = x->reclaims_answered;
		o->reclaims_missed = x->reclaims_missed;
		str_copy(o->name, x->name, sizeof(o->name));
	}
	client_send(b, c, rep, len, -1);
}

/* ======================================================================
 * Clients
 * ====================================================================== */

static void protocol_violation(struct broker *b, struct client *c, const char *why)
{
	b->protocol_errors++;
	broker_log(1, CLIENT_FMT ": protocol violation: %s; disconnecting", CLIENT_ARGS(c), why);
	c->dead = true;
}

static void client_read(struct broker *b, struct client *c)
{
	int fds[PROTO_MAX_FDS], nfds = 0;

	/* A bounded number of messages per wakeup keeps one client from
	 * starving the others. */
	for (int iter = 0; iter < 16 && !c->dead && c->ntx == 0 && !c->parked; iter++) {
		ssize_t n = proto_recv(c->fd, b->rxbuf, VRAMD_MSG_MAX, fds, &nfds, MSG_DONTWAIT);
		if (n == -EAGAIN)
			return;
		if (n == 0) {
			c->dead = true;
			return;
		}
		if (n == -EMSGSIZE) {
			protocol_violation(b, c, "message larger than the maximum");
			return;
		}
		if (n == -EBADMSG) {
			protocol_violation(b, c, "truncated control data");
			return;
		}
		if (n < 0) {
			c->dead = true;
			return;
		}
		const char *why = NULL;
		const struct vramd_hdr *h = b->rxbuf;
		int want_fds = n >= (ssize_t)sizeof(*h) && h->opcode == VRAMD_REGISTER ? 1 : 0;
		if (nfds != want_fds) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			protocol_violation(b, c, nfds ? "unexpected file descriptors" : "REGISTER without its fd");
			return;
		}
		if (proto_validate(b->rxbuf, (size_t)n, &why) < 0) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			protocol_violation(b, c, why);
			return;
		}
		if (!c->hello && h->opcode != VRAMD_HELLO) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			protocol_violation(b, c, "request before HELLO");
			return;
		}
		switch (h->opcode) {
		case VRAMD_HELLO:
			if (c->hello) {
				protocol_violation(b, c, "second HELLO");
				return;
			}
			handle_hello(b, c, b->rxbuf);
			break;
		case VRAMD_ALLOC:
			handle_alloc(b, c, b->rxbuf);
			break;
		case VRAMD_FREE:
			handle_free(b, c, b->rxbuf);
			break;
		case VRAMD_STATUS:
			handle_status(b, c, b->rxbuf);
			break;
		case VRAMD_RECLAIM_DONE:
			handle_reclaim_done(b, c, b->rxbuf);
			break;
		case VRAMD_QUOTA_SET:
			handle_quota_set(b, c, b->rxbuf);
			break;
		case VRAMD_QUOTA_RM:
			handle_quota_rm(b, c, b->rxbuf);
			break;
		case VRAMD_QUOTA_LIST:
			handle_quota_list(b, c, b->rxbuf);
			break;
		case VRAMD_EVICT:
			handle_evict(b, c, b->rxbuf);
			break;
		case VRAMD_RELOAD:
			handle_reload(b, c, b->rxbuf);
			break;
		case VRAMD_REGISTER:
			handle_register(b, c, b->rxbuf, fds[0]);
			close(fds[0]);
			break;
		default:
			protocol_violation(b, c, "opcode not valid from a client");
			return;
		}
	}
}

static void client_drop(struct broker *b, struct client *c, const char *why)
{
	char s1[32];
	uint64_t held = c->held;
	uint32_t n = c->ngrants;

	for (struct client **pp = &b->clients; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	for (struct pending *pd = b->pending, *nx; pd; pd = nx) {
		nx = pd->next;
		if (pd->c == c)
			pending_remove(b, pd);
	}
	/* RECLAIMs it owed: the requests waiting for them stop waiting. */
	for (uint32_t i = 0; i < c->nasks; i++) {
		struct pending *pd = pending_find(b, c->asks[i].pending_id);
		if (pd)
			pd->waiting--;
	}
	while (c->grants) {
		struct grant *g = c->grants;
		c->grants = g->next;
		grant_release(b, g);
	}
	for (uint32_t i = 0; i < c->ntx; i++) {
		free(c->txq[i].buf);
		if (c->txq[i].fd >= 0)
			close(c->txq[i].fd);
	}
	if (c->fd >= 0) {
		epoll_ctl(b->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	if (c->pidfd >= 0) {
		epoll_ctl(b->epfd, EPOLL_CTL_DEL, c->pidfd, NULL);
		close(c->pidfd);
	}
	broker_log(1, CLIENT_FMT ": %s; released %u grants, %s", CLIENT_ARGS(c), why, n,
		   size_format(held, s1, sizeof(s1)));
	free(c);
	/* counted out last: a client count of 0 means every grant is back */
	b->nclients--;
	settle_pending(b, "the clients asked to reclaim went away");
}

static int pidfd_open_compat(pid_t pid)
{
#ifdef SYS_pidfd_open
	return (int)syscall(SYS_pidfd_open, pid, 0);
#else
	errno = ENOSYS;
	return -1;
#endif
}

int broker_adopt(struct broker *b, int fd)
{
	struct ucred cred = { .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
	socklen_t len = sizeof(cred);

	if (b->nclients >= b->cfg.max_clients) {
		broker_log(1, "refusing a connection: %u clients connected (max %u)", b->nclients,
			   b->cfg.max_clients);
		close(fd);
		return -EMFILE;
	}
	struct client *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		broker_log(1, "SO_PEERCRED failed: %m");
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	c->id = ++b->next_client_id;
	c->fd = fd;
	c->pid = cred.pid;
	c->uid = cred.uid;
	c->gid = cred.gid;
	c->pidfd = -1;
	c->admin = cred.uid == 0;
	if (!c->admin && b->admin_gid != (gid_t)-1) {
		gid_t groups[256];
		socklen_t glen = sizeof(groups);
		c->admin = cred.gid == b->admin_gid;
		if (!c->admin && getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
			for (size_t i = 0; i < glen / sizeof(gid_t); i++)
				c->admin = c->admin || groups[i] == b->admin_gid;
	}
	c->ev_sock = (struct ev){ EV_CLIENT, c };
	c->ev_pid = (struct ev){ EV_PIDFD, c };
	struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->ev_sock };
	if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
		int r = -errno;
		close(fd);
		free(c);
		return r;
	}
	/* The pidfd catches a death the socket does not show (the socket may
	 * have been inherited by a child). */
	if (cred.pid > 0 && cred.pid != getpid()) {
		c->pidfd = pidfd_open_compat(cred.pid);
		if (c->pidfd >= 0) {
			struct epoll_event pe = { .events = EPOLLIN, .data.ptr = &c->ev_pid };
			if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, c->pidfd, &pe) < 0) {
				close(c->pidfd);
				c->pidfd = -1;
			}
		}
	}
	c->next = b->clients;
	b->clients = c;
	b->nclients++;
	broker_log(2, CLIENT_FMT ": connected", CLIENT_ARGS(c));
	return 0;
}

static void do_accept(struct broker *b, int lfd, bool admin)
{
	for (int i = 0; i < 64; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR)
				broker_log(0, "accept: %m");
			return;
		}
		if (broker_adopt(b, fd) == 0 && admin)
			b->clients->via_admin = true;
	}
}

/* ======================================================================
 * Set-up
 * ====================================================================== */

/* Binds and listens on path (replacing a stale socket, refusing a live
 * one), with mode and group (NULL or missing group: unchanged).  Returns
 * the fd or -errno. */
static int listen_socket(struct broker *b, const char *path, mode_t mode, const char *group)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		broker_log(0, "socket path too long: %s", path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);

	/* Create the parent directory (/run/vramd) if it is missing. */
	_cleanup_free_ char *dir = strdup(path);
	char *slash = dir ? strrchr(dir, '/') : NULL;
	if (slash && slash != dir) {
		*slash = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			broker_log(1, "cannot create %s: %m", dir);
	}

	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		if (r != -EADDRINUSE) {
			close(fd);
			broker_log(0, "bind %s: %s", path, strerror(-r));
			return r;
		}
		/* A stale socket from a dead broker is replaced; a live one is not. */
		int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		int alive = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (probe >= 0)
			close(probe);
		if (alive) {
			close(fd);
			broker_log(0, "another vramd is listening on %s", path);
			return -EADDRINUSE;
		}
		unlink(path);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			r = -errno;
			close(fd);
			broker_log(0, "bind %s: %s", path, strerror(-r));
			return r;
		}
	}
	if (group) {
		struct group *gr = getgrnam(group);
		if (gr && chown(path, (uid_t)-1, gr->gr_gid) < 0)
			broker_log(1, "cannot give %s to group %s: %m", path, group);
	}
	if (chmod(path, mode) < 0)
		broker_log(1, "chmod %s: %m", path);
	if (listen(fd, 64) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

static uint64_t default_host_pool(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || psz <= 0)
		return 1ull << 30;
	uint64_t half = (uint64_t)pages * (uint64_t)psz / 2;
	return half & ~((2ull << 20) - 1);
}

/* Grants systemd's fd store handed back: memory that clients of the
 * previous broker still hold.  Each is accounted to a "restored" client per
 * pid until that process re-registers it (it then changes hands) or dies
 * (it is released); a pid already gone releases it at once. */
static void restore_grants(struct broker *b)
{
	char s1[32];
	for (uint32_t i = 0; i < b->cfg.nrestore; i++) {
		int fd = b->cfg.restore_fds[i];
		const char *name = b->cfg.restore_names[i];
		int pid = 0;
		char hex[33] = "";
		unsigned long long size = 0, id = 0;
		unsigned flags = 0;
		struct pool *p = NULL;
		void *handle = NULL;
		const char *why = "bad name";
		char msg[200];
		if (sscanf(name, "grant-%d-%32[0-9a-f]-%llu-%u-%llu", &pid, hex, &size, &flags, &id) == 5) {
			uint8_t u[16];
			for (int k = 0; k < 16; k++) {
				unsigned v = 0;
				sscanf(hex + 2 * k, "%2x", &v);
				u[k] = (uint8_t)v;
			}
			p = pool_by_uuid(b, u);
			why = p ? "" : "its device is gone";
		}
		if (p && (!p->ops->adopt || p->ops->adopt(p, fd, size, &handle, &why) < 0))
			p = NULL;
		if (p && kill(pid, 0) < 0 && errno == ESRCH) {
			why = "its process is gone";
			p->ops->release(p, handle, size);
			p = NULL;
		}
		if (!p) {
			broker_log(1, "fd store: releasing %s: %s", name, why);
			snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
			sd_notify(0, msg);
			close(fd);
			continue;
		}
		struct client *c = b->clients;
		while (c && !(c->restored && c->pid == pid))
			c = c->next;
		if (!c && (c = calloc(1, sizeof(*c)))) {
			char proc[64];
			struct stat st;
			snprintf(proc, sizeof(proc), "/proc/%d", pid);
			c->id = ++b->next_client_id;
			c->fd = -1;
			c->pid = pid;
			c->uid = stat(proc, &st) == 0 ? st.st_uid : (uid_t)-1;
			c->gid = stat(proc, &st) == 0 ? st.st_gid : (gid_t)-1;
			c->restored = true;
			c->hello = true;
			str_copy(c->name, "restored", sizeof(c->name));
			c->ev_pid = (struct ev){ EV_PIDFD, c };
			c->pidfd = pidfd_open_compat(pid);
			if (c->pidfd >= 0) {
				struct epoll_event pe = { .events = EPOLLIN, .data.ptr = &c->ev_pid };
				epoll_ctl(b->epfd, EPOLL_CTL_ADD, c->pidfd, &pe);
			}
			c->next = b->clients;
			b->clients = c;
			b->nclients++;
		}
		uint64_t grow = adopt_growth(p, size);
		struct grant *g = c ? grant_add(b, c, p, size, flags & VRAMD_ALLOC_FLAGS_MASK, handle) : NULL;
		if (!g) {
			p->ops->release(p, handle, size);
			close(fd);
			continue;
		}
		p->total += grow;
		g->fd = fd;
		g->stored = true;
		str_copy(g->fdname, name, sizeof(g->fdname));
		grant_identify(g, fd);
		broker_log(1, "fd store: %s on %s held by pid %d, kept until it re-registers or exits",
			   size_format(size, s1, sizeof(s1)), p->name, pid);
	}
	for (uint32_t d = 0; d < b->npools; d++)
		if (b->pools[d]->used > b->pools[d]->total) {
			char su[32], st[32];
			broker_log(0, "%s: the fd store brought back %s, more than its %s: nothing more is granted there "
				   "until holders free some", b->pools[d]->name,
				   size_format(b->pools[d]->used, su, sizeof(su)),
				   size_format(b->pools[d]->total, st, sizeof(st)));
		}
}

int broker_add_pool(struct broker *b, struct pool *p)
{
	if (b->npools >= VRAMD_MAX_DEVICES)
		return -ENOSPC;
	p->index = b->npools;
	b->pools[b->npools++] = p;
	return 0;
}

static int add_ev(struct broker *b, int fd, struct ev *ev, enum ev_kind kind)
{
	ev->kind = kind;
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = ev };
	return epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &e) < 0 ? -errno : 0;
}

struct broker *broker_new(const struct broker_config *cfg)
{
	struct broker *b = calloc(1, sizeof(*b));
	int r;
	char s1[32];

	if (!b)
		return NULL;
	b->cfg = *cfg;
	b->listen_fd = -1;
	b->admin_fd = -1;
	b->sigfd = -1;
	b->timerfd = -1;
	b->start_ns = now_ns();
	b->admin_gid = (gid_t)-1;
	quota_store_init(&b->quotas);
	if (cfg->admin_group) {
		struct group *gr = getgrnam(cfg->admin_group);
		if (!gr)
			broker_log(1, "admin group %s does not exist: admin operations are for root only",
				   cfg->admin_group);
		else
			b->admin_gid = gr->gr_gid;
	}
	if (cfg->state_dir) {
		char err[QUOTA_ERR_MAX];
		if (mkdir(cfg->state_dir, 0755) < 0 && errno != EEXIST) {
			r = -errno;
			broker_log(0, "state directory %s: %s", cfg->state_dir, strerror(errno));
			goto fail;
		}
		r = quota_store_load(&b->quotas, cfg->state_dir, err, sizeof(err));
		if (r < 0) {
			broker_log(0, "refusing to start: quotas cannot be read: %s", err);
			goto fail;
		}
		if (b->quotas.n)
			broker_log(1, "%zu quota entries from %s/%s", b->quotas.n, cfg->state_dir, QUOTA_FILE);
	}
	b->rxbuf = malloc(VRAMD_MSG_MAX);
	b->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!b->rxbuf || b->epfd < 0) {
		r = -errno;
		goto fail;
	}

	/* Pools: real GPUs first (cuda:0..), simulated ones after them, then
	 * the host pool. */
	uint32_t ncuda = 0;
	if (!cfg->no_cuda) {
		struct pool *cp[VRAMD_MAX_DEVICES];
		int n = pool_cuda_discover(cp, VRAMD_MAX_DEVICES - 1 - cfg->nsim, 0, b->note, sizeof(b->note));
		for (int i = 0; i < n; i++) {
			broker_add_pool(b, cp[i]);
			/* Simulated GPUs are numbered after the highest real
			 * ordinal (a skipped GPU leaves a gap, not a clash). */
			if (cp[i]->ordinal >= 0 && (uint32_t)cp[i]->ordinal + 1 > ncuda)
				ncuda = (uint32_t)cp[i]->ordinal + 1;
		}
		if (n <= 0)
			broker_log(1, "no CUDA devices: %s", b->note);
	} else {
		str_copy(b->note, "CUDA disabled by configuration", sizeof(b->note));
	}
	for (uint32_t i = 0; i < cfg->nsim; i++) {
		struct pool *p = pool_memfd_new_sim(ncuda + i, cfg->sim_gpus[i]);
		if (!p || broker_add_pool(b, p) < 0) {
			pool_free(p);
			r = -ENOMEM;
			goto fail;
		}
	}
	struct pool *hp = pool_memfd_new_cpu(cfg->host_pool ? cfg->host_pool : default_host_pool(), -1);
	if (!hp || broker_add_pool(b, hp) < 0) {
		pool_free(hp);
		r = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < b->npools; i++) {
		struct pool *p = b->pools[i];
		char err[QUOTA_ERR_MAX];
		broker_log(1, "device %s: %s, %s%s", p->name, p->label, size_format(p->total, s1, sizeof(s1)),
			   (p->flags & VRAMD_DEV_SIMULATED) ? " [simulated]" : "");
		if (quota_check_floors(&b->quotas, p->name, p->total, err, sizeof(err)) < 0)
			broker_log(1, "warning: %s: floors cannot all be honoured at once", err);
	}

	b->fdstore = cfg->fdstore > 0 || (cfg->fdstore < 0 && getenv("NOTIFY_SOCKET"));
	restore_grants(b);

	if (cfg->listen_fd >= 0) {
		b->listen_fd = cfg->listen_fd;
		int fl = fcntl(b->listen_fd, F_GETFL);
		fcntl(b->listen_fd, F_SETFL, fl | O_NONBLOCK);
	} else if (cfg->socket_path) {
		r = listen_socket(b, cfg->socket_path, cfg->socket_mode ? cfg->socket_mode : 0666, cfg->socket_group);
		if (r < 0)
			goto fail;
		b->listen_fd = r;
		b->own_listener = true;
	}
	if (b->listen_fd >= 0 && (r = add_ev(b, b->listen_fd, &b->ev_listen, EV_LISTEN)) < 0)
		goto fail;
	if (cfg->admin_socket) {
		/* Admin requests are checked by credentials whatever the mode;
		 * the mode keeps everyone else from even connecting. */
		r = listen_socket(b, cfg->admin_socket, cfg->admin_group ? 0660 : 0600, cfg->admin_group);
		if (r < 0)
			goto fail;
		b->admin_fd = r;
		if ((r = add_ev(b, b->admin_fd, &b->ev_admin, EV_ADMIN_LISTEN)) < 0)
			goto fail;
		broker_log(1, "admin socket %s", cfg->admin_socket);
	}
	return b;
fail:
	broker_free(b);
	errno = -r;
	return NULL;
}

/* Signals and the watchdog are set up only by broker_run (tests that step
 * the loop by hand do without them). */
static int setup_run(struct broker *b)
{
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	sigaddset(&ss, SIGHUP);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	signal(SIGPIPE, SIG_IGN);
	b->sigfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
	if (b->sigfd < 0 || add_ev(b, b->sigfd, &b->ev_sig, EV_SIGNAL) < 0)
		return -errno;
	if (sd_watchdog_enabled(0, &b->watchdog_usec) > 0 && b->watchdog_usec) {
		b->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
		if (b->timerfd < 0)
			return -errno;
		uint64_t half = b->watchdog_usec / 2;
		struct itimerspec its = {
			.it_interval = { (time_t)(half / 1000000), (long)(half % 1000000) * 1000 },
			.it_value = { (time_t)(half / 1000000), (long)(half % 1000000) * 1000 },
		};
		timerfd_settime(b->timerfd, 0, &its, NULL);
		if (add_ev(b, b->timerfd, &b->ev_timer, EV_TIMER) < 0)
			return -errno;
	}
	return 0;
}

/* Drops every client marked dead, whoever marked it (a failed send, an
 * expired eviction, a hang-up). */
static void sweep(struct broker *b)
{
	for (bool again = true; again;) {
		again = false;
		for (struct client *c = b->clients; c; c = c->next) {
			if (c->dead) {
				client_drop(b, c, "disconnected");
				again = true; /* the list changed: rescan */
				break;
			}
		}
	}
}

int broker_step(struct broker *b, int timeout_ms)
{
	struct epoll_event evs[64];
	/* Expiry may drop clients (evictions), and drops change deadlines. */
	expire(b);
	sweep(b);
	int next = expire(b);
	if (next >= 0 && (timeout_ms < 0 || next < timeout_ms))
		timeout_ms = next;
	int n = epoll_wait(b->epfd, evs, 64, timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;

	/* Clients are dropped only after the batch, so that a later event of
	 * the same batch never sees a freed client; and every dead client is
	 * dropped, whoever marked it (a failed send to it included). */
	for (int i = 0; i < n; i++) {
		struct ev *ev = evs[i].data.ptr;
		switch (ev->kind) {
		case EV_LISTEN:
			do_accept(b, b->listen_fd, false);
			break;
		case EV_ADMIN_LISTEN:
			do_accept(b, b->admin_fd, true);
			break;
		case EV_SIGNAL: {
			struct signalfd_siginfo si;
			while (read(b->sigfd, &si, sizeof(si)) == sizeof(si)) {
				if (si.ssi_signo == SIGHUP) {
					char err[QUOTA_ERR_MAX];
					if (broker_reload(b, err, sizeof(err)) < 0)
						broker_log(0, "reload failed, nothing changed: %s", err);
					continue;
				}
				broker_log(1, "signal %u: stopping", si.ssi_signo);
				b->stop = true;
			}
			break;
		}
		case EV_TIMER: {
			uint64_t x;
			if (read(b->timerfd, &x, sizeof(x)) > 0)
				sd_notify(0, "WATCHDOG=1");
			break;
		}
		case EV_CLIENT: {
			struct client *c = ev->client;
			if (c->dead)
				break;
			if (evs[i].events & EPOLLOUT)
				client_flush(b, c);
			if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) && !c->parked)
				client_read(b, c);
			if (evs[i].events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
				/* Peer gone: whatever it sent has been read above
				 * (or it is parked and can never be answered). */
				if (c->parked || !(evs[i].events & EPOLLIN))
					c->dead = true;
			}
			break;
		}
		case EV_PIDFD:
			if (!ev->client->dead) {
				ev->client->dead = true;
				broker_log(2, CLIENT_FMT ": process exited", CLIENT_ARGS(ev->client));
			}
			break;
		}
	}
	expire(b);
	sweep(b);
	return n;
}

int broker_run(struct broker *b)
{
	int r = setup_run(b);
	if (r < 0) {
		broker_log(0, "event loop set-up failed: %s", strerror(-r));
		return r;
	}
	sd_notifyf(0, "READY=1\nSTATUS=serving %u devices\nMAINPID=%d", b->npools, (int)getpid());
	while (!b->stop) {
		r = broker_step(b, -1);
		if (r < 0) {
			broker_log(0, "epoll_wait: %s", strerror(-r));
			return r;
		}
	}
	sd_notify(0, "STOPPING=1");
	return 0;
}

void broker_stop(struct broker *b)
{
	b->stop = true;
}

void broker_free(struct broker *b)
{
	if (!b)
		return;
	/* Shutting down is not releasing: clients keep their memory, and the
	 * next broker takes the stored fds back. */
	for (struct client *c = b->clients; c; c = c->next)
		for (struct grant *g = c->grants; g; g = g->next)
			g->stored = false;
	while (b->clients)
		client_drop(b, b->clients, "broker shutting down");
	for (uint32_t i = 0; i < b->npools; i++)
		pool_free(b->pools[i]);
	if (b->listen_fd >= 0) {
		close(b->listen_fd);
		if (b->own_listener && b->cfg.socket_path)
			unlink(b->cfg.socket_path);
	}
	if (b->admin_fd >= 0) {
		close(b->admin_fd);
		if (b->cfg.admin_socket)
			unlink(b->cfg.admin_socket);
	}
	quota_store_clear(&b->quotas);
	if (b->sigfd >= 0)
		close(b->sigfd);
	if (b->timerfd >= 0)
		close(b->timerfd);
	if (b->epfd >= 0)
		close(b->epfd);
	free(b->rxbuf);
	free(b);
}

uint32_t broker_client_count(const struct broker *b) { return b->nclients; }
uint64_t broker_grant_count(const struct broker *b) { return b->ngrants; }
uint64_t broker_protocol_errors(const struct broker *b) { return b->protocol_errors; }
struct pool *broker_pool(const struct broker *b, uint32_t i) { return i < b->npools ? b->pools[i] : NULL; }
uint32_t broker_pool_count(const struct broker *b) { return b->npools; }
