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
#include "broker/cache.h"
#include "broker/client.h"
#include "broker/conn.h"
#include "broker/dispatch.h"
#include "broker/grant.h"
#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"

/* Handles every deadline due (HELLO, RECLAIM, parked ALLOCs, evictions);
 * returns the ms to the next one, -1 if none. */
static int deadlines(struct broker *b)
{
	uint64_t now = now_ns(), next = UINT64_MAX;
	client_expire_hello(b, now, &next);
	int ms = alloc_expire(b);
	if (next == UINT64_MAX)
		return ms;
	int hms = (int)((next - now) / 1000000 + 1);
	return ms < 0 || hms < ms ? hms : ms;
}

int broker_adopt(struct broker *b, int fd)
{
	return client_accept(b, fd, false);
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

/* One grant fd systemd's fd store handed back, called name.  Accounted to
 * its holder's placeholder, or released (and removed from the store) when
 * it cannot be: a bad name, a device that is gone, memory the backend does
 * not recognise, a process that is gone. */
static void restore_grant(struct broker *b, int fd, const char *name)
{
	if (!strncmp(name, "copy-", 5)) {
		cache_restore(b, fd, name);
		return;
	}
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
	struct client *c = client_restored(b, &rec);
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
	b->cache_evfd = -1;
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
		pool_configure(p, cfg);
		broker_log(1, "device %s: %s, %s%s", p->name, p->label, size_format(p->total, s1, sizeof(s1)),
			   (p->flags & VRAMD_DEV_SIMULATED) ? " [simulated]" : "");
		if (quota_check_floors(&b->quotas, p->name, p->total, err, sizeof(err)) < 0)
			broker_log(1, "warning: %s: floors cannot all be honoured at once", err);
	}

	b->fdstore = cfg->fdstore > 0 || (cfg->fdstore < 0 && getenv("NOTIFY_SOCKET"));
	if ((r = cache_init(b)) < 0 || (r = add_ev(b, b->cache_evfd, &b->ev_cache, EV_CACHE)) < 0)
		goto fail;
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
		case EV_CACHE:
			cache_event(b);
			break;
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
	for (struct copy *cp = b->copies; cp; cp = cp->next)
		cp->stored = false;
	while (b->clients)
		client_drop(b, b->clients, "broker shutting down");
	cache_free(b);
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
