/* SPDX-License-Identifier: MIT */
/*
 * The quota store (see quota.h for the model): subjects, per-device floors
 * and ceilings, lookup, and strict atomic persistence as JSON.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/quota.h"
#include "common/cleanup.h"
#include "common/util.h"

/* Largest floor or ceiling: JSON integers are signed 64-bit in jansson. */
#define QUOTA_SIZE_MAX ((uint64_t)INT64_MAX)
#define QUOTA_FILE_MAX (16u << 20)
#define QUOTA_TMP_FILE ".quotas.json.tmp"

static int fail(char *err, size_t errlen, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Sets err (when given) and returns r, so that callers write
 * `return fail(err, errlen, -EINVAL, "...")`. */
static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;
	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

/* ======================================================================
 * Subjects and devices
 * ====================================================================== */

/* Printable, no control characters (what the broker accepts at HELLO). */
/* Canonical decimal (no sign, no leading zero, no spaces) up to max. */
static int parse_canonical_u64(const char *s, uint64_t max, uint64_t *ret)
{
	uint64_t v = 0;
	if (!*s || (s[0] == '0' && s[1]))
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		unsigned d = (unsigned)(*s - '0');
		if (v > (max - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*ret = v;
	return 0;
}

static int lookup_user(const char *user, uint32_t *ret_uid, char *err, size_t errlen)
{
	long sz = sysconf(_SC_GETPW_R_SIZE_MAX);
	size_t len = sz > 0 ? (size_t)sz : 4096;

	for (int tries = 0; tries < 8; tries++, len *= 2) {
		_cleanup_free_ char *buf = malloc(len);
		struct passwd pw, *res = NULL;
		if (!buf)
			return fail(err, errlen, -ENOMEM, "out of memory");
		int r = getpwnam_r(user, &pw, buf, len, &res);
		if (r == ERANGE)
			continue;
		if (r == 0 && !res)
			return fail(err, errlen, -ENOENT, "user:%s: no such user", user);
		if (r != 0)
			return fail(err, errlen, -r, "user:%s: cannot look the user up: %s", user, strerror(r));
		if (pw.pw_uid == (uid_t)-1)
			return fail(err, errlen, -EINVAL, "user:%s: has uid -1", user);
		*ret_uid = (uint32_t)pw.pw_uid;
		return 0;
	}
	return fail(err, errlen, -ERANGE, "user:%s: the user database entry is too large", user);
}

int quota_subject_parse(const char *text, struct quota_subject *ret, char *err, size_t errlen)
{
	struct quota_subject s;
	memset(&s, 0, sizeof(s));

	if (!text)
		return fail(err, errlen, -EINVAL, "no quota subject given");
	if (!strcmp(text, "default")) {
		s.kind = QUOTA_DEFAULT;
	} else if (!strncmp(text, "uid:", 4)) {
		uint64_t v;
		int r = parse_canonical_u64(text + 4, UINT32_MAX - 1, &v);
		if (r < 0)
			return fail(err, errlen, -EINVAL, "\"%s\": %s", text,
				    r == -ERANGE ? "uid out of range (0 to 4294967294)"
						 : "not a uid (uid:N, N a decimal number)");
		s.kind = QUOTA_UID;
		s.uid = (uint32_t)v;
	} else if (!strncmp(text, "user:", 5)) {
		const char *user = text + 5;
		if (!*user || strlen(user) >= sizeof(s.name) || !text_printable(user))
			return fail(err, errlen, -EINVAL, "\"%s\": not a user name (1 to %u printable bytes)", text,
				    VRAMD_NAME_MAX - 1);
		int r = lookup_user(user, &s.uid, err, errlen);
		if (r < 0)
			return r;
		s.kind = QUOTA_UID;
		str_copy(s.name, user, sizeof(s.name));
	} else if (!strncmp(text, "name:", 5)) {
		const char *name = text + 5;
		if (!*name || strlen(name) >= sizeof(s.name) || !text_printable(name))
			return fail(err, errlen, -EINVAL, "\"%s\": not a client name (1 to %u printable bytes)", text,
				    VRAMD_NAME_MAX - 1);
		s.kind = QUOTA_NAME;
		str_copy(s.name, name, sizeof(s.name));
	} else {
		return fail(err, errlen, -EINVAL,
			    "\"%s\" is not a quota subject (uid:N, user:NAME, name:CLIENT or default)", text);
	}
	*ret = s;
	return 0;
}

const char *quota_subject_format(const struct quota_subject *s, char *buf, size_t len)
{
	switch (s->kind) {
	case QUOTA_UID:
		snprintf(buf, len, "uid:%u", s->uid);
		break;
	case QUOTA_NAME:
		snprintf(buf, len, "name:%s", s->name);
		break;
	default:
		snprintf(buf, len, "default");
		break;
	}
	return buf;
}

bool quota_subject_equal(const struct quota_subject *a, const struct quota_subject *b)
{
	if (a->kind != b->kind)
		return false;
	switch (a->kind) {
	case QUOTA_UID: return a->uid == b->uid;
	case QUOTA_NAME: return !strcmp(a->name, b->name);
	default: return true;
	}
}

static bool subject_valid(const struct quota_subject *s)
{
	switch (s->kind) {
	case QUOTA_DEFAULT: return true;
	case QUOTA_UID: return s->uid != UINT32_MAX && memchr(s->name, 0, sizeof(s->name)) && text_printable(s->name);
	case QUOTA_NAME:
		return s->name[0] && memchr(s->name, 0, sizeof(s->name)) && text_printable(s->name);
	default: return false;
	}
}

int quota_device_valid(const char *name)
{
	uint64_t n;
	if (!name)
		return 0;
	if (!strcmp(name, "cpu"))
		return 1;
	if (strncmp(name, "cuda:", 5))
		return 0;
	return parse_canonical_u64(name + 5, 999, &n) == 0;
}

int quota_size_parse(const char *text, bool is_ceiling, uint64_t *ret)
{
	uint64_t v;
	if (!text)
		return -EINVAL;
	if (!strcmp(text, "none") || !strcmp(text, "unlimited")) {
		*ret = is_ceiling ? QUOTA_NO_CEILING : 0;
		return 0;
	}
	int r = size_parse(text, &v);
	if (r < 0)
		return r;
	if (v > QUOTA_SIZE_MAX)
		return -ERANGE;
	*ret = v;
	return 0;
}

/* ======================================================================
 * The store
 * ====================================================================== */

void quota_store_init(struct quota_store *s)
{
	memset(s, 0, sizeof(*s));
}

void quota_store_clear(struct quota_store *s)
{
	free(s->entries);
	quota_store_init(s);
}

int quota_store_copy(struct quota_store *dst, const struct quota_store *src)
{
	struct quota_entry *e = NULL;
	if (src->n) {
		e = malloc(src->n * sizeof(*e));
		if (!e)
			return -ENOMEM;
		memcpy(e, src->entries, src->n * sizeof(*e));
	}
	free(dst->entries);
	dst->entries = e;
	dst->n = dst->cap = src->n;
	return 0;
}

/* cuda:2 before cuda:10: devices compare by kind, then number. */
static int device_cmp(const char *a, const char *b)
{
	uint64_t x, y;
	if (!strncmp(a, "cuda:", 5) && !strncmp(b, "cuda:", 5) && parse_canonical_u64(a + 5, 999, &x) == 0 &&
	    parse_canonical_u64(b + 5, 999, &y) == 0)
		return x < y ? -1 : x > y;
	return strcmp(a, b);
}

static int entry_cmp(const struct quota_subject *sa, const char *da, const struct quota_subject *sb,
		     const char *db)
{
	int c = device_cmp(da, db);
	if (c)
		return c;
	if (sa->kind != sb->kind)
		return sa->kind < sb->kind ? -1 : 1;
	if (sa->kind == QUOTA_UID)
		return sa->uid < sb->uid ? -1 : sa->uid > sb->uid;
	if (sa->kind == QUOTA_NAME)
		return strcmp(sa->name, sb->name);
	return 0;
}

/* Index of the entry of subj on device, or of where it would go (with
 * *found false). */
static size_t store_pos(const struct quota_store *s, const struct quota_subject *subj, const char *device,
			bool *found)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct quota_entry *e = &s->entries[mid];
		int c = entry_cmp(&e->subject, e->device, subj, device);
		if (c == 0) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

const struct quota_entry *quota_store_find(const struct quota_store *s, const struct quota_subject *subj,
					   const char *device)
{
	bool found;
	if (!device)
		return NULL;
	size_t i = store_pos(s, subj, device, &found);
	return found ? &s->entries[i] : NULL;
}

static int store_insert(struct quota_store *s, size_t at, const struct quota_entry *e)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		struct quota_entry *v = realloc(s->entries, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		s->entries = v;
		s->cap = cap;
	}
	memmove(&s->entries[at + 1], &s->entries[at], (s->n - at) * sizeof(*e));
	s->entries[at] = *e;
	s->n++;
	return 0;
}

uint64_t quota_floor_sum(const struct quota_store *s, const char *device)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < s->n; i++) {
		const struct quota_entry *e = &s->entries[i];
		if (strcmp(e->device, device))
			continue;
		sum = e->floor > UINT64_MAX - sum ? UINT64_MAX : sum + e->floor;
	}
	return sum;
}

