/* SPDX-License-Identifier: MIT */
/*
 * Layer 5, reading requests: a bounded number of messages per wakeup, each
 * validated (common/proto.c), checked against the opcode table (who may
 * send it, how many fds it carries, HELLO first) and handed to its handler.
 */
#ifndef VRAMD_BROKER_DISPATCH_H
#define VRAMD_BROKER_DISPATCH_H

#include "broker/internal.h"

/* Reads and handles what c sent, until the socket is empty, c has replies
 * queued or an ALLOC parked, or 16 messages were handled.  A protocol
 * violation marks c dead; a hang-up too. */
void dispatch_read(struct broker *b, struct client *c);

#endif
