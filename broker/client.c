/* SPDX-License-Identifier: MIT */
/* Layer 6: clients come and go (client.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "broker/alloc.h"
#include "broker/cache.h"
#include "broker/client.h"
#include "broker/conn.h"
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
	cache_client_gone(b, c);
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

void client_drop(struct broker *b, struct client *c, const char *why)
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
int client_accept(struct broker *b, int fd, bool via_admin)
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

/* Drops the connections that have not said HELLO in time; the earliest
 * other such deadline lowers *next. */
void client_expire_hello(struct broker *b, uint64_t now, uint64_t *next)
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

/* The restored placeholder client for the holder rec describes (one per
 * pid), made if there is none yet; NULL if out of memory. */
struct client *client_restored(struct broker *b, const struct fdstore_rec *rec)
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
