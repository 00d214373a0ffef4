/* SPDX-License-Identifier: MIT */
/*
 * Shared copies across a broker restart (cache.h): a filled copy's fd goes
 * to systemd's fd store as FDNAME=copy-ID-SIZE, and its key (the file's
 * identity, the device's UUID, the runs) to STATE_DIR/copies/ID.key,
 * written atomically; a restarted broker takes both back, and its clients
 * re-register what they map (REGISTER of a copy).  A copy whose key is
 * lost comes back as an orphan: counted, released when its last user
 * goes, never handed out anew.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <linux/kcmp.h>

#include "broker/cache-int.h"
#include "broker/conn.h"
#include "broker/grant.h"
#include "common/cleanup.h"
#include "common/util.h"

#define KEY_MAGIC "VRAMDCP1"

/* The key file's fixed part; the runs follow. */
struct key_file {
	char magic[8];
	uint64_t id, size;
	uint8_t uuid[16];
	uint64_t st_dev, st_ino, fsize;
	int64_t mtime_ns, ctime_ns;
	uint32_t uid, nruns;
	char path[256];
};

static int key_path(const struct broker *b, uint64_t id, char *buf, size_t len)
{
	if (!b->cfg.state_dir)
		return -ENOENT;
	return snprintf(buf, len, "%s/copies/%llu.key", b->cfg.state_dir, (unsigned long long)id) < (int)len ? 0
													       : -ENAMETOOLONG;
}

static int write_key(const struct broker *b, const struct copy *cp)
{
	char path[4200], tmp[4300], dir[4200];
	int r = key_path(b, cp->id, path, sizeof(path));
	if (r < 0)
		return r;
	snprintf(dir, sizeof(dir), "%s/copies", b->cfg.state_dir);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	struct key_file k = { .id = cp->id, .size = cp->size, .st_dev = cp->key.st_dev, .st_ino = cp->key.st_ino,
			      .fsize = cp->key.size, .mtime_ns = cp->key.mtime_ns, .ctime_ns = cp->key.ctime_ns,
			      .uid = cp->key.uid, .nruns = cp->key.nruns };
	memcpy(k.magic, KEY_MAGIC, 8);
	memcpy(k.uuid, cp->pool->uuid, 16);
	str_copy(k.path, cp->path, sizeof(k.path));
	_cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	size_t rl = (size_t)cp->key.nruns * sizeof(*cp->key.runs);
	if (write(fd, &k, sizeof(k)) != (ssize_t)sizeof(k) || write(fd, cp->key.runs, rl) != (ssize_t)rl ||
	    fsync(fd) < 0 || rename(tmp, path) < 0) {
		r = errno ? -errno : -EIO;
		unlink(tmp);
		return r;
	}
	return 0;
}

void copy_store(struct broker *b, struct copy *cp)
{
	char msg[sizeof(cp->fdname) + 32];
	if (!b->fdstore || !cp->pool->ops->copy_adopt)
		return;
	int r = write_key(b, cp);
	if (r < 0) {
		broker_log(1, "copy %llu: its key cannot be kept (%s): after a restart it comes back as an orphan",
			   (unsigned long long)cp->id, strerror(-r));
	}
	snprintf(cp->fdname, sizeof(cp->fdname), "copy-%llu-%llu", (unsigned long long)cp->id,
		 (unsigned long long)cp->size);
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", cp->fdname);
	cp->stored = sd_pid_notify_with_fds(0, 0, msg, &cp->fd, 1) > 0;
}

void copy_unstore(struct broker *b, struct copy *cp)
{
	char msg[sizeof(cp->fdname) + 32], path[4200];
	if (cp->stored && !b->shutting_down) {
		snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", cp->fdname);
		sd_notify(0, msg);
		if (key_path(b, cp->id, path, sizeof(path)) == 0)
			unlink(path);
	}
	cp->stored = false;
}

/* Reads the key of copy id into cp (and its pool); 0 or -errno. */
static int read_key(struct broker *b, uint64_t id, uint64_t size, struct copy_key *k, struct pool **ret_pool,
		    char *path_out, size_t path_len)
{
	char path[4200];
	struct key_file f;
	int r = key_path(b, id, path, sizeof(path));
	if (r < 0)
		return r;
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	if (read(fd, &f, sizeof(f)) != (ssize_t)sizeof(f) || memcmp(f.magic, KEY_MAGIC, 8) || f.id != id ||
	    f.size != size || !f.nruns || f.nruns > VRAMD_SHARE_RUNS_MAX)
		return -EINVAL;
	struct pool *p = pool_by_uuid(b, f.uuid);
	if (!p)
		return -ENODEV;
	k->runs = calloc(f.nruns, sizeof(*k->runs));
	size_t rl = (size_t)f.nruns * sizeof(*k->runs);
	if (!k->runs || read(fd, k->runs, rl) != (ssize_t)rl) {
		free(k->runs);
		k->runs = NULL;
		return -EINVAL;
	}
	*k = (struct copy_key){ (dev_t)f.st_dev, (ino_t)f.st_ino, f.fsize, f.mtime_ns, f.ctime_ns, p->index, f.uid,
				f.nruns, k->runs, 0 };
	*ret_pool = p;
	str_copy(path_out, f.path, path_len);
	return 0;
}

void cache_restore(struct broker *b, int fd, const char *name)
{
	unsigned long long id, size;
	char msg[300];
	struct copy_key k = { 0 };
	struct pool *p = NULL;
	char path[256] = "";
	void *handle = NULL;
	const char *why = "its key is gone";
	int r = sscanf(name, "copy-%llu-%llu", &id, &size) == 2 ? read_key(b, id, size, &k, &p, path, sizeof(path))
								  : -EINVAL;
	if (r == 0 && (r = p->ops->copy_adopt(p, fd, size, &handle, &why)) == 0) {
		struct copy *cp = copy_new(b, p, size);
		if (cp) {
			cp->id = id;
			b->next_copy_id = MAX(b->next_copy_id, id);
			cp->key = k;
			cp->key.hash = copy_key_hash(&cp->key);
			cp->handle = handle;
			cp->fd = fd;
			cp->state = COPY_READY;
			cp->stored = true;
			str_copy(cp->fdname, name, sizeof(cp->fdname));
			str_copy(cp->path, path, sizeof(cp->path));
			const char *w2 = "";
			if (p->ops->copy_seal(p, handle, fd, &cp->ro_fd, &w2) == 0) {
				broker_log(1, "fd store: copy %llu of %s on %s kept", id, path, p->name);
				return;
			}
			copy_free(b, cp, false);
			return;
		}
		p->ops->release(p, handle, size);
	}
	free(k.runs);
	broker_log(1, "fd store: releasing %s: %s", name, r == -EINVAL || r == -ENOENT ? why : strerror(-r));
	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
	sd_notify(0, msg);
	close(fd);
}
