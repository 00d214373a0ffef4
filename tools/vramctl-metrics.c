/* SPDX-License-Identifier: MIT */
/*
 * vramctl metrics: the broker's status in the Prometheus text exposition
 * format (version 0.0.4), for node_exporter's textfile collector or any
 * scrape wrapper.  Every metric is listed in docs/metrics.md.
 *
 * Output is built in memory and written at once: to stdout, or with
 * --output FILE atomically (FILE.tmp, fsync, rename) so that a collector
 * never reads half a file.  When the broker cannot be reached the output is
 * still written, with vramd_up 0, and the exit code is 69.
 *
 * The broker shows non-admin callers only their own uid's clients; the
 * device and broker figures are everyone's.  Exporters run as root or as an
 * admin-group member.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/vramctl.h"

/* ---- a growing text buffer ------------------------------------------------ */

struct buf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void buf_done(struct buf *b)
{
	free(b->p);
}

static void buf_put(struct buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->oom = true;
		return;
	}
	if ((size_t)n < sizeof(tmp)) {
		buf_put(b, tmp, (size_t)n);
		return;
	}
	_cleanup_free_ char *big = malloc((size_t)n + 1);
	if (!big) {
		b->oom = true;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	buf_put(b, big, (size_t)n);
}

/* ---- exposition format ------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if none. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	if (s[0] < 0x80)
		return 1;
	size_t len;
	uint32_t cp;
	if ((s[0] & 0xe0) == 0xc0) {
		len = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		len = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		len = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* overlong forms, surrogates, beyond U+10FFFF */
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* A label value: backslash, double quote and line feed escaped as the
 * format asks; bytes that are not UTF-8 (which the format requires, and
 * which a client may put in its name) become U+FFFD. */
