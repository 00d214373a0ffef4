/* SPDX-License-Identifier: MIT */
#include "common/proto.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/util.h"

void proto_hdr_init(struct vramd_hdr *h, uint16_t opcode, uint32_t size, uint64_t seq)
{
	memset(h, 0, sizeof(*h));
	h->magic = VRAMD_MAGIC;
	h->version = VRAMD_PROTO_VERSION;
	h->opcode = opcode;
	h->size = size;
	h->seq = seq;
}

int proto_send(int sock, const void *msg, size_t len, int fd, int flags)
{
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	for (;;) {
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
		if (n >= 0)
			return (size_t)n == len ? 0 : -EIO;
		if (errno != EINTR)
			return -errno;
	}
}

ssize_t proto_recv(int sock, void *buf, size_t cap, int *fds, int *nfds, int flags)
{
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	union {
		char buf[CMSG_SPACE(sizeof(int) * PROTO_MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	ssize_t n;

	*nfds = 0;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*nfds < PROTO_MAX_FDS)
				fds[(*nfds)++] = fd;
			else
				close(fd);
		}
	}
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		for (int i = 0; i < *nfds; i++)
			close(fds[i]);
		*nfds = 0;
		return (mh.msg_flags & MSG_TRUNC) ? -EMSGSIZE : -EBADMSG;
	}
	return n;
}

static const char *const opnames[] = {
	[VRAMD_HELLO] = "HELLO", [VRAMD_HELLO_REPLY] = "HELLO_REPLY",
	[VRAMD_ALLOC] = "ALLOC", [VRAMD_ALLOC_REPLY] = "ALLOC_REPLY",
	[VRAMD_FREE] = "FREE", [VRAMD_OK] = "OK",
	[VRAMD_STATUS] = "STATUS", [VRAMD_STATUS_REPLY] = "STATUS_REPLY",
	[VRAMD_ERROR] = "ERROR", [VRAMD_RECLAIM] = "RECLAIM",
	[VRAMD_RECLAIM_DONE] = "RECLAIM_DONE", [VRAMD_QUOTA_SET] = "QUOTA_SET",
	[VRAMD_QUOTA_RM] = "QUOTA_RM", [VRAMD_QUOTA_LIST] = "QUOTA_LIST",
	[VRAMD_TEXT] = "TEXT", [VRAMD_EVICT] = "EVICT", [VRAMD_REGISTER] = "REGISTER",
	[VRAMD_RELOAD] = "RELOAD", [VRAMD_DEMAND] = "DEMAND", [VRAMD_OFFER] = "OFFER",
	[VRAMD_SHARE] = "SHARE", [VRAMD_SHARE_REPLY] = "SHARE_REPLY", [VRAMD_SHARE_PROGRESS] = "SHARE_PROGRESS",
	[VRAMD_UNSHARE] = "UNSHARE", [VRAMD_CACHE_LIST] = "CACHE_LIST", [VRAMD_CACHE_DROP] = "CACHE_DROP",
};

const char *proto_opcode_name(uint16_t op)
{
	if (op < ARRAY_SIZE(opnames) && opnames[op])
		return opnames[op];
	return "?";
}

static int terminated(const char *s, size_t cap)
{
	return memchr(s, '\0', cap) != NULL;
}

#define FAIL(e, msg) do { *why = (msg); return (e); } while (0)

static int validate_device(const struct vramd_device *d)
{
	return d->reserved0 == 0 && (d->flags & ~VRAMD_DEV_FLAGS_MASK) == 0 &&
	       mem_is_zero(d->reserved, sizeof(d->reserved)) &&
	       terminated(d->name, sizeof(d->name)) && terminated(d->label, sizeof(d->label));
}

/* One validator per opcode: the body after the header checks; 0 or a
 * negative errno with *why set (FAIL). */
typedef int (*validate_fn)(const void *msg, size_t len, const char **why);

static int v_hello(const void *msg, size_t len, const char **why)
{
	const struct vramd_hello *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "HELLO has the wrong size");
	if (m->flags || m->reserved0 || !mem_is_zero(m->reserved, sizeof(m->reserved)))
		FAIL(-EINVAL, "HELLO reserved fields or flags not zero");
	if (!terminated(m->name, sizeof(m->name)))
		FAIL(-EINVAL, "HELLO name not NUL-terminated");
	return 0;
}

