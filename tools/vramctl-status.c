/* SPDX-License-Identifier: MIT */
/* vramctl status: devices, usage and clients. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "tools/vramctl.h"

static const char *backend_name(uint32_t b)
{
	switch (b) {
	case VRAM_BACKEND_CPU: return "cpu";
	case VRAM_BACKEND_SIM: return "sim";
	case VRAM_BACKEND_CUDA: return "cuda";
	default: return "?";
	}
}

static void uuid_str(const uint8_t u[16], char out[37])
{
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
		 u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

json_t *ctl_client_json(const struct vram_status *s, uint32_t i)
{
	const struct vram_client_status *c = &s->clients[i];
	json_t *o = json_object(), *per = json_object();
	json_object_set_new(o, "id", json_integer(c->id));
	json_object_set_new(o, "name", json_string(c->name));
	json_object_set_new(o, "pid", json_integer(c->pid));
	json_object_set_new(o, "uid", json_integer(c->uid));
	json_object_set_new(o, "gid", json_integer(c->gid));
	json_object_set_new(o, "grants", json_integer(c->ngrants));
	json_object_set_new(o, "held", json_integer((json_int_t)c->held));
	json_object_set_new(o, "reclaimable", json_integer((json_int_t)c->reclaimable));
	json_object_set_new(o, "reclaims_answered", json_integer(c->reclaims_answered));
	json_object_set_new(o, "reclaims_missed", json_integer(c->reclaims_missed));
	json_object_set_new(o, "reclaim_late", json_boolean(c->flags & VRAM_CLIENT_RECLAIM_LATE));
	json_object_set_new(o, "self", json_boolean(c->flags & VRAM_CLIENT_SELF));
	json_t *dev = json_object();
	for (uint32_t d = 0; d < s->ndevices && d < 16; d++) {
		if (c->held_dev[d])
			json_object_set_new(per, s->devices[d].name, json_integer((json_int_t)c->held_dev[d]));
		if (!c->held_dev[d] && !c->want_dev[d] && !c->share_dev[d] && !c->shared_dev[d])
			continue;
		json_t *x = json_object();
		json_object_set_new(x, "held", json_integer((json_int_t)c->held_dev[d]));
		json_object_set_new(x, "want", json_integer((json_int_t)c->want_dev[d]));
		json_object_set_new(x, "fair_share", json_integer((json_int_t)c->share_dev[d]));
		json_object_set_new(x, "shared", json_integer((json_int_t)c->shared_dev[d]));
		json_object_set_new(dev, s->devices[d].name, x);
	}
	json_object_set_new(o, "held_per_device", per);
	json_object_set_new(o, "devices", dev);
	json_object_set_new(o, "restored", json_boolean(c->flags & VRAM_CLIENT_RESTORED));
	json_object_set_new(o, "reclaim_answer_p50_ms", json_real(c->reclaim_p50_us / 1000.0));
	json_object_set_new(o, "reclaim_answer_p99_ms", json_real(c->reclaim_p99_us / 1000.0));
	json_object_set_new(o, "reclaim_asked", json_integer((json_int_t)c->reclaim_asked));
	json_object_set_new(o, "reclaim_freed", json_integer((json_int_t)c->reclaim_freed));
	return o;
}

int ctl_fetch_status(struct ctl *ctl, const char *cmd, vram_client **ret_client, struct vram_status **ret_status)
{
	for (int i = 1; i < ctl->argc; i++) {
		if (!strcmp(ctl->argv[i], "--json"))
			ctl->json = true;
		else {
			fprintf(stderr, "vramctl %s: unknown argument \"%s\"\n", cmd, ctl->argv[i]);
			return EX_USAGE_;
		}
	}
	_cleanup_(vram_closep) vram_client *c = NULL;
	int r = ctl_connect(ctl, &c);
	if (r)
		return r;
	if (vram_get_status(c, ret_status) < 0) {
		fprintf(stderr, "vramctl %s: %s\n", cmd, vram_last_error());
		return EX_UNAVAILABLE_;
	}
	*ret_client = TAKE_PTR(c);
	return 0;
}

static int print_json(const struct vram_status *s, const char *socket)
{
	json_auto_t *root = json_object();
	json_t *devs = json_array(), *cls = json_array();
	char u[37];
	json_object_set_new(root, "socket", json_string(socket));
	json_object_set_new(root, "broker_pid", json_integer(s->broker_pid));
	json_object_set_new(root, "uptime_ms", json_integer((json_int_t)s->uptime_ms));
	json_object_set_new(root, "grants", json_integer((json_int_t)s->grants));
	json_object_set_new(root, "protocol_errors", json_integer((json_int_t)s->protocol_errors));
	json_object_set_new(root, "note", json_string(s->note));
	for (uint32_t i = 0; i < s->ndevices; i++) {
		const struct vram_device_info *d = &s->devices[i];
		json_t *o = json_object();
		uuid_str(d->uuid, u);
		json_object_set_new(o, "index", json_integer(d->index));
		json_object_set_new(o, "name", json_string(d->name));
		json_object_set_new(o, "backend", json_string(backend_name(d->backend)));
		json_object_set_new(o, "simulated", json_boolean(d->flags & VRAM_DEV_SIMULATED));
		json_object_set_new(o, "label", json_string(d->label));
		json_object_set_new(o, "uuid", json_string(u));
		json_object_set_new(o, "numa_node", json_integer(d->numa_node));
		json_object_set_new(o, "total", json_integer((json_int_t)d->total));
		json_object_set_new(o, "used", json_integer((json_int_t)d->used));
		json_object_set_new(o, "free", json_integer((json_int_t)(d->total - d->used)));
		json_object_set_new(o, "reclaimable", json_integer((json_int_t)d->reclaimable));
		json_object_set_new(o, "granularity", json_integer((json_int_t)d->granularity));
		json_object_set_new(o, "pages", json_string(ctl_page_kind(d)));
		json_object_set_new(o, "ready", json_integer((json_int_t)d->ready));
		json_object_set_new(o, "ready_target", json_integer((json_int_t)d->ready_target));
		json_object_set_new(o, "ready_hits", json_integer((json_int_t)d->ready_hits));
		json_object_set_new(o, "ready_misses", json_integer((json_int_t)d->ready_misses));
		json_object_set_new(o, "ready_refilled", json_integer((json_int_t)d->ready_refilled));
		json_object_set_new(o, "cache", json_integer((json_int_t)d->cache));
		json_object_set_new(o, "cache_max", json_integer((json_int_t)d->cache_max));
		json_array_append_new(devs, o);
	}
	for (uint32_t i = 0; i < s->nclients; i++)
		json_array_append_new(cls, ctl_client_json(s, i));
	json_object_set_new(root, "devices", devs);
	json_object_set_new(root, "clients", cls);
	_cleanup_free_ char *txt = json_dumps(root, JSON_INDENT(2));
	if (!txt)
		return EX_SOFTWARE_;
	puts(txt);
	return 0;
}

const char *ctl_page_kind(const struct vram_device_info *d)
{
	if (d->backend == VRAM_BACKEND_CUDA)
		return "device";
	if (d->flags & VRAM_DEV_HUGETLB)
		return "hugetlb";
	return (d->flags & VRAM_DEV_THP) ? "thp" : "4k";
}

static void print_devices(const struct vram_status *s)
{
	char a[32], b[32], f[32], rc[32];
	printf("\n%-8s %-5s %-7s %12s %12s %12s %12s  %s\n", "DEVICE", "KIND", "PAGES", "TOTAL", "USED", "FREE",
	       "RECLAIMABLE", "LABEL");
	for (uint32_t i = 0; i < s->ndevices; i++) {
		const struct vram_device_info *d = &s->devices[i];
		printf("%-8s %-5s %-7s %12s %12s %12s %12s  %s%s\n", d->name, backend_name(d->backend), ctl_page_kind(d),
		       ctl_size(d->total, a, sizeof(a)), ctl_size(d->used, b, sizeof(b)),
		       ctl_size(d->total - d->used, f, sizeof(f)), ctl_size(d->reclaimable, rc, sizeof(rc)),
		       d->label, (d->flags & VRAM_DEV_SIMULATED) ? " [SIMULATED]" : "");
	}
	for (uint32_t i = 0; i < s->ndevices; i++) {
		const struct vram_device_info *d = &s->devices[i];
		if (d->ready_target)
			printf("%s: ready reserve %s of %s, %llu hits, %llu misses\n", d->name,
			       ctl_size(d->ready, a, sizeof(a)), ctl_size(d->ready_target, b, sizeof(b)),
			       (unsigned long long)d->ready_hits, (unsigned long long)d->ready_misses);
		if (d->cache_max)
			printf("%s: shared copies %s of a %s cache budget\n", d->name, ctl_size(d->cache, a, sizeof(a)),
			       ctl_size(d->cache_max, b, sizeof(b)));
	}
}

/* Per client and device: held, wanted, fair share, reclaims. */
static void print_shares(const struct vram_status *s)
{
	char a[32], b[32], c[32];
	bool any = false;
	for (uint32_t i = 0; i < s->nclients; i++) {
		const struct vram_client_status *cl = &s->clients[i];
		for (uint32_t d = 0; d < s->ndevices && d < 16; d++) {
			if (!cl->held_dev[d] && !cl->want_dev[d])
				continue;
			if (!any)
				printf("\n%-5s %-20s %-8s %12s %12s %12s %9s %8s %8s\n", "ID", "CLIENT", "DEVICE", "HELD", "WANTED",
				       "FAIR SHARE", "RECLAIMS", "P50 MS", "P99 MS");
			any = true;
			printf("%-5u %-20.20s %-8s %12s %12s %12s %9u %8.1f %8.1f\n", cl->id, cl->name, s->devices[d].name,
			       ctl_size(cl->held_dev[d], a, sizeof(a)), ctl_size(cl->want_dev[d], b, sizeof(b)),
			       ctl_size(cl->share_dev[d], c, sizeof(c)), cl->reclaims_answered, cl->reclaim_p50_us / 1000.0,
			       cl->reclaim_p99_us / 1000.0);
		}
	}
}

