/* SPDX-License-Identifier: MIT */
/*
 * Speaking the wire protocol raw, for tests that must send what libvram
 * never would (forged or duplicate REGISTERs) or that run in a forked child
 * which must not touch the runtime (header-only, static; include after
 * testlib.h and with common/proto.h).
 */
#ifndef VRAM_TESTLIB_RAW_H
#define VRAM_TESTLIB_RAW_H

#include <sys/socket.h>
#include <sys/un.h>

#include "common/proto.h"
#include "uapi/vramd.h"

/* Copies src (at most max bytes of it) into dst of len bytes, cut and
 * NUL-terminated. */
static inline void tr_copy(char *dst, size_t len, const char *src, size_t max)
{
	size_t n = strnlen(src, max);
	if (!len)
		return;
	if (n >= len)
		n = len - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* A SEQPACKET connection to path, or -errno. */
static inline int tr_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	tr_copy(sa.sun_path, sizeof(sa.sun_path), path, sizeof(sa.sun_path));
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

/* Sends msg (its header's opcode and size already set by the caller's
 * proto_hdr_init) with fd (-1: none) and receives the reply into buf
 * (VRAMD_MSG_MAX bytes), handing back the fd it carries in *ret_fd (-1:
 * none; an extra fd is closed).  Returns the reply's opcode, or -errno. */
static inline int tr_request(int sock, const void *msg, size_t len, int fd, void *buf, int *ret_fd)
{
	int fds[PROTO_MAX_FDS], nfds = 0;
	if (ret_fd)
		*ret_fd = -1;
	int r = proto_send(sock, msg, len, fd, 0);
	if (r < 0)
		return r;
	ssize_t n = proto_recv(sock, buf, VRAMD_MSG_MAX, fds, &nfds, 0);
	if (n <= 0)
		return n == 0 ? -ECONNRESET : (int)n;
	for (int i = 0; i < nfds; i++) {
		if (i == 0 && ret_fd)
			*ret_fd = fds[0];
		else
			close(fds[i]);
	}
	return ((const struct vramd_hdr *)buf)->opcode;
}

/* HELLO as name; 0 or -errno. */
static inline int tr_hello(int sock, const char *name)
{
	static char buf[VRAMD_MSG_MAX];
	struct vramd_hello h;
	memset(&h, 0, sizeof(h));
	proto_hdr_init(&h.hdr, VRAMD_HELLO, sizeof(h), 1);
	tr_copy(h.name, sizeof(h.name), name, sizeof(h.name));
	int op = tr_request(sock, &h, sizeof(h), -1, buf, NULL);
	return op < 0 ? op : op == VRAMD_HELLO_REPLY ? 0 : -EPROTO;
}

/* ALLOC of size on device; the grant's fd in *ret_fd and its id in *ret_id.
 * 0, the broker's error, or -errno. */
static inline int tr_alloc(int sock, uint32_t device, uint64_t size, uint32_t flags, uint64_t seq, int *ret_fd,
			   uint64_t *ret_id)
{
	static char buf[VRAMD_MSG_MAX];
	struct vramd_alloc a;
	memset(&a, 0, sizeof(a));
	proto_hdr_init(&a.hdr, VRAMD_ALLOC, sizeof(a), seq);
	a.device = device;
	a.flags = flags;
	a.size = size;
	int op = tr_request(sock, &a, sizeof(a), -1, buf, ret_fd);
	if (op == VRAMD_ERROR)
		return ((const struct vramd_error *)buf)->error;
	if (op != VRAMD_ALLOC_REPLY || *ret_fd < 0) {
		if (*ret_fd >= 0)
			close(*ret_fd);
		*ret_fd = -1;
		return op < 0 ? op : -EPROTO;
	}
	if (ret_id)
		*ret_id = ((const struct vramd_alloc_reply *)buf)->grant_id;
	return 0;
}

/* REGISTER of fd as size bytes on the device with that UUID.  0 (accounted,
 * its new id in *ret_id when given), the broker's error (e.g. -EINVAL,
 * -EEXIST), or -errno; the reason of an error is copied to why (may be
 * NULL). */
static inline int tr_register(int sock, const uint8_t uuid[16], uint64_t size, uint32_t flags, int fd, uint64_t seq,
			      uint64_t *ret_id, char *why, size_t whylen)
{
	static char buf[VRAMD_MSG_MAX];
	struct vramd_register m;
	int back = -1;
	memset(&m, 0, sizeof(m));
	proto_hdr_init(&m.hdr, VRAMD_REGISTER, sizeof(m), seq);
	memcpy(m.uuid, uuid, 16);
	m.size = size;
	m.flags = flags;
	if (why && whylen)
		why[0] = '\0';
	int op = tr_request(sock, &m, sizeof(m), fd, buf, &back);
	if (back >= 0) { /* a REGISTER reply never carries one */
		close(back);
		return -EPROTO;
	}
	if (op == VRAMD_ERROR) {
		const struct vramd_error *e = (const void *)buf;
		if (why)
			tr_copy(why, whylen, e->reason, sizeof(e->reason));
		return e->error;
	}
	if (op != VRAMD_ALLOC_REPLY)
		return op < 0 ? op : -EPROTO;
	if (ret_id)
		*ret_id = ((const struct vramd_alloc_reply *)buf)->grant_id;
	return 0;
}

#endif
