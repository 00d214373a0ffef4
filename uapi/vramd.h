/* SPDX-License-Identifier: MIT */
/*
 * vramd wire ABI: the messages between libvram (client) and vramd (broker).
 *
 * Transport: AF_UNIX, SOCK_SEQPACKET; one message per packet.  Every message
 * starts with struct vramd_hdr.  All fields are little-endian fixed-width
 * integers; structs have no hidden padding (explicit pad/reserved fields,
 * which senders zero and receivers reject when non-zero).  Flags words have a
 * mask of valid bits; unknown bits are -EINVAL.  Structs only grow at the end;
 * a zero in a new field means the old behaviour.
 *
 * File descriptors travel as SCM_RIGHTS: exactly one with VRAMD_ALLOC_REPLY,
 * VRAMD_REGISTER, VRAMD_SHARE and VRAMD_SHARE_REPLY, at most one with
 * VRAMD_CACHE_DROP, none anywhere else.  A client that sends an fd, a malformed header, an
 * unknown opcode, a size that does not match its opcode or non-zero reserved
 * bytes is disconnected (protocol violation).  A well-formed request that
 * cannot be served gets VRAMD_ERROR with a negative errno and a reason.
 *
 * This header includes nothing but <stdint.h> so that other languages can
 * mirror it mechanically.
 */
#ifndef VRAMD_UAPI_VRAMD_H
#define VRAMD_UAPI_VRAMD_H

#include <stdint.h>

#define VRAMD_MAGIC        0x4d415256u /* "VRAM" as little-endian bytes */
#define VRAMD_PROTO_VERSION 2u   /* 2: DEMAND/OFFER, fair shares, device and client figures grown */
#define VRAMD_MSG_MAX      65536u      /* largest message either side sends */
#define VRAMD_NAME_MAX     64u         /* client and device names, NUL included */
#define VRAMD_REASON_MAX   160u        /* error reason text, NUL included */
#define VRAMD_MAX_DEVICES  16u         /* devices a broker exposes */

enum vramd_opcode {
	VRAMD_HELLO          = 1,  /* c->b  struct vramd_hello */
	VRAMD_HELLO_REPLY    = 2,  /* b->c  struct vramd_hello_reply + devices */
	VRAMD_ALLOC          = 3,  /* c->b  struct vramd_alloc */
	VRAMD_ALLOC_REPLY    = 4,  /* b->c  struct vramd_alloc_reply + 1 fd */
	VRAMD_FREE           = 5,  /* c->b  struct vramd_free */
	VRAMD_OK             = 6,  /* b->c  struct vramd_hdr only */
	VRAMD_STATUS         = 7,  /* c->b  struct vramd_status */
	VRAMD_STATUS_REPLY   = 8,  /* b->c  struct vramd_status_reply + arrays */
	VRAMD_ERROR          = 9,  /* b->c  struct vramd_error */
	VRAMD_RECLAIM        = 10, /* b->c  struct vramd_reclaim (unsolicited) */
	VRAMD_RECLAIM_DONE   = 11, /* c->b  struct vramd_reclaim_done */
	/* Admin operations: accepted only from peers that are root or in the
	 * admin group (SO_PEERCRED / SO_PEERGROUPS), on either socket. */
	VRAMD_QUOTA_SET      = 12, /* c->b  struct vramd_quota_set -> OK */
	VRAMD_QUOTA_RM       = 13, /* c->b  struct vramd_quota_rm -> OK */
	VRAMD_QUOTA_LIST     = 14, /* c->b  struct vramd_hdr -> TEXT */
	VRAMD_TEXT           = 15, /* b->c  struct vramd_text + text */
	VRAMD_EVICT          = 16, /* c->b  struct vramd_evict -> OK */
	VRAMD_REGISTER       = 17, /* c->b  struct vramd_register + 1 fd -> ALLOC_REPLY (no fd) */
	VRAMD_RELOAD         = 18, /* c->b  struct vramd_hdr -> OK (admin: config limits, quotas) */
	VRAMD_DEMAND         = 19, /* c->b  struct vramd_demand -> OK */
	VRAMD_OFFER          = 20, /* b->c  struct vramd_offer (unsolicited) */
	VRAMD_SHARE          = 21, /* c->b  struct vramd_share + runs + 1 fd (the checkpoint) -> SHARE_REPLY */
	VRAMD_SHARE_REPLY    = 22, /* b->c  struct vramd_share_reply + 1 fd (the copy, read-only) */
	VRAMD_SHARE_PROGRESS = 23, /* b->c  struct vramd_share_progress (seq of the SHARE waiting) */
	VRAMD_UNSHARE        = 24, /* c->b  struct vramd_unshare -> OK */
	VRAMD_CACHE_LIST     = 25, /* c->b  struct vramd_hdr -> TEXT (JSON) */
	VRAMD_CACHE_DROP     = 26, /* c->b  struct vramd_cache_drop (+ 1 fd: the file) -> OK */
	VRAMD_OPCODE_MAX     = 26,
};

