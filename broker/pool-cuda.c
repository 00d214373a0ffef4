/* SPDX-License-Identifier: MIT */
/* CUDA pools: discovery through the Driver API loaded with dlopen. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>

#include "broker/broker.h"
#include "common/util.h"

int pool_cuda_discover(struct pool **out, uint32_t max, uint32_t first, char *note, size_t note_len)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		snprintf(note, note_len, "NVIDIA driver not found (libcuda.so.1: %s)", dlerror());
		return 0;
	}
	dlclose(h);
	snprintf(note, note_len, "CUDA backend not built into this vramd");
	return 0;
}
