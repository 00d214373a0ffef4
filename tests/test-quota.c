/* SPDX-License-Identifier: MIT */
/*
 * The quota store (broker/quota.c): subject and size parsing, validation of
 * updates, lookup precedence, the floor-sum check, atomic save and strict
 * load (corrupt, truncated, unreadable, foreign-owned, writable-by-others
 * files), and the persisting helpers' rollback.
 */
#include <grp.h>
#include <pwd.h>

#include "broker/quota.h"
#include "common/cleanup.h"
#include "testlib.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

static char err[QUOTA_ERR_MAX];

static struct quota_subject subj(const char *text)
{
	struct quota_subject s;
	int r = quota_subject_parse(text, &s, err, sizeof(err));
	ck_assert_msg(r == 0, "parse %s: %s", text, err);
	return s;
}

static void set_ok(struct quota_store *st, const char *sub, const char *dev, int64_t floor, int64_t ceiling,
		   uint64_t cap)
{
	struct quota_subject s = subj(sub);
	struct quota_update u = { .set_floor = floor >= 0, .set_ceiling = ceiling >= -1,
				  .floor = floor >= 0 ? (uint64_t)floor : 0,
				  .ceiling = ceiling == -1 ? QUOTA_NO_CEILING : (uint64_t)ceiling };
	if (ceiling < -1)
		u.set_ceiling = false;
	int r = quota_store_set(st, &s, dev, &u, cap, err, sizeof(err));
	ck_assert_msg(r == 0, "set %s %s: %s", sub, dev, err);
}
/* floor/ceiling arguments of set_ok: -2 leaves a field alone, -1 (ceiling)
 * means none. */
