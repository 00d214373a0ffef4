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
	for (uint32_t d = 0; d < s->ndevices && d < 16; d++)
		if (c->held_dev[d])
			json_object_set_new(per, s->devices[d].name, json_integer((json_int_t)c->held_dev[d]));
	json_object_set_new(o, "held_per_device", per);
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

int cmd_status(struct ctl *ctl)
{
	_cleanup_(vram_closep) vram_client *c = NULL;
	_cleanup_(vram_status_freep) struct vram_status *s = NULL;
	int r = ctl_fetch_status(ctl, "status", &c, &s);
	if (r)
		return r;
	if (ctl->json)
		return print_json(s, vram_client_socket(c));
	char a[32], b[32], f[32], rc[32];
	printf("vramd pid %u on %s, up %llu s, %llu grants\n", s->broker_pid, vram_client_socket(c),
	       (unsigned long long)(s->uptime_ms / 1000), (unsigned long long)s->grants);
	if (s->note[0])
		printf("note: %s\n", s->note);
	printf("\n%-8s %-5s %12s %12s %12s %12s  %s\n", "DEVICE", "KIND", "TOTAL", "USED", "FREE", "RECLAIMABLE",
	       "LABEL");
	for (uint32_t i = 0; i < s->ndevices; i++) {
		const struct vram_device_info *d = &s->devices[i];
		printf("%-8s %-5s %12s %12s %12s %12s  %s%s\n", d->name, backend_name(d->backend),
		       ctl_size(d->total, a, sizeof(a)), ctl_size(d->used, b, sizeof(b)),
		       ctl_size(d->total - d->used, f, sizeof(f)), ctl_size(d->reclaimable, rc, sizeof(rc)),
		       d->label, (d->flags & VRAM_DEV_SIMULATED) ? " [SIMULATED]" : "");
	}
	printf("\n%-5s %-20s %8s %8s %7s %12s %12s\n", "ID", "CLIENT", "PID", "UID", "GRANTS", "HELD",
	       "RECLAIMABLE");
	for (uint32_t i = 0; i < s->nclients; i++) {
		const struct vram_client_status *cl = &s->clients[i];
		printf("%-5u %-20.20s %8d %8u %7u %12s %12s%s%s\n", cl->id, cl->name, cl->pid, cl->uid, cl->ngrants,
		       ctl_size(cl->held, a, sizeof(a)), ctl_size(cl->reclaimable, b, sizeof(b)),
		       (cl->flags & VRAM_CLIENT_SELF) ? "  (this vramctl)" : "",
		       (cl->flags & VRAM_CLIENT_RECLAIM_LATE) ? "  IGNORED RECLAIM" : "");
	}
	return 0;
}