/* struct vramd_hdr.flags: none defined yet. */
#define VRAMD_HDR_FLAGS_MASK 0u

struct vramd_hdr {
	uint32_t magic;    /* VRAMD_MAGIC */
	uint16_t version;  /* VRAMD_PROTO_VERSION */
	uint16_t opcode;   /* enum vramd_opcode */
	uint32_t size;     /* whole message in bytes, header included */
	uint32_t flags;    /* VRAMD_HDR_FLAGS_MASK */
	uint64_t seq;      /* chosen by the requester, echoed in the reply;
			      0 in unsolicited broker messages */
};

/* ---- HELLO ------------------------------------------------------------ */

struct vramd_hello {
	struct vramd_hdr hdr;
	uint32_t flags;           /* none yet: 0 */
	uint32_t reserved0;       /* 0 */
	char     name[VRAMD_NAME_MAX]; /* client name, NUL-terminated, printable */
	uint64_t reserved[4];     /* 0 */
};

enum vramd_backend {
	VRAMD_BACKEND_CPU  = 1,   /* pinned host pool (memfd) */
	VRAMD_BACKEND_SIM  = 2,   /* simulated GPU (memfd), never real */
	VRAMD_BACKEND_CUDA = 3,   /* CUDA VMM allocations, POSIX-fd handles */
};

/* struct vramd_device.flags */
#define VRAMD_DEV_SIMULATED (1u << 0) /* not a real GPU */
#define VRAMD_DEV_HUGETLB   (1u << 1) /* grants are hugetlb memfds */
#define VRAMD_DEV_NUMA_BOUND (1u << 2) /* grants bound to numa_node */
#define VRAMD_DEV_HOST_MAPPABLE (1u << 3) /* grant fds can be mmap()ed */
#define VRAMD_DEV_THP       (1u << 4) /* memfd grants may use transparent huge pages */
#define VRAMD_DEV_FLAGS_MASK 0x1fu

struct vramd_device {
	uint32_t index;        /* position in the list; ALLOC names it */
	uint32_t backend;      /* enum vramd_backend */
	uint32_t flags;        /* VRAMD_DEV_* */
	int32_t  numa_node;    /* -1 when unknown or not applicable */
	uint64_t total;        /* bytes the pool may grant */
	uint64_t used;         /* bytes granted now */
	uint64_t granularity;  /* ALLOC sizes are rounded up to this */
	uint64_t reclaimable;  /* of used, bytes in reclaimable grants */
	uint8_t  uuid[16];     /* stable identity (CUDA UUID; derived for others) */
	int32_t  ordinal;      /* CUDA ordinal in the broker, -1 otherwise */
	uint32_t reserved0;    /* 0 */
	char     name[32];     /* "cuda:0", "cpu" */
	char     label[64];    /* "NVIDIA H100 80GB HBM3", "simulated GPU", ... */
	/* version 2: */
	uint64_t ready;        /* populated memory in the ready reserve (free, counted in total - used) */
	uint64_t ready_target; /* the reserve's size when full; 0: no reserve */
	uint64_t ready_hits;   /* ALLOCs served from the reserve */
	uint64_t ready_misses; /* ALLOCs that found it short */
	uint64_t ready_refilled; /* bytes the reserve was refilled with, in all */
	uint64_t cache;        /* of used, bytes in shared read-only copies */
	uint64_t cache_max;    /* their budget */
	uint64_t cache_hits;   /* SHAREs served by a copy that was there */
	uint64_t cache_fills;  /* copies filled */
	uint64_t cache_evictions; /* copies evicted */
	uint64_t reserved[2];  /* 0 */
};