#define KEEP (-2)
#define NONE (-1)

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	ck_assert_int_eq(fchmod(fd, mode), 0);
	close(fd);
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "re");
	ck_assert_ptr_nonnull(f);
	char *buf = calloc(1, 1 << 20);
	ck_assert_ptr_nonnull(buf);
	size_t n = fread(buf, 1, (1 << 20) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static void qpath(char *out, size_t len, const char *dir, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

/* A store with one entry, to see that failed loads leave it alone. */
static void sentinel(struct quota_store *st)
{
	quota_store_init(st);
	set_ok(st, "name:sentinel", "cpu", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
}

static void assert_sentinel(const struct quota_store *st)
{
	ck_assert_uint_eq(st->n, 1);
	ck_assert_str_eq(st->entries[0].subject.name, "sentinel");
}

/* Runs the rest of the test as an unprivileged user when we are root (root
 * reads anything, which would hide permission errors); dir is handed to
 * that user first.  Returns 0, or -1 if we cannot (the caller skips). */
static int become_unprivileged(const char *dir)
{
	if (geteuid() != 0)
		return 0;
	if (chown(dir, 65534, 65534) < 0 || setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
		return -1;
	return geteuid() == 65534 ? 0 : -1;
}

/* ---- subjects, devices, sizes ------------------------------------------- */

START_TEST(test_subject_parse)
{
	struct quota_subject s;
	char buf[96];

	s = subj("default");
	ck_assert_int_eq(s.kind, QUOTA_DEFAULT);
	ck_assert_str_eq(quota_subject_format(&s, buf, sizeof(buf)), "default");
	s = subj("uid:1000");
	ck_assert_int_eq(s.kind, QUOTA_UID);
	ck_assert_uint_eq(s.uid, 1000);
	ck_assert_str_eq(s.name, "");
	ck_assert_str_eq(quota_subject_format(&s, buf, sizeof(buf)), "uid:1000");
	s = subj("uid:0");
	ck_assert_uint_eq(s.uid, 0);
	s = subj("uid:4294967294");
	ck_assert_uint_eq(s.uid, 4294967294u);
	s = subj("name:comfy-1");
	ck_assert_int_eq(s.kind, QUOTA_NAME);
	ck_assert_str_eq(s.name, "comfy-1");
	ck_assert_str_eq(quota_subject_format(&s, buf, sizeof(buf)), "name:comfy-1");
	s = subj("name:with space \"and\" quotes\\");
	ck_assert_str_eq(s.name, "with space \"and\" quotes\\");

	/* user:NAME resolves to the uid and keeps the name. */
	struct passwd *pw = getpwuid(0);
	ck_assert_ptr_nonnull(pw);
	char text[128];
	snprintf(text, sizeof(text), "user:%s", pw->pw_name);
	s = subj(text);
	ck_assert_int_eq(s.kind, QUOTA_UID);
	ck_assert_uint_eq(s.uid, 0);
	ck_assert_str_eq(s.name, pw->pw_name);
	ck_assert_str_eq(quota_subject_format(&s, buf, sizeof(buf)), "uid:0");
	ck_assert(quota_subject_equal(&s, &(struct quota_subject){ .kind = QUOTA_UID, .uid = 0 }));

	static const struct {
		const char *text;
		int err;
	} bad[] = {
		{ "", -EINVAL }, { "Default", -EINVAL }, { "defaults", -EINVAL }, { "alice", -EINVAL },
		{ "uid:", -EINVAL }, { "uid:-1", -EINVAL }, { "uid:+5", -EINVAL }, { "uid:01", -EINVAL },
		{ "uid: 5", -EINVAL }, { "uid:5 ", -EINVAL }, { "uid:1000x", -EINVAL }, { "uid:0x10", -EINVAL },
		{ "uid:4294967295", -EINVAL }, { "uid:99999999999999999999999", -EINVAL }, { "UID:5", -EINVAL },
		{ "user:", -EINVAL }, { "user:vramd-test-no-such-user-7", -ENOENT }, { "user:a\tb", -EINVAL },
		{ "name:", -EINVAL }, { "name:a\nb", -EINVAL }, { "name:\x7f", -EINVAL },
		{ "name:0123456789012345678901234567890123456789012345678901234567890123", -EINVAL },
		{ "gid:5", -EINVAL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct quota_subject keep = { .kind = QUOTA_NAME, .name = "untouched" };
		err[0] = '\0';
		int r = quota_subject_parse(bad[i].text, &keep, err, sizeof(err));
		ck_assert_msg(r == bad[i].err, "\"%s\": %d, wanted %d", bad[i].text, r, bad[i].err);
		ck_assert_msg(err[0], "\"%s\": no message", bad[i].text);
		ck_assert_str_eq(keep.name, "untouched");
	}
	/* The message names what was wrong. */
	quota_subject_parse("uid:abc", &s, err, sizeof(err));
	ck_assert_ptr_nonnull(strstr(err, "uid:abc"));
	quota_subject_parse("user:vramd-test-no-such-user-7", &s, err, sizeof(err));
	ck_assert_ptr_nonnull(strstr(err, "no such user"));
	ck_assert_int_eq(quota_subject_parse(NULL, &s, err, sizeof(err)), -EINVAL);
	/* 63 bytes is the longest name. */
	ck_assert_int_eq(quota_subject_parse("name:012345678901234567890123456789012345678901234567890123456789012",
					     &s, err, sizeof(err)),
			 0);
}
END_TEST

START_TEST(test_device_and_size)
{
	static const char *const good[] = { "cpu", "cuda:0", "cuda:1", "cuda:15", "cuda:999" };
	static const char *const bad[] = { "", "CPU", "gpu", "cuda", "cuda:", "cuda:01", "cuda:1000", "cuda:-1",
					   "cuda:1 ", "cuda:x", "cpu0", "cuda:0:1" };
	for (size_t i = 0; i < ARRAY_SIZE(good); i++)
		ck_assert_msg(quota_device_valid(good[i]) == 1, "%s", good[i]);
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		ck_assert_msg(quota_device_valid(bad[i]) == 0, "%s", bad[i]);
	ck_assert_int_eq(quota_device_valid(NULL), 0);

	uint64_t v = 7;
	ck_assert_int_eq(quota_size_parse("8GiB", false, &v), 0);
	ck_assert_uint_eq(v, 8 * GiB);
	ck_assert_int_eq(quota_size_parse("512 MiB", true, &v), 0);
	ck_assert_uint_eq(v, 512 * MiB);
	ck_assert_int_eq(quota_size_parse("0", true, &v), 0);
	ck_assert_uint_eq(v, 0);
	ck_assert_int_eq(quota_size_parse("none", true, &v), 0);
	ck_assert_uint_eq(v, QUOTA_NO_CEILING);
	ck_assert_int_eq(quota_size_parse("unlimited", true, &v), 0);
	ck_assert_uint_eq(v, QUOTA_NO_CEILING);
	ck_assert_int_eq(quota_size_parse("none", false, &v), 0);
	ck_assert_uint_eq(v, 0);
	v = 7;
	ck_assert_int_eq(quota_size_parse("lots", false, &v), -EINVAL);
	ck_assert_int_eq(quota_size_parse("-1GiB", false, &v), -EINVAL);
	ck_assert_int_eq(quota_size_parse("8 XiB", false, &v), -EINVAL);
	ck_assert_int_eq(quota_size_parse("9000000TiB", false, &v), -ERANGE);
	ck_assert_int_eq(quota_size_parse(NULL, false, &v), -EINVAL);
	ck_assert_uint_eq(v, 7);
}
END_TEST

/* ---- set / remove ---------------------------------------------------------- */

START_TEST(test_set_validation)
{
	struct quota_store st;
	quota_store_init(&st);
	struct quota_subject s = subj("uid:1000");
	struct quota_update none = { 0 };

	ck_assert_int_eq(quota_store_set(&st, &s, "cuda:0", &none, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "nothing to set"));
	struct quota_update f = { .set_floor = true, .floor = GiB };
	ck_assert_int_eq(quota_store_set(&st, &s, "gpu0", &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "gpu0"));
	ck_assert_int_eq(quota_store_set(&st, &s, NULL, &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), -EINVAL);
	struct quota_subject junk = { .kind = 9 };
	ck_assert_int_eq(quota_store_set(&st, &junk, "cpu", &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)),
			 -EINVAL);
	struct quota_subject noname = { .kind = QUOTA_NAME };
	ck_assert_int_eq(quota_store_set(&st, &noname, "cpu", &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)),
			 -EINVAL);
	struct quota_update huge = { .set_floor = true, .floor = UINT64_MAX - 1 };
	ck_assert_int_eq(quota_store_set(&st, &s, "cpu", &huge, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), -EINVAL);
	ck_assert_uint_eq(st.n, 0);

	/* floor above ceiling, in one update or across two. */
	struct quota_update both = { .set_floor = true, .set_ceiling = true, .floor = 2 * GiB, .ceiling = GiB };
	ck_assert_int_eq(quota_store_set(&st, &s, "cuda:0", &both, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)),
			 -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "above the ceiling"));
	ck_assert_uint_eq(st.n, 0);
	set_ok(&st, "uid:1000", "cuda:0", 2 * GiB, KEEP, QUOTA_CAPACITY_UNKNOWN);
	struct quota_update c = { .set_ceiling = true, .ceiling = GiB };
	ck_assert_int_eq(quota_store_set(&st, &s, "cuda:0", &c, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), -EINVAL);
	ck_assert_uint_eq(st.entries[0].ceiling, QUOTA_NO_CEILING);

	/* Updates merge: a ceiling later keeps the floor; none removes it. */
	set_ok(&st, "uid:1000", "cuda:0", KEEP, 6 * GiB, QUOTA_CAPACITY_UNKNOWN);
	ck_assert_uint_eq(st.n, 1);
	ck_assert_uint_eq(st.entries[0].floor, 2 * GiB);
	ck_assert_uint_eq(st.entries[0].ceiling, 6 * GiB);
	set_ok(&st, "uid:1000", "cuda:0", KEEP, NONE, QUOTA_CAPACITY_UNKNOWN);
	ck_assert_uint_eq(st.entries[0].ceiling, QUOTA_NO_CEILING);
	set_ok(&st, "uid:1000", "cuda:0", 0, KEEP, QUOTA_CAPACITY_UNKNOWN);
	ck_assert_uint_eq(st.entries[0].floor, 0);
	/* An entry with nothing in it stays: it shadows default. */
	ck_assert_uint_eq(st.n, 1);
	/* A ceiling of 0 is a real ceiling (no memory on that device). */
	set_ok(&st, "name:banned", "cuda:0", KEEP, 0, QUOTA_CAPACITY_UNKNOWN);
	ck_assert_uint_eq(quota_store_find(&st, &(struct quota_subject){ .kind = QUOTA_NAME, .name = "banned" },
					   "cuda:0")->ceiling,
			  0);

	/* user:NAME and uid:N name the same entry; the user name is kept. */
	struct passwd *pw = getpwuid(0);
	ck_assert_ptr_nonnull(pw);
	char text[128];
	snprintf(text, sizeof(text), "user:%s", pw->pw_name);
	set_ok(&st, text, "cpu", GiB, KEEP, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "uid:0", "cpu", KEEP, 4 * GiB, QUOTA_CAPACITY_UNKNOWN);
	const struct quota_entry *e = quota_store_find(&st, &(struct quota_subject){ .kind = QUOTA_UID }, "cpu");
	ck_assert_ptr_nonnull(e);
	ck_assert_str_eq(e->subject.name, pw->pw_name);
	ck_assert_uint_eq(e->floor, GiB);
	ck_assert_uint_eq(e->ceiling, 4 * GiB);
	quota_store_clear(&st);
	ck_assert_uint_eq(st.n, 0);
	quota_store_clear(&st);
}
END_TEST

START_TEST(test_sorted_and_remove)
{
	struct quota_store st;
	quota_store_init(&st);
	set_ok(&st, "name:b", "cuda:10", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "uid:7", "cuda:2", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "default", "cuda:2", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "name:a", "cuda:2", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "uid:7", "cpu", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "uid:7", "cuda:10", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "uid:3", "cuda:2", 1, NONE, QUOTA_CAPACITY_UNKNOWN);
	static const char *const want[] = { "cpu uid:7", "cuda:2 default", "cuda:2 uid:3", "cuda:2 uid:7",
					    "cuda:2 name:a", "cuda:10 uid:7", "cuda:10 name:b" };
	ck_assert_uint_eq(st.n, ARRAY_SIZE(want));
	for (size_t i = 0; i < st.n; i++) {
		char b[96], line[160];
		snprintf(line, sizeof(line), "%s %s", st.entries[i].device,
			 quota_subject_format(&st.entries[i].subject, b, sizeof(b)));
		ck_assert_str_eq(line, want[i]);
	}

	struct quota_subject u7 = subj("uid:7");
	ck_assert_int_eq(quota_store_remove(&st, &u7, "cuda:2", err, sizeof(err)), 1);
	ck_assert_int_eq(quota_store_remove(&st, &u7, "cuda:2", err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "uid:7"));
	ck_assert_int_eq(quota_store_remove(&st, &u7, NULL, err, sizeof(err)), 2);
	ck_assert_int_eq(quota_store_remove(&st, &u7, NULL, err, sizeof(err)), -ENOENT);
	ck_assert_uint_eq(st.n, 4);
	struct quota_subject d = subj("default");
	ck_assert_int_eq(quota_store_remove(&st, &d, NULL, err, sizeof(err)), 1);
	ck_assert_uint_eq(st.n, 3);

	/* Copies are deep and independent. */
	struct quota_store cp;
	quota_store_init(&cp);
	ck_assert_int_eq(quota_store_copy(&cp, &st), 0);
	ck_assert_uint_eq(cp.n, 3);
	quota_store_clear(&st);
	ck_assert_str_eq(cp.entries[2].subject.name, "b");
	ck_assert_int_eq(quota_store_copy(&cp, &st), 0);
	ck_assert_uint_eq(cp.n, 0);
	quota_store_clear(&cp);
}
END_TEST

START_TEST(test_max_entries)
{
	struct quota_store st;
	quota_store_init(&st);
	struct quota_update f = { .set_floor = true, .floor = 1 };
	for (uint32_t i = 0; i < QUOTA_MAX_ENTRIES; i++) {
		struct quota_subject s = { .kind = QUOTA_UID, .uid = i };
		ck_assert_int_eq(quota_store_set(&st, &s, "cpu", &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), 0);
	}
	struct quota_subject s = { .kind = QUOTA_UID, .uid = QUOTA_MAX_ENTRIES };
	ck_assert_int_eq(quota_store_set(&st, &s, "cpu", &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), -ENOSPC);
	/* Changing an existing entry is still fine. */
	s.uid = 5;
	f.floor = 2;
	ck_assert_int_eq(quota_store_set(&st, &s, "cpu", &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), 0);
	ck_assert_uint_eq(st.n, QUOTA_MAX_ENTRIES);
	ck_assert_uint_eq(quota_floor_sum(&st, "cpu"), QUOTA_MAX_ENTRIES + 1);
	quota_store_clear(&st);
}
END_TEST

/* ---- lookup ----------------------------------------------------------------- */

START_TEST(test_precedence)
{
	struct quota_store st;
	struct quota_match m;
	quota_store_init(&st);
	set_ok(&st, "default", "cuda:0", 0, 2 * GiB, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "uid:1000", "cuda:0", GiB, 8 * GiB, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "name:comfy-1", "cuda:0", 4 * GiB, 16 * GiB, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "uid:1000", "cuda:1", 0, 3 * GiB, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "default", "cpu", 0, 32 * GiB, QUOTA_CAPACITY_UNKNOWN);
	set_ok(&st, "name:open", "cpu", KEEP, NONE, QUOTA_CAPACITY_UNKNOWN);

	/* name beats uid beats default, on the same device */
	quota_lookup(&st, 1000, "comfy-1", "cuda:0", &m);
	ck_assert_ptr_nonnull(m.by_name);
	ck_assert_ptr_nonnull(m.by_uid);
	ck_assert_ptr_nonnull(m.by_default);
	ck_assert_ptr_eq(m.effective, m.by_name);
	ck_assert_uint_eq(m.effective->ceiling, 16 * GiB);
	/* the name matters whoever runs it */
	quota_lookup(&st, 4242, "comfy-1", "cuda:0", &m);
	ck_assert_ptr_eq(m.effective, m.by_name);
	ck_assert_ptr_null(m.by_uid);
	quota_lookup(&st, 1000, "comfy-2", "cuda:0", &m);
	ck_assert_ptr_null(m.by_name);
	ck_assert_ptr_eq(m.effective, m.by_uid);
	ck_assert_uint_eq(m.effective->floor, GiB);
	quota_lookup(&st, 1001, "comfy-2", "cuda:0", &m);
	ck_assert_ptr_eq(m.effective, m.by_default);
	ck_assert_uint_eq(m.effective->ceiling, 2 * GiB);
	quota_lookup(&st, 1001, NULL, "cuda:0", &m);
	ck_assert_ptr_eq(m.effective, m.by_default);
	quota_lookup(&st, 1001, "", "cuda:0", &m);
	ck_assert_ptr_eq(m.effective, m.by_default);

	/* Precedence is per device: comfy-1 has no entry on cuda:1, so its
	 * uid's applies; nobody's applies to uid 1001 there. */
	quota_lookup(&st, 1000, "comfy-1", "cuda:1", &m);
	ck_assert_ptr_null(m.by_name);
	ck_assert_ptr_eq(m.effective, m.by_uid);
	ck_assert_uint_eq(m.effective->ceiling, 3 * GiB);
	quota_lookup(&st, 1001, "comfy-1", "cuda:1", &m);
	ck_assert_ptr_null(m.effective);
	quota_lookup(&st, 1000, "comfy-1", "cuda:7", &m);
	ck_assert_ptr_null(m.effective);
	quota_lookup(&st, 1000, "comfy-1", NULL, &m);
	ck_assert_ptr_null(m.effective);

	/* An empty entry shadows default. */
	quota_lookup(&st, 1000, "open", "cpu", &m);
	ck_assert_ptr_eq(m.effective, m.by_name);
	ck_assert_uint_eq(m.effective->ceiling, QUOTA_NO_CEILING);
	ck_assert_uint_eq(m.effective->floor, 0);
	quota_lookup(&st, 1000, "other", "cpu", &m);
	ck_assert_ptr_eq(m.effective, m.by_default);
	quota_store_clear(&st);
}
END_TEST

START_TEST(test_floor_sum)
{
	struct quota_store st;
	quota_store_init(&st);
	struct quota_subject b = subj("uid:2");
	struct quota_update f4 = { .set_floor = true, .floor = 4 * GiB };

	set_ok(&st, "uid:1", "cuda:0", 5 * GiB, KEEP, 8 * GiB);
	/* floors elsewhere do not count */
	set_ok(&st, "uid:2", "cuda:1", 7 * GiB, KEEP, 8 * GiB);
	set_ok(&st, "uid:2", "cpu", 7 * GiB, KEEP, 8 * GiB);
	ck_assert_int_eq(quota_store_set(&st, &b, "cuda:0", &f4, 8 * GiB, err, sizeof(err)), -ENOSPC);
	ck_assert_msg(strstr(err, "cuda:0") && strstr(err, "9.00 GiB") && strstr(err, "8.00 GiB"), "%s", err);
	ck_assert_ptr_null(quota_store_find(&st, &b, "cuda:0"));
	/* exactly the capacity is fine */
	set_ok(&st, "uid:2", "cuda:0", 3 * GiB, KEEP, 8 * GiB);
	ck_assert_uint_eq(quota_floor_sum(&st, "cuda:0"), 8 * GiB);
	ck_assert_int_eq(quota_check_floors(&st, "cuda:0", 8 * GiB, err, sizeof(err)), 0);
	/* raising one, or adding a third, is not */
	struct quota_subject a = subj("uid:1");
	struct quota_update f6 = { .set_floor = true, .floor = 6 * GiB };
	ck_assert_int_eq(quota_store_set(&st, &a, "cuda:0", &f6, 8 * GiB, err, sizeof(err)), -ENOSPC);
	ck_assert_uint_eq(quota_store_find(&st, &a, "cuda:0")->floor, 5 * GiB);
	struct quota_subject d = subj("default");
	struct quota_update f1 = { .set_floor = true, .floor = 1 };
	ck_assert_int_eq(quota_store_set(&st, &d, "cuda:0", &f1, 8 * GiB, err, sizeof(err)), -ENOSPC);
	/* a ceiling-only change does not trip over the floors */
	struct quota_update c = { .set_ceiling = true, .ceiling = 7 * GiB };
	ck_assert_int_eq(quota_store_set(&st, &a, "cuda:0", &c, 8 * GiB, err, sizeof(err)), 0);
	/* unknown capacity skips the check */
	ck_assert_int_eq(quota_store_set(&st, &a, "cuda:0", &f6, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), 0);
	ck_assert_uint_eq(quota_floor_sum(&st, "cuda:0"), 9 * GiB);

	/* The GPU got smaller: the check at start reports it, and floors can
	 * still be lowered one at a time even though the sum stays above. */
	ck_assert_int_eq(quota_check_floors(&st, "cuda:0", 4 * GiB, err, sizeof(err)), -ENOSPC);
	ck_assert_msg(strstr(err, "cuda:0") && strstr(err, "9.00 GiB") && strstr(err, "4.00 GiB"), "%s", err);
	struct quota_update f5 = { .set_floor = true, .floor = 5 * GiB };
	ck_assert_int_eq(quota_store_set(&st, &a, "cuda:0", &f5, 4 * GiB, err, sizeof(err)), 0);
	ck_assert_int_eq(quota_store_set(&st, &a, "cuda:0", &f6, 4 * GiB, err, sizeof(err)), -ENOSPC);
	ck_assert_int_eq(quota_check_floors(&st, "cuda:7", 0, err, sizeof(err)), 0);

	/* The sum saturates instead of wrapping. */
	struct quota_update big = { .set_floor = true, .floor = (uint64_t)INT64_MAX };
	ck_assert_int_eq(quota_store_set(&st, &a, "cpu", &big, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), 0);
	ck_assert_int_eq(quota_store_set(&st, &b, "cpu", &big, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), 0);
	ck_assert_int_eq(quota_store_set(&st, &d, "cpu", &big, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)), 0);
	ck_assert_uint_eq(quota_floor_sum(&st, "cpu"), UINT64_MAX);
	ck_assert_int_eq(quota_check_floors(&st, "cpu", UINT64_MAX - 1, err, sizeof(err)), -ENOSPC);
	quota_store_clear(&st);
}
END_TEST

