/* SPDX-License-Identifier: MIT */
/* Layer 1: sending to clients (conn.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/conn.h"
#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"

int conn_update_events(struct broker *b, struct client *c)
{
	struct epoll_event e = {
		.events = (c->ntx ? EPOLLOUT : 0) | (c->ntx || c->parked ? 0 : EPOLLIN) | EPOLLRDHUP,
		.data.ptr = &c->ev_sock,
	};
	return epoll_ctl(b->epfd, EPOLL_CTL_MOD, c->fd, &e);
}

int client_send(struct broker *b, struct client *c, const void *msg, size_t len, int fd)
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
		conn_update_events(b, c);
	return 0;
}

void client_flush(struct broker *b, struct client *c)
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
	conn_update_events(b, c);
}

int send_error(struct broker *b, struct client *c, const struct vramd_hdr *req, int err, const char *fmt, ...)
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

int send_ok(struct broker *b, struct client *c, const struct vramd_hdr *req)
{
	struct vramd_hdr h;
	proto_hdr_init(&h, VRAMD_OK, sizeof(h), req->seq);
	return client_send(b, c, &h, sizeof(h), -1);
}

int send_text(struct broker *b, struct client *c, const struct vramd_hdr *req, const char *text, size_t n)
{
	if (n > VRAMD_MSG_MAX - sizeof(struct vramd_text)) {
		send_error(b, c, req, -EFBIG, "the %s reply is larger than one message",
			   proto_opcode_name(req->opcode));
		return -EFBIG;
	}
	size_t len = sizeof(struct vramd_text) + n;
	_cleanup_free_ struct vramd_text *t = calloc(1, len);
	if (!t) {
		send_error(b, c, req, -ENOMEM, "broker out of memory");
		return -ENOMEM;
	}
	proto_hdr_init(&t->hdr, VRAMD_TEXT, (uint32_t)len, req->seq);
	t->len = (uint32_t)n;
	memcpy(t + 1, text, n);
	return client_send(b, c, t, len, -1);
}

int send_alloc_reply(struct broker *b, struct client *c, uint64_t seq, const struct grant *g, int fd)
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

void protocol_violation(struct broker *b, struct client *c, const char *why)
{
	b->protocol_errors++;
	broker_log(1, CLIENT_FMT ": protocol violation: %s; disconnecting", CLIENT_ARGS(c), why);
	c->dead = true;
}

int send_reclaim(struct broker *b, struct client *x, uint32_t dev, uint64_t bytes, uint64_t pending_id,
		 uint64_t deadline_ns)
{
	if (x->nasks == ASKS_MAX)
		return -EBUSY;
	struct vramd_reclaim r;
	memset(&r, 0, sizeof(r));
	proto_hdr_init(&r.hdr, VRAMD_RECLAIM, sizeof(r), 0);
	r.reclaim_id = ++b->next_reclaim_id;
	r.bytes = bytes;
	/* what is left of the request's deadline (a second ask, for whole
	 * grants, comes later than the first and ends with it) */
	uint64_t now = now_ns();
	r.deadline_ms = deadline_ns > now ? MAX((deadline_ns - now) / 1000000, 1) : 1;
	r.device = dev;
	x->asks[x->nasks++] = (struct reclaim_ask){ r.reclaim_id, pending_id, now, deadline_ns, bytes, dev };
	int e = client_send(b, x, &r, sizeof(r), -1);
	if (e < 0)
		x->nasks--;
	return e;
}
