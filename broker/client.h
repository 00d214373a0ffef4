/* SPDX-License-Identifier: MIT */
/*
 * Layer 6, clients: a connection is admitted (credentials, the limits on
 * connections, the HELLO deadline) or refused with the reason; a client is
 * dropped, its grants released and revoked, when its connection or its
 * process goes, or detached when its process runs on holding memory that
 * cannot be revoked; restored placeholders for the fd store's grants.
 */
#ifndef VRAMD_BROKER_CLIENT_H
#define VRAMD_BROKER_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "broker/grant.h"
#include "broker/internal.h"

/* Serves the connected socket fd (taken) as a client; via_admin: it came
 * in on the admin socket.  0, or -EUSERS (refused, with the reason sent
 * to it) / -errno. */
int client_accept(struct broker *b, int fd, bool via_admin);

/* Drops c (its connection or its process is gone, or the broker shuts
 * down): its grants are released (revoked, unless the broker shuts down),
 * what it parked or owed is settled, and c is freed; or, when its process
 * runs on holding memory that cannot be revoked, c is kept as a detached
 * placeholder until the process exits.  why goes to the log. */
void client_drop(struct broker *b, struct client *c, const char *why);

/* Marks dead the connections that have not said HELLO in time; the
 * earliest other such deadline lowers *next. */
void client_expire_hello(struct broker *b, uint64_t now, uint64_t *next);

/* The restored placeholder client for the holder rec describes (one per
 * pid), made if there is none yet; NULL if out of memory. */
struct client *client_restored(struct broker *b, const struct fdstore_rec *rec);

#endif
