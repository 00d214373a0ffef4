/* SPDX-License-Identifier: MIT */
/*
 * The quota store (see quota.h for the model): subjects, per-device floors
 * and ceilings, lookup.  JSON and the file: quota-file.c.
 */
#include <errno.h>
#include <pwd.h>
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
			return errf(err, errlen, -ENOMEM, "out of memory");
		int r = getpwnam_r(user, &pw, buf, len, &res);
		if (r == ERANGE)
			continue;
		if (r == 0 && !res)
			return errf(err, errlen, -ENOENT, "user:%s: no such user", user);
		if (r != 0)
			return errf(err, errlen, -r, "user:%s: cannot look the user up: %s", user, strerror(r));
		if (pw.pw_uid == (uid_t)-1)
			return errf(err, errlen, -EINVAL, "user:%s: has uid -1", user);
		*ret_uid = (uint32_t)pw.pw_uid;
		return 0;
	}
	return errf(err, errlen, -ERANGE, "user:%s: the user database entry is too large", user);
}

int quota_subject_parse(const char *text, struct quota_subject *ret, char *err, size_t errlen)
{
	struct quota_subject s;
	memset(&s, 0, sizeof(s));

	if (!text)
		return errf(err, errlen, -EINVAL, "no quota subject given");
	if (!strcmp(text, "default")) {
		s.kind = QUOTA_DEFAULT;
	} else if (!strncmp(text, "uid:", 4)) {
		uint64_t v;
		int r = parse_canonical_u64(text + 4, UINT32_MAX - 1, &v);
		if (r < 0)
			return errf(err, errlen, -EINVAL, "\"%s\": %s", text,
				    r == -ERANGE ? "uid out of range (0 to 4294967294)"
						 : "not a uid (uid:N, N a decimal number)");
		s.kind = QUOTA_UID;
		s.uid = (uint32_t)v;
	} else if (!strncmp(text, "user:", 5)) {
		const char *user = text + 5;
		if (!*user || strlen(user) >= sizeof(s.name) || !text_printable(user))
			return errf(err, errlen, -EINVAL, "\"%s\": not a user name (1 to %u printable bytes)", text,
				    VRAMD_NAME_MAX - 1);
		int r = lookup_user(user, &s.uid, err, errlen);
		if (r < 0)
			return r;
		s.kind = QUOTA_UID;
		str_copy(s.name, user, sizeof(s.name));
	} else if (!strncmp(text, "name:", 5)) {
		const char *name = text + 5;
		if (!*name || strlen(name) >= sizeof(s.name) || !text_printable(name))
			return errf(err, errlen, -EINVAL, "\"%s\": not a client name (1 to %u printable bytes)", text,
				    VRAMD_NAME_MAX - 1);
		s.kind = QUOTA_NAME;
		str_copy(s.name, name, sizeof(s.name));
	} else {
		return errf(err, errlen, -EINVAL,
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
	return errf(err, errlen, -ENOSPC, "floors on %s sum to %s, more than its capacity of %s", device,
		    size_format(sum, a, sizeof(a)), size_format(capacity, b, sizeof(b)));
}

int quota_store_set(struct quota_store *s, const struct quota_subject *subj, const char *device,
		    const struct quota_update *u, uint64_t capacity, char *err, size_t errlen)
{
	char a[32], b[32], sub[VRAMD_NAME_MAX + 8];
	bool found;

	if (!subject_valid(subj))
		return errf(err, errlen, -EINVAL, "invalid quota subject");
	quota_subject_format(subj, sub, sizeof(sub));
	if (!quota_device_valid(device))
		return errf(err, errlen, -EINVAL, "\"%s\" is not a device name (cpu or cuda:N)", device ? device : "");
	if (!u->set_floor && !u->set_ceiling)
		return errf(err, errlen, -EINVAL, "quota %s on %s: nothing to set (give a floor or a ceiling)", sub,
			    device);
	if (u->set_floor && u->floor > QUOTA_SIZE_MAX)
		return errf(err, errlen, -EINVAL, "quota %s on %s: floor too large", sub, device);
	if (u->set_ceiling && u->ceiling != QUOTA_NO_CEILING && u->ceiling > QUOTA_SIZE_MAX)
		return errf(err, errlen, -EINVAL, "quota %s on %s: ceiling too large", sub, device);

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
		return errf(err, errlen, -EINVAL, "quota %s on %s: floor %s is above the ceiling %s", sub, device,
			    size_format(e.floor, a, sizeof(a)), size_format(e.ceiling, b, sizeof(b)));
	/* Only a change that raises the sum is held to the capacity, so that
	 * floors left over-committed (a smaller GPU than when they were set)
	 * can still be lowered one at a time. */
	if (capacity != QUOTA_CAPACITY_UNKNOWN && e.floor > old_floor) {
		uint64_t others = quota_floor_sum(s, device) - old_floor;
		uint64_t sum = e.floor > UINT64_MAX - others ? UINT64_MAX : others + e.floor;
		if (sum > capacity) {
			char c[32];
			return errf(err, errlen, -ENOSPC,
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
		return errf(err, errlen, -ENOSPC, "quota %s on %s: the broker holds %u quota entries already (max)",
			    sub, device, QUOTA_MAX_ENTRIES);
	if (store_insert(s, at, &e) < 0)
		return errf(err, errlen, -ENOMEM, "out of memory");
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
		return errf(err, errlen, -ENOENT, "no quota for %s on %s", sub, device);
	return errf(err, errlen, -ENOENT, "no quota for %s", sub);
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
