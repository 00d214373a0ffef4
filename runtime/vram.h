/* SPDX-License-Identifier: MIT */
/*
 * libvram: the vramd client runtime.  The one public header.
 *
 * Conventions (FFI-friendly, driven from Python with ctypes as well as C):
 *  - opaque handles; plain structs whose first field is struct_size, which
 *    callers set to sizeof(struct) before passing them in (or call the
 *    matching *_init()), so that structs can grow;
 *  - functions return 0 or a non-negative count on success and a negative
 *    errno on failure; constructors return the handle through ret_*;
 *  - on failure a readable message is kept per thread: vram_last_error();
 *    the functions that release and return nothing (vram_unload,
 *    vram_pager_free, ...) leave it as it was, so a failure path can
 *    release what it holds and still report its own error;
 *  - no varargs; callbacks take a user pointer;
 *  - the library never prints.
 */
#ifndef VRAM_H
#define VRAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VRAM_VERSION_MAJOR 0
#define VRAM_VERSION_MINOR 3
#define VRAM_VERSION_PATCH 0
#define VRAM_VERSION ((VRAM_VERSION_MAJOR << 16) | (VRAM_VERSION_MINOR << 8) | VRAM_VERSION_PATCH)

#if defined(VRAM_BUILDING) && defined(__GNUC__)
#define VRAM_API __attribute__((visibility("default")))
#else
#define VRAM_API
#endif

/* The library's VRAM_VERSION, to compare with the header's at run time. */
VRAM_API uint32_t vram_version(void);

/* The message of the last failure in this thread ("" if none).  Valid until
 * the next libvram call in this thread. */
VRAM_API const char *vram_last_error(void);

/* ======================================================================
 * Broker connection
 * ====================================================================== */

typedef struct vram_client vram_client;
typedef struct vram_grant vram_grant;

#define VRAM_DEFAULT_SOCKET "/run/vramd/vramd.sock"

/* Backends and device flags mirror uapi/vramd.h. */
enum vram_backend { VRAM_BACKEND_CPU = 1, VRAM_BACKEND_SIM = 2, VRAM_BACKEND_CUDA = 3 };
#define VRAM_DEV_SIMULATED      (1u << 0)
#define VRAM_DEV_HUGETLB        (1u << 1)
#define VRAM_DEV_NUMA_BOUND     (1u << 2)
#define VRAM_DEV_HOST_MAPPABLE  (1u << 3)
#define VRAM_DEV_THP            (1u << 4) /* memfd grants may use transparent huge pages */

struct vram_device_info {
	uint32_t struct_size;
	uint32_t index;
	uint32_t backend;        /* enum vram_backend */
	uint32_t flags;          /* VRAM_DEV_* */
	int32_t  numa_node;
	int32_t  ordinal;        /* CUDA ordinal in the broker, or -1 */
	uint64_t total;
	uint64_t used;
	uint64_t granularity;
	uint64_t reclaimable;
	uint8_t  uuid[16];
	char     name[32];       /* "cuda:0", "cpu" */
	char     label[64];
	/* 0.2: */
	uint64_t ready;          /* populated memory ready for the next grants */
	uint64_t ready_target;   /* the ready reserve's size when full; 0: none */
	uint64_t ready_hits;     /* grants served from it */
	uint64_t ready_misses;   /* grants that found it short */
	uint64_t ready_refilled; /* bytes it was refilled with, in all */
	uint64_t cache;          /* of used, bytes in shared read-only copies */
	uint64_t cache_max;      /* their budget */
	uint64_t cache_hits;     /* loads of a chunk served by a copy that was there */
	uint64_t cache_fills;    /* copies filled */
	uint64_t cache_evictions;/* copies evicted */
};

/* Connects to the broker at socket_path (NULL: $VRAMD_SOCKET, else
 * VRAM_DEFAULT_SOCKET) and introduces the client as name (NULL: the program
 * name).  -ENOENT/-ECONNREFUSED when no broker listens there, -EPROTO when
 * it speaks another protocol version. */
VRAM_API int vram_connect(const char *socket_path, const char *name, vram_client **ret_client);

/* Frees every grant still held, closes the connection.  NULL is fine. */
VRAM_API void vram_close(vram_client *c);

/* The socket path that was (or would be) used. */
VRAM_API const char *vram_client_socket(const vram_client *c);
VRAM_API uint32_t vram_client_id(const vram_client *c);
/* The broker's note (e.g. why no CUDA device is listed); "" if none. */
VRAM_API const char *vram_client_note(const vram_client *c);

/* Devices as of HELLO (or the last vram_refresh_devices / vram_get_status). */
VRAM_API int vram_device_count(const vram_client *c);
/* Updates the devices' used/free figures from the broker. */
VRAM_API int vram_refresh_devices(vram_client *c);
VRAM_API int vram_device_info(const vram_client *c, uint32_t index, struct vram_device_info *ret_info);
/* Index of the device called name ("cuda:0", "cpu", or its UUID as
 * 32 hex digits with or without dashes / "GPU-" prefix); -ENODEV if none. */
VRAM_API int vram_device_find(const vram_client *c, const char *name);
/* Readies device `index` for use in this process before the first load,
 * copy or kernel: for a CUDA device, loads the driver, finds the device by
 * UUID and retains its primary context (the one PyTorch uses) and the
 * kernels' handle, all held until vram_close, so that they are not set up
 * and torn down around each use (a context costs a fraction of a second to
 * create).  Other devices: nothing to do.  Calling it again is a no-op.
 * 0, or -ENODEV / -ENOENT (no driver) / the CUDA error's errno. */
