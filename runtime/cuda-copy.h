/* SPDX-License-Identifier: MIT */
/*
 * libvram's CUDA internals (not installed):
 *
 *  - device handles (runtime/cuda.c): a broker CUDA device found in this
 *    process by its UUID (never by ordinal: CUDA_VISIBLE_DEVICES renumbers),
 *    with its primary context retained, the context PyTorch uses too;
 *  - copiers (runtime/cuda-copy.c): a non-blocking stream on one device and
 *    one event per staging slot; host-to-device copies for the streaming
 *    engine (struct stream_sink), device-to-device and device-to-host copies
 *    for the pager;
 *  - a sink for the streaming engine that spreads copies over the devices of
 *    the grants it was given;
 *  - pinning host memory (cpu-pool grants, staging) for DMA.
 *
 * Every function that can fail returns 0 or a negative errno with
 * vram_last_error() set ("...: cuMemcpyHtoDAsync: CUDA_ERROR_X (text)").
 * All calls push the device's primary context and pop it again: the
 * caller's current context is never changed.
 */
#ifndef VRAM_RUNTIME_CUDA_COPY_H
#define VRAM_RUNTIME_CUDA_COPY_H

#include <stdint.h>

#include "common/cuda-api.h"
#include "runtime/client.h"
#include "runtime/stream.h"

/* ======================================================================
 * Devices (runtime/cuda.c)
 * ====================================================================== */

struct cuda_dev;

/* Finds broker device `device` of c (a CUDA-backend device) among this
 * process's CUDA devices by UUID and retains its primary context.  Loads the
 * Driver API and calls cuInit on first use.  Handles are shared and counted:
 * each get needs one put.  -EINVAL (not a CUDA device), -ENOENT (no driver),
 * -ENODEV (not visible in this process), or the CUDA error's errno. */
int cuda_dev_get(const struct vram_client *c, uint32_t device, struct cuda_dev **ret_dev);
/* Drops a reference; the last one releases the primary context.  NULL is
 * fine. */
void cuda_dev_put(struct cuda_dev *d);
/* The driver table; valid while d is held. */
const struct cuda_api *cuda_dev_api(const struct cuda_dev *d);
/* d's ordinal in this process (what VMM location ids and cuDeviceGet take). */
int cuda_dev_ordinal(const struct cuda_dev *d);
/* Makes d's primary context current in this thread (cuCtxPushCurrent) /
 * restores the previous one.  push: 0 or -errno with the error set. */
int cuda_dev_push(struct cuda_dev *d);
void cuda_dev_pop(struct cuda_dev *d);
/* rt_error() with ": <call>: CUDA_ERROR_X (text)" appended to the
 * formatted prefix; returns the errno for cr (-EIO when it has none). */
