/* SPDX-License-Identifier: MIT */
/*
 * Quotas: the store of per-subject, per-device floors and ceilings, its
 * validation, lookup and persistence.  Pure data: no sockets, no logging.
 * The broker enforces what this module stores (ALLOC, RECLAIM) and serves it
 * on the admin socket.
 *
 * Subjects (the text form is what `vramctl quota` takes):
 *   uid:1000      a uid;
 *   user:alice    the same, resolved with getpwnam at set time and stored as
 *                 the uid plus the name (the name is informational: renaming
 *                 or deleting the account does not change the entry);
 *   name:comfy-1  a client name, as the client calls itself at HELLO;
 *   default       everyone a name or uid entry does not cover.
 *
 * Devices are named as the broker names them: "cpu" or "cuda:N".
 *
 * Lookup (quota_lookup): for a client (uid, name) on a device, the entries
 * *for that device* at each level: its name's, its uid's, default's; none
 * at all means no floor and no ceiling.  Precedence is decided per device,
 * so name:comfy-1 limited on cuda:0 only still falls back to its uid's
 * entry on cuda:1.  The broker applies them in two levels (docs/admin.md):
 * the name's entry, and the user's (uid, else default).  Ceilings of both
 * levels bind (a name, which any client may claim, can lower a user's
 * ceiling but never raise it); floors come from the most specific entry
 * (quota_match.effective).
 *
 * Each subject is one accounting bucket: its floor is guaranteed to, and
 * its ceiling bounds, the sum over every client the entry applies to at
 * its level (a uid's or default's bucket counts the user's clients
 * whatever their names).  So the floors on a device sum, one per entry, to
 * what the device must be able to guarantee at once; quota_check_floors
 * and quota_store_set hold that sum to the device's capacity.
 *
 * Persistence: STATE_DIR/quotas.json (QUOTA_FILE), written atomically
 * (temporary file, fsync, rename, fsync of the directory) and read
 * strictly: a file that does not parse, has unknown keys, wrong types,
 * duplicates, out-of-range values, or is writable by other users is an
 * error naming the file and the reason, never an empty store.  A missing
 * file is an empty store (first start).
 */
#ifndef VRAMD_BROKER_QUOTA_H
#define VRAMD_BROKER_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uapi/vramd.h"

#define QUOTA_FILE          "quotas.json"
#define QUOTA_FILE_VERSION  1
#define QUOTA_MAX_ENTRIES   4096u           /* entries a store holds at most */
#define QUOTA_DEVICE_MAX    32u             /* device name, NUL included */
#define QUOTA_NO_CEILING    UINT64_MAX      /* ceiling: none */
#define QUOTA_CAPACITY_UNKNOWN UINT64_MAX   /* quota_store_set: skip the floor check */
#define QUOTA_ERR_MAX       256u            /* a good size for err buffers */

enum quota_kind {
	QUOTA_DEFAULT = 0,
	QUOTA_UID     = 1,
	QUOTA_NAME    = 2,
};

struct quota_subject {
	enum quota_kind kind;
	uint32_t uid;                    /* QUOTA_UID */
	/* QUOTA_NAME: the client name.  QUOTA_UID: the user name when the
	 * subject was given as user:NAME ("" otherwise); not part of the
	 * subject's identity. */
	char name[VRAMD_NAME_MAX];
};

struct quota_entry {
	struct quota_subject subject;
	char device[QUOTA_DEVICE_MAX];
	uint64_t floor;                  /* bytes guaranteed; 0: none */
	uint64_t ceiling;                /* bytes at most; QUOTA_NO_CEILING: none */
};

/* Entries sorted by device, then kind (default, uid, name), then uid or
 * name.  Read the fields freely; change them only through the functions
 * below, which keep the order and the invariants (floor <= ceiling, one
 * entry per subject and device). */
struct quota_store {
	struct quota_entry *entries;
	size_t n;
	size_t cap;
};

/* What quota_store_set changes: a field not flagged keeps its current value
 * (or the default for a new entry: no floor, no ceiling). */
struct quota_update {
	bool set_floor;
	bool set_ceiling;
	uint64_t floor;
	uint64_t ceiling;                /* QUOTA_NO_CEILING removes the ceiling */
};

/* The result of a lookup: the entry found at each level for the device
 * (NULL when none) and the one that applies. */
struct quota_match {
	const struct quota_entry *by_name;
	const struct quota_entry *by_uid;
	const struct quota_entry *by_default;
	const struct quota_entry *effective;  /* by_name ?: by_uid ?: by_default */
};

/* ---- subjects and devices ------------------------------------------------ */

/* Parses "uid:N", "user:NAME", "name:CLIENT" or "default" into *ret.
 * user:NAME is resolved with getpwnam_r.  0, or -EINVAL (bad syntax) /
 * -ENOENT (no such user) / -errno from the user database, with err set to a
 * sentence naming the input.  *ret is untouched on failure. */
int quota_subject_parse(const char *text, struct quota_subject *ret, char *err, size_t errlen);

/* The canonical text of a subject: "uid:1000", "name:comfy-1", "default"
 * (never "user:", which is not stable).  Returns buf. */
const char *quota_subject_format(const struct quota_subject *s, char *buf, size_t len);

/* Same kind and same uid (QUOTA_UID) or name (QUOTA_NAME). */
bool quota_subject_equal(const struct quota_subject *a, const struct quota_subject *b);

/* 1 if name is a device name a quota may name: "cpu" or "cuda:N" (N
 * decimal, no leading zero, below 1000); 0 otherwise. */
