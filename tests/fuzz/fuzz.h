/* SPDX-License-Identifier: MIT */
/*
 * What the libFuzzer targets of tests/fuzz/ share.  Each target is one
 * fuzz-NAME.c with LLVMFuzzerTestOneInput(); tests/fuzz/fuzz.mk builds it
 * with clang, libFuzzer, ASan and UBSan; docs/fuzzing.md says how to run.
 *
 * A target fails by crashing: a sanitizer report, or FUZZ_ASSERT when a
 * property of the code under test does not hold.
 */
#ifndef VRAM_TESTS_FUZZ_H
#define VRAM_TESTS_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

/* Aborts (a crash libFuzzer records, with the input) when cond is false. */
#define FUZZ_ASSERT(cond, ...) do { \
		if (!(cond)) { \
			fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__); \
			fputc('\n', stderr); \
			abort(); \
		} \
	} while (0)

/*
 * A path whose file holds data, for code that opens files by name: one
 * memfd per process, rewritten for each input, named /proc/self/fd/N.
 * Aborts when the memfd cannot be made or written (not a finding).
 */
static inline const char *fuzz_file(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	size_t off = 0;

	if (fd < 0) {
		fd = memfd_create("fuzz-input", MFD_CLOEXEC);
		if (fd < 0) {
			perror("memfd_create");
			abort();
		}
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	if (ftruncate(fd, 0) < 0) {
		perror("ftruncate");
		abort();
	}
	while (off < size) {
		ssize_t n = pwrite(fd, data + off, size - off, (off_t)off);
		if (n <= 0) {
			perror("pwrite");
			abort();
		}
		off += (size_t)n;
	}
	return path;
}

#endif