int cuda_dev_error(const struct cuda_dev *d, CUresult cr, const char *call, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* ======================================================================
 * Copiers (runtime/cuda-copy.c)
 * ====================================================================== */

struct cuda_copier;

#define CUDA_COPIER_MAX_SLOTS 1024u

/* A copier on broker device `device` of c: one CU_STREAM_NON_BLOCKING stream
 * and nslots (1..CUDA_COPIER_MAX_SLOTS) events.  Free with
 * cuda_copier_free. */
int cuda_copier_new(struct vram_client *c, uint32_t device, uint32_t nslots,
		    struct cuda_copier **ret_copier);
/* Waits for every copy, then frees the stream, the events and the device
 * reference.  NULL is fine. */
void cuda_copier_free(struct cuda_copier *cp);

/* Queues a host-to-device copy of len bytes and records slot's event after
 * it.  src must stay unchanged until cuda_copier_wait(slot) returns
 * (DMA runs from it when it is pinned; pageable memory makes the call
 * synchronous).  dst must be device memory of the copier's device.  The
 * signature is struct stream_sink's copy: user is the copier. */
int cuda_copier_copy(void *user, uint64_t dst_addr, const void *src, uint64_t len, uint32_t slot);
/* Blocks until the copies recorded on slot so far have completed (at once
 * when none were).  struct stream_sink's wait: user is the copier.  A
 * failed copy shows here as -EIO (or the CUDA error's errno). */
int cuda_copier_wait(void *user, uint32_t slot);
/* Device-to-device copy on the copier's stream, recorded on slot.  dst is
 * on the copier's device; src on any device whose memory that device can
 * read (the same device, or a peer with access). */
int cuda_copier_dtod(struct cuda_copier *cp, uint64_t dst_addr, uint64_t src_addr, uint64_t len,
		     uint32_t slot);
/* Converts n elements of src_dtype in host memory src to dst_dtype at
 * device address dst: an H2D copy of the source into device scratch (the
 * copier's device, n * size(src_dtype) bytes, aligned for the element;
 * only work on this copier's stream may use it), then the cast kernel from
 * there, both on the copier's stream, recorded on slot. */
int cuda_copier_cast(struct cuda_copier *cp, uint64_t dst, uint32_t dst_dtype, uint64_t scratch,
		     const void *src, uint32_t src_dtype, uint64_t n, uint32_t slot);
/* Device-to-host copy on the copier's stream, recorded on slot. */
int cuda_copier_dtoh(struct cuda_copier *cp, void *dst, uint64_t src_addr, uint64_t len, uint32_t slot);
/* Waits for everything queued on the stream. */
int cuda_copier_sync(struct cuda_copier *cp);
/* The copier's CUstream (to order work with other streams) and slot count. */
CUstream cuda_copier_stream(const struct cuda_copier *cp);
uint32_t cuda_copier_slots(const struct cuda_copier *cp);

/* Fills a stream_sink that copies through cp. */
void cuda_copier_sink(struct cuda_copier *cp, struct stream_sink *ret_sink);

/* ======================================================================
 * A sink over several devices
 * ====================================================================== */

struct cuda_sink;

/* A stream_sink for grants on any CUDA devices of c: one copier per device,
 * made when a grant of that device is added.  nslots as the streaming
 * engine's staging slots. */
int cuda_sink_new(struct vram_client *c, uint32_t nslots, struct cuda_sink **ret_sink);
/* Makes g's device range a valid destination.  -EINVAL for a grant that is
 * not an imported CUDA grant. */
int cuda_sink_add_grant(struct cuda_sink *s, const struct vram_grant *g);
/* Lets the sink convert (stream_sink.cast): for each device it converts
 * on, it takes slot_size bytes of device scratch from the broker at the
 * first conversion (freed with the sink); no conversion handed to it may
 * have more source bytes than that (the engine's staging slot size). */
void cuda_sink_cast_scratch(struct cuda_sink *s, uint64_t slot_size);
/* Fills the stream_sink to give the engine; copy() fails with -EFAULT for an
 * address range no added grant contains. */
void cuda_sink_get(struct cuda_sink *s, struct stream_sink *ret_sink);
/* Waits for all copies and frees everything.  NULL is fine. */
void cuda_sink_free(struct cuda_sink *s);

/* ======================================================================
 * Pinned host memory
 * ====================================================================== */

struct cuda_pin;

/* Page-locks [host, host + len) for DMA from every device
 * (cuMemHostRegister, CU_MEMHOSTREGISTER_PORTABLE), chunk bytes per
 * registration (0: one registration; else rounded up to 2 MiB).  A copy
 * whose source spans two chunks may be treated as pageable by the driver;
 * size chunks to the copies (staging slots) or use one registration.  host
 * must be page-aligned: a grant mapping (memfd, hugetlb or not) is.  The
 * context used is broker device `device`'s (any CUDA device of c).
 * -EINVAL for a misaligned range; CUDA errors as their errno (-EBUSY when
 * part of the range is registered already). */
int cuda_pin(struct vram_client *c, uint32_t device, void *host, uint64_t len, uint64_t chunk,
	     struct cuda_pin **ret_pin);
/* Unregisters and frees.  NULL is fine. */
void cuda_unpin(struct cuda_pin *p);

#endif