int quota_device_valid(const char *name);

/* Parses a floor or ceiling: a size as vramd takes them ("8GiB", "512MiB",
 * "0"); for a ceiling also "none" or "unlimited" (QUOTA_NO_CEILING).
 * 0 or -EINVAL/-ERANGE; *ret untouched on failure. */
int quota_size_parse(const char *text, bool is_ceiling, uint64_t *ret);

/* ---- the store ------------------------------------------------------------ */

/* An empty store. */
void quota_store_init(struct quota_store *s);
/* Frees the entries; the store is empty (and reusable) afterwards. */
void quota_store_clear(struct quota_store *s);
/* Replaces dst's contents with a copy of src.  0 or -ENOMEM (dst
 * unchanged). */
int quota_store_copy(struct quota_store *dst, const struct quota_store *src);

/* The entry of subj on device, or NULL. */
const struct quota_entry *quota_store_find(const struct quota_store *s, const struct quota_subject *subj,
					   const char *device);

/* Creates or changes the entry of subj on device.  Checks: a valid device
 * name, something to set, floor <= ceiling once the update is applied,
 * QUOTA_MAX_ENTRIES, and, unless capacity is QUOTA_CAPACITY_UNKNOWN, that
 * the floors on device sum to at most capacity.  0, or -EINVAL / -ENOSPC
 * (floors exceed capacity, or too many entries) / -ENOMEM with err set; the
 * store is unchanged on failure. */
int quota_store_set(struct quota_store *s, const struct quota_subject *subj, const char *device,
		    const struct quota_update *u, uint64_t capacity, char *err, size_t errlen);

/* Removes the entry of subj on device, or every entry of subj when device
 * is NULL.  Returns how many were removed (> 0) or -ENOENT with err set. */
int quota_store_remove(struct quota_store *s, const struct quota_subject *subj, const char *device,
		       char *err, size_t errlen);

/* Sum of the floors on device (saturating at UINT64_MAX). */
uint64_t quota_floor_sum(const struct quota_store *s, const char *device);

/* 0 if the floors on device sum to at most capacity; -ENOSPC with err
 * naming the device, the sum and the capacity otherwise.  The broker calls
 * it at start for every device it has (a smaller GPU than when the floors
 * were set) and decides whether that is fatal. */
int quota_check_floors(const struct quota_store *s, const char *device, uint64_t capacity, char *err,
		       size_t errlen);

/* The entries that apply to a client with uid and name (NULL or "": no
 * name) on device; see the top of this file for the precedence. */
void quota_lookup(const struct quota_store *s, uint32_t uid, const char *name, const char *device,
		  struct quota_match *ret);

/* ---- JSON and persistence -------------------------------------------------- */

/* The store as the JSON document saved to QUOTA_FILE (docs/admin.md):
 *   {"version": 1, "quotas": [{"subject": "uid:1000", "user": "alice",
 *    "device": "cuda:0", "floor": 4294967296, "ceiling": null}, ...]}
 * ("user" only for uid subjects given as user:NAME; "ceiling" null when
 * none).  Also fit for `vramctl quota list --json`.  *ret is a
 * NUL-terminated string the caller frees.  0 or -ENOMEM. */
int quota_store_to_json(const struct quota_store *s, char **ret);

/* Parses a document written by quota_store_to_json into s (replacing its
 * contents only on success).  origin names the input in messages (a file
 * name).  0, or -EINVAL (err: "ORIGIN: REASON", with line and column for
 * syntax errors) / -ENOMEM. */
int quota_store_from_json(struct quota_store *s, const char *text, size_t len, const char *origin, char *err,
			  size_t errlen);

/* Reads STATE_DIR/QUOTA_FILE into s (replacing its contents only on
 * success).  A missing file leaves s empty and returns 0.  Otherwise 0, or
 * -errno with err "PATH: REASON": -EACCES and friends when it cannot be
 * read, -ELOOP when it is a symbolic link, -EPERM when it is writable by
 * group or others or owned by a user other than root and the caller,
 * -EINVAL when it is not a regular file, empty, truncated or not a valid
 * quota document, -EFBIG when it is larger than 16 MiB. */
int quota_store_load(struct quota_store *s, const char *state_dir, char *err, size_t errlen);

/* Writes s to STATE_DIR/QUOTA_FILE atomically: STATE_DIR/.quotas.json.tmp
 * is written and fsynced, renamed over the file, and the directory fsynced.
 * Mode 0644.  The previous file is intact on any failure.  0 or -errno with
 * err "PATH: REASON". */
int quota_store_save(const struct quota_store *s, const char *state_dir, char *err, size_t errlen);

/* quota_store_set, then quota_store_save.  When the save fails before the
 * new file replaced the old one, the store is put back as it was, so memory
 * and disk agree; when only the final fsync of the directory failed (the
 * new file is in place, its durability unknown) the store keeps the change
 * and the error is still returned ("saved, but fsync ... failed").  Same
 * returns as the two. */
int quota_set_persist(struct quota_store *s, const char *state_dir, const struct quota_subject *subj,
		      const char *device, const struct quota_update *u, uint64_t capacity, char *err, size_t errlen);

/* quota_store_remove, then quota_store_save, with the same rollback.
 * Returns the number removed or -errno. */
int quota_remove_persist(struct quota_store *s, const char *state_dir, const struct quota_subject *subj,
			 const char *device, char *err, size_t errlen);

#endif