VRAM_API int vram_device_prepare(vram_client *c, uint32_t index);

#define VRAM_ALLOC_RECLAIMABLE (1u << 0)

/* Asks the broker for size bytes on device and maps them.  The grant's size
 * is rounded up to the device granularity.  Host-mappable grants are mapped
 * read-write into this process (vram_grant_host_ptr). -ENOMEM when the pool
 * cannot satisfy it, -EDQUOT when a limit forbids it. */
VRAM_API int vram_alloc(vram_client *c, uint32_t device, uint64_t size, uint32_t flags, vram_grant **ret_grant);
/* Unmaps and returns the grant to the broker.  NULL is fine. */
VRAM_API int vram_free(vram_client *c, vram_grant *g);

VRAM_API uint64_t vram_grant_id(const vram_grant *g);
VRAM_API uint64_t vram_grant_size(const vram_grant *g);
VRAM_API uint32_t vram_grant_device(const vram_grant *g);
/* Host address of the mapping, or NULL for device-only memory. */
VRAM_API void *vram_grant_host_ptr(const vram_grant *g);
/* Device virtual address for CUDA grants (0 otherwise). */
VRAM_API uint64_t vram_grant_device_ptr(const vram_grant *g);

/* The connection's fd, readable when the broker sent something unsolicited
 * (RECLAIM).  Call vram_dispatch() then. */
VRAM_API int vram_client_fd(const vram_client *c);

/* Handles pending unsolicited messages without blocking.  Returns the number
 * handled.  A connection the broker closed (restart, crash) is
 * re-established here, with backoff up to $VRAMD_RECONNECT_TIMEOUT_MS
 * (10 s): the grants held are registered again and the demands said again.
 * While the broker stays away vram_client_fd() is -1; call this again to
 * retry. */
VRAM_API int vram_dispatch(vram_client *c);

/* Called from vram_dispatch (or any call that reads the socket) when the
 * broker asks for bytes back on device; the callback frees grants and
 * returns the bytes it freed.  The runtime then answers RECLAIM_DONE. */
typedef uint64_t (*vram_reclaim_fn)(void *user, uint32_t device, uint64_t bytes, uint64_t deadline_ms);
VRAM_API void vram_set_reclaim_handler(vram_client *c, vram_reclaim_fn fn, void *user);

/* Tells the broker what this client would like on device (want: e.g. its
 * whole model resident) and what it cannot work with less than (min: e.g.
 * a window for its largest layer); 0, 0 withdraws it.  When clients
 * together want more of a device than it has, the broker splits it by
 * these (docs/admin.md, "Sharing a GPU"): it asks a client above its fair
 * share to give memory back, refuses an ALLOC past the asker's share, and
 * offers freed memory to clients below theirs.  -ENODEV, -EINVAL (min >
 * want). */
VRAM_API int vram_demand(vram_client *c, uint32_t device, uint64_t want, uint64_t min);

/* Called (like the reclaim handler: from vram_dispatch or any call that
 * reads the socket, one handler at a time) when memory on device became
 * free and this client holds less than its fair share: it may allocate up
 * to bytes more there.  A hint; nothing is reserved. */
typedef void (*vram_offer_fn)(void *user, uint32_t device, uint64_t bytes);
VRAM_API void vram_set_offer_handler(vram_client *c, vram_offer_fn fn, void *user);

/* ---- status (what vramctl status shows) -------------------------------- */

struct vram_client_status {
	uint32_t struct_size;
	uint32_t id;
	int32_t  pid;
	uint32_t uid;
	uint32_t gid;
	uint32_t ngrants;
	uint32_t flags;          /* VRAM_CLIENT_* */
	uint32_t reclaims_answered;
	uint32_t reclaims_missed;
	uint32_t pad;
	uint64_t held;
	uint64_t reclaimable;
	uint64_t held_dev[16];
	char     name[64];
	/* 0.2: */
	uint64_t want_dev[16];   /* what it wants (vram_demand, else what it holds) */
	uint64_t share_dev[16];  /* its fair share (docs/admin.md, "Sharing a GPU") */
	uint64_t shared_dev[16]; /* of held_dev, in shared read-only copies it maps */
	uint32_t reclaim_p50_us; /* RECLAIM answer time, median of the last 128 */
	uint32_t reclaim_p99_us;
	uint64_t reclaim_asked;  /* bytes the broker asked back, in all */
	uint64_t reclaim_freed;  /* bytes it said it freed, in all */
};
#define VRAM_CLIENT_SELF         (1u << 0)
#define VRAM_CLIENT_RECLAIM_LATE (1u << 1)
#define VRAM_CLIENT_RESTORED     (1u << 2) /* no connection: held across a restart, or detached */

struct vram_status {
	uint32_t struct_size;
	uint32_t ndevices;
	uint32_t nclients;
	uint32_t broker_pid;
	uint64_t grants;
	uint64_t protocol_errors;
	uint64_t uptime_ms;
	char     note[128];
	struct vram_device_info *devices;   /* ndevices */
	struct vram_client_status *clients; /* nclients */
};