int quota_check_floors(const struct quota_store *s, const char *device, uint64_t capacity, char *err,
		       size_t errlen)
{
	char a[32], b[32];
	uint64_t sum = quota_floor_sum(s, device);
	if (sum <= capacity)
		return 0;
	return fail(err, errlen, -ENOSPC, "floors on %s sum to %s, more than its capacity of %s", device,
		    size_format(sum, a, sizeof(a)), size_format(capacity, b, sizeof(b)));
}

int quota_store_set(struct quota_store *s, const struct quota_subject *subj, const char *device,
		    const struct quota_update *u, uint64_t capacity, char *err, size_t errlen)
{
	char a[32], b[32], sub[VRAMD_NAME_MAX + 8];
	bool found;

	if (!subject_valid(subj))
		return fail(err, errlen, -EINVAL, "invalid quota subject");
	quota_subject_format(subj, sub, sizeof(sub));
	if (!quota_device_valid(device))
		return fail(err, errlen, -EINVAL, "\"%s\" is not a device name (cpu or cuda:N)", device ? device : "");
	if (!u->set_floor && !u->set_ceiling)
		return fail(err, errlen, -EINVAL, "quota %s on %s: nothing to set (give a floor or a ceiling)", sub,
			    device);
	if (u->set_floor && u->floor > QUOTA_SIZE_MAX)
		return fail(err, errlen, -EINVAL, "quota %s on %s: floor too large", sub, device);
	if (u->set_ceiling && u->ceiling != QUOTA_NO_CEILING && u->ceiling > QUOTA_SIZE_MAX)
		return fail(err, errlen, -EINVAL, "quota %s on %s: ceiling too large", sub, device);

	size_t at = store_pos(s, subj, device, &found);
	struct quota_entry e;
	if (found) {
		e = s->entries[at];
	} else {
		memset(&e, 0, sizeof(e));
		e.subject = *subj;
		str_copy(e.device, device, sizeof(e.device));
		e.ceiling = QUOTA_NO_CEILING;
	}
	/* A user name given now (user:NAME) replaces the stored one; uid:N
	 * keeps it. */
	if (subj->kind == QUOTA_UID && subj->name[0])
		str_copy(e.subject.name, subj->name, sizeof(e.subject.name));
	uint64_t old_floor = found ? e.floor : 0;
	if (u->set_floor)
		e.floor = u->floor;
	if (u->set_ceiling)
		e.ceiling = u->ceiling;
	if (e.ceiling != QUOTA_NO_CEILING && e.floor > e.ceiling)
		return fail(err, errlen, -EINVAL, "quota %s on %s: floor %s is above the ceiling %s", sub, device,
			    size_format(e.floor, a, sizeof(a)), size_format(e.ceiling, b, sizeof(b)));
	/* Only a change that raises the sum is held to the capacity, so that
	 * floors left over-committed (a smaller GPU than when they were set)
	 * can still be lowered one at a time. */
	if (capacity != QUOTA_CAPACITY_UNKNOWN && e.floor > old_floor) {
		uint64_t others = quota_floor_sum(s, device) - old_floor;
		uint64_t sum = e.floor > UINT64_MAX - others ? UINT64_MAX : others + e.floor;
		if (sum > capacity) {
			char c[32];
			return fail(err, errlen, -ENOSPC,
				    "quota %s on %s: floors would sum to %s, more than the device's %s "
				    "(%s guaranteed to others)",
				    sub, device, size_format(sum, a, sizeof(a)), size_format(capacity, b, sizeof(b)),
				    size_format(others, c, sizeof(c)));
		}
	}
	if (found) {
		s->entries[at] = e;
		return 0;
	}
	if (s->n >= QUOTA_MAX_ENTRIES)
		return fail(err, errlen, -ENOSPC, "quota %s on %s: the broker holds %u quota entries already (max)",
			    sub, device, QUOTA_MAX_ENTRIES);
	if (store_insert(s, at, &e) < 0)
		return fail(err, errlen, -ENOMEM, "out of memory");
	return 0;
}

