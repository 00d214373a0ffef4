/* SPDX-License-Identifier: MIT */
/* CUDA import of broker grants (Driver API via dlopen). */
#include <errno.h>

#include "runtime/client.h"

int vram_cuda_import(struct vram_client *c, struct vram_grant *g, int fd)
{
	return vram_error(-ENOTSUP, "this libvram cannot import CUDA grants yet");
}

void vram_cuda_unimport(struct vram_grant *g)
{
}