struct vramd_hello_reply {
	struct vramd_hdr hdr;
	uint32_t client_id;    /* broker's id for this connection */
	uint32_t ndevices;     /* struct vramd_device entries that follow */
	uint64_t max_alloc;    /* bytes this client may hold in all (ceiling) */
	char     note[128];    /* broker note, e.g. why no CUDA device is listed */
	/* struct vramd_device devices[ndevices]; */
};

/* ---- ALLOC / FREE ------------------------------------------------------ */

/* struct vramd_alloc.flags */
#define VRAMD_ALLOC_RECLAIMABLE (1u << 0) /* broker may ask for it back */
#define VRAMD_ALLOC_FLAGS_MASK  0x1u

struct vramd_alloc {
	struct vramd_hdr hdr;
	uint32_t device;       /* vramd_device.index */
	uint32_t flags;        /* VRAMD_ALLOC_* */
	uint64_t size;         /* bytes wanted, > 0 */
	uint64_t reserved[2];  /* 0 */
};

struct vramd_alloc_reply {
	struct vramd_hdr hdr;
	uint64_t grant_id;     /* never 0, never reused within a broker's life */
	uint64_t size;         /* rounded size; the fd holds exactly this much */
	uint32_t device;
	uint32_t flags;        /* as requested */
	uint64_t reserved[2];
	/* SCM_RIGHTS: one fd (memfd for cpu/sim, POSIX-fd handle for cuda) */
};

struct vramd_free {
	struct vramd_hdr hdr;
	uint64_t grant_id;
	uint64_t reserved;     /* 0 */
};

/* ---- RECLAIM ----------------------------------------------------------- */

struct vramd_reclaim {
	struct vramd_hdr hdr;
	uint64_t reclaim_id;   /* echoed in RECLAIM_DONE */
	uint64_t bytes;        /* bytes the broker would like back on device */
	uint64_t deadline_ms;  /* time the client has, from receipt */
	uint32_t device;
	uint32_t reserved0;
};

struct vramd_reclaim_done {
	struct vramd_hdr hdr;
	uint64_t reclaim_id;
	uint64_t bytes_freed;  /* what the client freed for it (informational) */
	uint64_t reserved;     /* 0 */
};

/* ---- DEMAND / OFFER (fair shares) ---------------------------------------- */

/* What a client would like on a device (want: e.g. its whole model
 * resident) and what it cannot work with less than (min: e.g. a window for
 * its largest layer).  The broker's fair share (docs/admin.md) is computed
 * from them; 0 and 0 withdraws the demand. */
struct vramd_demand {
	struct vramd_hdr hdr;
	uint32_t device;
	uint32_t flags;        /* none yet: 0 */
	uint64_t want;
	uint64_t min;
	uint64_t reserved[2];  /* 0 */
};

/* Unsolicited: memory on device became free and the client holds less
 * than its fair share and wants more; it may ALLOC up to bytes of it. */
struct vramd_offer {
	struct vramd_hdr hdr;
	uint32_t device;
	uint32_t reserved0;
	uint64_t bytes;
	uint64_t reserved[2];
};

