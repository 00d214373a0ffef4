/* SPDX-License-Identifier: MIT */
/*
 * The broker's top layer: clients come and go (accept, SO_PEERCRED, pidfd,
 * drop), the listening sockets, grants restored from systemd's fd store,
 * and the epoll loop over sockets, pidfds, signals and timers.  Never
 * blocks on a client (conn.c); a protocol violation disconnects the
 * offender, a request that cannot be served gets VRAMD_ERROR.  A client's
 * grants are released the moment its socket closes or its process dies
 * (pidfd), whichever comes first.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
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
#include <time.h>
#include <unistd.h>

#include "broker/admin.h"
#include "broker/alloc.h"
#include "broker/broker.h"
#include "broker/conn.h"
#include "broker/dispatch.h"
#include "broker/grant.h"
#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"

/* ======================================================================
 * Clients
 * ====================================================================== */

/* Closes c's connection: its queued replies, its socket; what it had
 * parked goes, and the requests waiting for RECLAIMs it owed stop
 * waiting. */
static void client_disconnect(struct broker *b, struct client *c)
{
	alloc_client_gone(b, c);
	for (uint32_t i = 0; i < c->ntx; i++) {
		free(c->txq[i].buf);
		if (c->txq[i].fd >= 0)
			close(c->txq[i].fd);
	}
	c->ntx = 0;
	if (c->fd >= 0) {
		epoll_ctl(b->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	c->fd = -1;
	c->parked = false;
}

/* Releases c's grants (only those whose memory can be revoked, when
 * revocable_only); returns the bytes released. */
static uint64_t client_release(struct broker *b, struct client *c, bool revocable_only)
{
	uint64_t n = 0;
	for (struct grant *g = c->grants, *next; g; g = next) {
		next = g->next;
		if (revocable_only && !g->pool->ops->revoke)
			continue;
		n += g->size;
		grant_unlink(g);
		grant_release(b, g);
	}
	return n;
}

/* Whether c's process still runs (its socket is gone). */
static bool process_alive(const struct client *c)
{
	if (c->pid <= 0)
		return false;
	if (c->pidfd >= 0) {
		struct pollfd p = { .fd = c->pidfd, .events = POLLIN };
		return poll(&p, 1, 0) == 0; /* readable: it exited */
	}
	return kill(c->pid, 0) == 0 || errno == EPERM;
}

/* A client whose connection is gone while its process runs on, holding
 * memory the broker cannot revoke (CUDA: an import keeps its memory until
 * released): its revocable grants are released; the others stay charged
 * to it, a placeholder like a restored one (no connection, reclaimed from
 * nobody), until the process exits (pidfd) or re-registers them.  true if
 * c was kept so. */
static bool client_detach(struct broker *b, struct client *c)
{
	bool unrevocable = false;
	for (struct grant *g = c->grants; g; g = g->next)
		unrevocable |= !g->pool->ops->revoke;
	if (b->shutting_down || c->restored || !unrevocable || !process_alive(c))
		return false;
	char s1[32], s2[32];
	client_disconnect(b, c);
	uint64_t freed = client_release(b, c, true);
	c->restored = true;
	c->dead = false;
	str_copy(c->owner_name, c->name, sizeof(c->owner_name));
	str_copy(c->name, "detached", sizeof(c->name));
	broker_log(1, CLIENT_FMT ": disconnected; released %s, kept %s it cannot revoke charged until pid %d exits",
		   CLIENT_ARGS(c), size_format(freed, s1, sizeof(s1)), size_format(c->held, s2, sizeof(s2)),
		   (int)c->pid);
	alloc_settle(b, "the clients asked to reclaim went away");
	return true;
}

static void client_drop(struct broker *b, struct client *c, const char *why)
{
	char s1[32];
	uint64_t held = c->held;
	uint32_t n = c->ngrants;

	if (client_detach(b, c))
		return;
	for (struct client **pp = &b->clients; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	client_disconnect(b, c);
	client_release(b, c, false);
	if (c->pidfd >= 0) {
		epoll_ctl(b->epfd, EPOLL_CTL_DEL, c->pidfd, NULL);
		close(c->pidfd);
	}
	broker_log(1, CLIENT_FMT ": %s; released %u grants, %s", CLIENT_ARGS(c), why, n,
		   size_format(held, s1, sizeof(s1)));
	free(c);
	/* counted out last: a client count of 0 means every grant is back */
	b->nclients--;
	alloc_settle(b, "the clients asked to reclaim went away");
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

/* Whether the peer of fd is root or in the admin group. */
static bool peer_is_admin(struct broker *b, int fd, const struct ucred *cred)
{
	/* root, and the broker's own user (under systemd: the unit's
	 * ExecReload=vramctl reload runs as vramd) */
	if (cred->uid == 0 || cred->uid == getuid())
		return true;
	if (b->admin_gid == (gid_t)-1)
		return false;
	if (cred->gid == b->admin_gid)
		return true;
	gid_t groups[256];
	socklen_t glen = sizeof(groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
		for (size_t i = 0; i < glen / sizeof(gid_t); i++)
			if (groups[i] == b->admin_gid)
				return true;
	return false;
}

/* Connections (not restored placeholders) on the client socket in all, on
 * the admin socket, and of uid on the client socket. */
static void count_connections(const struct broker *b, uid_t uid, uint32_t *ret_all, uint32_t *ret_admin,
			      uint32_t *ret_uid)
{
	*ret_all = *ret_admin = *ret_uid = 0;
	for (const struct client *x = b->clients; x; x = x->next) {
		if (x->restored)
			continue;
		if (x->via_admin) {
			(*ret_admin)++;
			continue;
		}
		(*ret_all)++;
		*ret_uid += x->uid == uid;
	}
}

/* Whether a new connection from cred may be served: 0, or -EUSERS with why
 * set.  The admin socket has room of its own (nobody else can reach it);
 * on the client socket, one uid holds at most max-clients-per-uid
 * connections, and admins may go past max-clients by ADMIN_RESERVE, so
 * that no flood of connections, from one user or many, locks an admin
 * out. */
static int admit(struct broker *b, const struct ucred *cred, bool admin, bool via_admin, char *why, size_t len)
{
	uint32_t all, nadmin, nuid;
	count_connections(b, cred->uid, &all, &nadmin, &nuid);
	if (via_admin) {
		if (nadmin < ADMIN_CONN_MAX)
			return 0;
		snprintf(why, len, "%u connections on the admin socket (max %u)", nadmin, ADMIN_CONN_MAX);
		return -EUSERS;
	}
	if (!admin && nuid >= b->cfg.max_clients_per_uid) {
		snprintf(why, len, "uid %u has %u connections (max-clients-per-uid %u)", (unsigned)cred->uid, nuid,
			 b->cfg.max_clients_per_uid);
		return -EUSERS;
	}
	if (all >= b->cfg.max_clients + (admin ? ADMIN_RESERVE : 0)) {
		snprintf(why, len, "%u clients connected (max-clients %u)", all, b->cfg.max_clients);
		return -EUSERS;
	}
	return 0;
}

/* Refuses a connection: an ERROR with seq 0 (unsolicited: the connection
 * itself is refused, docs/protocol.md) saying why, then the close.  The
 * client reads it even when its HELLO met the closed socket. */
static void refuse(int fd, const struct ucred *cred, int err, const char *why)
{
	struct vramd_error m;
	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.hdr, VRAMD_ERROR, sizeof(m), 0);
	m.error = err;
	m.req_opcode = VRAMD_HELLO;
	snprintf(m.reason, sizeof(m.reason), "vramd refused the connection: %s", why);
	proto_send(fd, &m, sizeof(m), -1, MSG_DONTWAIT);
	close(fd);
	broker_log(1, "refusing a connection from pid %d, uid %u: %s", (int)cred->pid, (unsigned)cred->uid, why);
}

/* Watches c's process: the pidfd catches a death the socket does not show
 * (the socket may have been inherited by a child). */
static void watch_pid(struct broker *b, struct client *c)
{
	c->ev_pid = (struct ev){ EV_PIDFD, c };
	c->pidfd = -1;
	if (c->pid <= 0 || c->pid == getpid())
		return;
	c->pidfd = pidfd_open_compat(c->pid);
	if (c->pidfd < 0)
		return;
	struct epoll_event pe = { .events = EPOLLIN, .data.ptr = &c->ev_pid };
	if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, c->pidfd, &pe) < 0) {
		close(c->pidfd);
		c->pidfd = -1;
	}
}

/* Serves the connected socket fd (taken) as a client; via_admin: it came
 * in on the admin socket. */
static int client_accept(struct broker *b, int fd, bool via_admin)
{
	struct ucred cred = { .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
	socklen_t len = sizeof(cred);
	char why[96];

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		broker_log(1, "SO_PEERCRED failed: %m");
	bool admin = peer_is_admin(b, fd, &cred);
	int r = admit(b, &cred, admin, via_admin, why, sizeof(why));
	if (r < 0) {
		refuse(fd, &cred, r, why);
		return r;
	}
	struct client *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	c->id = ++b->next_client_id;
	c->fd = fd;
	c->pid = cred.pid;
	c->uid = cred.uid;
	c->gid = cred.gid;
	c->admin = admin;
	c->via_admin = via_admin;
	c->hello_deadline_ns = now_ns() + b->cfg.hello_timeout_ms * 1000000ull;
	c->ev_sock = (struct ev){ EV_CLIENT, c };
	struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = &c->ev_sock };
	if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
		r = -errno;
		close(fd);
		free(c);
		return r;
	}
	watch_pid(b, c);
	c->next = b->clients;
	b->clients = c;
	b->nclients++;
	broker_log(2, CLIENT_FMT ": connected%s", CLIENT_ARGS(c), via_admin ? " (admin socket)" : "");
	return 0;
}

int broker_adopt(struct broker *b, int fd)
{
	return client_accept(b, fd, false);
}

/* Drops the connections that have not said HELLO in time; the earliest
 * other such deadline lowers *next. */
static void expire_hello(struct broker *b, uint64_t now, uint64_t *next)
{
	for (struct client *c = b->clients; c; c = c->next) {
		if (c->hello || c->restored || c->dead)
			continue;
		if (c->hello_deadline_ns <= now) {
			broker_log(1, CLIENT_FMT ": no HELLO within %llu ms; disconnecting", CLIENT_ARGS(c),
				   (unsigned long long)b->cfg.hello_timeout_ms);
			c->dead = true;
		} else {
			*next = MIN(*next, c->hello_deadline_ns);
		}
	}
}

/* Handles every deadline due (HELLO, RECLAIM, parked ALLOCs, evictions);
 * returns the ms to the next one, -1 if none. */
static int deadlines(struct broker *b)
{
	uint64_t now = now_ns(), next = UINT64_MAX;
	expire_hello(b, now, &next);
	int ms = alloc_expire(b);
	if (next == UINT64_MAX)
		return ms;
	int hms = (int)((next - now) / 1000000 + 1);
	return ms < 0 || hms < ms ? hms : ms;
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
		client_accept(b, fd, admin);
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
		/* A stale socket from a dead broker is replaced; a live one is
		 * not, and anything that is not a socket is never touched. */
		struct stat st;
		if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
			close(fd);
			broker_log(0, "%s exists and is not a socket: not replacing it", path);
			return -EEXIST;
		}
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

/* The restored placeholder client for the holder rec describes (one per
 * pid), made if there is none yet; NULL if out of memory. */
static struct client *restored_holder(struct broker *b, const struct fdstore_rec *rec)
{
	struct client *c = b->clients;
	while (c && !(c->restored && c->pid == rec->pid))
		c = c->next;
	if (c || !(c = calloc(1, sizeof(*c))))
		return c;
	c->id = ++b->next_client_id;
	c->fd = -1;
	c->pid = rec->pid;
	c->uid = rec->uid;
	c->gid = rec->gid;
	if (!rec->known_owner) {
		/* an older vramd's name: the owner as /proc says, if it can */
		char proc[64];
		struct stat st;
		snprintf(proc, sizeof(proc), "/proc/%d", (int)rec->pid);
		c->uid = stat(proc, &st) == 0 ? st.st_uid : (uid_t)-1;
		c->gid = stat(proc, &st) == 0 ? st.st_gid : (gid_t)-1;
	}
	c->restored = true;
	c->hello = true;
	str_copy(c->name, "restored", sizeof(c->name));
	str_copy(c->owner_name, rec->name, sizeof(c->owner_name));
	watch_pid(b, c);
	c->next = b->clients;
	b->clients = c;
	b->nclients++;
	return c;
}

/* One grant fd systemd's fd store handed back, called name.  Accounted to
 * its holder's placeholder, or released (and removed from the store) when
 * it cannot be: a bad name, a device that is gone, memory the backend does
 * not recognise, a process that is gone. */
static void restore_grant(struct broker *b, int fd, const char *name)
{
	struct fdstore_rec rec;
	struct pool *p = NULL;
	void *handle = NULL;
	const char *why = "bad name";
	char msg[320], s1[32];
	if (fdstore_name_parse(name, &rec) == 0) {
		p = pool_by_uuid(b, rec.uuid);
		why = p ? "" : "its device is gone";
	}
	if (p && (!p->ops->adopt || p->ops->adopt(p, fd, rec.size, &handle, &why) < 0))
		p = NULL;
	if (p && kill(rec.pid, 0) < 0 && errno == ESRCH) {
		why = "its process is gone";
		p->ops->release(p, handle, rec.size);
		p = NULL;
	}
	if (!p) {
		broker_log(1, "fd store: releasing %s: %s", name, why);
		snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
		sd_notify(0, msg);
		close(fd);
		return;
	}
	struct client *c = restored_holder(b, &rec);
	uint64_t grow = pool_adopt_growth(p, rec.size);
	struct grant *g = c ? grant_add(b, c, p, rec.size, rec.flags, handle) : NULL;
	if (!g) {
		p->ops->release(p, handle, rec.size);
		close(fd);
		return;
	}
	p->total += grow;
	g->fd = fd;
	g->stored = true;
	str_copy(g->fdname, name, sizeof(g->fdname));
	grant_identify(g, fd);
	broker_log(1, "fd store: %s on %s held by pid %d (uid %u), kept until it re-registers or exits",
		   size_format(rec.size, s1, sizeof(s1)), p->name, (int)rec.pid, (unsigned)c->uid);
}

/* Grants systemd's fd store handed back: memory that clients of the
 * previous broker still hold.  Each is accounted to a "restored" client per
 * pid, with the uid and name the fd store kept, until that process
 * re-registers it (it then changes hands) or dies (it is released); a pid
 * already gone releases it at once. */
static void restore_grants(struct broker *b)
{
	for (uint32_t i = 0; i < b->cfg.nrestore; i++)
		restore_grant(b, b->cfg.restore_fds[i], b->cfg.restore_names[i]);
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
	deadlines(b);
	sweep(b);
	int next = deadlines(b);
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
				dispatch_read(b, c);
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
	deadlines(b);
	sweep(b);
	return n;
}

int broker_reload(struct broker *b, char *err, size_t errlen)
{
	return admin_reload(b, err, errlen);
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
	/* Shutting down is not releasing: clients keep their memory (nothing
	 * is revoked), and the next broker takes the stored fds back. */
	b->shutting_down = true;
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