/* ---- JSON and files ----------------------------------------------------------- */

static void fill(struct quota_store *st)
{
	struct passwd *pw = getpwuid(0);
	char text[128];
	ck_assert_ptr_nonnull(pw);
	snprintf(text, sizeof(text), "user:%s", pw->pw_name);
	quota_store_init(st);
	set_ok(st, "default", "cuda:0", 0, 2 * GiB, QUOTA_CAPACITY_UNKNOWN);
	set_ok(st, text, "cuda:0", GiB, NONE, QUOTA_CAPACITY_UNKNOWN);
	set_ok(st, "uid:1000", "cuda:1", 3 * MiB + 1, 0x7ffffffffffffff0ll, QUOTA_CAPACITY_UNKNOWN);
	set_ok(st, "name:comfy \"1\" \\ \xc3\xbc", "cpu", KEEP, 0, QUOTA_CAPACITY_UNKNOWN);
	set_ok(st, "name:open", "cpu", KEEP, NONE, QUOTA_CAPACITY_UNKNOWN);
}

static void assert_same(const struct quota_store *a, const struct quota_store *b)
{
	ck_assert_uint_eq(a->n, b->n);
	for (size_t i = 0; i < a->n; i++) {
		const struct quota_entry *x = &a->entries[i], *y = &b->entries[i];
		ck_assert_int_eq(x->subject.kind, y->subject.kind);
		ck_assert_uint_eq(x->subject.uid, y->subject.uid);
		ck_assert_str_eq(x->subject.name, y->subject.name);
		ck_assert_str_eq(x->device, y->device);
		ck_assert_uint_eq(x->floor, y->floor);
		ck_assert_uint_eq(x->ceiling, y->ceiling);
	}
}

