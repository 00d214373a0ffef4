/* SPDX-License-Identifier: MIT */
/*
 * Streaming engine internals (not installed): moves byte ranges of a file
 * into destination memory as fast as the disk allows.  The loader (load.c)
 * turns tensors into requests; this module turns requests into large reads
 * on io_uring (O_DIRECT for cold files, buffered for cached ones), straight
 * into host destinations when alignment allows, through a ring of staging
 * buffers and an onward-copy sink for device destinations.
 * docs/streaming.md describes the design and the measurements behind the
 * defaults.
 */
#ifndef VRAM_RUNTIME_STREAM_H
#define VRAM_RUNTIME_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/vram.h"

/* Read granularity in DIRECT mode: reads start and end on multiples of this
 * (a superset of every O_DIRECT alignment we accept).  Also the unit of
 * STREAM_REQ_SLACK. */
#define STREAM_ALIGN            4096u

/* Defaults, measured on the reference machine (docs/streaming.md). */
#define STREAM_DEFAULT_CHUNK    (8ull << 20)
#define STREAM_DEFAULT_DEPTH    8u
#define STREAM_DEFAULT_NSTAGING 8u
/* AUTO reads buffered when at least this share of the requested span is in
 * the page cache; direct when less, except that from STREAM_AUTO_HYBRID_MIN
 * up each read whose own range has STREAM_AUTO_CACHED_MIN cached goes
 * through the page cache (counted in bytes_buffered). */
#define STREAM_AUTO_CACHED_MIN  0.95
#define STREAM_AUTO_HYBRID_MIN  0.01
/* Limits on the options (-EINVAL outside). */
#define STREAM_MAX_CHUNK        (256ull << 20)
#define STREAM_MAX_DEPTH        1024u
#define STREAM_MAX_NSTAGING     1024u

/* The read size a chunk option gives: the default for 0, else rounded up
 * to STREAM_ALIGN (the engine refuses more than STREAM_MAX_CHUNK). */
static inline uint64_t stream_chunk(uint64_t chunk)
{
	return chunk ? (chunk + STREAM_ALIGN - 1) / STREAM_ALIGN * STREAM_ALIGN : STREAM_DEFAULT_CHUNK;
}

enum stream_dst_kind {
	STREAM_DST_HOST = 1,     /* dst: host memory this process can write */
	STREAM_DST_STAGED = 2,   /* dst_addr: reached through the sink */
};

/* stream_req.flags */
/* HOST only: the bytes from dst - (file_off % STREAM_ALIGN) up to
 * dst + len + (pad so that file_off + len reaches a STREAM_ALIGN boundary)
 * are writable scratch: the engine may read the aligned superset straight
 * into the destination.  Scratch bytes end up holding file bytes (or, past
 * the end of the file, anything). */
#define STREAM_REQ_SLACK        (1u << 0)
/* HOST only: dst is a shared mapping of the file dst_fd (a memfd grant),
 * byte dst at offset dst_fd_off.  A BUFFERED read may then copy the page
 * cache into that file (sendfile) instead of reading into the mapping: no
 * page of the mapping is touched, so fresh memory is neither faulted in
 * nor zeroed first (2-4x faster warm on a VM; docs/streaming.md).  The
 * engine moves dst_fd's file offset.  Where the file cannot be written so
 * (hugetlbfs, a pipe) the engine reads into dst as usual. */
#define STREAM_REQ_FD           (1u << 1)
#define STREAM_REQ_VALID_FLAGS  (STREAM_REQ_SLACK | STREAM_REQ_FD)

