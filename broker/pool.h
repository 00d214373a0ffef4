/* SPDX-License-Identifier: MIT */
/*
 * Pools: one per device, each a backend behind struct pool_ops (memfd for
 * the host pool and simulated GPUs, CUDA VMM for real GPUs).  Nothing above
 * this table knows which backend runs.  Backends include this header, the
 * log and common/ only.
 */
#ifndef VRAMD_BROKER_POOL_H
#define VRAMD_BROKER_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uapi/vramd.h"

struct pool;
struct broker_config;

/* The ready reserve's settings for one pool (pool_configure). */
struct pool_ready_settings {
	uint64_t target;             /* bytes kept populated; 0: no reserve */
	uint64_t rate;               /* bytes/s the refill may populate; 0: no cap */
	/* Memory the reserve leaves free: bytes, or min_free_bp basis points of
	 * the memory vramd may use (RAM, or its cgroup's limit when lower) when
	 * min_free_share. */
	uint64_t min_free_bytes;
	uint32_t min_free_bp;
	bool     min_free_share;
};

/* A backend.  Everything above this table is backend-agnostic. */
struct pool_ops {
	const char *name;
	/* Creates size bytes (already rounded to the pool's granularity) of
	 * zeroed memory.  Returns 0 and an fd to send (the caller closes it
	 * after sending) plus a backend handle, or -errno with *why set. */
	int (*grant)(struct pool *p, uint64_t size, int *ret_fd, void **ret_handle, const char **why);
	/* Takes back a grant made by an earlier broker (REGISTER after a
	 * restart, or the fd store): checks that fd really is such memory of
	 * size bytes and makes a handle for it (release drops it).  The fd
	 * stays the caller's.  NULL: the backend cannot (-EOPNOTSUPP). */
	int (*adopt)(struct pool *p, int fd, uint64_t size, void **ret_handle, const char **why);
	/* How the broker tells that an fd is the memory of a grant it already
	 * accounts (a REGISTER of it is then a hand-over from the fd store or
	 * refused).  false: by the file's inode (each memfd is a file of its
	 * own).  true: by the open file description (kcmp KCMP_FILE), for
	 * backends whose fds all share one inode (every CUDA POSIX-fd export
	 * is a file of the driver's control device); the broker then keeps a
	 * duplicate of each grant's fd, closed when the grant is released. */
	bool fd_identity;
	/* Makes a grant's memory unusable to whoever still holds it and gives
	 * it back to the system: called when a grant ends (FREE, its holder's
	 * disconnect or death), before release; never when the broker shuts
	 * down (clients keep their memory for the next broker).  NULL: the
	 * backend cannot (a CUDA import keeps its memory until released; the
	 * broker then charges the holder until its process exits). */
	void (*revoke)(struct pool *p, void *handle, uint64_t size);
	/* Drops the backend handle of a grant (the client may still hold its
	 * fd and mapping until it exits). */
	void (*release)(struct pool *p, void *handle, uint64_t size);
	/* Frees the pool's private state. */
	void (*destroy)(struct pool *p);

	/* Shared read-only copies (cache.c); NULL where the backend keeps
	 * none.  A copy is made (copy_create: zeroed memory of size bytes the
	 * broker may write, its fd and handle), filled (through copy_map when
	 * the memory can be mapped by the broker, else copy_write), then
	 * sealed (copy_seal: nobody writes it any more; ret_ro_fd is what
	 * clients get, the caller closes it), and ends like a grant (revoke,
	 * then release).  copy_adopt takes back a copy the fd store kept. */
	int (*copy_create)(struct pool *p, uint64_t size, int *ret_fd, void **ret_handle, const char **why);
	/* A read-write mapping of the copy for filling (munmap it before
	 * copy_seal), or NULL when the broker cannot map it (use copy_write). */
	void *(*copy_map)(struct pool *p, void *handle, int fd, uint64_t size);
	/* Copies len host bytes to offset off of the copy; safe from several
	 * threads at once.  0 or -errno with *why. */
	int (*copy_write)(struct pool *p, void *handle, uint64_t off, const void *src, uint64_t len, const char **why);
	int (*copy_seal)(struct pool *p, void *handle, int fd, int *ret_ro_fd, const char **why);
	int (*copy_adopt)(struct pool *p, int fd, uint64_t size, void **ret_handle, const char **why);
	/* Whether a client given the copy's fd can be kept from writing it
	 * (a sealed memfd: yes; a CUDA export: no, an importer may map it
	 * read-write), so that it may be shared across uids. */
	bool copy_read_only;
	/* Applies the ready reserve's settings, at start and on reload (also
	 * looks again at what pages the system offers).  NULL: the backend
	 * keeps no reserve. */
	void (*configure)(struct pool *p, const struct pool_ready_settings *s);
	/* Adds what only the backend knows (its ready reserve) to a
	 * description.  NULL: nothing. */
	void (*describe)(const struct pool *p, struct vramd_device *d);
};