START_TEST(test_json_roundtrip)
{
	struct quota_store a, b;
	char *txt = NULL;
	fill(&a);
	ck_assert_int_eq(quota_store_to_json(&a, &txt), 0);
	ck_assert_ptr_nonnull(strstr(txt, "\"version\": 1"));
	ck_assert_ptr_nonnull(strstr(txt, "\"ceiling\": null"));
	ck_assert_ptr_nonnull(strstr(txt, "\"user\": "));
	ck_assert_ptr_nonnull(strstr(txt, "comfy \\\"1\\\" \\\\"));
	ck_assert_int_eq(txt[strlen(txt) - 1], '\n');
	sentinel(&b);
	ck_assert_int_eq(quota_store_from_json(&b, txt, strlen(txt), "mem", err, sizeof(err)), 0);
	assert_same(&a, &b);
	free(txt);
	/* An empty store round-trips too. */
	quota_store_clear(&a);
	ck_assert_int_eq(quota_store_to_json(&a, &txt), 0);
	ck_assert_int_eq(quota_store_from_json(&b, txt, strlen(txt), "mem", err, sizeof(err)), 0);
	ck_assert_uint_eq(b.n, 0);
	free(txt);
	quota_store_clear(&b);
}
END_TEST

START_TEST(test_save_load)
{
	char *dir = t_tmpdir();
	char path[4200], tmp[4200];
	struct quota_store a, b;
	struct stat st;
	ck_assert_ptr_nonnull(dir);
	qpath(path, sizeof(path), dir, QUOTA_FILE);
	qpath(tmp, sizeof(tmp), dir, ".quotas.json.tmp");

	/* No file yet: an empty store, not an error; and the load replaces
	 * whatever the store held. */
	sentinel(&b);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	ck_assert_uint_eq(b.n, 0);

	fill(&a);
	ck_assert_int_eq(quota_store_save(&a, dir, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0644);
	ck_assert_int_eq(access(tmp, F_OK), -1);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	assert_same(&a, &b);

	/* Saving again replaces the file (a new inode: renamed, not
	 * rewritten in place). */
	ino_t ino = st.st_ino;
	set_ok(&a, "uid:5", "cuda:3", GiB, KEEP, QUOTA_CAPACITY_UNKNOWN);
	ck_assert_int_eq(quota_store_save(&a, dir, err, sizeof(err)), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_ne(st.st_ino, ino);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	assert_same(&a, &b);

	/* A leftover temporary file from a crash is ignored by load and
	 * overwritten by the next save. */
	write_file(tmp, "garbage", 7, 0600);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	assert_same(&a, &b);
	ck_assert_int_eq(quota_store_save(&a, dir, err, sizeof(err)), 0);
	ck_assert_int_eq(access(tmp, F_OK), -1);

	/* The persisting helpers write through, and refuse without writing. */
	struct quota_subject s = subj("name:persist");
	struct quota_update f = { .set_floor = true, .floor = 3 * GiB };
	ck_assert_int_eq(quota_set_persist(&a, dir, &s, "cuda:0", &f, 8 * GiB, err, sizeof(err)), 0);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(quota_store_find(&b, &s, "cuda:0"));
	f.floor = 7 * GiB + 1;
	ck_assert_int_eq(quota_set_persist(&a, dir, &s, "cuda:0", &f, 8 * GiB, err, sizeof(err)), -ENOSPC);
	ck_assert_uint_eq(quota_store_find(&a, &s, "cuda:0")->floor, 3 * GiB);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	ck_assert_uint_eq(quota_store_find(&b, &s, "cuda:0")->floor, 3 * GiB);
	ck_assert_int_eq(quota_remove_persist(&a, dir, &s, NULL, err, sizeof(err)), 1);
	ck_assert_int_eq(quota_remove_persist(&a, dir, &s, NULL, err, sizeof(err)), -ENOENT);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	ck_assert_ptr_null(quota_store_find(&b, &s, "cuda:0"));
	assert_same(&a, &b);

	quota_store_clear(&a);
	quota_store_clear(&b);
	t_rmtree(dir);
}
END_TEST

/* Writes text as the quota file and expects load to fail with r, an error
 * naming the file and containing what, and the store untouched. */
static void expect_corrupt(const char *dir, const char *text, size_t len, int r, const char *what)
{
	char path[4200];
	struct quota_store st;
	qpath(path, sizeof(path), dir, QUOTA_FILE);
	write_file(path, text, len, 0644);
	sentinel(&st);
	err[0] = '\0';
	int got = quota_store_load(&st, dir, err, sizeof(err));
	ck_assert_msg(got == r, "%.60s: got %d (%s), wanted %d", text, got, err, r);
	ck_assert_msg(strstr(err, path), "message does not name the file: %s", err);
	ck_assert_msg(strstr(err, what), "message \"%s\" lacks \"%s\"", err, what);
	assert_sentinel(&st);
	quota_store_clear(&st);
}

#define CORRUPT(text, what) expect_corrupt(dir, text, strlen(text), -EINVAL, what)
#define ENTRY(body) "{\"version\": 1, \"quotas\": [" body "]}"

START_TEST(test_load_corrupt)
{
	char *dir = t_tmpdir();
	ck_assert_ptr_nonnull(dir);

	/* Empty and truncated files: the usual results of a crash without
	 * the atomic write. */
	CORRUPT("", "empty");
	struct quota_store a;
	char *txt;
	fill(&a);
	ck_assert_int_eq(quota_store_to_json(&a, &txt), 0);
	for (size_t cut = 1; cut < strlen(txt) - 2; cut += 7)
		expect_corrupt(dir, txt, cut, -EINVAL, dir);
	free(txt);
	quota_store_clear(&a);

	CORRUPT("garbage", ":1:");
	expect_corrupt(dir, "{\"version\": 1,\0 \"quotas\": []}", 29, -EINVAL, dir);
	expect_corrupt(dir, "\x89PNG\r\n\x1a\n\0\0\0", 11, -EINVAL, dir);
	CORRUPT("[]", "not a JSON object");
	CORRUPT("{\"version\": 1, \"quotas\": [], \"extra\": 1}", "unknown key \"extra\"");
	CORRUPT("{\"version\": 1, \"version\": 1, \"quotas\": []}", "duplicate");
	CORRUPT("{\"quotas\": []}", "version");
	CORRUPT("{\"version\": \"1\", \"quotas\": []}", "version");
	CORRUPT("{\"version\": 2, \"quotas\": []}", "version 2");
	CORRUPT("{\"version\": 1}", "quotas");
	CORRUPT("{\"version\": 1, \"quotas\": {}}", "quotas");
	CORRUPT(ENTRY("1"), "quotas[0] is not an object");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": 0}"), "missing \"ceiling\"");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"ceiling\": null}"), "missing \"floor\"");
	CORRUPT(ENTRY("{\"device\": \"cpu\", \"floor\": 0, \"ceiling\": null}"), "missing \"subject\"");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"floor\": 0, \"ceiling\": null}"), "missing \"device\"");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": 0, \"ceiling\": null, \"x\": 1}"),
		"unknown key \"x\"");
	CORRUPT(ENTRY("{\"subject\": \"someone\", \"device\": \"cpu\", \"floor\": 0, \"ceiling\": null}"),
		"not a quota subject");
	CORRUPT(ENTRY("{\"subject\": \"user:root\", \"device\": \"cpu\", \"floor\": 0, \"ceiling\": null}"),
		"not canonical");
	CORRUPT(ENTRY("{\"subject\": \"name:x\", \"user\": \"root\", \"device\": \"cpu\", \"floor\": 0, "
		      "\"ceiling\": null}"),
		"\"user\" given");
	CORRUPT(ENTRY("{\"subject\": \"name:a\\u0000b\", \"device\": \"cpu\", \"floor\": 0, \"ceiling\": null}"),
		"NUL");
	CORRUPT(ENTRY("{\"subject\": 5, \"device\": \"cpu\", \"floor\": 0, \"ceiling\": null}"), "not a string");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"gpu7\", \"floor\": 0, \"ceiling\": null}"),
		"not a device name");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": -1, \"ceiling\": null}"),
		"floor is not a byte count");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": \"1GiB\", \"ceiling\": null}"),
		"floor is not a byte count");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": 1.5, \"ceiling\": null}"),
		"floor is not a byte count");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": 0, \"ceiling\": -5}"),
		"ceiling is neither");
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": 0, \"ceiling\": 99999999999999999999}"),
		dir);
	CORRUPT(ENTRY("{\"subject\": \"default\", \"device\": \"cpu\", \"floor\": 5, \"ceiling\": 4}"),
		"floor above ceiling");
	CORRUPT(ENTRY("{\"subject\": \"uid:7\", \"device\": \"cpu\", \"floor\": 5, \"ceiling\": null},"
		      "{\"subject\": \"uid:7\", \"device\": \"cpu\", \"floor\": 6, \"ceiling\": null}"),
		"second entry for uid:7 on cpu");

	/* More entries than a store may hold. */
	size_t cap = 64 * (QUOTA_MAX_ENTRIES + 2) + 64, len = 0;
	char *big = malloc(cap);
	ck_assert_ptr_nonnull(big);
	len += (size_t)snprintf(big + len, cap - len, "{\"version\": 1, \"quotas\": [");
	for (uint32_t i = 0; i <= QUOTA_MAX_ENTRIES; i++)
		len += (size_t)snprintf(big + len, cap - len,
					"%s{\"subject\":\"uid:%u\",\"device\":\"cpu\",\"floor\":0,\"ceiling\":null}",
					i ? "," : "", i);
	len += (size_t)snprintf(big + len, cap - len, "]}");
	ck_assert_uint_lt(len, cap);
	CORRUPT(big, "more than 4096");
	free(big);

	t_rmtree(dir);
}
END_TEST

