/* SPDX-License-Identifier: MIT */
/*
 * The quota store as JSON (quota.h), and its file in the state directory:
 * read strictly, written atomically.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/quota.h"
#include "common/cleanup.h"
#include "common/util.h"

#define QUOTA_FILE_MAX (16u << 20)
#define QUOTA_TMP_FILE ".quotas.json.tmp"

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
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu] is not an object", origin, idx);
	json_object_foreach(o, key, v) {
		if (!strcmp(key, "subject") || !strcmp(key, "user") || !strcmp(key, "device")) {
			if (!json_is_string(v))
				return errf(err, errlen, -EINVAL, "%s: quotas[%zu].%s is not a string", origin, idx, key);
			const char *sv = json_string_value(v);
			if (strlen(sv) != json_string_length(v))
				return errf(err, errlen, -EINVAL, "%s: quotas[%zu].%s contains a NUL byte", origin, idx,
					    key);
			*(key[0] == 's' ? &subject : key[0] == 'u' ? &user : &device) = sv;
		} else if (!strcmp(key, "floor")) {
			floor = v;
		} else if (!strcmp(key, "ceiling")) {
			ceiling = v;
		} else {
			return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: unknown key \"%s\"", origin, idx, key);
		}
	}
	if (!subject || !device || !floor || !ceiling)
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: missing \"%s\"", origin, idx,
			    !subject ? "subject" : !device ? "device" : !floor ? "floor" : "ceiling");

	struct quota_entry e;
	memset(&e, 0, sizeof(e));
	/* The file holds canonical subjects only: no user database look-ups
	 * at start, and no entry that changes meaning when an account does. */
	if (!strncmp(subject, "user:", 5))
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: subject \"%s\" is not canonical (uid:N)", origin,
			    idx, subject);
	if (quota_subject_parse(subject, &e.subject, why, sizeof(why)) < 0)
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: %s", origin, idx, why);
	if (user) {
		if (e.subject.kind != QUOTA_UID)
			return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: \"user\" given for %s", origin, idx, subject);
		if (!*user || strlen(user) >= sizeof(e.subject.name) || !text_printable(user))
			return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: bad user name", origin, idx);
		str_copy(e.subject.name, user, sizeof(e.subject.name));
	}
	if (!quota_device_valid(device))
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: \"%s\" is not a device name (cpu or cuda:N)",
			    origin, idx, device);
	str_copy(e.device, device, sizeof(e.device));
	if (!json_is_integer(floor) || json_integer_value(floor) < 0)
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu].floor is not a byte count", origin, idx);
	e.floor = (uint64_t)json_integer_value(floor);
	if (json_is_null(ceiling)) {
		e.ceiling = QUOTA_NO_CEILING;
	} else if (json_is_integer(ceiling) && json_integer_value(ceiling) >= 0) {
		e.ceiling = (uint64_t)json_integer_value(ceiling);
	} else {
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu].ceiling is neither a byte count nor null", origin,
			    idx);
	}
	if (e.ceiling != QUOTA_NO_CEILING && e.floor > e.ceiling)
		return errf(err, errlen, -EINVAL, "%s: quotas[%zu]: floor above ceiling", origin, idx);
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
		return errf(err, errlen, -EINVAL, "%s: empty (truncated?)", origin);
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return errf(err, errlen, -EINVAL, "%s:%d:%d: %s", origin, jerr.line, jerr.column, jerr.text);
	quota_store_init(&n);
	if (!json_is_object(root)) {
		r = errf(err, errlen, -EINVAL, "%s: not a JSON object", origin);
		goto out;
	}
	json_object_foreach(root, key, v) {
		if (!strcmp(key, "version")) {
			version = v;
		} else if (!strcmp(key, "quotas")) {
			quotas = v;
		} else {
			r = errf(err, errlen, -EINVAL, "%s: unknown key \"%s\"", origin, key);
			goto out;
		}
	}
	if (!version || !json_is_integer(version)) {
		r = errf(err, errlen, -EINVAL, "%s: no integer \"version\"", origin);
		goto out;
	}
	if (json_integer_value(version) != QUOTA_FILE_VERSION) {
		r = errf(err, errlen, -EINVAL, "%s: version %lld, this vramd reads version %d", origin,
			 (long long)json_integer_value(version), QUOTA_FILE_VERSION);
		goto out;
	}
	if (!quotas || !json_is_array(quotas)) {
		r = errf(err, errlen, -EINVAL, "%s: no \"quotas\" array", origin);
		goto out;
	}
	if (json_array_size(quotas) > QUOTA_MAX_ENTRIES) {
		r = errf(err, errlen, -EINVAL, "%s: %zu entries, more than %u", origin, json_array_size(quotas),
			 QUOTA_MAX_ENTRIES);
		goto out;
	}
	size_t idx;
	json_array_foreach(quotas, idx, v) {
		struct quota_entry e;
		char sub[VRAMD_NAME_MAX + 8], why[QUOTA_ERR_MAX];
		if ((r = entry_from_json(v, idx, &e, origin, err, errlen)) < 0)
			goto out;
		if (quota_store_find(&n, &e.subject, e.device)) {
			r = errf(err, errlen, -EINVAL, "%s: quotas[%zu]: a second entry for %s on %s", origin, idx,
				 quota_subject_format(&e.subject, sub, sizeof(sub)), e.device);
			goto out;
		}
		struct quota_update u = { true, true, e.floor, e.ceiling };
		if ((r = quota_store_set(&n, &e.subject, e.device, &u, QUOTA_CAPACITY_UNKNOWN, why, sizeof(why))) < 0) {
			r = errf(err, errlen, r, "%s: quotas[%zu]: %s", origin, idx, why);
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
		return errf(err, errlen, -ENOMEM, "out of memory");
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT) {
			quota_store_clear(s);
			return 0;
		}
		if (errno == ELOOP)
			return errf(err, errlen, -ELOOP, "%s: is a symbolic link (refused)", path);
		return errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
	}
	if (fstat(fd, &st) < 0)
		return errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return errf(err, errlen, -EINVAL, "%s: not a regular file", path);
	/* Whoever can write the file can grant themselves memory. */
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return errf(err, errlen, -EPERM, "%s: writable by group or others (mode %04o); refusing it", path,
			    (unsigned)(st.st_mode & 07777));
	if (st.st_uid != 0 && st.st_uid != geteuid())
		return errf(err, errlen, -EPERM, "%s: owned by uid %u, neither root nor this broker's; refusing it",
			    path, (unsigned)st.st_uid);
	if (st.st_size > (off_t)QUOTA_FILE_MAX)
		return errf(err, errlen, -EFBIG, "%s: %lld bytes, more than %u", path, (long long)st.st_size,
			    QUOTA_FILE_MAX);

	/* Read to EOF rather than trusting st_size, bounded all the same. */
	size_t cap = (size_t)st.st_size + 1, len = 0;
	buf = malloc(cap);
	if (!buf)
		return errf(err, errlen, -ENOMEM, "out of memory");
	for (;;) {
		if (len == cap) {
			if (cap > QUOTA_FILE_MAX)
				return errf(err, errlen, -EFBIG, "%s: larger than %u bytes", path, QUOTA_FILE_MAX);
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				return errf(err, errlen, -ENOMEM, "out of memory");
			buf = nb;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
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
		return errf(err, errlen, -ENOMEM, "out of memory");
	}
	if (asprintf(&tmp, "%s/%s", state_dir, QUOTA_TMP_FILE) < 0) {
		tmp = NULL;
		return errf(err, errlen, -ENOMEM, "out of memory");
	}
	if (quota_store_to_json(s, &txt) < 0)
		return errf(err, errlen, -ENOMEM, "out of memory");

	/* A fixed temporary name: one broker owns the state directory, and a
	 * leftover from a crash is simply overwritten.  O_NOFOLLOW so that a
	 * planted link is never followed. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0644);
	if (fd < 0)
		return errf(err, errlen, -errno, "%s: %s", tmp, strerror(errno));
	r = fchmod(fd, 0644) < 0 ? -errno : 0;
	if (r == 0)
		r = write_all(fd, txt, strlen(txt));
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return errf(err, errlen, r, "%s: %s", tmp, strerror(-r));
	}
	int cfd = TAKE_FD(fd);
	if (close(cfd) < 0) {
		r = -errno;
		unlink(tmp);
		return errf(err, errlen, r, "%s: %s", tmp, strerror(-r));
	}
	if (rename(tmp, path) < 0) {
		r = -errno;
		unlink(tmp);
		return errf(err, errlen, r, "%s: rename into place: %s", path, strerror(-r));
	}
	*renamed = true;
	dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return errf(err, errlen, -errno, "%s: saved, but cannot open %s to fsync it: %s", path, state_dir,
			    strerror(errno));
	/* Some file systems cannot fsync a directory (EINVAL); the rename is
	 * then as durable as they make it. */
	if (fsync(dfd) < 0 && errno != EINVAL)
		return errf(err, errlen, -errno, "%s: saved, but fsync of %s failed: %s", path, state_dir,
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
		return errf(err, errlen, -ENOMEM, "out of memory");
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
		return errf(err, errlen, -ENOMEM, "out of memory");
	int n = quota_store_remove(s, subj, device, err, errlen);
	if (n > 0) {
		int r = save_or_rollback(s, &old, state_dir, err, errlen);
		if (r < 0)
			n = r;
	}
	quota_store_clear(&old);
	return n;
}