int cmd_status(struct ctl *ctl)
{
	_cleanup_(vram_closep) vram_client *c = NULL;
	_cleanup_(vram_status_freep) struct vram_status *s = NULL;
	int r = ctl_fetch_status(ctl, "status", &c, &s);
	if (r)
		return r;
	if (ctl->json)
		return print_json(s, vram_client_socket(c));
	char a[32], b[32];
	printf("vramd pid %u on %s, up %llu s, %llu grants\n", s->broker_pid, vram_client_socket(c),
	       (unsigned long long)(s->uptime_ms / 1000), (unsigned long long)s->grants);
	if (s->note[0])
		printf("note: %s\n", s->note);
	print_devices(s);
	printf("\n%-5s %-20s %8s %8s %7s %12s %12s\n", "ID", "CLIENT", "PID", "UID", "GRANTS", "HELD",
	       "RECLAIMABLE");
	for (uint32_t i = 0; i < s->nclients; i++) {
		const struct vram_client_status *cl = &s->clients[i];
		printf("%-5u %-20.20s %8d %8u %7u %12s %12s%s%s%s\n", cl->id, cl->name, cl->pid, cl->uid, cl->ngrants,
		       ctl_size(cl->held, a, sizeof(a)), ctl_size(cl->reclaimable, b, sizeof(b)),
		       (cl->flags & VRAM_CLIENT_SELF) ? "  (this vramctl)" : "",
		       (cl->flags & VRAM_CLIENT_RESTORED) ? "  (no connection)" : "",
		       (cl->flags & VRAM_CLIENT_RECLAIM_LATE) ? "  IGNORED RECLAIM" : "");
	}
	print_shares(s);
	return 0;
}