/* Fetches the broker's status (all pages).  Free with vram_status_free. */
VRAM_API int vram_get_status(vram_client *c, struct vram_status **ret_status);
VRAM_API void vram_status_free(struct vram_status *s);

/* ---- admin operations (root or the broker's admin group) --------------- */

#define VRAM_DEFAULT_ADMIN_SOCKET "/run/vramd/admin.sock"
#define VRAM_QUOTA_FLOOR   (1u << 0)
#define VRAM_QUOTA_CEILING (1u << 1)
#define VRAM_NO_CEILING    UINT64_MAX

/* Sets subject's ("uid:1000", "user:alice", "name:comfy-1", "default")
 * floor and/or ceiling (flags say which) on device.  -EPERM for a caller
 * that is not an admin; -EINVAL, -ENOSPC (floors above capacity) with the
 * broker's reason. */
VRAM_API int vram_quota_set(vram_client *c, const char *subject, const char *device, uint32_t flags,
			    uint64_t floor, uint64_t ceiling);
/* Removes subject's quota on device (NULL: every device). */
VRAM_API int vram_quota_rm(vram_client *c, const char *subject, const char *device);
/* The quotas as JSON (docs/admin.md); free() the string. */
VRAM_API int vram_quota_list(vram_client *c, char **ret_json);
/* Asks client id to release all its reclaimable memory; the broker
 * disconnects it if it still holds some after the deadline. */
VRAM_API int vram_evict(vram_client *c, uint32_t client_id);
/* The broker's shared copies as JSON (docs/vramctl.md, "cache"): every
 * copy for admins, the ones the caller maps for others; free() it. */
VRAM_API int vram_cache_list(vram_client *c, char **ret_json);
#define VRAM_CACHE_DROP_ALL   (1u << 0) /* every copy, fd -1 (admin) */
#define VRAM_CACHE_DROP_FORCE (1u << 1) /* copies in use too: their users are asked to let go (admin) */
/* Drops the shared copies of the file open at fd (proof that the caller may
 * read it), or every copy (VRAM_CACHE_DROP_ALL, fd -1).  Copies nobody
 * maps go at once; -EBUSY naming how many are in use, unless FORCE.
 * -EPERM for ALL or FORCE from a non-admin. */
VRAM_API int vram_cache_drop(vram_client *c, int fd, uint32_t flags);

/* Makes the broker re-read its config file's limits and the quota file. */
VRAM_API int vram_reload(vram_client *c);

/* ======================================================================
 * Checkpoints (parsing; no broker needed)
 * ====================================================================== */

typedef struct vram_model vram_model;

/* safetensors dtypes, in the order of facts.md §3, then GGUF's
 * block-quantised types (ggml's order; docs/formats.md), which are stored
 * and loaded as their blocks and never converted.  Values only grow. */
enum vram_dtype {
	VRAM_DTYPE_BOOL, VRAM_DTYPE_F4, VRAM_DTYPE_F6_E2M3, VRAM_DTYPE_F6_E3M2,
	VRAM_DTYPE_U8, VRAM_DTYPE_I8, VRAM_DTYPE_F8_E5M2, VRAM_DTYPE_F8_E4M3,
	VRAM_DTYPE_F8_E8M0, VRAM_DTYPE_F8_E4M3FNUZ, VRAM_DTYPE_F8_E5M2FNUZ,
	VRAM_DTYPE_I16, VRAM_DTYPE_U16, VRAM_DTYPE_F16, VRAM_DTYPE_BF16,
	VRAM_DTYPE_I32, VRAM_DTYPE_U32, VRAM_DTYPE_F32, VRAM_DTYPE_C64,
	VRAM_DTYPE_F64, VRAM_DTYPE_I64, VRAM_DTYPE_U64,
	VRAM_DTYPE_Q4_0, VRAM_DTYPE_Q4_1, VRAM_DTYPE_Q5_0, VRAM_DTYPE_Q5_1,
	VRAM_DTYPE_Q8_0, VRAM_DTYPE_Q8_1, VRAM_DTYPE_Q2_K, VRAM_DTYPE_Q3_K,
	VRAM_DTYPE_Q4_K, VRAM_DTYPE_Q5_K, VRAM_DTYPE_Q6_K, VRAM_DTYPE_Q8_K,
	VRAM_DTYPE_IQ2_XXS, VRAM_DTYPE_IQ2_XS, VRAM_DTYPE_IQ3_XXS, VRAM_DTYPE_IQ1_S,
	VRAM_DTYPE_IQ4_NL, VRAM_DTYPE_IQ3_S, VRAM_DTYPE_IQ2_S, VRAM_DTYPE_IQ4_XS,
	VRAM_DTYPE_IQ1_M, VRAM_DTYPE_TQ1_0, VRAM_DTYPE_TQ2_0, VRAM_DTYPE_MXFP4,
	VRAM_DTYPE_NVFP4, VRAM_DTYPE_Q1_0,
	VRAM_DTYPE_COUNT
};
/* "F16", "Q4_K" etc., NULL when out of range. */
VRAM_API const char *vram_dtype_name(uint32_t dtype);
/* Bits per element (4, 6, 8, ..., 64); 0 for a block-quantised dtype
 * (vram_dtype_block) and when out of range. */