static void put_label_value(struct buf *b, const char *v)
{
	const unsigned char *s = (const unsigned char *)v;
	size_t n = strlen(v);
	while (n) {
		if (*s == '\\' || *s == '"') {
			char e[2] = { '\\', (char)*s };
			buf_put(b, e, 2);
		} else if (*s == '\n') {
			buf_put(b, "\\n", 2);
		} else {
			size_t l = utf8_len(s, n);
			if (l == 0) {
				buf_put(b, "\xef\xbf\xbd", 3);
				l = 1;
			} else {
				buf_put(b, (const char *)s, l);
			}
			s += l;
			n -= l;
			continue;
		}
		s++;
		n--;
	}
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static const char *backend_name(uint32_t backend)
{
	switch (backend) {
	case VRAM_BACKEND_CPU: return "cpu";
	case VRAM_BACKEND_SIM: return "sim";
	case VRAM_BACKEND_CUDA: return "cuda";
	default: return "unknown";
	}
}

static void uuid_str(const uint8_t u[16], char out[37])
{
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
		 u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

/* device="cuda:0",backend="sim",simulated="true" */
static void device_labels(struct buf *b, const struct vram_device_info *d)
{
	buf_put(b, "device=\"", 8);
	put_label_value(b, d->name);
	buf_printf(b, "\",backend=\"%s\",simulated=\"%s\"", backend_name(d->backend),
		   (d->flags & VRAM_DEV_SIMULATED) ? "true" : "false");
}

/* client_id="3",client_name="comfy-1",pid="123",uid="1000" */
static void client_labels(struct buf *b, const struct vram_client_status *c)
{
	buf_printf(b, "client_id=\"%u\",client_name=\"", c->id);
	put_label_value(b, c->name);
	buf_printf(b, "\",pid=\"%d\",uid=\"%u\"", (int)c->pid, c->uid);
}

enum dev_field {
	DEV_TOTAL, DEV_USED, DEV_FREE, DEV_RECLAIMABLE, DEV_GRANULARITY, DEV_READY, DEV_READY_TARGET, DEV_READY_HITS,
	DEV_READY_MISSES, DEV_READY_REFILLED, DEV_CACHE, DEV_CACHE_MAX, DEV_CACHE_HITS, DEV_CACHE_FILLS,
	DEV_CACHE_EVICTIONS,
};

static uint64_t dev_value(const struct vram_device_info *d, enum dev_field f)
{
	switch (f) {
	case DEV_TOTAL: return d->total;
	case DEV_USED: return d->used;
	case DEV_FREE: return d->total > d->used ? d->total - d->used : 0;
	case DEV_RECLAIMABLE: return d->reclaimable;
	case DEV_GRANULARITY: return d->granularity;
	case DEV_READY: return d->ready;
	case DEV_READY_TARGET: return d->ready_target;
	case DEV_READY_HITS: return d->ready_hits;
	case DEV_READY_MISSES: return d->ready_misses;
	case DEV_READY_REFILLED: return d->ready_refilled;
	case DEV_CACHE: return d->cache;
	case DEV_CACHE_MAX: return d->cache_max;
	case DEV_CACHE_HITS: return d->cache_hits;
	case DEV_CACHE_FILLS: return d->cache_fills;
	default: return d->cache_evictions;
	}
}

enum cl_field {
	CL_RECLAIMABLE, CL_GRANTS, CL_ANSWERED, CL_MISSED, CL_LATE, CL_ASKED, CL_FREED, CL_P50, CL_P99,
};

/* The value of field f of c; microseconds for CL_P50/CL_P99. */
static uint64_t cl_value(const struct vram_client_status *c, enum cl_field f)
{
	switch (f) {
	case CL_RECLAIMABLE: return c->reclaimable;
	case CL_GRANTS: return c->ngrants;
	case CL_ANSWERED: return c->reclaims_answered;
	case CL_MISSED: return c->reclaims_missed;
	case CL_LATE: return (c->flags & VRAM_CLIENT_RECLAIM_LATE) ? 1 : 0;
	case CL_ASKED: return c->reclaim_asked;
	case CL_FREED: return c->reclaim_freed;
	case CL_P50: return c->reclaim_p50_us;
	default: return c->reclaim_p99_us;
	}
}

enum cd_field { CD_HELD, CD_WANT, CD_SHARE, CD_SHARED };

static uint64_t cd_value(const struct vram_client_status *c, uint32_t d, enum cd_field f)
{
	switch (f) {
	case CD_HELD: return c->held_dev[d];
	case CD_WANT: return c->want_dev[d];
	case CD_SHARE: return c->share_dev[d];
	default: return c->shared_dev[d];
	}
}

static void render_up(struct buf *b, int up)
{
	family(b, "vramd_up", "gauge", "1 if vramctl reached the broker, 0 if not (the other metrics are then absent).");
	buf_printf(b, "vramd_up %d\n", up);
}

static void render_broker(struct buf *b, const struct vram_status *s)
{
	uint32_t nclients = 0;
	for (uint32_t i = 0; i < s->nclients; i++)
		if (!(s->clients[i].flags & VRAM_CLIENT_SELF))
			nclients++;
	family(b, "vramd_uptime_seconds", "gauge", "Seconds since the broker started.");
	buf_printf(b, "vramd_uptime_seconds %llu.%03llu\n", (unsigned long long)(s->uptime_ms / 1000),
		   (unsigned long long)(s->uptime_ms % 1000));
	family(b, "vramd_grants", "gauge", "Grants live in the broker.");
	buf_printf(b, "vramd_grants %llu\n", (unsigned long long)s->grants);
	family(b, "vramd_clients", "gauge", "Clients connected that the caller may see (all for root and admin-group), not counting the vramctl asking.");
	buf_printf(b, "vramd_clients %u\n", nclients);
	family(b, "vramd_protocol_errors_total", "counter",
	       "Clients disconnected for protocol violations since the broker started.");
	buf_printf(b, "vramd_protocol_errors_total %llu\n", (unsigned long long)s->protocol_errors);
}

static void render_devices(struct buf *b, const struct vram_status *s, uint32_t ndev)
{
	static const struct {
		const char *name, *type, *help;
		enum dev_field f;
	} devm[] = {
		{ "vramd_device_total_bytes", "gauge", "Bytes the device's pool may grant.", DEV_TOTAL },
		{ "vramd_device_used_bytes", "gauge", "Bytes granted to clients now.", DEV_USED },
		{ "vramd_device_free_bytes", "gauge", "Bytes not granted (total - used).", DEV_FREE },
		{ "vramd_device_reclaimable_bytes", "gauge", "Of used, bytes in grants the broker may ask back (RECLAIM).",
		  DEV_RECLAIMABLE },
		{ "vramd_device_granularity_bytes", "gauge", "Allocation granularity: grant sizes are multiples of it.",
		  DEV_GRANULARITY },
		{ "vramd_device_ready_bytes", "gauge", "Populated memory in the ready reserve (free memory).", DEV_READY },
		{ "vramd_device_ready_target_bytes", "gauge", "The ready reserve's size when full (0: none).",
		  DEV_READY_TARGET },
		{ "vramd_device_ready_hits_total", "counter", "Grants served from the ready reserve.", DEV_READY_HITS },
		{ "vramd_device_ready_misses_total", "counter", "Grants that found the ready reserve short.",
		  DEV_READY_MISSES },
		{ "vramd_device_ready_refilled_bytes_total", "counter", "Bytes the ready reserve was refilled with.",
		  DEV_READY_REFILLED },
		{ "vramd_device_cache_bytes", "gauge", "Of used, bytes in shared read-only copies.", DEV_CACHE },
		{ "vramd_device_cache_max_bytes", "gauge", "The shared copies' budget.", DEV_CACHE_MAX },
		{ "vramd_device_cache_hits_total", "counter", "Chunks of loads served by a shared copy that was there.",
		  DEV_CACHE_HITS },
		{ "vramd_device_cache_fills_total", "counter", "Shared copies the broker filled.", DEV_CACHE_FILLS },
		{ "vramd_device_cache_evictions_total", "counter", "Shared copies evicted (unused, for room, or dropped).",
		  DEV_CACHE_EVICTIONS },
	};
	family(b, "vramd_device_info", "gauge", "Devices the broker serves; always 1. model is the device label.");
	for (uint32_t i = 0; i < ndev; i++) {
		const struct vram_device_info *d = &s->devices[i];
		char u[37];
		uuid_str(d->uuid, u);
		buf_put(b, "vramd_device_info{", 18);
		device_labels(b, d);
		buf_put(b, ",model=\"", 8);
		put_label_value(b, d->label);
		buf_printf(b, "\",uuid=\"%s\",numa_node=\"%d\",index=\"%u\"} 1\n", u, (int)d->numa_node, d->index);
	}
	for (size_t m = 0; m < sizeof(devm) / sizeof(devm[0]); m++) {
		family(b, devm[m].name, devm[m].type, devm[m].help);
		for (uint32_t i = 0; i < ndev; i++) {
			buf_printf(b, "%s{", devm[m].name);
			device_labels(b, &s->devices[i]);
			buf_printf(b, "} %llu\n", (unsigned long long)dev_value(&s->devices[i], devm[m].f));
		}
	}
}

/* Every device for every client, zeros included, so that a series does not
 * vanish when a client frees its last grant on a device. */
static void render_client_devices(struct buf *b, const struct vram_status *s, uint32_t ndev)
{
	static const struct {
		const char *name, *help;
		enum cd_field f;
	} cdm[] = {
		{ "vramd_client_held_bytes", "Bytes a client holds on a device.", CD_HELD },
		{ "vramd_client_want_bytes", "Bytes a client wants on a device (its DEMAND, else what it holds).", CD_WANT },
		{ "vramd_client_fair_share_bytes", "A client's fair share of a device (docs/admin.md).", CD_SHARE },
		{ "vramd_client_shared_bytes", "Of what a client holds on a device, bytes in shared read-only copies it maps.",
		  CD_SHARED },
	};
	for (size_t m = 0; m < sizeof(cdm) / sizeof(cdm[0]); m++) {
		family(b, cdm[m].name, "gauge", cdm[m].help);
		for (uint32_t k = 0; k < s->nclients; k++) {
			const struct vram_client_status *c = &s->clients[k];
			if (c->flags & VRAM_CLIENT_SELF)
				continue;
			for (uint32_t i = 0; i < ndev; i++) {
				buf_printf(b, "%s{", cdm[m].name);
				client_labels(b, c);
				buf_put(b, ",", 1);
				device_labels(b, &s->devices[i]);
				buf_printf(b, "} %llu\n", (unsigned long long)cd_value(c, i, cdm[m].f));
			}
		}
	}
}

static void render_clients(struct buf *b, const struct vram_status *s)
{
	static const struct {
		const char *name, *type, *help;
		enum cl_field f;
	} clm[] = {
		{ "vramd_client_reclaimable_bytes", "gauge", "Of the bytes a client holds, those in reclaimable grants (all devices).",
		  CL_RECLAIMABLE },
		{ "vramd_client_grants", "gauge", "Grants a client holds.", CL_GRANTS },
		{ "vramd_client_reclaims_answered_total", "counter", "RECLAIM requests the client answered.",
		  CL_ANSWERED },
		{ "vramd_client_reclaims_missed_total", "counter", "RECLAIM requests whose deadline the client missed.",
		  CL_MISSED },
		{ "vramd_client_reclaim_late", "gauge", "1 while the client is marked as having ignored a RECLAIM deadline.",
		  CL_LATE },
		{ "vramd_client_reclaim_asked_bytes_total", "counter", "Bytes the broker asked a client to give back.",
		  CL_ASKED },
		{ "vramd_client_reclaim_freed_bytes_total", "counter", "Bytes a client said it gave back when asked.",
		  CL_FREED },
		{ "vramd_client_reclaim_answer_p50_seconds", "gauge", "Median time a client took to answer RECLAIM (its last 128 answers).",
		  CL_P50 },
		{ "vramd_client_reclaim_answer_p99_seconds", "gauge", "99th percentile of the same.", CL_P99 },
	};
	for (size_t m = 0; m < sizeof(clm) / sizeof(clm[0]); m++) {
		family(b, clm[m].name, clm[m].type, clm[m].help);
		for (uint32_t k = 0; k < s->nclients; k++) {
			const struct vram_client_status *c = &s->clients[k];
			if (c->flags & VRAM_CLIENT_SELF)
				continue;
			buf_printf(b, "%s{", clm[m].name);
			client_labels(b, c);
			uint64_t v = cl_value(c, clm[m].f);
			if (clm[m].f == CL_P50 || clm[m].f == CL_P99)
				buf_printf(b, "} %llu.%06llu\n", (unsigned long long)(v / 1000000),
					   (unsigned long long)(v % 1000000));
			else
				buf_printf(b, "} %llu\n", (unsigned long long)v);
		}
	}
}

static void render(struct buf *b, const struct vram_status *s)
{
	uint32_t ndev = s->ndevices < 16 ? s->ndevices : 16;
	render_up(b, 1);
	render_broker(b, s);
	render_devices(b, s, ndev);
	render_client_devices(b, s, ndev);
	render_clients(b, s);
}

/* ---- output -------------------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes text to path atomically: PATH.tmp.PID, fsync, rename. */
static int write_atomic(const char *path, const char *text, size_t len)
{
	_cleanup_free_ char *tmp = NULL;
	int r;
	if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0) {
		tmp = NULL; /* undefined after a failure */
		return -ENOMEM;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	r = fchmod(fd, 0644) < 0 ? -errno : 0;
	if (r == 0)
		r = write_all(fd, text, len);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	/* closed by hand, not by cleanup: a failed close is a failed write */
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

static int emit(struct buf *b, const char *output)
{
	if (b->oom) {
		fprintf(stderr, "vramctl metrics: out of memory\n");
		return EX_SOFTWARE_;
	}
	if (output) {
		int r = write_atomic(output, b->p, b->len);
		if (r < 0) {
			fprintf(stderr, "vramctl metrics: %s: %s\n", output, strerror(-r));
			return EX_IOERR_;
		}
		return 0;
	}
	if (write_all(STDOUT_FILENO, b->p, b->len) < 0) {
		fprintf(stderr, "vramctl metrics: writing to stdout: %m\n");
		return EX_IOERR_;
	}
	return 0;
}

/* The broker's status in *ret (the connection closed again): 0, or -errno
 * with the message printed. */
static int fetch_status(struct ctl *ctl, struct vram_status **ret)
{
	_cleanup_(vram_closep) vram_client *c = NULL;
	int r = vram_connect(ctl->socket, "vramctl", &c);
	if (r < 0) {
		fprintf(stderr, "vramctl metrics: %s\n", vram_last_error());
		return r;
	}
	r = vram_get_status(c, ret);
	if (r < 0)
		fprintf(stderr, "vramctl metrics: status: %s\n", vram_last_error());
	return r;
}

/* `vramctl metrics [--output FILE]`.  Returns the exit code: 0, 64 for bad
 * arguments, 69 when the broker cannot be reached (vramd_up 0 is written
 * all the same), 70 out of memory, 74 when the output cannot be written. */
int cmd_metrics(struct ctl *ctl)
{
	_cleanup_(buf_done) struct buf b = { 0 };
	_cleanup_(vram_status_freep) struct vram_status *s = NULL;
	const char *output = NULL;
	int r;

	for (int i = 1; i < ctl->argc; i++) {
		const char *a = ctl->argv[i];
		if ((!strcmp(a, "--output") || !strcmp(a, "-o")) && i + 1 < ctl->argc) {
			output = ctl->argv[++i];
		} else if (!strncmp(a, "--output=", 9) && a[9]) {
			output = a + 9;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			puts("Usage: vramctl metrics [--output FILE]\n"
			     "Prints the broker's devices, clients and counters in the Prometheus text format\n"
			     "(docs/metrics.md).  --output writes FILE atomically instead of stdout, e.g.\n"
			     "into node_exporter's textfile collector directory (the name must end in .prom).\n"
			     "If the broker is unreachable, vramd_up 0 is written and the exit code is 69.");
			return 0;
		} else {
			fprintf(stderr, "vramctl metrics: unknown argument \"%s\" (usage: metrics [--output FILE])\n", a);
			return EX_USAGE_;
		}
	}
	if (ctl->json) {
		fprintf(stderr, "vramctl metrics: no JSON form (use vramctl status --json)\n");
		return EX_USAGE_;
	}

	r = fetch_status(ctl, &s);
	if (r < 0) {
		render_up(&b, 0);
		r = emit(&b, output);
		return r ? r : EX_UNAVAILABLE_;
	}
	render(&b, s);
	return emit(&b, output);
}