/* ---- STATUS ------------------------------------------------------------ */

struct vramd_status {
	struct vramd_hdr hdr;
	uint32_t first_client; /* index into the broker's client list */
	uint32_t flags;        /* none yet: 0 */
	uint64_t reserved;     /* 0 */
};

/* struct vramd_client_info.flags */
#define VRAMD_CLIENT_SELF          (1u << 0) /* the client asking */
#define VRAMD_CLIENT_RECLAIM_LATE  (1u << 1) /* ignored a RECLAIM deadline */
#define VRAMD_CLIENT_RESTORED      (1u << 2) /* no connection: restored from the fd store, or detached */

struct vramd_client_info {
	uint32_t id;
	int32_t  pid;
	uint32_t uid;
	uint32_t gid;
	uint32_t ngrants;
	uint32_t flags;        /* VRAMD_CLIENT_* */
	uint64_t held;         /* bytes held, all devices */
	uint64_t reclaimable;  /* of held, in reclaimable grants */
	uint64_t held_dev[VRAMD_MAX_DEVICES]; /* per device index */
	uint32_t reclaims_answered;
	uint32_t reclaims_missed;
	char     name[VRAMD_NAME_MAX];
	/* version 2: */
	uint64_t want_dev[VRAMD_MAX_DEVICES];  /* DEMAND (or held), per device */
	uint64_t share_dev[VRAMD_MAX_DEVICES]; /* its fair share, per device */
	uint64_t shared_dev[VRAMD_MAX_DEVICES];/* of held_dev, in shared copies it maps */
	uint32_t reclaim_p50_us; /* RECLAIM answer time, median of the last 128 */
	uint32_t reclaim_p99_us;
	uint64_t reclaim_asked;  /* bytes asked back, in all */
	uint64_t reclaim_freed;  /* bytes it said it freed, in all */
	uint64_t reserved[4];
};

struct vramd_status_reply {
	struct vramd_hdr hdr;
	uint32_t ndevices;     /* struct vramd_device entries that follow */
	uint32_t nclients;     /* struct vramd_client_info entries after them */
	uint32_t clients_total;/* clients connected in all */
	uint32_t first_client; /* as requested */
	uint64_t grants;       /* grants live in the broker */
	uint64_t protocol_errors; /* clients dropped for violations since start */
	uint64_t uptime_ms;
	uint32_t broker_pid;
	uint32_t reserved0;
	char     note[128];
	/* struct vramd_device devices[ndevices];
	   struct vramd_client_info clients[nclients]; */
};

/* ---- ERROR ------------------------------------------------------------- */

struct vramd_error {
	struct vramd_hdr hdr;  /* seq of the failed request */
	int32_t  error;        /* negative errno */
	uint16_t req_opcode;   /* opcode of the failed request */
	uint16_t reserved0;
	char     reason[VRAMD_REASON_MAX]; /* NUL-terminated */
};

/* ---- REGISTER (after a broker restart) ----------------------------------- */

/* A client that held a grant from a broker that has since restarted hands
 * the grant's fd back so that the new broker accounts it again.  The broker
 * checks the fd (a sealed memfd of exactly size bytes for cpu/sim
 * devices), identifies the device by UUID, and answers ALLOC_REPLY with a
 * new grant id and no fd.  Flags as ALLOC. */
struct vramd_register {
	struct vramd_hdr hdr;
	uint8_t  uuid[16];     /* the device, as HELLO listed it */
	uint64_t size;
	uint32_t flags;        /* VRAMD_ALLOC_* (0 for a copy) */
	uint32_t what;         /* VRAMD_REGISTER_GRANT, or _COPY: a shared copy it maps */
	uint64_t reserved[2];  /* 0 */
};
#define VRAMD_REGISTER_GRANT 0u
#define VRAMD_REGISTER_COPY  1u

/* ---- shared read-only copies --------------------------------------------- */

