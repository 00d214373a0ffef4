/* SPDX-License-Identifier: MIT */
/*
 * The baseline loader for make bench: what the safetensors library does on
 * the CPU.  mmaps the file and copies every tensor out into memory of its
 * own (one allocation per tensor, as torch tensors get), then prints
 * "BYTES SECONDS CPU_SECONDS".
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "runtime/vram.h"

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: helper-mmapload FILE\n");
		return 2;
	}
	struct timespec c0, c1;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	uint64_t t0 = now_ns();
	vram_model *m;
	if (vram_model_open(argv[1], &m) < 0) {
		fprintf(stderr, "%s\n", vram_last_error());
		return 1;
	}
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		perror(argv[1]);
		return 1;
	}
	const uint8_t *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	int n = vram_model_tensor_count(m);
	void **out = calloc((size_t)n + 1, sizeof(*out));
	uint64_t bytes = 0;
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		vram_model_tensor(m, (uint32_t)i, &ti);
		out[i] = malloc(ti.nbytes ? ti.nbytes : 1);
		if (!out[i])
			return 1;
		memcpy(out[i], map + ti.file_offset, ti.nbytes);
		bytes += ti.nbytes;
	}
	uint64_t ns = now_ns() - t0;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	printf("%llu %.6f %.6f\n", (unsigned long long)bytes, (double)ns / 1e9,
	       (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) / 1e9);
	for (int i = 0; i < n; i++)
		free(out[i]);
	free(out);
	munmap((void *)map, (size_t)st.st_size);
	close(fd);
	vram_model_close(m);
	return 0;
}