int quota_store_remove(struct quota_store *s, const struct quota_subject *subj, const char *device, char *err,
		       size_t errlen)
{
	char sub[VRAMD_NAME_MAX + 8];
	size_t k = 0;
	int removed = 0;

	for (size_t i = 0; i < s->n; i++) {
		const struct quota_entry *e = &s->entries[i];
		if (quota_subject_equal(&e->subject, subj) && (!device || !strcmp(e->device, device))) {
			removed++;
			continue;
		}
		if (k != i)
			s->entries[k] = *e;
		k++;
	}
	s->n = k;
	if (removed)
		return removed;
	quota_subject_format(subj, sub, sizeof(sub));
	if (device)
		return fail(err, errlen, -ENOENT, "no quota for %s on %s", sub, device);
	return fail(err, errlen, -ENOENT, "no quota for %s", sub);
}

void quota_lookup(const struct quota_store *s, uint32_t uid, const char *name, const char *device,
		  struct quota_match *ret)
{
	memset(ret, 0, sizeof(*ret));
	if (!device)
		return;
	/* Entries are sorted by device, so this could bisect; a linear scan
	 * of at most QUOTA_MAX_ENTRIES is cheap next to an allocation. */
	for (size_t i = 0; i < s->n; i++) {
		const struct quota_entry *e = &s->entries[i];
		if (strcmp(e->device, device))
			continue;
		switch (e->subject.kind) {
		case QUOTA_NAME:
			if (name && *name && !strcmp(e->subject.name, name))
				ret->by_name = e;
			break;
		case QUOTA_UID:
			if (e->subject.uid == uid)
				ret->by_uid = e;
			break;
		case QUOTA_DEFAULT:
			ret->by_default = e;
			break;
		}
	}
	ret->effective = ret->by_name ? ret->by_name : ret->by_uid ? ret->by_uid : ret->by_default;
}