VRAM_API uint32_t vram_dtype_bits(uint32_t dtype);
/* The smallest whole-byte unit of dtype: *ret_elems elements in
 * *ret_bytes bytes (F16: 1 in 2; F4: 2 in 1; F6_*: 4 in 3; Q4_K: 256 in
 * 144).  0, or -EINVAL out of range (outputs untouched).  A tensor's size
 * in bytes is elements / elems * bytes.  Since 0.2 (libvram.map
 * VRAM_0.2). */
VRAM_API int vram_dtype_block(uint32_t dtype, uint32_t *ret_elems, uint32_t *ret_bytes);

/* ComfyUI's split of a checkpoint, by key prefix. */
enum vram_component {
	VRAM_COMP_UNET = 0, VRAM_COMP_CLIP = 1, VRAM_COMP_VAE = 2, VRAM_COMP_OTHER = 3,
	VRAM_COMP_COUNT = 4
};
VRAM_API const char *vram_component_name(uint32_t comp); /* "unet", ... */

struct vram_tensor_info {
	uint32_t struct_size;
	uint32_t dtype;          /* enum vram_dtype */
	uint32_t ndim;
	uint32_t component;      /* enum vram_component */
	uint32_t layer;          /* index into the model's layers */
	uint32_t pad;
	const char *name;        /* owned by the model */
	const uint64_t *shape;   /* ndim entries, owned by the model */
	uint64_t file_offset;    /* absolute offset of the first byte in the file */
	uint64_t nbytes;
};

struct vram_layer_info {
	uint32_t struct_size;
	uint32_t component;
	uint32_t first_tensor;   /* tensors of a layer are contiguous in the model's
				    tensor order (sorted by layer, then name) */
	uint32_t ntensors;
	const char *name;        /* e.g. "model.diffusion_model.input_blocks.1" */
	uint64_t nbytes;
	uint32_t flags;          /* VRAM_LAYER_* */
	uint32_t pad;
};
#define VRAM_LAYER_EMBEDDING (1u << 0) /* token/position embedding (CLIP) */

struct vram_component_info {
	uint32_t struct_size;
	uint32_t ntensors;
	uint32_t nlayers;
	uint32_t pad;
	uint64_t nbytes;
};

/* Opens and validates a checkpoint: safetensors, GGUF or a PyTorch zip
 * (torch.save: .ckpt, .pt, .pth, .bin), told apart by their first bytes
 * (docs/formats.md).  The file is opened once, here, and that fd is kept
 * until vram_model_close: vram_load and the pager read the tensors through
 * it, so a file renamed over the path later is never read (one modified in
 * place is refused with -ESTALE).  -EINVAL (or -EFBIG, -EOVERFLOW) with
 * vram_last_error() = "PATH: invalid safetensors: REASON" ("invalid
 * GGUF", "invalid PyTorch checkpoint") for a malformed or refused file;
 * -ENOTSUP "PATH: unsupported FORMAT: REASON" for a valid one vramd cannot
 * serve (legacy torch files, compressed zip records, non-contiguous
 * tensors, big-endian GGUF); -errno from open/read otherwise. */
VRAM_API int vram_model_open(const char *path, vram_model **ret_model);
/* Frees m and closes its fd.  NULL is fine. */
VRAM_API void vram_model_close(vram_model *m);

/* The checkpoint's fd (read-only, close-on-exec), owned by m: proof of read
 * access that may be passed on (over a socket) or read with pread.  Do not
 * close it or change its flags (dup() shares them); dup it to keep it past
 * vram_model_close.  -EINVAL for NULL.  Since 0.2 (libvram.map VRAM_0.2). */
VRAM_API int vram_model_fd(const vram_model *m);
VRAM_API const char *vram_model_path(const vram_model *m);
VRAM_API const char *vram_model_format(const vram_model *m); /* "safetensors", "gguf", "pytorch" */
VRAM_API uint64_t vram_model_file_size(const vram_model *m);
/* safetensors: JSON bytes; GGUF: bytes before the data's padding; PyTorch:
 * bytes of data.pkl. */
VRAM_API uint64_t vram_model_header_size(const vram_model *m);
VRAM_API uint64_t vram_model_data_offset(const vram_model *m);
VRAM_API uint64_t vram_model_data_size(const vram_model *m);
VRAM_API int vram_model_tensor_count(const vram_model *m);
VRAM_API int vram_model_tensor(const vram_model *m, uint32_t index, struct vram_tensor_info *ret_info);
/* Index of the tensor called name, -ENOENT if none. */
VRAM_API int vram_model_find_tensor(const vram_model *m, const char *name);
VRAM_API int vram_model_layer_count(const vram_model *m);
VRAM_API int vram_model_layer(const vram_model *m, uint32_t index, struct vram_layer_info *ret_info);
VRAM_API int vram_model_component(const vram_model *m, uint32_t comp, struct vram_component_info *ret_info);
/* The file's own key/value metadata: safetensors' __metadata__, GGUF's
 * metadata as text (docs/formats.md); none for PyTorch. */
VRAM_API int vram_model_metadata_count(const vram_model *m);
VRAM_API int vram_model_metadata(const vram_model *m, uint32_t index, const char **ret_key, const char **ret_value);

/* ======================================================================
 * Placement planning (DisTorch2 semantics; no bytes read)
 * ====================================================================== */

typedef struct vram_plan vram_plan;