START_TEST(test_load_file_kinds)
{
	char *dir = t_tmpdir();
	char path[4200], other[4200];
	struct quota_store st;
	ck_assert_ptr_nonnull(dir);
	qpath(path, sizeof(path), dir, QUOTA_FILE);
	qpath(other, sizeof(other), dir, "elsewhere.json");
	static const char valid[] = "{\"version\": 1, \"quotas\": []}";

	/* a symbolic link is refused, even to a valid file */
	write_file(other, valid, strlen(valid), 0644);
	ck_assert_int_eq(symlink(other, path), 0);
	sentinel(&st);
	ck_assert_int_eq(quota_store_load(&st, dir, err, sizeof(err)), -ELOOP);
	ck_assert_ptr_nonnull(strstr(err, "symbolic link"));
	assert_sentinel(&st);
	unlink(path);

	/* a directory */
	ck_assert_int_eq(mkdir(path, 0755), 0);
	ck_assert_int_eq(quota_store_load(&st, dir, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
	rmdir(path);

	/* writable by others, or by the group */
	write_file(path, valid, strlen(valid), 0666);
	ck_assert_int_eq(quota_store_load(&st, dir, err, sizeof(err)), -EPERM);
	ck_assert_ptr_nonnull(strstr(err, "writable"));
	ck_assert_ptr_nonnull(strstr(err, path));
	ck_assert_int_eq(chmod(path, 0664), 0);
	ck_assert_int_eq(quota_store_load(&st, dir, err, sizeof(err)), -EPERM);
	ck_assert_int_eq(chmod(path, 0600), 0);
	ck_assert_int_eq(quota_store_load(&st, dir, err, sizeof(err)), 0);
	ck_assert_uint_eq(st.n, 0);

	/* owned by someone else (only root can arrange that) */
	if (geteuid() == 0) {
		sentinel(&st);
		ck_assert_int_eq(chown(path, 12345, 12345), 0);
		ck_assert_int_eq(quota_store_load(&st, dir, err, sizeof(err)), -EPERM);
		ck_assert_ptr_nonnull(strstr(err, "owned by uid 12345"));
		assert_sentinel(&st);
	}

	/* the state directory is not a directory */
	unlink(path);
	write_file(path, valid, strlen(valid), 0644);
	ck_assert_int_lt(quota_store_load(&st, path, err, sizeof(err)), 0);
	ck_assert_int_eq(quota_store_save(&st, path, err, sizeof(err)), -ENOTDIR);

	/* larger than the limit */
	unlink(path);
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (17 << 20)), 0);
	close(fd);
	ck_assert_int_eq(quota_store_load(&st, dir, err, sizeof(err)), -EFBIG);

	quota_store_clear(&st);
	t_rmtree(dir);
}
END_TEST