/* ======================================================================
 * JSON
 * ====================================================================== */

int quota_store_to_json(const struct quota_store *s, char **ret)
{
	char sub[VRAMD_NAME_MAX + 8];
	json_t *root = json_object(), *arr = json_array();
	int r = -ENOMEM;

	if (!root || !arr) {
		json_decref(arr);
		goto out;
	}
	if (json_object_set_new(root, "version", json_integer(QUOTA_FILE_VERSION)) < 0 ||
	    json_object_set_new(root, "quotas", arr) < 0)
		goto out;
	for (size_t i = 0; i < s->n; i++) {
		const struct quota_entry *e = &s->entries[i];
		json_t *o = json_object();
		if (!o || json_array_append_new(arr, o) < 0)
			goto out;
		if (json_object_set_new(o, "subject", json_string(quota_subject_format(&e->subject, sub, sizeof(sub)))) < 0)
			goto out;
		if (e->subject.kind == QUOTA_UID && e->subject.name[0] &&
		    json_object_set_new(o, "user", json_string(e->subject.name)) < 0)
			goto out;
		if (json_object_set_new(o, "device", json_string(e->device)) < 0 ||
		    json_object_set_new(o, "floor", json_integer((json_int_t)e->floor)) < 0 ||
		    json_object_set_new(o, "ceiling", e->ceiling == QUOTA_NO_CEILING
							      ? json_null()
							      : json_integer((json_int_t)e->ceiling)) < 0)
			goto out;
	}
	char *txt = json_dumps(root, JSON_INDENT(2));
	if (!txt)
		goto out;
	/* A trailing newline, for people who cat the file. */
	size_t len = strlen(txt);
	char *t = realloc(txt, len + 2);
	if (!t) {
		free(txt);
		goto out;
	}
	t[len] = '\n';
	t[len + 1] = '\0';
	*ret = t;
	r = 0;
out:
	json_decref(root);
	return r;
}

