/* SPDX-License-Identifier: MIT */
/* vramctl cache list|drop: the broker's shared read-only copies. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "tools/vramctl.h"

static int cache_list(struct ctl *ctl, vram_client *c)
{
	_cleanup_free_ char *text = NULL;
	if (vram_cache_list(c, &text) < 0) {
		fprintf(stderr, "vramctl cache list: %s\n", vram_last_error());
		return EX_UNAVAILABLE_;
	}
	json_error_t e;
	json_auto_t *root = json_loads(text, 0, &e);
	if (!root) {
		fprintf(stderr, "vramctl cache list: the broker sent bad JSON: %s\n", e.text);
		return EX_SOFTWARE_;
	}
	if (ctl->json) {
		_cleanup_free_ char *pretty = json_dumps(root, JSON_INDENT(2));
		puts(pretty ? pretty : text);
		return 0;
	}
	char a[32], b[32], c3[32];
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(root, "devices"), i, v)
		printf("%s: %s of copies (%s in use) of a %s budget; %lld hits, %lld fills, %lld evictions\n",
		       json_string_value(json_object_get(v, "device")),
		       ctl_size((uint64_t)json_integer_value(json_object_get(v, "bytes")), a, sizeof(a)),
		       ctl_size((uint64_t)json_integer_value(json_object_get(v, "in_use")), b, sizeof(b)),
		       ctl_size((uint64_t)json_integer_value(json_object_get(v, "budget")), c3, sizeof(c3)),
		       json_integer_value(json_object_get(v, "hits")), json_integer_value(json_object_get(v, "fills")),
		       json_integer_value(json_object_get(v, "evictions")));
	printf("\n%-6s %-8s %12s %6s %-10s %-18s %10s  %s\n", "ID", "DEVICE", "BYTES", "USERS", "STATE", "CONVERSION",
	       "IDLE S", "FILE");
	json_array_foreach(json_object_get(root, "copies"), i, v)
		printf("%-6lld %-8s %12s %6lld %-10s %-18s %10.1f  %s\n", json_integer_value(json_object_get(v, "id")),
		       json_string_value(json_object_get(v, "device")),
		       ctl_size((uint64_t)json_integer_value(json_object_get(v, "bytes")), a, sizeof(a)),
		       json_integer_value(json_object_get(v, "users")), json_string_value(json_object_get(v, "state")),
		       json_string_value(json_object_get(v, "conversion")),
		       (double)json_integer_value(json_object_get(v, "idle_ms")) / 1000.0,
		       json_string_value(json_object_get(v, "file")));
	return 0;
}

static int cache_drop(struct ctl *ctl, vram_client *c)
{
	const char *file = NULL;
	uint32_t flags = 0;
	for (int i = 2; i < ctl->argc; i++) {
		const char *a = ctl->argv[i];
		if (!strcmp(a, "--all"))
			flags |= VRAM_CACHE_DROP_ALL;
		else if (!strcmp(a, "--force"))
			flags |= VRAM_CACHE_DROP_FORCE;
		else if (a[0] != '-' && !file)
			file = a;
		else {
			fprintf(stderr, "vramctl cache drop: unexpected argument \"%s\"\n", a);
			return EX_USAGE_;
		}
	}
	if (!file == !(flags & VRAM_CACHE_DROP_ALL)) {
		fprintf(stderr, "usage: vramctl cache drop FILE|--all [--force]\n");
		return EX_USAGE_;
	}
	_cleanup_close_ int fd = -1;
	if (file && (fd = open(file, O_RDONLY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "vramctl cache drop: %s: %m\n", file);
		return errno == ENOENT ? EX_NOINPUT_ : EX_NOPERM_;
	}
	int r = vram_cache_drop(c, fd, flags);
	if (r < 0) {
		fprintf(stderr, "vramctl cache drop: %s\n", vram_last_error());
		return r == -EPERM ? EX_NOPERM_ : r == -EBUSY ? EX_TEMPFAIL_ : EX_UNAVAILABLE_;
	}
	if (flags & VRAM_CACHE_DROP_FORCE)
		printf("dropped what nobody used; the users of the others were asked to let go\n");
	return 0;
}

int cmd_cache(struct ctl *ctl)
{
	const char *sub = ctl->argc > 1 ? ctl->argv[1] : "";
	bool list = !strcmp(sub, "list"), drop = !strcmp(sub, "drop");
	if (!list && !drop) {
		fprintf(stderr, "usage: vramctl cache list [--json] | cache drop FILE|--all [--force]\n");
		return EX_USAGE_;
	}
	for (int i = 2; list && i < ctl->argc; i++) {
		if (strcmp(ctl->argv[i], "--json")) {
			fprintf(stderr, "vramctl cache list: unexpected argument \"%s\"\n", ctl->argv[i]);
			return EX_USAGE_;
		}
		ctl->json = true;
	}
	_cleanup_(vram_closep) vram_client *c = NULL;
	int r = ctl_connect(ctl, &c);
	if (r)
		return r;
	return list ? cache_list(ctl, c) : cache_drop(ctl, c);
}
