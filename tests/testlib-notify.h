/* SPDX-License-Identifier: MIT */
/*
 * The systemd side of sd_notify(3) and socket activation, for tests
 * (header-only, static; include after testlib.h).
 *
 *  - tn_listen(): a datagram socket standing in for $NOTIFY_SOCKET, with
 *    SO_PASSCRED so that every message carries the sender's pid;
 *  - tn_recv() / tn_wait(): one message, its text, credentials and fds
 *    (FDSTORE=1 sends fds with SCM_RIGHTS), received with MSG_CMSG_CLOEXEC;
 *    a message whose control data was truncated has all its fds closed;
 *  - struct tn_fdstore: what systemd's fd store would hold after FDSTORE=1
 *    and FDSTOREREMOVE=1 messages, named by FDNAME=;
 *  - tn_spawn(): starts a program the way systemd does: NOTIFY_SOCKET,
 *    WATCHDOG_USEC/WATCHDOG_PID, and fds passed from fd 3 with LISTEN_FDS,
 *    LISTEN_PID (the child's own pid) and LISTEN_FDNAMES, e.g. the fd store
 *    handed back to a restarted broker.
 *
 * A broker test of FDSTORE then reads: tn_listen; tn_spawn vramd with
 * notify=l.path; tn_wait for "FDSTORE=1" and tn_fdstore_add the message;
 * stop vramd; tn_spawn it again with .fds = store.fds, .fdnames =
 * tn_fdstore_names(); check that its clients survived.
 */
#ifndef VRAM_TESTLIB_NOTIFY_H
#define VRAM_TESTLIB_NOTIFY_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TN_TEXT_MAX 4096  /* systemd reads at most this much of a message */
#define TN_MAX_FDS  253   /* SCM_MAX_FD: fds one message can carry */

struct tn_listener {
	int fd;
	char path[108];
};

struct tn_msg {
	char text[TN_TEXT_MAX + 1]; /* NUL-terminated */
	size_t len;
	pid_t pid;                  /* sender, from SCM_CREDENTIALS; 0 if none */
	uid_t uid;
	gid_t gid;
	int fds[TN_MAX_FDS];        /* owned by the message: tn_msg_close_fds */
	int nfds;
	bool truncated;             /* text or control data was cut */
};

/* Binds a datagram socket at DIR/NAME.  0 or -errno. */
static inline int tn_listen(struct tn_listener *l, const char *dir, const char *name)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int one = 1;
	l->fd = -1;
	if ((size_t)snprintf(l->path, sizeof(l->path), "%s/%s", dir, name) >= sizeof(l->path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, l->path, strlen(l->path) + 1);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	l->fd = fd;
	return 0;
}

/* Closes and unlinks.  Fine on a listener that failed or was closed. */
static inline void tn_close(struct tn_listener *l)
{
	if (l->fd >= 0) {
		close(l->fd);
		unlink(l->path);
	}
	l->fd = -1;
}

static inline void tn_msg_close_fds(struct tn_msg *m)
{
	for (int i = 0; i < m->nfds; i++)
		if (m->fds[i] >= 0)
			close(m->fds[i]);
	m->nfds = 0;
}

/* Receives one message, waiting at most timeout_ms (-1: forever).  Returns
 * 1 with *m filled (the caller owns m->fds), 0 on timeout, -errno. */
static inline int tn_recv(const struct tn_listener *l, int timeout_ms, struct tn_msg *m)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * TN_MAX_FDS)];
	} ctl;
	struct pollfd p = { .fd = l->fd, .events = POLLIN };
	struct iovec iov;
	struct msghdr mh;

	memset(m, 0, sizeof(*m));
	int r = poll(&p, 1, timeout_ms);
	if (r < 0)
		return -errno;
	if (r == 0)
		return 0;
	iov.iov_base = m->text;
	iov.iov_len = TN_TEXT_MAX;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = ctl.buf;
	mh.msg_controllen = sizeof(ctl.buf);
	ssize_t n = recvmsg(l->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
	if (n < 0)
		return errno == EAGAIN ? 0 : -errno;
	m->len = (size_t)n > TN_TEXT_MAX ? TN_TEXT_MAX : (size_t)n;
	m->text[m->len] = '\0';
	m->truncated = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET)
			continue;
		if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
			struct ucred u;
			memcpy(&u, CMSG_DATA(c), sizeof(u));
			m->pid = u.pid;
			m->uid = u.uid;
			m->gid = u.gid;
		} else if (c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (m->nfds < TN_MAX_FDS)
					m->fds[m->nfds++] = fd;
				else
					close(fd);
			}
		}
	}
	/* As systemd does: a cut message is not trusted with fds. */
	if (mh.msg_flags & MSG_CTRUNC)
		tn_msg_close_fds(m);
	return 1;
}