static int entry_from_json(json_t *o, size_t idx, struct quota_entry *ret, const char *origin, char *err,
			   size_t errlen)
{
	const char *key;
	json_t *v;
	const char *subject = NULL, *user = NULL, *device = NULL;
	json_t *floor = NULL, *ceiling = NULL;
	char why[QUOTA_ERR_MAX];

	if (!json_is_object(o))
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu] is not an object", origin, idx);
	json_object_foreach(o, key, v) {
		if (!strcmp(key, "subject") || !strcmp(key, "user") || !strcmp(key, "device")) {
			if (!json_is_string(v))
				return fail(err, errlen, -EINVAL, "%s: quotas[%zu].%s is not a string", origin, idx, key);
			const char *sv = json_string_value(v);
			if (strlen(sv) != json_string_length(v))
				return fail(err, errlen, -EINVAL, "%s: quotas[%zu].%s contains a NUL byte", origin, idx,
					    key);
			*(key[0] == 's' ? &subject : key[0] == 'u' ? &user : &device) = sv;
		} else if (!strcmp(key, "floor")) {
			floor = v;
		} else if (!strcmp(key, "ceiling")) {
			ceiling = v;
		} else {
			return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: unknown key \"%s\"", origin, idx, key);
		}
	}
	if (!subject || !device || !floor || !ceiling)
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: missing \"%s\"", origin, idx,
			    !subject ? "subject" : !device ? "device" : !floor ? "floor" : "ceiling");

	struct quota_entry e;
	memset(&e, 0, sizeof(e));
	/* The file holds canonical subjects only: no user database look-ups
	 * at start, and no entry that changes meaning when an account does. */
	if (!strncmp(subject, "user:", 5))
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: subject \"%s\" is not canonical (uid:N)", origin,
			    idx, subject);
	if (quota_subject_parse(subject, &e.subject, why, sizeof(why)) < 0)
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: %s", origin, idx, why);
	if (user) {
		if (e.subject.kind != QUOTA_UID)
			return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: \"user\" given for %s", origin, idx, subject);
		if (!*user || strlen(user) >= sizeof(e.subject.name) || !text_printable(user))
			return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: bad user name", origin, idx);
		str_copy(e.subject.name, user, sizeof(e.subject.name));
	}
	if (!quota_device_valid(device))
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: \"%s\" is not a device name (cpu or cuda:N)",
			    origin, idx, device);
	str_copy(e.device, device, sizeof(e.device));
	if (!json_is_integer(floor) || json_integer_value(floor) < 0)
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu].floor is not a byte count", origin, idx);
	e.floor = (uint64_t)json_integer_value(floor);
	if (json_is_null(ceiling)) {
		e.ceiling = QUOTA_NO_CEILING;
	} else if (json_is_integer(ceiling) && json_integer_value(ceiling) >= 0) {
		e.ceiling = (uint64_t)json_integer_value(ceiling);
	} else {
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu].ceiling is neither a byte count nor null", origin,
			    idx);
	}
	if (e.ceiling != QUOTA_NO_CEILING && e.floor > e.ceiling)
		return fail(err, errlen, -EINVAL, "%s: quotas[%zu]: floor above ceiling", origin, idx);
	*ret = e;
	return 0;
}

