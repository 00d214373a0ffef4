/* SPDX-License-Identifier: MIT */
/*
 * The one place where vramd messages cross a socket: fd passing (SCM_RIGHTS,
 * MSG_CMSG_CLOEXEC, every received fd closed when a message is malformed) and
 * validation of headers and bodies against uapi/vramd.h.
 */
#ifndef VRAM_COMMON_PROTO_H
#define VRAM_COMMON_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "uapi/vramd.h"

#define PROTO_MAX_FDS 4 /* fds accepted in one message before it is refused */

/* Fills a header. */
void proto_hdr_init(struct vramd_hdr *h, uint16_t opcode, uint32_t size, uint64_t seq);

/* Sends one message with fd (-1: none).  MSG_NOSIGNAL always; flags adds
 * e.g. MSG_DONTWAIT.  Returns 0 or -errno (-EAGAIN, -EPIPE, ...). */
int proto_send(int sock, const void *msg, size_t len, int fd, int flags);

/* Receives one message into buf (cap bytes) and up to PROTO_MAX_FDS fds into
 * fds (*nfds set).  Returns the message length, 0 on orderly EOF, or -errno:
 * -EMSGSIZE if the message was longer than cap, -EBADMSG if control data was
 * truncated; in both cases every fd that did arrive is closed.  flags adds
 * e.g. MSG_DONTWAIT. */
ssize_t proto_recv(int sock, void *buf, size_t cap, int *fds, int *nfds, int flags);

/* Checks a received message: header (magic, version, size == len, opcode
 * known, flags), exact or minimum body size per opcode, reserved fields
 * zero, flags within masks, embedded strings terminated, array counts
 * consistent with the size.  0, or -EPROTO/-EINVAL with *why set to a
 * static description. */
int proto_validate(const void *msg, size_t len, const char **why);

/* Name of an opcode ("ALLOC"), "?" if unknown. */
const char *proto_opcode_name(uint16_t op);

#endif