/* A SHARE asks for a broker-owned, read-only copy of byte ranges of a
 * checkpoint (the fd it carries, which the broker reads: passing it is the
 * client's proof that it may read the file) laid out in a region each
 * (docs/protocol.md, "Shared copies"):
 *   a window run (no SOLO flag): the run's bytes at the same offset modulo
 *     4 KiB as in the file, in a 4 KiB-aligned region;
 *   a solo run (SOLO): one tensor at a 256-byte boundary, converted from
 *     src_dtype to dst_dtype when they differ (enum vram_dtype; the five
 *     float types of kernels/), else as it is.
 * The layout is a function of the runs alone, so every client that asks
 * with the same runs of the same file gets the same copy and the same
 * addresses. */
#define VRAMD_SHARE_RUN_SOLO  (1u << 0)
#define VRAMD_SHARE_RUN_FLAGS_MASK 0x1u
#define VRAMD_SHARE_RUNS_MAX  1024u

struct vramd_share_run {
	uint64_t file_off;
	uint64_t len;          /* bytes in the file */
	uint32_t src_dtype;    /* solo runs: the tensor's dtype in the file */
	uint32_t dst_dtype;    /* solo runs: its dtype in the copy (== src: as is) */
	uint32_t flags;        /* VRAMD_SHARE_RUN_* */
	uint32_t reserved0;    /* 0 */
};

struct vramd_share {
	struct vramd_hdr hdr;
	uint32_t device;
	uint32_t flags;        /* none yet: 0 */
	uint32_t nruns;        /* struct vramd_share_run entries that follow, 1..VRAMD_SHARE_RUNS_MAX */
	uint32_t reserved0;    /* 0 */
	uint64_t reserved[2];  /* 0 */
	/* struct vramd_share_run runs[nruns]; SCM_RIGHTS: the checkpoint's fd */
};

/* struct vramd_share_reply.how */
#define VRAMD_SHARE_HIT    1u /* the copy was there */
#define VRAMD_SHARE_FILLED 2u /* this request filled it */
#define VRAMD_SHARE_WAITED 3u /* another request was filling it; this one waited */

struct vramd_share_reply {
	struct vramd_hdr hdr;
	uint64_t copy_id;
	uint64_t size;         /* bytes of the copy (the fd's size) */
	uint32_t device;
	uint32_t how;          /* VRAMD_SHARE_* */
	uint64_t reserved[2];
	/* SCM_RIGHTS: the copy (a memfd opened read-only and sealed against
	 * writing, or a CUDA POSIX-fd export) */
};

/* Sent while a SHARE waits for its copy to be filled, about every 250 ms. */
struct vramd_share_progress {
	struct vramd_hdr hdr;
	uint64_t copy_id;
	uint64_t done;         /* bytes filled */
	uint64_t total;
	uint64_t reserved;
};

/* The client no longer maps the copy. */
struct vramd_unshare {
	struct vramd_hdr hdr;
	uint64_t copy_id;
	uint64_t reserved;     /* 0 */
};

/* struct vramd_cache_drop.flags */
#define VRAMD_CACHE_DROP_ALL   (1u << 0) /* every copy (admin), no fd */
#define VRAMD_CACHE_DROP_FORCE (1u << 1) /* also copies in use: their users are asked to let go (admin) */
#define VRAMD_CACHE_DROP_MASK  0x3u

/* Drops the copies of the file whose fd it carries (or all of them). */
struct vramd_cache_drop {
	struct vramd_hdr hdr;
	uint32_t flags;
	uint32_t reserved0;    /* 0 */
	uint64_t reserved[2];  /* 0 */
};

/* ---- admin -------------------------------------------------------------- */

#define VRAMD_SUBJECT_MAX 80u /* "uid:N", "user:NAME", "name:CLIENT", "default" */

/* struct vramd_quota_set.flags */
#define VRAMD_QUOTA_SET_FLOOR   (1u << 0) /* floor is given */
#define VRAMD_QUOTA_SET_CEILING (1u << 1) /* ceiling is given (UINT64_MAX: none) */
#define VRAMD_QUOTA_SET_MASK    0x3u