int quota_store_from_json(struct quota_store *s, const char *text, size_t len, const char *origin, char *err,
			  size_t errlen)
{
	json_error_t jerr;
	struct quota_store n;
	const char *key;
	json_t *v, *version = NULL, *quotas = NULL;
	int r;

	if (len == 0)
		return fail(err, errlen, -EINVAL, "%s: empty (truncated?)", origin);
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(err, errlen, -EINVAL, "%s:%d:%d: %s", origin, jerr.line, jerr.column, jerr.text);
	quota_store_init(&n);
	if (!json_is_object(root)) {
		r = fail(err, errlen, -EINVAL, "%s: not a JSON object", origin);
		goto out;
	}
	json_object_foreach(root, key, v) {
		if (!strcmp(key, "version")) {
			version = v;
		} else if (!strcmp(key, "quotas")) {
			quotas = v;
		} else {
			r = fail(err, errlen, -EINVAL, "%s: unknown key \"%s\"", origin, key);
			goto out;
		}
	}
	if (!version || !json_is_integer(version)) {
		r = fail(err, errlen, -EINVAL, "%s: no integer \"version\"", origin);
		goto out;
	}
	if (json_integer_value(version) != QUOTA_FILE_VERSION) {
		r = fail(err, errlen, -EINVAL, "%s: version %lld, this vramd reads version %d", origin,
			 (long long)json_integer_value(version), QUOTA_FILE_VERSION);
		goto out;
	}
	if (!quotas || !json_is_array(quotas)) {
		r = fail(err, errlen, -EINVAL, "%s: no \"quotas\" array", origin);
		goto out;
	}
	if (json_array_size(quotas) > QUOTA_MAX_ENTRIES) {
		r = fail(err, errlen, -EINVAL, "%s: %zu entries, more than %u", origin, json_array_size(quotas),
			 QUOTA_MAX_ENTRIES);
		goto out;
	}
	size_t idx;
	json_array_foreach(quotas, idx, v) {
		struct quota_entry e;
		bool found;
		char sub[VRAMD_NAME_MAX + 8];
		if ((r = entry_from_json(v, idx, &e, origin, err, errlen)) < 0)
			goto out;
		size_t at = store_pos(&n, &e.subject, e.device, &found);
		if (found) {
			r = fail(err, errlen, -EINVAL, "%s: quotas[%zu]: a second entry for %s on %s", origin, idx,
				 quota_subject_format(&e.subject, sub, sizeof(sub)), e.device);
			goto out;
		}
		if (store_insert(&n, at, &e) < 0) {
			r = fail(err, errlen, -ENOMEM, "out of memory");
			goto out;
		}
	}
	quota_store_clear(s);
	*s = n;
	quota_store_init(&n);
	r = 0;
out:
	quota_store_clear(&n);
	json_decref(root);
	return r;
}

/* ======================================================================
 * Files
 * ====================================================================== */

