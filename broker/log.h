/* SPDX-License-Identifier: MIT */
/* vramd's log: lines on stderr with sd-daemon(3) priority prefixes, which
 * journald reads (it adds the time). */
#ifndef VRAMD_BROKER_LOG_H
#define VRAMD_BROKER_LOG_H

/* Levels: 0 error, 1 info, 2 debug (shown with -v). */
extern int broker_log_level;

/* Logs one line at level (dropped when above broker_log_level). */
void broker_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