/* The seed node's inputs.  Strings may be NULL for the default. */
struct vram_plan_options {
	uint32_t struct_size;
	uint32_t flags;                     /* VRAM_PLAN_* */
	const char *unet_compute_device;    /* default "cuda:0", or "cpu" w/o GPU */
	double      unet_virtual_vram_gb;   /* default 4.0, 0..128 */
	const char *unet_donor_device;      /* default "cpu" */
	const char *clip_compute_device;    /* default "cpu" */
	double      clip_virtual_vram_gb;   /* default 2.0, 0..128 */
	const char *clip_donor_device;      /* default "cpu" */
	const char *vae_device;             /* default: unet compute device */
	const char *unet_expert_mode_allocations; /* "" or NULL: none */
	const char *clip_expert_mode_allocations;
	/* The load will convert (vram_load_options' fields of the same names,
	 * same rules): tensors are counted at their converted size.  0: none. */
	uint32_t    cast_to;
	uint32_t    cast_from;
};
#define VRAM_PLAN_HIGH_PRECISION_LORAS (1u << 0)

/* Fills the node's defaults (high_precision_loras on). */
VRAM_API void vram_plan_options_init(struct vram_plan_options *o);

/* A device the planner may use: from the broker (vram_plan_devices_from_client)
 * or given by hand for offline planning. */
struct vram_plan_device {
	uint32_t struct_size;
	uint32_t pad;
	char     name[32];       /* "cuda:0", "cpu" */
	uint64_t total;          /* device memory (fraction form is of this) */
	uint64_t available;      /* what this client may place there now */
};

/* Parses "cuda:0=24GiB,cuda:1=12GiB,cpu=64GiB" (total = available). */
VRAM_API int vram_plan_devices_parse(const char *spec, struct vram_plan_device *ret_devs, uint32_t max, uint32_t *ret_n);
/* The broker's devices: available = total - used + what others hold
 * reclaimable + the shared copies' bytes (a shared load of their file maps
 * them with no new memory; copies nobody maps are evicted first).  A plan
 * made with these can still fail at load time with -ENOMEM naming the
 * device when the copies counted are another file's and in use. */
VRAM_API int vram_plan_devices_from_client(const vram_client *c, struct vram_plan_device *ret_devs, uint32_t max, uint32_t *ret_n);

/* Plans m on devs: places its leaf modules (a module's tensors together)
 * in the order ComfyUI registers them, tail first (docs/plan.md), so a
 * layer (block) may be split between two devices where one device's share
 * ends.  -EINVAL with a message naming the input for bad options or
 * allocation strings; -ENOSPC naming the device and the shortfall when
 * the plan cannot fit. */
VRAM_API int vram_plan_create(const vram_model *m, const struct vram_plan_options *o,
			      const struct vram_plan_device *devs, uint32_t ndevs, vram_plan **ret_plan);
VRAM_API void vram_plan_free(vram_plan *p);

/* Device (index into the devs given to vram_plan_create) that holds layer:
 * for a layer the plan splits between devices, the one holding most of
 * its bytes (vram_plan_tensor_device says where each tensor goes). */
VRAM_API int vram_plan_layer_device(const vram_plan *p, uint32_t layer);
/* Device of the model's tensor (its module's); -EINVAL for a bad index.
 * The loader places by this.  Since 0.2 (libvram.map VRAM_0.2). */
VRAM_API int vram_plan_tensor_device(const vram_plan *p, uint32_t tensor);
/* Compute device of a component (for the VAE: vae_device). */
VRAM_API int vram_plan_compute_device(const vram_plan *p, uint32_t comp);
/* Bytes of comp placed on device dev. */
VRAM_API uint64_t vram_plan_bytes(const vram_plan *p, uint32_t comp, uint32_t dev);
/* Bytes of comp the inputs ask of device dev (an allocation string's
 * share, virtual VRAM's B - V and V, a whole component's bytes): placed
 * minus asked is the device's excess (shortfall when negative), within one
 * module for every device but the last one with a share.  Since 0.2. */
VRAM_API uint64_t vram_plan_asked_bytes(const vram_plan *p, uint32_t comp, uint32_t dev);
VRAM_API uint32_t vram_plan_device_count(const vram_plan *p);
VRAM_API const char *vram_plan_device_name(const vram_plan *p, uint32_t dev);
VRAM_API uint32_t vram_plan_flags(const vram_plan *p);
/* The plan as a JSON document (schema in docs/plan.md); free() the string. */
VRAM_API int vram_plan_to_json(const vram_plan *p, char **ret_json);

/* ======================================================================
 * Loading (file -> broker grants)
 * ====================================================================== */

typedef struct vram_loaded vram_loaded;

/* bytes done so far, bytes in all; return non-zero to cancel (-ECANCELED). */
typedef int (*vram_progress_fn)(void *user, uint64_t done, uint64_t total);

enum vram_io_mode {
	VRAM_IO_AUTO = 0,     /* O_DIRECT for cold files, buffered when cached */
	VRAM_IO_DIRECT = 1,
	VRAM_IO_BUFFERED = 2,
};

