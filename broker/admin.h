/* SPDX-License-Identifier: MIT */
/*
 * Layer 4, the session and the admin operations: HELLO, STATUS, quota
 * set/remove/list, EVICT, RELOAD.  Admin operations are for root and the
 * admin group (checked by credentials, whatever socket they came in on).
 */
#ifndef VRAMD_BROKER_ADMIN_H
#define VRAMD_BROKER_ADMIN_H

#include <stddef.h>

#include "broker/internal.h"

void handle_hello(struct broker *b, struct client *c, const struct vramd_hello *m);
void handle_status(struct broker *b, struct client *c, const struct vramd_status *m);
void handle_quota_set(struct broker *b, struct client *c, const struct vramd_quota_set *m);
void handle_quota_rm(struct broker *b, struct client *c, const struct vramd_quota_rm *m);
void handle_quota_list(struct broker *b, struct client *c, const struct vramd_hdr *m);
void handle_evict(struct broker *b, struct client *c, const struct vramd_evict *m);
void handle_reload(struct broker *b, struct client *c, const struct vramd_hdr *m);

/* broker_reload's work (broker.h). */
int admin_reload(struct broker *b, char *err, size_t errlen);

#endif
