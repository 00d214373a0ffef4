/* SPDX-License-Identifier: MIT */
/* vramctl quota / clients / evict: administration over the admin socket. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "tools/vramctl.h"

/* Connects to the admin socket; prints why not and returns the exit code. */
static int connect_admin(struct ctl *ctl, vram_client **ret)
{
	const char *path = ctl->admin_socket;
	if (!path)
		path = getenv("VRAMD_ADMIN_SOCKET");
	if (!path || !*path)
		path = VRAM_DEFAULT_ADMIN_SOCKET;
	int r = vram_connect(path, "vramctl", ret);
	if (r == 0)
		return 0;
	fprintf(stderr, "vramctl: %s\n", vram_last_error());
	return r == -EACCES || r == -EPERM ? EX_NOPERM_ : EX_UNAVAILABLE_;
}

static int fail(const char *what, int r)
{
	fprintf(stderr, "vramctl %s: %s\n", what, vram_last_error());
	if (r == -EPERM)
		return EX_NOPERM_;
	if (r == -EINVAL || r == -ENOENT)
		return EX_USAGE_;
	return 1;
}

static int size_arg(const char *flag, const char *v, bool ceiling, uint64_t *ret)
{
	if (ceiling && (!strcmp(v, "none") || !strcmp(v, "unlimited"))) {
		*ret = VRAM_NO_CEILING;
		return 0;
	}
	if (size_parse(v, ret) < 0) {
		fprintf(stderr, "vramctl quota set: %s: \"%s\" is not a size (e.g. 8GiB%s)\n", flag, v,
			ceiling ? ", or none" : "");
		return -1;
	}
	return 0;
}

static void print_size(uint64_t v, bool ceiling)
{
	char b[32];
	if (ceiling && v == VRAM_NO_CEILING)
		printf(" %12s", "-");
	else
		printf(" %12s", ctl_size(v, b, sizeof(b)));
}

int cmd_quota(struct ctl *ctl)
{
	_cleanup_(vram_closep) vram_client *c = NULL;
	const char *sub = ctl->argc > 1 ? ctl->argv[1] : "";
	int r;
	if (!strcmp(sub, "set")) {
		const char *subject = NULL, *device = NULL;
		uint32_t flags = 0;
		uint64_t floor = 0, ceiling = 0;
		for (int i = 2; i < ctl->argc; i++) {
			const char *a = ctl->argv[i];
			if ((!strcmp(a, "--floor") || !strcmp(a, "--ceiling")) && i + 1 < ctl->argc) {
				bool ce = !strcmp(a, "--ceiling");
				if (size_arg(a, ctl->argv[++i], ce, ce ? &ceiling : &floor) < 0)
					return EX_USAGE_;
				flags |= ce ? VRAM_QUOTA_CEILING : VRAM_QUOTA_FLOOR;
			} else if (a[0] == '-' || (subject && device)) {
				fprintf(stderr, "vramctl quota set: unexpected argument \"%s\"\n", a);
				return EX_USAGE_;
			} else if (!subject) {
				subject = a;
			} else {
				device = a;
			}
		}
		if (!subject || !device || !flags) {
			fprintf(stderr, "usage: vramctl quota set SUBJECT DEVICE [--floor SIZE] [--ceiling SIZE|none]\n"
					"  SUBJECT: uid:1000, user:alice, name:comfy-1 or default\n");
			return EX_USAGE_;
		}
		if ((r = connect_admin(ctl, &c)) != 0)
			return r;
		r = vram_quota_set(c, subject, device, flags, floor, ceiling);
		return r < 0 ? fail("quota set", r) : 0;
	}
	if (!strcmp(sub, "rm")) {
		if (ctl->argc < 3 || ctl->argc > 4) {
			fprintf(stderr, "usage: vramctl quota rm SUBJECT [DEVICE]\n");
			return EX_USAGE_;
		}
		if ((r = connect_admin(ctl, &c)) != 0)
			return r;
		r = vram_quota_rm(c, ctl->argv[2], ctl->argc == 4 ? ctl->argv[3] : NULL);
		return r < 0 ? fail("quota rm", r) : 0;
	}
	if (!strcmp(sub, "list")) {
		for (int i = 2; i < ctl->argc; i++) {
			if (!strcmp(ctl->argv[i], "--json"))
				ctl->json = true;
			else {
				fprintf(stderr, "vramctl quota list: unexpected argument \"%s\"\n", ctl->argv[i]);
				return EX_USAGE_;
			}
		}
		if ((r = connect_admin(ctl, &c)) != 0)
			return r;
		_cleanup_free_ char *json = NULL;
		r = vram_quota_list(c, &json);
		if (r < 0)
			return fail("quota list", r);
		if (ctl->json) {
			puts(json);
			return 0;
		}
		json_error_t e;
		json_auto_t *root = json_loads(json, 0, &e);
		json_t *arr = root ? json_object_get(root, "quotas") : NULL;
		printf("%-24s %-8s %12s %12s\n", "SUBJECT", "DEVICE", "FLOOR", "CEILING");
		for (size_t i = 0; arr && i < json_array_size(arr); i++) {
			json_t *q = json_array_get(arr, i);
			json_t *ce = json_object_get(q, "ceiling");
			const char *user = json_string_value(json_object_get(q, "user"));
			char subj[128];
			snprintf(subj, sizeof(subj), "%s%s%s%s", json_string_value(json_object_get(q, "subject")),
				 user ? " (" : "", user ? user : "", user ? ")" : "");
			printf("%-24s %-8s", subj, json_string_value(json_object_get(q, "device")));
			print_size((uint64_t)json_integer_value(json_object_get(q, "floor")), false);
			print_size(json_is_integer(ce) ? (uint64_t)json_integer_value(ce) : VRAM_NO_CEILING, true);
			putchar('\n');
		}
		return 0;
	}
	fprintf(stderr, "usage: vramctl quota set|list|rm ...\n");
	return EX_USAGE_;
}