struct vram_load_options {
	uint32_t struct_size;
	uint32_t io_mode;        /* enum vram_io_mode */
	uint64_t chunk_size;     /* bytes per read, 0: default (8 MiB) */
	uint32_t queue_depth;    /* reads in flight, 0: default */
	uint32_t flags;          /* VRAM_LOAD_* */
	vram_progress_fn progress;
	void    *user;
	/* Conversion while loading: tensors whose dtype is in cast_from are
	 * converted to cast_to as they stream in (on the GPU for CUDA
	 * devices, on the CPU otherwise; rounding to nearest even, exact when
	 * widening; kernels/README.md).  cast_to 0 (VRAM_DTYPE_BOOL): keep
	 * every dtype.  Otherwise one of F8_E4M3, F8_E5M2, F16, BF16, F32.
	 * cast_from: bit (1u << dtype) per source dtype, from the same five;
	 * 0: F32, F8_E4M3 and F8_E5M2.  Give the plan the same two fields
	 * (vram_plan_options) so that it places converted sizes. */
	uint32_t cast_to;
	uint32_t cast_from;
	/* Staging slots (of chunk_size bytes each) for GPU destinations and
	 * conversions: reads into some while the others are copied onward;
	 * 0: default (8), at most 1024. */
	uint32_t staging_slots;
	uint32_t reserved;       /* 0 */
};
/* The default cast_from. */
#define VRAM_LOAD_CAST_DEFAULT_FROM \
	((1u << VRAM_DTYPE_F32) | (1u << VRAM_DTYPE_F8_E4M3) | (1u << VRAM_DTYPE_F8_E5M2))
/* Every grant of the load reclaimable: a pager over it gives chunks back
 * (demotes resident layers to the donor, drops donor layers to the file).
 * Such a load is pageable, so a chunk that its device refuses (-ENOMEM:
 * past this client's fair share, or full; -EDQUOT: a ceiling) is placed
 * on the cpu pool instead: a pager pages it from there and moves it back
 * when memory is offered (docs/paging.md). */
#define VRAM_LOAD_RECLAIMABLE (1u << 0)
/* Serve the load from broker-owned read-only copies where the device keeps
 * them (docs/design.md, "Shared copies"): the first load of a file fills a
 * copy the broker reads itself, every later one (by any process that can
 * read the file) maps it, and a load that asks while it is being filled
 * waits for it instead of reading the file again.  Tensors in a copy are
 * read-only (writing them faults): vram_loaded_make_private gives a tensor
 * a private, writable copy.  Where the broker cannot share (no copies on
 * the device, its budget full, limits) the chunk is loaded privately. */
#define VRAM_LOAD_SHARED      (1u << 1)

VRAM_API void vram_load_options_init(struct vram_load_options *o);

/* Loads every tensor of m into grants from c: by plan when plan is not NULL
 * (plan devices are matched to the broker's by name), else all on device
 * default_device.  The bytes are read through m's fd (vram_model_fd), not
 * the path: -ESTALE, "PATH: file changed since it was opened (...)", when
 * the file changed in place since vram_model_open or the path names
 * another file now.  The model must outlive the loaded handle. */
VRAM_API int vram_load(vram_client *c, const vram_model *m, const vram_plan *plan,
		       uint32_t default_device, const struct vram_load_options *o,
		       vram_loaded **ret_loaded);
/* Frees every grant of the load.  NULL is fine. */
VRAM_API void vram_unload(vram_loaded *l);

/* Where tensor i lives after the load: broker device index, a host pointer
 * when that memory is host-mappable, and a device pointer for CUDA. */
VRAM_API int vram_loaded_tensor_device(const vram_loaded *l, uint32_t tensor);
VRAM_API void *vram_loaded_tensor_host_ptr(const vram_loaded *l, uint32_t tensor);
VRAM_API uint64_t vram_loaded_tensor_device_ptr(const vram_loaded *l, uint32_t tensor);
/* Tensor i as loaded: its dtype (cast_to when it was converted, else the
 * file's) or -EINVAL, and its size in bytes (0 for an index out of range). */
VRAM_API int vram_loaded_tensor_dtype(const vram_loaded *l, uint32_t tensor);
VRAM_API uint64_t vram_loaded_tensor_nbytes(const vram_loaded *l, uint32_t tensor);

struct vram_load_stats {
	uint32_t struct_size;
	uint32_t io_mode_used;   /* what AUTO chose */
	uint64_t bytes;
	uint64_t ns;             /* wall time of the load */
	uint64_t cpu_ns;         /* CPU time of the loading thread(s) */
	uint64_t grants;
	uint64_t converted;      /* tensors converted (cast_to) */
	/* 0.2: shared copies (VRAM_LOAD_SHARED) */
	uint64_t shared_bytes;   /* bytes served from shared copies */
	uint32_t share_hits;     /* chunks whose copy was there */
	uint32_t share_filled;   /* chunks whose copy this load had the broker fill */
	uint32_t share_waited;   /* chunks whose copy another load was filling */
	uint32_t share_refused;  /* chunks loaded privately: the broker could not share them */
	char     share_why[128]; /* why the last refused one was */
	/* 0.2, later: how long the broker took to answer this load's ALLOCs
	 * (a grant or a refusal; parked ones wait for reclaim) */
	uint64_t first_alloc_ns; /* the first one */
	uint64_t max_alloc_ns;   /* the slowest one */
};
VRAM_API int vram_loaded_stats(const vram_loaded *l, struct vram_load_stats *ret_stats);

