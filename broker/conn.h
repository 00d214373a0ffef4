/* SPDX-License-Identifier: MIT */
/*
 * Layer 1, connections: sending to a client without ever blocking (replies
 * that do not fit the socket wait in a small per-client queue, and the
 * client's requests are not read until it drains), the standard replies,
 * and protocol violations.
 */
#ifndef VRAMD_BROKER_CONN_H
#define VRAMD_BROKER_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "broker/internal.h"

/* Sets c's epoll interest from its state: writable while replies are
 * queued, readable unless it has queued replies or a parked ALLOC. */
int conn_update_events(struct broker *b, struct client *c);

/* Sends msg (and fd, which stays the caller's; -1: none) to c, queueing it
 * if the socket is full.  0, or -errno when the client is gone or its
 * queue overflowed (the client is then marked dead). */
int client_send(struct broker *b, struct client *c, const void *msg, size_t len, int fd);

/* Sends what c's queue holds, as far as the socket takes it. */
void client_flush(struct broker *b, struct client *c);

/* VRAMD_ERROR answering req, with err (-errno) and a reason; logged at
 * debug level. */
int send_error(struct broker *b, struct client *c, const struct vramd_hdr *req, int err, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/* VRAMD_OK answering req. */
int send_ok(struct broker *b, struct client *c, const struct vramd_hdr *req);

/* VRAMD_TEXT answering req with the n bytes of text (JSON); -EFBIG (and an
 * error reply) when it does not fit one message. */
int send_text(struct broker *b, struct client *c, const struct vramd_hdr *req, const char *text, size_t n);

/* VRAMD_ALLOC_REPLY to request seq for grant g (fd: its memory, or -1). */
int send_alloc_reply(struct broker *b, struct client *c, uint64_t seq, const struct grant *g, int fd);

/* Counts and logs a protocol violation and marks c dead: the offender is
 * disconnected, never answered. */
void protocol_violation(struct broker *b, struct client *c, const char *why);

/* Asks x for bytes on pool dev by deadline_ns, on behalf of the parked
 * request pending_id (0: an eviction).  0, or -EBUSY (too many RECLAIMs
 * outstanding) / -errno from sending. */
int send_reclaim(struct broker *b, struct client *x, uint32_t dev, uint64_t bytes, uint64_t pending_id,
		 uint64_t deadline_ns);

#endif