static int v_hello_reply(const void *msg, size_t len, const char **why)
{
	const struct vramd_hello_reply *m = msg;
	if (len < sizeof(*m))
		FAIL(-EPROTO, "HELLO_REPLY too short");
	if (m->ndevices > VRAMD_MAX_DEVICES ||
	    len != sizeof(*m) + (size_t)m->ndevices * sizeof(struct vramd_device))
		FAIL(-EPROTO, "HELLO_REPLY device count does not match its size");
	if (!terminated(m->note, sizeof(m->note)))
		FAIL(-EINVAL, "HELLO_REPLY note not terminated");
	const struct vramd_device *d = (const void *)(m + 1);
	for (uint32_t i = 0; i < m->ndevices; i++)
		if (!validate_device(&d[i]))
			FAIL(-EINVAL, "HELLO_REPLY device entry malformed");
	return 0;
}

static int v_alloc(const void *msg, size_t len, const char **why)
{
	const struct vramd_alloc *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "ALLOC has the wrong size");
	if (!mem_is_zero(m->reserved, sizeof(m->reserved)))
		FAIL(-EINVAL, "ALLOC reserved fields not zero");
	if (m->flags & ~VRAMD_ALLOC_FLAGS_MASK)
		FAIL(-EINVAL, "ALLOC has unknown flags");
	return 0;
}

static int v_alloc_reply(const void *msg, size_t len, const char **why)
{
	const struct vramd_alloc_reply *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "ALLOC_REPLY has the wrong size");
	if (!mem_is_zero(m->reserved, sizeof(m->reserved)))
		FAIL(-EINVAL, "ALLOC_REPLY reserved fields not zero");
	return 0;
}

static int v_free(const void *msg, size_t len, const char **why)
{
	const struct vramd_free *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "FREE has the wrong size");
	if (m->reserved)
		FAIL(-EINVAL, "FREE reserved field not zero");
	return 0;
}

static int v_ok(const void *msg, size_t len, const char **why)
{
	if (len != sizeof(struct vramd_hdr))
		FAIL(-EPROTO, "OK has the wrong size");
	return 0;
}

static int v_status(const void *msg, size_t len, const char **why)
{
	const struct vramd_status *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "STATUS has the wrong size");
	if (m->flags || m->reserved)
		FAIL(-EINVAL, "STATUS reserved fields or flags not zero");
	return 0;
}

static int v_status_reply(const void *msg, size_t len, const char **why)
{
	const struct vramd_status_reply *m = msg;
	if (len < sizeof(*m))
		FAIL(-EPROTO, "STATUS_REPLY too short");
	if (m->ndevices > VRAMD_MAX_DEVICES ||
	    len != sizeof(*m) + (size_t)m->ndevices * sizeof(struct vramd_device) +
			   (size_t)m->nclients * sizeof(struct vramd_client_info))
		FAIL(-EPROTO, "STATUS_REPLY counts do not match its size");
	if (m->reserved0 || !terminated(m->note, sizeof(m->note)))
		FAIL(-EINVAL, "STATUS_REPLY malformed");
	const struct vramd_device *d = (const void *)(m + 1);
	for (uint32_t i = 0; i < m->ndevices; i++)
		if (!validate_device(&d[i]))
			FAIL(-EINVAL, "STATUS_REPLY device entry malformed");
	const struct vramd_client_info *c = (const void *)(d + m->ndevices);
	for (uint32_t i = 0; i < m->nclients; i++)
		if (!terminated(c[i].name, sizeof(c[i].name)))
			FAIL(-EINVAL, "STATUS_REPLY client name not terminated");
	return 0;
}

static int v_error(const void *msg, size_t len, const char **why)
{
	const struct vramd_error *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "ERROR has the wrong size");
	if (m->reserved0 || !terminated(m->reason, sizeof(m->reason)) || m->error >= 0)
		FAIL(-EINVAL, "ERROR malformed");
	return 0;
}

static int v_reclaim(const void *msg, size_t len, const char **why)
{
	const struct vramd_reclaim *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "RECLAIM has the wrong size");
	if (m->reserved0)
		FAIL(-EINVAL, "RECLAIM reserved field not zero");
	return 0;
}