struct stream_req {
	uint64_t file_off;       /* absolute offset in the file */
	uint64_t len;            /* bytes; 0: nothing to do */
	void    *dst;            /* HOST: where byte file_off goes */
	uint64_t dst_addr;       /* STAGED: handed to the sink */
	uint32_t kind;           /* enum stream_dst_kind */
	uint32_t flags;          /* STREAM_REQ_* */
	/* STAGED only: when the two differ, the range holds elements of
	 * dtype cast_from (enum vram_dtype, whole bytes wide; len a multiple
	 * of the element size) to be delivered as cast_to: the engine hands
	 * them to sink->cast() in whole elements, byte d of the range going
	 * to dst_addr + d / size(cast_from) * size(cast_to).  Equal (zeroed):
	 * the bytes as they are, through sink->copy(). */
	uint32_t cast_from, cast_to;
	int      dst_fd;         /* STREAM_REQ_FD */
	uint32_t pad;
	uint64_t dst_fd_off;     /* STREAM_REQ_FD */
};

/* Onward copy of STAGED bytes (to a GPU).  The engine reads into staging
 * slot `slot`, calls copy() for every STAGED range in it, and before it
 * reads into that slot again (and before stream_file returns, also on
 * failure) calls wait(slot) once.  src stays valid and unchanged until
 * wait(slot) returns.  Both return 0 or a negative errno (which fails the
 * stream).  Called from the thread that called stream_file. */
struct stream_sink {
	int (*copy)(void *user, uint64_t dst_addr, const void *src, uint64_t len, uint32_t slot);
	int (*wait)(void *user, uint32_t slot);
	void *user;
	/* Required when a request converts: n elements of src_dtype at src,
	 * which sits slot_off bytes into slot `slot` (so slot_off + n *
	 * size(src_dtype) <= the slot size: a sink may keep per-slot scratch
	 * of that size), to be written as dst_dtype at dst_addr.  Same slot
	 * rules as copy(). */
	int (*cast)(void *user, uint64_t dst_addr, uint32_t dst_dtype, const void *src, uint32_t src_dtype,
		    uint64_t n, uint64_t slot_off, uint32_t slot);
};

/* stream_opts.flags (measurement and tests) */
#define STREAM_F_NO_URING       (1u << 0) /* synchronous pread engine (what runs when io_uring is unavailable) */
#define STREAM_F_NO_REGISTER    (1u << 1) /* no registered file or buffers */
#define STREAM_F_URING_MEMFS    (1u << 2) /* io_uring on tmpfs/ramfs/hugetlbfs too (see stall_ms) */
#define STREAM_F_VALID          (STREAM_F_NO_URING | STREAM_F_NO_REGISTER | STREAM_F_URING_MEMFS)

/* A ring that completes nothing for this long with reads in flight has
 * stalled (docs/streaming.md: io_uring punts every read of a tmpfs file to
 * its io-wq threads, and Linux 6.18 was seen to leave such work queued for
 * good): the engine cancels what is still queued and reads the rest with
 * pread.  Reads already running are waited for; after STREAM_STALL_GIVE_UP_MS
 * without a completion (however short the window) the load fails. */
#define STREAM_DEFAULT_STALL_MS 5000u
#define STREAM_STALL_GIVE_UP_MS 60000u

/* All-zero is the default for every field. */
struct stream_opts {
	uint32_t io_mode;        /* enum vram_io_mode */
	uint32_t flags;          /* STREAM_F_* */
	uint64_t chunk;          /* bytes per read; 0: STREAM_DEFAULT_CHUNK; rounded up to STREAM_ALIGN */
	uint32_t depth;          /* reads in flight; 0: STREAM_DEFAULT_DEPTH */
	uint32_t nstaging;       /* staging slots; 0: STREAM_DEFAULT_NSTAGING */
	uint64_t staging_size;   /* bytes per slot; 0: chunk; a multiple of STREAM_ALIGN */
	void    *staging;        /* caller's staging memory (pinned): nstaging * staging_size
				    bytes, STREAM_ALIGN-aligned; NULL: the engine maps its own,
				    only as much as the requests need */
	const struct stream_sink *sink; /* required when any request is STAGED */
	vram_progress_fn progress;      /* (user, bytes delivered, bytes requested) after each read
					   is delivered (STAGED: handed to the sink); non-zero cancels */
	void    *user;
	/* Test hook: called for every completed read with its offset, length
	 * and result (bytes or -errno); returns the result the engine sees
	 * (a smaller count: short read; -EINTR, -EAGAIN, -EIO, ...).  A count
	 * larger than the real one is clamped. */
	int    (*inject)(void *user, uint64_t off, uint32_t len, int res);
	void    *inject_user;
	uint32_t stall_ms;       /* io_uring stall window; 0: STREAM_DEFAULT_STALL_MS */
	uint32_t pad;
};