/* 1 if the message has the line assignment ("READY=1") exactly. */
static inline bool tn_has(const struct tn_msg *m, const char *assignment)
{
	size_t n = strlen(assignment);
	for (const char *p = m->text; p && *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		if (len == n && !memcmp(p, assignment, n))
			return true;
		p = nl ? nl + 1 : NULL;
	}
	return false;
}

/* The value of KEY=VALUE in the message, copied to buf; NULL if absent. */
static inline const char *tn_get(const struct tn_msg *m, const char *key, char *buf, size_t len)
{
	size_t k = strlen(key);
	for (const char *p = m->text; p && *p;) {
		const char *nl = strchr(p, '\n');
		size_t l = nl ? (size_t)(nl - p) : strlen(p);
		if (l > k && !memcmp(p, key, k) && p[k] == '=') {
			snprintf(buf, len, "%.*s", (int)(l - k - 1), p + k + 1);
			return buf;
		}
		p = nl ? nl + 1 : NULL;
	}
	return NULL;
}

static inline long tn_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits at most timeout_ms for a message with the line assignment, from
 * pid (0: anyone).  Messages before it are dropped (their fds closed).
 * Returns 1 with *ret filled (the caller owns its fds), 0 on timeout,
 * -errno. */
static inline int tn_wait(const struct tn_listener *l, const char *assignment, pid_t pid, int timeout_ms,
			  struct tn_msg *ret)
{
	long end = tn_now_ms() + timeout_ms;
	for (;;) {
		long left = end - tn_now_ms();
		if (left <= 0)
			return 0;
		int r = tn_recv(l, (int)left, ret);
		if (r <= 0)
			return r;
		if (tn_has(ret, assignment) && (pid == 0 || ret->pid == pid))
			return 1;
		tn_msg_close_fds(ret);
	}
}

/* ---- the fd store ---------------------------------------------------------- */

struct tn_fdstore {
	int fds[TN_MAX_FDS];
	char names[TN_MAX_FDS][256];
	int n;
};

static inline void tn_fdstore_init(struct tn_fdstore *s)
{
	s->n = 0;
}

/* Applies a message as systemd would: FDSTORE=1 takes the message's fds
 * (named FDNAME=, default "stored"); FDSTOREREMOVE=1 closes those named
 * FDNAME=.  The store takes the message's fds either way (m->nfds is 0
 * afterwards).  Returns the fds added, or -ENOSPC (the extra fds closed). */
static inline int tn_fdstore_apply(struct tn_fdstore *s, struct tn_msg *m)
{
	char name[256];
	int added = 0, r = 0;
	if (!tn_get(m, "FDNAME", name, sizeof(name)))
		snprintf(name, sizeof(name), "stored");
	if (tn_has(m, "FDSTOREREMOVE=1")) {
		int k = 0;
		for (int i = 0; i < s->n; i++) {
			if (!strcmp(s->names[i], name)) {
				close(s->fds[i]);
				continue;
			}
			if (k != i) {
				s->fds[k] = s->fds[i];
				memcpy(s->names[k], s->names[i], sizeof(s->names[k]));
			}
			k++;
		}
		s->n = k;
	}
	if (tn_has(m, "FDSTORE=1")) {
		for (int i = 0; i < m->nfds; i++) {
			if (s->n == TN_MAX_FDS) {
				close(m->fds[i]);
				r = -ENOSPC;
				continue;
			}
			s->fds[s->n] = m->fds[i];
			snprintf(s->names[s->n], sizeof(s->names[0]), "%s", name);
			s->n++;
			added++;
		}
		m->nfds = 0;
	}
	tn_msg_close_fds(m);
	return r < 0 ? r : added;
}