static int v_reclaim_done(const void *msg, size_t len, const char **why)
{
	const struct vramd_reclaim_done *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "RECLAIM_DONE has the wrong size");
	if (m->reserved)
		FAIL(-EINVAL, "RECLAIM_DONE reserved field not zero");
	return 0;
}

static int v_quota_set(const void *msg, size_t len, const char **why)
{
	const struct vramd_quota_set *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "QUOTA_SET has the wrong size");
	if (m->reserved0 || (m->flags & ~VRAMD_QUOTA_SET_MASK) || !m->flags)
		FAIL(-EINVAL, "QUOTA_SET flags or reserved field invalid");
	if (!terminated(m->subject, sizeof(m->subject)) || !terminated(m->device, sizeof(m->device)))
		FAIL(-EINVAL, "QUOTA_SET strings not terminated");
	return 0;
}

static int v_quota_rm(const void *msg, size_t len, const char **why)
{
	const struct vramd_quota_rm *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "QUOTA_RM has the wrong size");
	if (!terminated(m->subject, sizeof(m->subject)) || !terminated(m->device, sizeof(m->device)))
		FAIL(-EINVAL, "QUOTA_RM strings not terminated");
	return 0;
}

static int v_header_only(const void *msg, size_t len, const char **why)
{
	if (len != sizeof(struct vramd_hdr))
		FAIL(-EPROTO, "QUOTA_LIST, RELOAD or CACHE_LIST has the wrong size");
	return 0;
}

static int v_text(const void *msg, size_t len, const char **why)
{
	const struct vramd_text *m = msg;
	if (len < sizeof(*m) || len != sizeof(*m) + (size_t)m->len)
		FAIL(-EPROTO, "TEXT length does not match its size");
	if (m->reserved0)
		FAIL(-EINVAL, "TEXT reserved field not zero");
	return 0;
}

static int v_evict(const void *msg, size_t len, const char **why)
{
	const struct vramd_evict *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "EVICT has the wrong size");
	if (m->reserved0)
		FAIL(-EINVAL, "EVICT reserved field not zero");
	return 0;
}

static int v_register(const void *msg, size_t len, const char **why)
{
	const struct vramd_register *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "REGISTER has the wrong size");
	if (!mem_is_zero(m->reserved, sizeof(m->reserved)))
		FAIL(-EINVAL, "REGISTER reserved fields not zero");
	if (m->flags & ~VRAMD_ALLOC_FLAGS_MASK)
		FAIL(-EINVAL, "REGISTER has unknown flags");
	if (m->what > VRAMD_REGISTER_COPY || (m->what == VRAMD_REGISTER_COPY && m->flags))
		FAIL(-EINVAL, "REGISTER of an unknown kind");
	return 0;
}

static int v_demand(const void *msg, size_t len, const char **why)
{
	const struct vramd_demand *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "DEMAND has the wrong size");
	if (m->flags || !mem_is_zero(m->reserved, sizeof(m->reserved)))
		FAIL(-EINVAL, "DEMAND reserved fields or flags not zero");
	if (m->min > m->want)
		FAIL(-EINVAL, "DEMAND min above want");
	return 0;
}

static int v_offer(const void *msg, size_t len, const char **why)
{
	const struct vramd_offer *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "OFFER has the wrong size");
	if (m->reserved0 || !mem_is_zero(m->reserved, sizeof(m->reserved)))
		FAIL(-EINVAL, "OFFER reserved fields not zero");
	return 0;
}

static int v_share(const void *msg, size_t len, const char **why)
{
	const struct vramd_share *m = msg;
	if (len < sizeof(*m))
		FAIL(-EPROTO, "SHARE too short");
	if (!m->nruns || m->nruns > VRAMD_SHARE_RUNS_MAX ||
	    len != sizeof(*m) + (size_t)m->nruns * sizeof(struct vramd_share_run))
		FAIL(-EPROTO, "SHARE run count does not match its size");
	if (m->flags || m->reserved0 || !mem_is_zero(m->reserved, sizeof(m->reserved)))
		FAIL(-EINVAL, "SHARE reserved fields or flags not zero");
	const struct vramd_share_run *r = (const void *)(m + 1);
	for (uint32_t i = 0; i < m->nruns; i++)
		if (r[i].reserved0 || (r[i].flags & ~VRAMD_SHARE_RUN_FLAGS_MASK))
			FAIL(-EINVAL, "SHARE run has unknown flags or reserved bytes");
	return 0;
}

