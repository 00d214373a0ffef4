/* SPDX-License-Identifier: MIT */
/*
 * The broker's API, as main.c and the tests that embed a broker use it.
 * Layout of the broker (docs/design.md), lowest layer first; a file
 * includes only the headers of the layers below its own:
 *
 *   log.h, pool.h, config.h   the log, pools and backends, configuration
 *   internal.h                the broker's own structs (client, grant, ...)
 *   conn.c     conn.h         sending, replies, protocol violations
 *   grant.c    grant.h        grant books, accounting, quotas, fd store
 *   fair.c     fair.h         the fair share of a device
 *   alloc.c    alloc.h        ALLOC/FREE/REGISTER, parking, RECLAIM, deadlines
 *   admin.c    admin.h        HELLO, STATUS, quota ops, EVICT, RELOAD
 *   dispatch.c dispatch.h     reading requests, the opcode table
 *   client.c   client.h       clients come and go: admission, drop, detach
 *   broker.c   (this header)  listening, fd-store restore, the event loop
 */
#ifndef VRAMD_BROKER_H
#define VRAMD_BROKER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "broker/config.h"
#include "broker/log.h"
#include "broker/pool.h"

struct broker;

/* Creates a broker: pools, the listening socket (unless listen_fd given),
 * epoll.  NULL and errno on failure, with a message logged. */
struct broker *broker_new(const struct broker_config *cfg);
/* Adds a pool before broker_start; the broker owns it afterwards. */
int broker_add_pool(struct broker *b, struct pool *p);
/* Serves until broker_stop() or SIGTERM/SIGINT (when signals are enabled).
 * Returns 0 or -errno. */
int broker_run(struct broker *b);
/* Runs one event-loop iteration, waiting at most timeout_ms.  For tests
 * that drive an in-process broker. */
int broker_step(struct broker *b, int timeout_ms);
/* Reload (SIGHUP, admin RELOAD): re-reads the config file's limits
 * (client-max, max-clients, max-grants, reclaim-deadline-ms, verbose) and
 * the quota file.  Nothing changes on error.  0 or -errno with err set. */
int broker_reload(struct broker *b, char *err, size_t errlen);
/* Makes broker_run return. */
void broker_stop(struct broker *b);
/* Serves a connected socket as a client (tests use a socketpair).  The
 * broker takes the fd. */
int broker_adopt(struct broker *b, int fd);
/* Releases everything.  NULL is fine. */
void broker_free(struct broker *b);

/* Read-only views for tests. */
uint32_t broker_client_count(const struct broker *b);
uint64_t broker_grant_count(const struct broker *b);
uint64_t broker_protocol_errors(const struct broker *b);
struct pool *broker_pool(const struct broker *b, uint32_t index);
uint32_t broker_pool_count(const struct broker *b);

#endif