/* Gives tensor a private, writable copy of its bytes (in a grant of the
 * client's own on the same device) when it is in a shared copy: a LoRA
 * patches that, never the copy every instance maps.  A no-op for a tensor
 * that is private already.  The tensor's pointers change: take them
 * again.  0, or -EINVAL / vram_alloc's errors; -EBUSY while a pager serves
 * the load (free the pager first, make a new one after). */
VRAM_API int vram_loaded_make_private(vram_loaded *l, uint32_t tensor);
/* 1 if tensor is in a shared read-only copy, 0 if not, -EINVAL. */
VRAM_API int vram_loaded_tensor_shared(const vram_loaded *l, uint32_t tensor);

/* ======================================================================
 * Paging (donor layers served through a window on the compute device)
 * ====================================================================== */

typedef struct vram_pager vram_pager;

struct vram_pager_options {
	uint32_t struct_size;
	uint32_t prefetch_depth; /* donor layers fetched ahead, at least; 0: default 2
				    (the pager looks as far ahead as its window has slots) */
	uint64_t window_bytes;   /* per compute device; 0: room for the two
				    largest donor layers plus prefetch_depth more */
	uint32_t flags;          /* VRAM_PAGER_* */
	uint32_t pad;
};
/* Do not start the thread that answers the broker's RECLAIM requests; the
 * caller polls vram_client_fd() and calls vram_dispatch() itself. */
#define VRAM_PAGER_NO_DISPATCH_THREAD (1u << 0)
/* Do not register the pager as the client's reclaim handler. */
#define VRAM_PAGER_NO_RECLAIM         (1u << 1)

VRAM_API void vram_pager_options_init(struct vram_pager_options *o);

/* A pager over a loaded model.  Layers whose home (from the plan) is their
 * component's compute device are resident; donor layers are copied into a
 * window of reclaimable grants on the compute device when acquired, and
 * prefetched ahead of use: along the file's layer order at first, then
 * along the order observed in the first complete pass.  Layers dropped by
 * reclaim are read back through the model's fd (the file the load read,
 * even if another has been renamed over its path since); an acquire that
 * finds that file modified in place fails with -ESTALE.  The loaded model
 * and plan must outlive the pager.  -EINVAL when the window is smaller than
 * the largest donor layer. */
VRAM_API int vram_pager_create(vram_loaded *l, const vram_plan *plan, const struct vram_pager_options *o,
			       vram_pager **ret_pager);
VRAM_API void vram_pager_free(vram_pager *p);

/* Makes layer available on its compute device, waiting only if its copy
 * has not finished, and starts prefetching the next layers.  Acquires
 * nest (a count per layer).  At most VRAM_PAGER_MAX_ACQUIRED acquires are
 * outstanding at a time (-EBUSY past that): what they hold is all that a
 * RECLAIM must leave alone, so the bound is what reclaim can count on
 * (docs/paging.md, "Reclaim"). */
#define VRAM_PAGER_MAX_ACQUIRED 8u
VRAM_API int vram_pager_acquire(vram_pager *p, uint32_t layer);
/* Releases layer: its slot may be reused at once.  -EINVAL when layer is
 * not acquired. */
VRAM_API int vram_pager_release(vram_pager *p, uint32_t layer);
/* Releases layer in the order of cuda_stream (a CUstream of the compute
 * device's primary context, the one PyTorch uses; NULL: that context's
 * legacy default stream, PyTorch's default stream): the layer counts as
 * released at once (acquires may nest and pass on), but the memory its
 * kernels read, its window slot or resident chunk, is not reused by
 * prefetch or another layer, nor given back to a RECLAIM, until the kernels
 * queued on cuda_stream before this call have run (an event recorded on it
 * now has completed).  An acquire that finds no other slot waits for that.
 * On memory that is not CUDA memory (simulated GPUs, cpu) it is
 * vram_pager_release.  -EINVAL when layer is not acquired; a CUDA error
 * (recording the event) leaves the layer acquired and returns its errno.
 * Since VRAM 0.3. */
VRAM_API int vram_pager_release_on_stream(vram_pager *p, uint32_t layer, void *cuda_stream);
/* Where tensor is while its layer is acquired: host address (simulated
 * GPUs and cpu) and device address (CUDA).  NULL/0 when not acquired. */
VRAM_API void *vram_pager_tensor_host_ptr(const vram_pager *p, uint32_t tensor);
VRAM_API uint64_t vram_pager_tensor_device_ptr(const vram_pager *p, uint32_t tensor);
/* Marks the end of a forward pass (a pass also ends when a layer is
 * acquired a second time). */
VRAM_API int vram_pager_end_pass(vram_pager *p);

/* Gives back up to bytes of memory on device at once, whatever the pager
 * is doing: idle window slots first (keeping two that fit its largest
 * layer group), then chunks of the model, least recently used first,
 * skipping only those holding a layer acquired now (and waiting only for a
 * copy in flight, one group's).  A resident chunk's layers are paged from
 * then on: its memory becomes the window when there is none yet, else it
 * is freed, and the mover thread copies the layers to the donor from the
 * file when the donor has room (else they are read from the file when
 * needed); a donor chunk is dropped.  The RECLAIM handler does the same.
 * Returns bytes freed (less than asked when that is all that was idle). */
VRAM_API uint64_t vram_pager_reclaim(vram_pager *p, uint32_t device, uint64_t bytes);