/* LISTEN_FDNAMES for the store: names joined with ':'.  free() it. */
static inline char *tn_fdstore_names(const struct tn_fdstore *s)
{
	size_t len = 1;
	for (int i = 0; i < s->n; i++)
		len += strlen(s->names[i]) + 1;
	char *out = calloc(1, len);
	if (!out)
		return NULL;
	for (int i = 0; i < s->n; i++) {
		if (i)
			strcat(out, ":");
		strcat(out, s->names[i]);
	}
	return out;
}

static inline void tn_fdstore_clear(struct tn_fdstore *s)
{
	for (int i = 0; i < s->n; i++)
		close(s->fds[i]);
	s->n = 0;
}

/* ---- spawning as systemd does ------------------------------------------------ */

struct tn_spawn {
	const char *const *argv;  /* argv[0]: the program's path */
	const char *notify;       /* NOTIFY_SOCKET, or NULL (unset) */
	unsigned long long watchdog_usec; /* WATCHDOG_USEC, 0: unset */
	pid_t watchdog_pid;       /* WATCHDOG_PID: 0 the child itself, -1 unset, else that pid */
	const int *fds;           /* passed as fds 3.. with LISTEN_FDS/LISTEN_PID */
	int nfds;
	const char *fdnames;      /* LISTEN_FDNAMES, or NULL */
	const char *const *env;   /* more "NAME=VALUE" to set, NULL-terminated */
	const char *log;          /* stdout and stderr appended to this file, or NULL */
};

/* Forks and execs o->argv with the environment systemd would give it.
 * Returns the child's pid (the program keeps it: exec, no fork), or -errno. */
static inline pid_t tn_spawn(const struct tn_spawn *o)
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0)
		return pid;

	/* child: no allocation-heavy work, _exit on any failure */
	static const char *const clear[] = { "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
					     "LISTEN_PID", "LISTEN_FDNAMES" };
	char num[32];
	for (size_t i = 0; i < sizeof(clear) / sizeof(clear[0]); i++)
		unsetenv(clear[i]);
	if (o->notify)
		setenv("NOTIFY_SOCKET", o->notify, 1);
	if (o->watchdog_usec) {
		snprintf(num, sizeof(num), "%llu", o->watchdog_usec);
		setenv("WATCHDOG_USEC", num, 1);
		if (o->watchdog_pid >= 0) {
			snprintf(num, sizeof(num), "%d", o->watchdog_pid ? (int)o->watchdog_pid : (int)getpid());
			setenv("WATCHDOG_PID", num, 1);
		}
	}
	for (int i = 0; o->env && o->env[i]; i++)
		putenv((char *)o->env[i]);
	if (o->log) {
		int fd = open(o->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
	}
	if (o->nfds > 0) {
		/* Move every fd above the target range first, so that
		 * dup2(fds[i], 3 + i) never clobbers one still to come. */
		int tmp[TN_MAX_FDS];
		if (o->nfds > TN_MAX_FDS)
			_exit(126);
		for (int i = 0; i < o->nfds; i++)
			if ((tmp[i] = fcntl(o->fds[i], F_DUPFD_CLOEXEC, 3 + o->nfds)) < 0)
				_exit(126);
		for (int i = 0; i < o->nfds; i++)
			if (dup2(tmp[i], 3 + i) < 0) /* dup2 clears FD_CLOEXEC */
				_exit(126);
		snprintf(num, sizeof(num), "%d", o->nfds);
		setenv("LISTEN_FDS", num, 1);
		snprintf(num, sizeof(num), "%d", (int)getpid());
		setenv("LISTEN_PID", num, 1);
		if (o->fdnames)
			setenv("LISTEN_FDNAMES", o->fdnames, 1);
	}
	execv(o->argv[0], (char *const *)o->argv);
	_exit(127);
}

/* Waits at most timeout_ms for pid to exit; returns its wait status, or -1
 * on timeout (the child is then left running). */
static inline int tn_waitpid(pid_t pid, int timeout_ms)
{
	int st;
	for (int t = 0; t <= timeout_ms; t += 10) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		if (r < 0)
			return -1;
		struct timespec ts = { 0, 10 * 1000000L };
		nanosleep(&ts, NULL);
	}
	return -1;
}

#endif