START_TEST(test_permissions)
{
	char *dir = t_tmpdir();
	char path[4200], tmp[4200], missing[4300];
	struct quota_store a, b;
	ck_assert_ptr_nonnull(dir);
	qpath(path, sizeof(path), dir, QUOTA_FILE);
	qpath(tmp, sizeof(tmp), dir, ".quotas.json.tmp");
	snprintf(missing, sizeof(missing), "%s/no/such/dir", dir);

	if (become_unprivileged(dir) < 0) {
		fprintf(stderr, "test_permissions: skipped: cannot drop root to uid 65534\n");
		t_rmtree(dir);
		return;
	}
	fill(&a);
	ck_assert_int_eq(quota_store_save(&a, dir, err, sizeof(err)), 0);

	/* unreadable */
	ck_assert_int_eq(chmod(path, 0), 0);
	sentinel(&b);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), -EACCES);
	ck_assert_ptr_nonnull(strstr(err, path));
	ck_assert_ptr_nonnull(strstr(err, "Permission denied"));
	assert_sentinel(&b);
	ck_assert_int_eq(chmod(path, 0644), 0);

	/* a state directory we cannot write: save fails, the old file stays,
	 * no temporary file is left, and the persisting helper rolls back */
	ck_assert_int_eq(chmod(dir, 0555), 0);
	struct quota_subject s = subj("name:late");
	struct quota_update f = { .set_floor = true, .floor = GiB };
	ck_assert_int_eq(quota_set_persist(&a, dir, &s, "cpu", &f, QUOTA_CAPACITY_UNKNOWN, err, sizeof(err)),
			 -EACCES);
	ck_assert_ptr_nonnull(strstr(err, ".quotas.json.tmp"));
	ck_assert_ptr_null(quota_store_find(&a, &s, "cpu"));
	struct quota_subject d = subj("default");
	size_t before = a.n;
	ck_assert_int_eq(quota_remove_persist(&a, dir, &d, NULL, err, sizeof(err)), -EACCES);
	ck_assert_uint_eq(a.n, before);
	ck_assert_int_eq(access(tmp, F_OK), -1);
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	assert_same(&a, &b);
	ck_assert_int_eq(chmod(dir, 0755), 0);

	/* a state directory that does not exist: save says so, load is empty */
	ck_assert_int_eq(quota_store_save(&a, missing, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, missing));
	ck_assert_int_eq(quota_store_load(&b, missing, err, sizeof(err)), 0);
	ck_assert_uint_eq(b.n, 0);

	/* a link planted at the temporary name is not followed */
	char victim[4200];
	qpath(victim, sizeof(victim), dir, "victim");
	write_file(victim, "precious", 8, 0644);
	ck_assert_int_eq(symlink(victim, tmp), 0);
	ck_assert_int_eq(quota_store_save(&a, dir, err, sizeof(err)), -ELOOP);
	_cleanup_free_ char *v = read_file(victim);
	ck_assert_str_eq(v, "precious");
	/* ...and the previous file is intact */
	ck_assert_int_eq(quota_store_load(&b, dir, err, sizeof(err)), 0);
	assert_same(&a, &b);

	quota_store_clear(&a);
	quota_store_clear(&b);
	/* Cleaning up as 65534 works: the directory is ours now. */
	t_rmtree(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("quota");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_subject_parse);
	tcase_add_test(tc, test_device_and_size);
	tcase_add_test(tc, test_set_validation);
	tcase_add_test(tc, test_sorted_and_remove);
	tcase_add_test(tc, test_max_entries);
	tcase_add_test(tc, test_precedence);
	tcase_add_test(tc, test_floor_sum);
	tcase_set_timeout(tc, 30);
	suite_add_tcase(s, tc);
	TCase *tf = tcase_create("files");
	tcase_add_test(tf, test_json_roundtrip);
	tcase_add_test(tf, test_save_load);
	tcase_add_test(tf, test_load_corrupt);
	tcase_add_test(tf, test_load_file_kinds);
	tcase_add_test(tf, test_permissions);
	tcase_set_timeout(tf, 30);
	suite_add_tcase(s, tf);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
