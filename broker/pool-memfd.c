/* SPDX-License-Identifier: MIT */
/*
 * memfd-backed pools: the pinned host pool ("cpu") and simulated GPUs.
 *
 * Each grant is a fresh memfd (so it can never hold another client's bytes),
 * sized, then sealed against growing and further sealing before it is
 * handed out.  It is deliberately not sealed against shrinking: the broker
 * keeps its own reference (the grant's handle is a duplicate of the fd) and,
 * when the grant ends (FREE, the holder's disconnect or death), truncates
 * the file to 0 (memfd_revoke).  Its pages go back to the system at once,
 * whoever still holds the fd or a mapping (a mapping faults with SIGBUS), so
 * no client keeps memory it is no longer charged for by keeping the fd and
 * closing the socket.  A client may shrink its own grant: that only gives
 * memory back.  The host pool uses hugetlb memfds when huge pages are
 * reserved (reserved up front with fallocate, so a client never meets
 * SIGBUS for want of a huge page later) and binds grants to its NUMA node
 * with mbind on a shared mapping, which sets the inode's policy for every
 * later fault, in any process.
 *
 * A grant takes a memfd from the pool's ready reserve (pool-reserve.c) when
 * it holds one of the right size: made for the reserve, populated in the
 * background and never handed to anyone before, so the rule above holds.
 * Memfds may use transparent huge pages when the kernel allows them for
 * shmem (shmem_enabled; the reserve asks for them with MADV_HUGEPAGE).
 */
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/log.h"
#include "broker/pool.h"
#include "common/cleanup.h"
#include "common/util.h"

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21 << 26)
#endif

struct memfd_pool {
	struct memfd_kind kind;
	struct ready_reserve *ready;
};

/* A grant's handle is the broker's own duplicate of its fd. */
static void *handle_of(int fd)
{
	return (void *)(intptr_t)(fd + 1);
}

static int fd_of(void *handle)
{
	return (int)(intptr_t)handle - 1;
}

/* Binds the memfd's pages to node: mbind on a shared mapping sets the
 * inode's policy, for every later fault in any process.  Best effort. */