int quota_store_load(struct quota_store *s, const char *state_dir, char *err, size_t errlen)
{
	_cleanup_free_ char *path = NULL, *buf = NULL;
	_cleanup_close_ int fd = -1;
	struct stat st;

	if (asprintf(&path, "%s/%s", state_dir, QUOTA_FILE) < 0) {
		path = NULL;
		return fail(err, errlen, -ENOMEM, "out of memory");
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT) {
			quota_store_clear(s);
			return 0;
		}
		if (errno == ELOOP)
			return fail(err, errlen, -ELOOP, "%s: is a symbolic link (refused)", path);
		return fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
	}
	if (fstat(fd, &st) < 0)
		return fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return fail(err, errlen, -EINVAL, "%s: not a regular file", path);
	/* Whoever can write the file can grant themselves memory. */
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return fail(err, errlen, -EPERM, "%s: writable by group or others (mode %04o); refusing it", path,
			    (unsigned)(st.st_mode & 07777));
	if (st.st_uid != 0 && st.st_uid != geteuid())
		return fail(err, errlen, -EPERM, "%s: owned by uid %u, neither root nor this broker's; refusing it",
			    path, (unsigned)st.st_uid);
	if (st.st_size > (off_t)QUOTA_FILE_MAX)
		return fail(err, errlen, -EFBIG, "%s: %lld bytes, more than %u", path, (long long)st.st_size,
			    QUOTA_FILE_MAX);

	/* Read to EOF rather than trusting st_size, bounded all the same. */
	size_t cap = (size_t)st.st_size + 1, len = 0;
	buf = malloc(cap);
	if (!buf)
		return fail(err, errlen, -ENOMEM, "out of memory");
	for (;;) {
		if (len == cap) {
			if (cap > QUOTA_FILE_MAX)
				return fail(err, errlen, -EFBIG, "%s: larger than %u bytes", path, QUOTA_FILE_MAX);
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				return fail(err, errlen, -ENOMEM, "out of memory");
			buf = nb;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
	}
	return quota_store_from_json(s, buf, len, path, err, errlen);
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The save itself; *renamed tells whether the new file replaced the old
 * one (then only the directory's fsync may have failed). */
static int save(const struct quota_store *s, const char *state_dir, bool *renamed, char *err, size_t errlen)
{
	_cleanup_free_ char *path = NULL, *tmp = NULL, *txt = NULL;
	_cleanup_close_ int fd = -1, dfd = -1;
	int r;

	*renamed = false;
	if (asprintf(&path, "%s/%s", state_dir, QUOTA_FILE) < 0) {
		path = NULL;
		return fail(err, errlen, -ENOMEM, "out of memory");
	}
	if (asprintf(&tmp, "%s/%s", state_dir, QUOTA_TMP_FILE) < 0) {
		tmp = NULL;
		return fail(err, errlen, -ENOMEM, "out of memory");
	}
	if (quota_store_to_json(s, &txt) < 0)
		return fail(err, errlen, -ENOMEM, "out of memory");

	/* A fixed temporary name: one broker owns the state directory, and a
	 * leftover from a crash is simply overwritten.  O_NOFOLLOW so that a
	 * planted link is never followed. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0644);
	if (fd < 0)
		return fail(err, errlen, -errno, "%s: %s", tmp, strerror(errno));
	r = fchmod(fd, 0644) < 0 ? -errno : 0;
	if (r == 0)
		r = write_all(fd, txt, strlen(txt));
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return fail(err, errlen, r, "%s: %s", tmp, strerror(-r));
	}
	int cfd = TAKE_FD(fd);
	if (close(cfd) < 0) {
		r = -errno;
		unlink(tmp);
		return fail(err, errlen, r, "%s: %s", tmp, strerror(-r));
	}
	if (rename(tmp, path) < 0) {
		r = -errno;
		unlink(tmp);
		return fail(err, errlen, r, "%s: rename into place: %s", path, strerror(-r));
	}
	*renamed = true;
	dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return fail(err, errlen, -errno, "%s: saved, but cannot open %s to fsync it: %s", path, state_dir,
			    strerror(errno));
	/* Some file systems cannot fsync a directory (EINVAL); the rename is
	 * then as durable as they make it. */
	if (fsync(dfd) < 0 && errno != EINVAL)
		return fail(err, errlen, -errno, "%s: saved, but fsync of %s failed: %s", path, state_dir,
			    strerror(errno));
	return 0;
}

int quota_store_save(const struct quota_store *s, const char *state_dir, char *err, size_t errlen)
{
	bool renamed;
	return save(s, state_dir, &renamed, err, errlen);
}

/* Saves *s; on failure puts *s back to *old unless the new file is already
 * in place (then memory follows the disk). */
static int save_or_rollback(struct quota_store *s, struct quota_store *old, const char *state_dir, char *err,
			    size_t errlen)
{
	bool renamed;
	int r = save(s, state_dir, &renamed, err, errlen);
	if (r < 0 && !renamed) {
		quota_store_clear(s);
		*s = *old;
		quota_store_init(old);
	}
	return r;
}

int quota_set_persist(struct quota_store *s, const char *state_dir, const struct quota_subject *subj,
		      const char *device, const struct quota_update *u, uint64_t capacity, char *err, size_t errlen)
{
	struct quota_store old;
	quota_store_init(&old);
	if (quota_store_copy(&old, s) < 0)
		return fail(err, errlen, -ENOMEM, "out of memory");
	int r = quota_store_set(s, subj, device, u, capacity, err, errlen);
	if (r >= 0)
		r = save_or_rollback(s, &old, state_dir, err, errlen);
	quota_store_clear(&old);
	return r;
}

int quota_remove_persist(struct quota_store *s, const char *state_dir, const struct quota_subject *subj,
			 const char *device, char *err, size_t errlen)
{
	struct quota_store old;
	quota_store_init(&old);
	if (quota_store_copy(&old, s) < 0)
		return fail(err, errlen, -ENOMEM, "out of memory");
	int n = quota_store_remove(s, subj, device, err, errlen);
	if (n > 0) {
		int r = save_or_rollback(s, &old, state_dir, err, errlen);
		if (r < 0)
			n = r;
	}
	quota_store_clear(&old);
	return n;
}