struct pool {
	uint32_t index;
	uint32_t backend;        /* enum vramd_backend */
	uint32_t flags;          /* VRAMD_DEV_* */
	int32_t  numa_node;
	int32_t  ordinal;
	uint64_t total;
	/* A pool whose total is measured from free memory at start (CUDA):
	 * the most it may grow to as memory held across a broker restart is
	 * adopted (it was not free when measured).  0: total is fixed. */
	uint64_t total_max;
	uint64_t used;
	uint64_t reclaimable;
	uint64_t granularity;
	uint8_t  uuid[16];
	char     name[32];
	char     label[64];
	const struct pool_ops *ops;
	void    *priv;
};

/* ---- backends ------------------------------------------------------------ */

/* Host pool ("cpu") of capacity bytes: memfd, hugetlb when the system has
 * huge pages reserved, NUMA-bound when the machine has several nodes.  NULL
 * and errno on failure. */
struct pool *pool_memfd_new_cpu(uint64_t capacity, int numa_node);
/* Simulated GPU cuda:N of capacity bytes, memfd-backed, flagged simulated. */
struct pool *pool_memfd_new_sim(uint32_t n, uint64_t capacity);

/* CUDA pools (pool-cuda.c).  Discovers devices through the Driver API loaded
 * with dlopen; appends up to max pools to out starting at index first and
 * returns how many, or 0 with note set to why none (driver not found, no
 * devices, error text).  Never fails the broker. */
int pool_cuda_discover(struct pool **out, uint32_t max, uint32_t first, char *note, size_t note_len);

/* ---- generic helpers (pool.c) -------------------------------------------- */

/* A pool struct with its backend-independent fields set (index 0, no NUMA
 * node, no ordinal), name copied; NULL and errno on failure.  Backends call
 * it, then fill in the rest. */
struct pool *pool_alloc(uint32_t backend, const char *name, uint64_t capacity, uint64_t granularity,
			const struct pool_ops *ops, void *priv);
/* Frees a pool (its ops->destroy then the struct).  NULL is fine. */
void pool_free(struct pool *p);
/* Applies cfg's ready-reserve keys to p (a share of ready-reserve is of
 * p's capacity, rounded down to its granularity). */
void pool_configure(struct pool *p, const struct broker_config *cfg);
/* Derives a stable UUID from a string (for pools without a hardware one). */
void pool_uuid_from_string(uint8_t uuid[16], const char *s);
/* Fills a wire description of the pool. */
void pool_describe(const struct pool *p, struct vramd_device *ret);
/* Bytes the pool can still grant: 0, not a wrapped difference, when more
 * is accounted than it holds (restored grants after a restart with a
 * smaller pool). */
uint64_t pool_room(const struct pool *p);
/* What an adopted grant of size adds to the capacity of a pool that
 * measured it from free memory (pool.total_max). */
uint64_t pool_adopt_growth(const struct pool *p, uint64_t size);

/* ---- memfd pools and their ready reserve (pool-memfd.c, pool-reserve.c) -- */

/* What memory a memfd pool makes. */
struct memfd_kind {
	char name[48];           /* the memfds' name */
	bool hugetlb;            /* 2 MiB hugetlb pages (falls back to normal pages) */
	int  numa_node;          /* bound to this node; -1: no binding */
};

/* A fresh memfd of size bytes, sealable, sized, NUMA-bound as k says, on
 * hugetlb pages when hugetlb (k->hugetlb or not: the caller's fallback),
 * nothing populated.  0 and *ret_fd, or -errno with *why set. */
int memfd_new(const struct memfd_kind *k, uint64_t size, bool hugetlb, int *ret_fd, const char **why);

/* The ready reserve: memfds that were populated in the background and
 * never handed to anyone, which ALLOC takes instead of fresh ones.  Its
 * memory counts against the pool's capacity (used + ready <= total) but
 * not in used: it is free memory to everyone above the pool. */
struct ready_reserve;

/* A reserve (empty, no refill yet) for a pool of total bytes making
 * memory of kind k; NULL and errno on failure. */
struct ready_reserve *ready_new(const struct memfd_kind *k, uint64_t total, uint64_t granularity);
/* Stops the refill and frees every ready memfd.  NULL is fine. */
void ready_free(struct ready_reserve *r);
/* New settings; thp: populate with MADV_HUGEPAGE (the kernel's shmem THP
 * honours it).  Starts the refill thread when the target becomes non-zero
 * (0, or -errno when it cannot start: the reserve then stays empty). */
int ready_configure(struct ready_reserve *r, const struct pool_ready_settings *s, bool thp);
/* A grant of size bytes is about to be made on a pool with used bytes
 * granted: 0 and a populated memfd of exactly size bytes (unsealed) when
 * the reserve holds one that fits, else -ENOENT after making room for a
 * fresh one (the reserve yields: used + size + ready never passes the
 * capacity).  Either way the grant's bytes are counted as held until
 * ready_released. */
int ready_take(struct ready_reserve *r, uint64_t size, uint64_t used, int *ret_fd);
/* As ready_take's room making, for memory adopted into the pool. */
void ready_room(struct ready_reserve *r, uint64_t size, uint64_t used);
/* size bytes counted by ready_take or ready_room are no longer held. */
void ready_released(struct ready_reserve *r, uint64_t size);
/* Fills d's ready* fields. */
void ready_describe(struct ready_reserve *r, struct vramd_device *d);

#endif