struct vram_pager_stats {
	uint32_t struct_size;
	uint32_t window_slots;   /* slots with memory now, all devices */
	uint64_t window_bytes;
	uint64_t acquires;
	uint64_t hits;           /* resident, or already in the window */
	uint64_t late;           /* in the window but still copying: waited */
	uint64_t misses;         /* not in the window: copied on demand */
	uint64_t prefetches;     /* copies started ahead of use */
	uint64_t prefetch_used;  /* of those, acquired before eviction */
	uint64_t bytes_paged;
	uint64_t copy_ns;        /* time the copy thread spent copying */
	uint64_t stall_ns;       /* time acquire spent waiting */
	uint64_t passes;         /* completed passes */
	uint64_t demoted;        /* layers moved to the donor by reclaim */
	uint64_t dropped;        /* layers dropped to the file by reclaim */
	uint64_t reclaimed_bytes;
	uint32_t order_learned;  /* 1 once the observed order is used */
	uint32_t pad;
	/* 0.2 (copied as far as struct_size reaches): */
	uint64_t promoted;       /* layers moved back to their compute device (OFFER) */
	uint64_t reclaims;       /* reclaims handled (RECLAIM, vram_pager_reclaim) */
	uint64_t reclaim_ns;     /* time they took, in all */
	uint64_t reclaim_ns_max; /* the longest */
	uint64_t offers;         /* OFFERs received */
};
VRAM_API int vram_pager_stats(const vram_pager *p, struct vram_pager_stats *ret_stats);
/* Position i of the order prefetch follows now (layer index), or -EINVAL. */
VRAM_API int vram_pager_order(const vram_pager *p, uint32_t i);

/* ======================================================================
 * GPU kernels and the unified-memory pager (CUDA devices; docs/cuda.md)
 * ====================================================================== */

/* Converts n elements at device address src (src_dtype) into dst
 * (dst_dtype) on broker CUDA device `device`, with the kernels of kernels/
 * (the same results as the C reference vk_cast, bit for bit), and waits for
 * it.  The work goes on the context's legacy default stream, so it runs
 * after work queued there (PyTorch's default stream) but not after other
 * streams': synchronize those first.  Equal dtypes copy the bytes.
 * -EINVAL for a pair the kernels do not handle (F8_E4M3, F8_E5M2, F16,
 * BF16, F32 in any pair), -ENOTSUP when libvram was built without nvcc,
 * -ENODEV / -ENOENT as vram_alloc for the device, CUDA errors as their
 * errno (-ENOMEM, -EIO, ...) with the call named in vram_last_error(). */
VRAM_API int vram_gpu_cast(vram_client *c, uint32_t device, uint64_t dst, uint32_t dst_dtype, uint64_t src,
			   uint32_t src_dtype, uint64_t n);
/* w (rows x cols, w_dtype, device memory) += scale * (up @ down) on broker
 * CUDA device `device`, up rows x rank and down rank x cols in f32 device
 * memory, rounded stochastically back to w_dtype with seed (kernels/README.md;
 * identical to the C reference vk_lora_merge); waits for it.  Stream and
 * errors as vram_gpu_cast; -EINVAL also for rank 0 or a non-finite scale. */
VRAM_API int vram_gpu_lora_merge(vram_client *c, uint32_t device, uint64_t w, uint32_t w_dtype, uint64_t up,
				 uint64_t down, uint32_t rows, uint32_t cols, uint32_t rank, float scale,
				 uint64_t seed);

typedef struct vram_uvm_pager vram_uvm_pager;

/* The alternative to vram_pager_create within one process: the donor
 * layers of every component whose compute device is a CUDA device are
 * copied from their (host-mappable) donor memory into managed memory
 * (cuMemAllocManaged), advised to live on the CPU and to be accessed by the
 * compute device; acquiring a layer prefetches it, and the next
 * prefetch_depth donor layers in layer order, to the device
 * (cuMemPrefetchAsync).  Resident layers are served from the load.  The
 * managed memory of a device never exceeds what the card has free when the
 * pager is made: -ENOMEM, naming the device and both sizes, otherwise.
 * -ENOTSUP for a driver older than CUDA 12.2 or a device without concurrent
 * managed access; -EINVAL when a donor layer is not in host-mappable memory
 * or prefetch_depth is over 64.  The loaded model and plan must outlive the
 * pager. */
VRAM_API int vram_uvm_pager_create(vram_loaded *l, const vram_plan *plan, uint32_t prefetch_depth,
				   vram_uvm_pager **ret_pager);
/* Waits for the prefetches and frees the managed memory.  NULL is fine. */
VRAM_API void vram_uvm_pager_free(vram_uvm_pager *p);
/* Makes layer ready on its compute device: a donor layer's prefetch (and
 * the next ones') is queued unless already queued, and waited for.
 * Acquires nest (a count per layer). */
VRAM_API int vram_uvm_pager_acquire(vram_uvm_pager *p, uint32_t layer);
/* -EINVAL when layer is not acquired. */
VRAM_API int vram_uvm_pager_release(vram_uvm_pager *p, uint32_t layer);
/* The device address of tensor while its layer is acquired: in managed
 * memory for donor layers, the loaded address for resident ones; 0 when
 * not acquired (or not on a CUDA device). */
VRAM_API uint64_t vram_uvm_tensor_device_ptr(const vram_uvm_pager *p, uint32_t tensor);

#ifdef __cplusplus
}
#endif
#endif /* VRAM_H */