static void bind_node(int fd, uint64_t size, int node)
{
	void *m = mmap(NULL, size, PROT_NONE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return;
	unsigned long mask[16] = { 0 };
	if ((unsigned)node < sizeof(mask) * 8) {
		mask[node / (8 * sizeof(long))] |= 1ul << (node % (8 * sizeof(long)));
		(void)mbind(m, size, MPOL_BIND, mask, sizeof(mask) * 8, 0);
	}
	munmap(m, size);
}

int memfd_new(const struct memfd_kind *k, uint64_t size, bool hugetlb, int *ret_fd, const char **why)
{
	unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugetlb ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
	int fd = memfd_create(k->name, flags);
	if (fd < 0) {
		*why = "memfd_create failed";
		return -errno;
	}
	if (ftruncate(fd, (off_t)size) < 0) {
		int e = -errno;
		close(fd);
		*why = "ftruncate of the grant memfd failed";
		return e;
	}
	if (k->numa_node >= 0)
		bind_node(fd, size, k->numa_node);
	*ret_fd = fd;
	return 0;
}

/* Fresh memory: hugetlb reserved up front (fallocate, so that a client
 * never meets SIGBUS for want of a huge page later) while huge pages last,
 * else normal pages, touched by nobody yet. */
static int memfd_fresh(const struct memfd_kind *k, uint64_t size, int *ret_fd, const char **why)
{
	int fd = -1;
	if (k->hugetlb && memfd_new(k, size, true, &fd, why) == 0) {
		if (fallocate(fd, 0, 0, (off_t)size) == 0) {
			*ret_fd = fd;
			return 0;
		}
		close(fd); /* huge pages ran out: normal pages for this grant */
	}
	return memfd_new(k, size, false, ret_fd, why);
}

/* Memory of size bytes for a grant or a copy (what), held = used bytes
 * of the pool besides it: populated from the ready reserve, else fresh;
 * sealed with seals; the broker keeps a duplicate of the fd as the handle. */
static int memfd_memory(struct pool *p, uint64_t size, uint64_t held, int seals, const char *what, int *ret_fd,
			void **ret_handle, const char **why)
{
	struct memfd_pool *mp = p->priv;
	int fd = -1, e;

	if (ready_take(mp->ready, size, held, &fd) < 0 && (e = memfd_fresh(&mp->kind, size, &fd, why)) < 0) {
		ready_released(mp->ready, size);
		return e;
	}
	if (fcntl(fd, F_ADD_SEALS, seals) < 0) {
		e = -errno;
		*why = "sealing the memfd failed";
		goto fail;
	}
	int keep = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (keep < 0) {
		e = -errno;
		*why = "keeping a reference to the memfd failed";
		goto fail;
	}
	*ret_fd = fd;
	*ret_handle = handle_of(keep);
	return 0;
fail:
	broker_log(2, "%s: %s of %llu bytes: %s", p->name, what, (unsigned long long)size, *why);
	close(fd);
	ready_released(mp->ready, size);
	return e;
}

static int memfd_grant(struct pool *p, uint64_t size, int *ret_fd, void **ret_handle, const char **why)
{
	return memfd_memory(p, size, p->used, F_SEAL_GROW | F_SEAL_SEAL, "a grant", ret_fd, ret_handle, why);
}

static int memfd_adopt(struct pool *p, int fd, uint64_t size, void **ret_handle, const char **why)
{
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		*why = "not a memfd";
		return -EINVAL;
	}
	/* Only sealed memfds can be ours: sealed against growing (and further
	 * sealing), its size can only go down, never past what is accounted.
	 * (An older vramd's grants are sealed against shrinking too: they are
	 * taken back, but cannot be revoked.) */
	if (seals < 0 || (seals & (F_SEAL_GROW | F_SEAL_SEAL)) != (F_SEAL_GROW | F_SEAL_SEAL)) {
		*why = "not a sealed grant memfd";
		return -EINVAL;
	}
	if ((uint64_t)st.st_size != size) {
		*why = "its size is not the size claimed";
		return -EINVAL;
	}
	int keep = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (keep < 0) {
		*why = "keeping a reference to the memfd failed";
		return -errno;
	}
	struct memfd_pool *mp = p->priv;
	ready_room(mp->ready, size, p->used);
	*ret_handle = handle_of(keep);
	return 0;
}

static void memfd_release(struct pool *p, void *handle, uint64_t size)
{
	/* Only the broker's reference: the memory stays with whoever holds
	 * the fd (a broker shutting down leaves it to its clients). */
	struct memfd_pool *mp = p->priv;
	close(fd_of(handle));
	ready_released(mp->ready, size);
}

static void memfd_revoke(struct pool *p, void *handle, uint64_t size)
{
	/* Truncated, its pages are freed whoever still maps it. */
	if (ftruncate(fd_of(handle), 0) < 0)
		broker_log(1, "%s: a grant's memory could not be revoked (%m): it goes when its holder lets go",
			   p->name);
}

static void memfd_destroy(struct pool *p)
{
	struct memfd_pool *mp = p->priv;
	ready_free(mp->ready);
	free(mp);
}

/* What the kernel's shmem THP setting gives memfds (for 2 MiB pages: the
 * per-size knob unless it says inherit, then the global one): 0 never, 1
 * on memory mapped with MADV_HUGEPAGE (advise), 2 always. */
static int shmem_thp(void)
{
	static const char *const knobs[] = { "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled",
					     "/sys/kernel/mm/transparent_hugepage/shmem_enabled" };
	for (size_t i = 0; i < ARRAY_SIZE(knobs); i++) {
		char buf[160] = "";
		FILE *f = fopen(knobs[i], "re");
		if (!f)
			continue;
		bool ok = fgets(buf, sizeof(buf), f) != NULL;
		fclose(f);
		char *a = ok ? strchr(buf, '[') : NULL, *b = a ? strchr(a, ']') : NULL;
		if (!b)
			continue;
		*b = '\0';
		a++;
		if (!strcmp(a, "inherit"))
			continue;
		if (!strcmp(a, "always") || !strcmp(a, "within_size") || !strcmp(a, "force"))
			return 2;
		return !strcmp(a, "advise") ? 1 : 0;
	}
	return 0;
}