enum stream_engine {
	STREAM_ENGINE_URING = 1,
	STREAM_ENGINE_SYNC = 2,  /* pread, one read at a time (also on tmpfs/ramfs/hugetlbfs) */
};

struct stream_result {
	uint32_t io_mode_used;   /* VRAM_IO_DIRECT or VRAM_IO_BUFFERED */
	uint32_t engine;         /* enum stream_engine */
	uint64_t bytes;          /* request bytes delivered (sum of req lens) */
	uint64_t bytes_read;     /* bytes the reads returned (aligned supersets, re-reads) */
	uint64_t bytes_bounced;  /* HOST bytes copied out of staging (no direct landing) */
	uint64_t bytes_sent;     /* HOST bytes copied into dst_fd from the page cache
				    (STREAM_REQ_FD; also counted in bytes_read) */
	uint64_t bytes_buffered; /* of bytes_read, read through the page cache while DIRECT
				    (AUTO on a partly cached file) */
	uint64_t reads;          /* reads completed, retries included */
	uint64_t retries;        /* reads resubmitted after a short read, EINTR or EAGAIN */
	uint32_t stalls;         /* stall windows the ring completed nothing in (then: pread) */
	uint32_t recovered;      /* reads cancelled in a stalled ring and read with pread */
	uint64_t ns;             /* wall time of the call */
	uint64_t cpu_ns;         /* CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID) */
	uint64_t proc_cpu_ns;    /* CPU time of the whole process over the call: adds io_uring
				    workers (buffered cold reads run there), and any other thread */
	double   cached;         /* page-cache share AUTO probed, or -1 when not probed */
};

/* Reads every request's file range from fd and delivers it: HOST into dst,
 * STAGED through o->sink.  Requests may come in any order and may be
 * empty; ranges must lie inside the file.  fd is a normal readable fd of a
 * regular file; it is not moved (positional reads), and the engine opens
 * its own O_DIRECT fd of the same inode when it reads direct, through
 * /proc/self/fd (never the path, except where /proc is missing: then the
 * path must still name the same unchanged file, else it reads buffered
 * through fd).  o may be NULL (all defaults).  path is used in messages
 * and that fallback only.
 *
 * Returns 0 and fills *ret (may be NULL), or a negative errno with
 * vram_last_error() set and *ret untouched:
 *   -EINVAL      bad options or request (range past the end of the file,
 *                unknown kind/flag, STAGED without a sink, misaligned
 *                staging), -EOVERFLOW for a range whose end overflows;
 *   -ESTALE      "PATH: file changed during the load (size A -> B)": size
 *                or mtime differ before and after, or a read hit EOF;
 *   -ECANCELED   the progress callback returned non-zero;
 *   -EIO etc.    "PATH: read at offset X: <strerror>" from a read, or the
 *                sink's error ("PATH: onward copy failed: ...");
 *   -ENOMEM.
 * On failure every read in flight has completed and every slot handed to
 * the sink has been waited for before the call returns; all the engine
 * allocated is freed; destination bytes are unspecified. */
int stream_file(const char *path, int fd, const struct stream_req *reqs, size_t nreqs,
		const struct stream_opts *o, struct stream_result *ret);

/* Share of the pages of [off, off+len) (len 0: to the end of the file)
 * that are in the page cache, in 0..1, in *ret_fraction; 1 for an empty
 * range.  Uses cachestat(2), else mmap+mincore.  0 or a negative errno. */
int stream_probe_cached(int fd, uint64_t off, uint64_t len, double *ret_fraction);
/* The mmap+mincore fallback itself (for tests). */
int stream_probe_cached_mincore(int fd, uint64_t off, uint64_t len, double *ret_fraction);

#endif