static int v_share_reply(const void *msg, size_t len, const char **why)
{
	const struct vramd_share_reply *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "SHARE_REPLY has the wrong size");
	if (!mem_is_zero(m->reserved, sizeof(m->reserved)) || m->how < VRAMD_SHARE_HIT || m->how > VRAMD_SHARE_WAITED)
		FAIL(-EINVAL, "SHARE_REPLY malformed");
	return 0;
}

static int v_share_progress(const void *msg, size_t len, const char **why)
{
	const struct vramd_share_progress *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "SHARE_PROGRESS has the wrong size");
	if (m->reserved || m->done > m->total)
		FAIL(-EINVAL, "SHARE_PROGRESS malformed");
	return 0;
}

static int v_unshare(const void *msg, size_t len, const char **why)
{
	const struct vramd_unshare *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "UNSHARE has the wrong size");
	if (m->reserved)
		FAIL(-EINVAL, "UNSHARE reserved field not zero");
	return 0;
}

static int v_cache_drop(const void *msg, size_t len, const char **why)
{
	const struct vramd_cache_drop *m = msg;
	if (len != sizeof(*m))
		FAIL(-EPROTO, "CACHE_DROP has the wrong size");
	if (m->reserved0 || !mem_is_zero(m->reserved, sizeof(m->reserved)) || (m->flags & ~VRAMD_CACHE_DROP_MASK))
		FAIL(-EINVAL, "CACHE_DROP flags or reserved fields invalid");
	return 0;
}

static const validate_fn validators[VRAMD_OPCODE_MAX + 1] = {
	[VRAMD_HELLO] = v_hello,
	[VRAMD_HELLO_REPLY] = v_hello_reply,
	[VRAMD_ALLOC] = v_alloc,
	[VRAMD_ALLOC_REPLY] = v_alloc_reply,
	[VRAMD_FREE] = v_free,
	[VRAMD_OK] = v_ok,
	[VRAMD_STATUS] = v_status,
	[VRAMD_STATUS_REPLY] = v_status_reply,
	[VRAMD_ERROR] = v_error,
	[VRAMD_RECLAIM] = v_reclaim,
	[VRAMD_RECLAIM_DONE] = v_reclaim_done,
	[VRAMD_QUOTA_SET] = v_quota_set,
	[VRAMD_QUOTA_RM] = v_quota_rm,
	[VRAMD_QUOTA_LIST] = v_header_only,
	[VRAMD_TEXT] = v_text,
	[VRAMD_EVICT] = v_evict,
	[VRAMD_REGISTER] = v_register,
	[VRAMD_RELOAD] = v_header_only,
	[VRAMD_DEMAND] = v_demand,
	[VRAMD_OFFER] = v_offer,
	[VRAMD_SHARE] = v_share,
	[VRAMD_SHARE_REPLY] = v_share_reply,
	[VRAMD_SHARE_PROGRESS] = v_share_progress,
	[VRAMD_UNSHARE] = v_unshare,
	[VRAMD_CACHE_LIST] = v_header_only,
	[VRAMD_CACHE_DROP] = v_cache_drop,
};

/* The header, then the opcode's own validator (proto.h). */
int proto_validate(const void *msg, size_t len, const char **why)
{
	const struct vramd_hdr *h = msg;

	if (len < sizeof(*h))
		FAIL(-EPROTO, "message shorter than its header");
	if (h->magic != VRAMD_MAGIC)
		FAIL(-EPROTO, "bad magic");
	if (h->version != VRAMD_PROTO_VERSION)
		FAIL(-EPROTO, "unsupported protocol version");
	if (h->size != len)
		FAIL(-EPROTO, "header size does not match the message");
	if (h->flags & ~VRAMD_HDR_FLAGS_MASK)
		FAIL(-EINVAL, "unknown header flags");
	if (h->opcode >= ARRAY_SIZE(validators) || !validators[h->opcode])
		FAIL(-EPROTO, "unknown opcode");
	return validators[h->opcode](msg, len, why);
}