static void memfd_label(struct pool *p)
{
	const struct memfd_pool *mp = p->priv;
	if (p->backend == VRAMD_BACKEND_SIM) {
		snprintf(p->label, sizeof(p->label), "simulated GPU (memfd%s)",
			 (p->flags & VRAMD_DEV_THP) ? ", thp" : "");
		return;
	}
	snprintf(p->label, sizeof(p->label), "host memory (memfd%s%s%s)", mp->kind.hugetlb ? ", hugetlb" : "",
		 (p->flags & VRAMD_DEV_THP) ? ", thp" : "", mp->kind.numa_node >= 0 ? ", NUMA-bound" : "");
}

static void memfd_configure(struct pool *p, const struct pool_ready_settings *s)
{
	struct memfd_pool *mp = p->priv;
	int thp = mp->kind.hugetlb ? 0 : shmem_thp();
	p->flags = thp ? p->flags | VRAMD_DEV_THP : p->flags & ~VRAMD_DEV_THP;
	memfd_label(p);
	struct vramd_device d = { 0 };
	ready_describe(mp->ready, &d);
	if (d.ready_target != s->target) {
		char s1[32];
		broker_log(1, "%s: ready reserve %s%s", p->name, s->target ? size_format(s->target, s1, sizeof(s1)) : "off",
			   thp == 1 ? " (transparent huge pages: shmem_enabled=advise)" : "");
	}
	(void)ready_configure(mp->ready, s, thp > 0);
}

static void memfd_describe(const struct pool *p, struct vramd_device *d)
{
	const struct memfd_pool *mp = p->priv;
	ready_describe(mp->ready, d);
}

/* ---- shared copies ------------------------------------------------------- */

/* A copy's memory comes from the ready reserve like a grant's (populated:
 * the broker's fill then writes at the disk's speed instead of faulting
 * fresh pages in), else fresh.  Called on the loop thread with the copy
 * already counted in p->used; sealed against growing only (copy_seal
 * seals it for good once filled). */
static int memfd_copy_create(struct pool *p, uint64_t size, int *ret_fd, void **ret_handle, const char **why)
{
	return memfd_memory(p, size, p->used - MIN(size, p->used), F_SEAL_GROW, "a shared copy", ret_fd, ret_handle,
			    why);
}

static void *memfd_copy_map(struct pool *p, void *handle, int fd, uint64_t size)
{
	void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	return m == MAP_FAILED ? NULL : m;
}

static int memfd_copy_write(struct pool *p, void *handle, uint64_t off, const void *src, uint64_t len,
			    const char **why)
{
	int fd = fd_of(handle);
	for (uint64_t done = 0; done < len;) {
		ssize_t n = pwrite(fd, (const char *)src + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			*why = "writing the copy's memfd failed";
			return n < 0 ? -errno : -EIO;
		}
		done += (uint64_t)n;
	}
	return 0;
}

/* Sealed against writing (no writable mapping may exist any more; the
 * broker's is gone), growing and further sealing; not against shrinking:
 * an evicted copy is cut to 0 like a grant.  Clients get the file
 * reopened read-only, which cannot be mapped writable either. */
static int memfd_copy_seal(struct pool *p, void *handle, int fd, int *ret_ro_fd, const char **why)
{
	char path[64];
	int seals = fcntl(fd, F_GET_SEALS);
	/* sealed already: a copy the fd store brought back */
	if (seals < 0 || (!(seals & F_SEAL_WRITE) && fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SEAL) < 0)) {
		*why = "sealing the copy against writing failed";
		return -errno;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	if (ro < 0) {
		*why = "reopening the copy read-only failed";
		return -errno;
	}
	*ret_ro_fd = ro;
	return 0;
}