struct vramd_quota_set {
	struct vramd_hdr hdr;
	char     subject[VRAMD_SUBJECT_MAX];
	char     device[32];
	uint32_t flags;        /* VRAMD_QUOTA_SET_*, at least one */
	uint32_t reserved0;    /* 0 */
	uint64_t floor;
	uint64_t ceiling;
};

struct vramd_quota_rm {
	struct vramd_hdr hdr;
	char     subject[VRAMD_SUBJECT_MAX];
	char     device[32];   /* "": every device */
};

/* A text reply (the quota list as JSON); text[len] follows, no NUL. */
struct vramd_text {
	struct vramd_hdr hdr;
	uint32_t len;
	uint32_t reserved0;
};

struct vramd_evict {
	struct vramd_hdr hdr;
	uint32_t client_id;
	uint32_t reserved0;    /* 0 */
};

/* ---- layout checks ------------------------------------------------------ */

#define VRAMD_ASSERT_SIZE(T, n) _Static_assert(sizeof(T) == (n), #T " size")
VRAMD_ASSERT_SIZE(struct vramd_hdr, 24);
VRAMD_ASSERT_SIZE(struct vramd_hello, 24 + 8 + 64 + 32);
VRAMD_ASSERT_SIZE(struct vramd_device, 16 + 32 + 16 + 8 + 32 + 64 + 96);
VRAMD_ASSERT_SIZE(struct vramd_hello_reply, 24 + 16 + 128);
VRAMD_ASSERT_SIZE(struct vramd_alloc, 24 + 16 + 16);
VRAMD_ASSERT_SIZE(struct vramd_alloc_reply, 24 + 24 + 16);
VRAMD_ASSERT_SIZE(struct vramd_free, 24 + 16);
VRAMD_ASSERT_SIZE(struct vramd_reclaim, 24 + 32);
VRAMD_ASSERT_SIZE(struct vramd_reclaim_done, 24 + 24);
VRAMD_ASSERT_SIZE(struct vramd_status, 24 + 16);
VRAMD_ASSERT_SIZE(struct vramd_client_info, 24 + 16 + 128 + 8 + 64 + 3 * 128 + 8 + 16 + 32);
VRAMD_ASSERT_SIZE(struct vramd_status_reply, 24 + 48 + 128);
VRAMD_ASSERT_SIZE(struct vramd_error, 24 + 8 + 160);
VRAMD_ASSERT_SIZE(struct vramd_quota_set, 24 + 80 + 32 + 8 + 16);
VRAMD_ASSERT_SIZE(struct vramd_quota_rm, 24 + 80 + 32);
VRAMD_ASSERT_SIZE(struct vramd_text, 24 + 8);
VRAMD_ASSERT_SIZE(struct vramd_evict, 24 + 8);
VRAMD_ASSERT_SIZE(struct vramd_register, 24 + 16 + 8 + 8 + 16);
VRAMD_ASSERT_SIZE(struct vramd_demand, 24 + 8 + 16 + 16);
VRAMD_ASSERT_SIZE(struct vramd_offer, 24 + 8 + 8 + 16);
VRAMD_ASSERT_SIZE(struct vramd_share_run, 32);
VRAMD_ASSERT_SIZE(struct vramd_share, 24 + 16 + 16);
VRAMD_ASSERT_SIZE(struct vramd_share_reply, 24 + 24 + 16);
VRAMD_ASSERT_SIZE(struct vramd_share_progress, 24 + 32);
VRAMD_ASSERT_SIZE(struct vramd_unshare, 24 + 16);
VRAMD_ASSERT_SIZE(struct vramd_cache_drop, 24 + 8 + 16);
#undef VRAMD_ASSERT_SIZE

#endif /* VRAMD_UAPI_VRAMD_H */
