/* SPDX-License-Identifier: MIT */
/* Layer 5: reading requests, the opcode table (dispatch.h). */
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "broker/admin.h"
#include "broker/alloc.h"
#include "broker/cache.h"
#include "broker/conn.h"
#include "broker/dispatch.h"
#include "common/proto.h"

typedef void (*op_fn)(struct broker *b, struct client *c, const void *msg, int fd);

/* What the broker accepts from a client, by opcode. */
struct op {
	op_fn fn;
	bool admin;   /* root or the admin group only: others get -EPERM */
	int nfds;     /* fds the message carries (SCM_RIGHTS) */
	int max_fds;  /* at most, when it may carry fewer (0: nfds exactly) */
};

/* The handlers take their message's own struct; these adapt them to op_fn. */
#define OP(name, type)                                                               \
	static void op_##name(struct broker *b, struct client *c, const void *m, int fd) \
	{                                                                              \
		(void)fd;                                                              \
		handle_##name(b, c, (const type *)m);                                  \
	}
OP(hello, struct vramd_hello)
OP(alloc, struct vramd_alloc)
OP(free, struct vramd_free)
OP(status, struct vramd_status)
OP(reclaim_done, struct vramd_reclaim_done)
OP(quota_set, struct vramd_quota_set)
OP(quota_rm, struct vramd_quota_rm)
OP(quota_list, struct vramd_hdr)
OP(evict, struct vramd_evict)
OP(reload, struct vramd_hdr)
OP(demand, struct vramd_demand)
OP(unshare, struct vramd_unshare)
OP(cache_list, struct vramd_hdr)
#undef OP

static void op_register(struct broker *b, struct client *c, const void *m, int fd)
{
	handle_register(b, c, m, fd);
}

static void op_share(struct broker *b, struct client *c, const void *m, int fd)
{
	handle_share(b, c, m, fd);
}

static void op_cache_drop(struct broker *b, struct client *c, const void *m, int fd)
{
	handle_cache_drop(b, c, m, fd);
}

static const struct op ops[VRAMD_OPCODE_MAX + 1] = {
	[VRAMD_HELLO]        = { op_hello, false, 0 },
	[VRAMD_ALLOC]        = { op_alloc, false, 0 },
	[VRAMD_FREE]         = { op_free, false, 0 },
	[VRAMD_STATUS]       = { op_status, false, 0 },
	[VRAMD_RECLAIM_DONE] = { op_reclaim_done, false, 0 },
	[VRAMD_REGISTER]     = { op_register, false, 1 },
	[VRAMD_DEMAND]       = { op_demand, false, 0 },
	[VRAMD_SHARE]        = { op_share, false, 1 },
	[VRAMD_UNSHARE]      = { op_unshare, false, 0 },
	[VRAMD_CACHE_LIST]   = { op_cache_list, false, 0 },
	[VRAMD_CACHE_DROP]   = { op_cache_drop, false, 0, 1 },
	[VRAMD_QUOTA_SET]    = { op_quota_set, true, 0 },
	[VRAMD_QUOTA_RM]     = { op_quota_rm, true, 0 },
	[VRAMD_QUOTA_LIST]   = { op_quota_list, true, 0 },
	[VRAMD_EVICT]        = { op_evict, true, 0 },
	[VRAMD_RELOAD]       = { op_reload, true, 0 },
};

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

/* The table entry for the request in b->rxbuf (n bytes, nfds fds), or NULL
 * after a protocol violation (fds closed). */
static const struct op *check_request(struct broker *b, struct client *c, ssize_t n, int *fds, int nfds)
{
	const char *why = NULL;
	const struct vramd_hdr *h = b->rxbuf;
	/* The fd count first: a validation failure must close them too. */
	const struct op *op = n >= (ssize_t)sizeof(*h) && h->opcode <= VRAMD_OPCODE_MAX && ops[h->opcode].fn
				      ? &ops[h->opcode] : NULL;
	int want_fds = op ? op->nfds : 0, max_fds = op && op->max_fds ? op->max_fds : want_fds;
	if (nfds < want_fds || nfds > max_fds)
		why = nfds ? "unexpected file descriptors" : "a request without its fd";
	else if (proto_validate(b->rxbuf, (size_t)n, &why) < 0)
		;
	else if (!op)
		why = "opcode not valid from a client";
	else if (!c->hello && h->opcode != VRAMD_HELLO)
		why = "request before HELLO";
	else if (c->hello && h->opcode == VRAMD_HELLO)
		why = "second HELLO";
	if (why) {
		close_fds(fds, nfds);
		protocol_violation(b, c, why);
		return NULL;
	}
	return op;
}

void dispatch_read(struct broker *b, struct client *c)
{
	int fds[PROTO_MAX_FDS], nfds = 0;

	/* A bounded number of messages per wakeup keeps one client from
	 * starving the others. */
	for (int iter = 0; iter < 16 && !c->dead && c->ntx == 0 && !c->parked; iter++) {
		ssize_t n = proto_recv(c->fd, b->rxbuf, VRAMD_MSG_MAX, fds, &nfds, MSG_DONTWAIT);
		if (n == -EAGAIN)
			return;
		if (n == -EMSGSIZE) {
			protocol_violation(b, c, "message larger than the maximum");
			return;
		}
		if (n == -EBADMSG) {
			protocol_violation(b, c, "truncated control data");
			return;
		}
		if (n <= 0) { /* 0: hang-up */
			c->dead = true;
			return;
		}
		const struct op *op = check_request(b, c, n, fds, nfds);
		if (!op)
			return;
		const struct vramd_hdr *h = b->rxbuf;
		if (op->admin && !c->admin) {
			send_error(b, c, h, -EPERM, "%s needs root or the admin group", proto_opcode_name(h->opcode));
			broker_log(1, CLIENT_FMT ": refused %s: not an admin", CLIENT_ARGS(c),
				   proto_opcode_name(h->opcode));
		} else {
			op->fn(b, c, b->rxbuf, nfds ? fds[0] : -1);
		}
		close_fds(fds, nfds);
	}
}