static int memfd_copy_adopt(struct pool *p, int fd, uint64_t size, void **ret_handle, const char **why)
{
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || seals < 0 || !(seals & F_SEAL_WRITE) ||
	    (seals & (F_SEAL_GROW | F_SEAL_SEAL)) != (F_SEAL_GROW | F_SEAL_SEAL)) {
		*why = "not a sealed copy memfd";
		return -EINVAL;
	}
	if ((uint64_t)st.st_size != size) {
		*why = "its size is not the size claimed";
		return -EINVAL;
	}
	int keep = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (keep < 0) {
		*why = "keeping a reference to the memfd failed";
		return -errno;
	}
	*ret_handle = handle_of(keep);
	return 0;
}

static const struct pool_ops memfd_ops = {
	.name = "memfd",
	.grant = memfd_grant,
	.adopt = memfd_adopt,
	.revoke = memfd_revoke,
	.release = memfd_release,
	.copy_create = memfd_copy_create,
	.copy_map = memfd_copy_map,
	.copy_write = memfd_copy_write,
	.copy_seal = memfd_copy_seal,
	.copy_adopt = memfd_copy_adopt,
	.copy_read_only = true,
	.destroy = memfd_destroy,
	.configure = memfd_configure,
	.describe = memfd_describe,
};

static bool hugetlb_available(void)
{
	FILE *f = fopen("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "re");
	unsigned long n = 0;
	if (!f)
		return false;
	if (fscanf(f, "%lu", &n) != 1)
		n = 0;
	fclose(f);
	return n > 0;
}

/* A memfd pool of the given kind with its (empty) ready reserve; the
 * reserve starts filling when pool_configure gives it a size. */
static struct pool *memfd_pool_new(uint32_t backend, const char *name, uint64_t capacity, bool hugetlb,
				   int numa_node)
{
	struct memfd_pool *mp = calloc(1, sizeof(*mp));
	struct pool *p = mp ? pool_alloc(backend, name, capacity, 2u << 20, &memfd_ops, mp) : NULL;
	if (!p) {
		free(mp);
		errno = ENOMEM;
		return NULL;
	}
	p->flags = VRAMD_DEV_HOST_MAPPABLE;
	mp->kind.hugetlb = hugetlb;
	mp->kind.numa_node = numa_node;
	snprintf(mp->kind.name, sizeof(mp->kind.name), "vramd:%s", name);
	if (!(mp->ready = ready_new(&mp->kind, capacity, p->granularity))) {
		pool_free(p);
		errno = ENOMEM;
		return NULL;
	}
	return p;
}

struct pool *pool_memfd_new_cpu(uint64_t capacity, int numa_node)
{
	bool hugetlb = hugetlb_available(), bound = false;
	if (numa_available() >= 0) {
		if (numa_node < 0)
			numa_node = 0;
		bound = numa_num_configured_nodes() > 1;
	}
	struct pool *p = memfd_pool_new(VRAMD_BACKEND_CPU, "cpu", capacity, hugetlb, bound ? numa_node : -1);
	if (!p)
		return NULL;
	p->numa_node = numa_node;
	if (hugetlb)
		p->flags |= VRAMD_DEV_HUGETLB;
	if (bound)
		p->flags |= VRAMD_DEV_NUMA_BOUND;
	memfd_label(p);
	char key[64];
	snprintf(key, sizeof(key), "vramd-cpu-node%d", p->numa_node);
	pool_uuid_from_string(p->uuid, key);
	return p;
}

struct pool *pool_memfd_new_sim(uint32_t n, uint64_t capacity)
{
	char name[32];
	snprintf(name, sizeof(name), "cuda:%u", n);
	struct pool *p = memfd_pool_new(VRAMD_BACKEND_SIM, name, capacity, false, -1);
	if (!p)
		return NULL;
	p->flags |= VRAMD_DEV_SIMULATED;
	memfd_label(p);
	char key[64];
	snprintf(key, sizeof(key), "vramd-sim-%u", n);
	pool_uuid_from_string(p->uuid, key);
	return p;
}