int cmd_clients(struct ctl *ctl)
{
	_cleanup_(vram_closep) vram_client *c = NULL;
	_cleanup_(vram_status_freep) struct vram_status *s = NULL;
	int r = ctl_fetch_status(ctl, "clients", &c, &s);
	if (r)
		return r;
	char a[32], b[32];
	if (ctl->json) {
		json_auto_t *arr = json_array();
		for (uint32_t i = 0; i < s->nclients; i++)
			json_array_append_new(arr, ctl_client_json(s, i));
		_cleanup_free_ char *txt = json_dumps(arr, JSON_INDENT(2));
		puts(txt ? txt : "[]");
	} else {
		printf("%-5s %-20s %8s %8s %7s %12s %12s %9s\n", "ID", "CLIENT", "PID", "UID", "GRANTS", "HELD",
		       "RECLAIMABLE", "RECLAIMS");
		for (uint32_t i = 0; i < s->nclients; i++) {
			const struct vram_client_status *x = &s->clients[i];
			printf("%-5u %-20.20s %8d %8u %7u %12s %12s %4u/%-4u%s\n", x->id, x->name, x->pid, x->uid,
			       x->ngrants, ctl_size(x->held, a, sizeof(a)), ctl_size(x->reclaimable, b, sizeof(b)),
			       x->reclaims_answered, x->reclaims_answered + x->reclaims_missed,
			       (x->flags & VRAM_CLIENT_RECLAIM_LATE) ? " LATE" : "");
		}
	}
	return 0;
}

int cmd_evict(struct ctl *ctl)
{
	char *end;
	unsigned long id = ctl->argc == 2 ? strtoul(ctl->argv[1], &end, 10) : 0;
	if (ctl->argc != 2 || *end || !id || id > UINT32_MAX) {
		fprintf(stderr, "usage: vramctl evict CLIENT-ID   (ids from vramctl clients)\n");
		return EX_USAGE_;
	}
	_cleanup_(vram_closep) vram_client *c = NULL;
	int r = connect_admin(ctl, &c);
	if (r)
		return r;
	r = vram_evict(c, (uint32_t)id);
	if (r == -ESRCH) {
		fprintf(stderr, "vramctl evict: %s\n", vram_last_error());
		return 1;
	}
	return r < 0 ? fail("evict", r) : 0;
}

int cmd_reload(struct ctl *ctl)
{
	if (ctl->argc != 1) {
		fprintf(stderr, "usage: vramctl reload\n");
		return EX_USAGE_;
	}
	_cleanup_(vram_closep) vram_client *c = NULL;
	int r = connect_admin(ctl, &c);
	if (r)
		return r;
	r = vram_reload(c);
	if (r == -EINVAL) { /* the file does not parse: the admin's to fix, not a usage error */
		fprintf(stderr, "vramctl reload: %s\n", vram_last_error());
		return EX_CONFIG_;
	}
	return r < 0 ? fail("reload", r) : 0;
}
