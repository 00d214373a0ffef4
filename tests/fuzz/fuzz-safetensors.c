/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: vram_model_open() on a whole .safetensors file (the
 * input, as bytes), then every accessor of the model it returns.
 *
 * Properties checked beyond the sanitizers (tests/fuzz/fuzz-model.h): a
 * refusal is a negative errno with "PATH: ..." as the message; an accepted
 * model is consistent (the tensors tile the data exactly, each lies inside
 * the file with the size its dtype and shape give, every name finds its
 * own tensor, layers and components account for every tensor and byte).
 * vram_model_open() tells formats apart by their first bytes, so a mutation
 * may turn the input into a GGUF or PyTorch file: the same model checks
 * hold, with that format's layout rules, and -ENOTSUP is a refusal too.
 *
 * The custom mutator keeps the 8-byte length in step with the header most
 * of the time: it mutates the JSON text alone and rewrites the length, so
 * that mutations reach the JSON rules instead of stopping at the length.
 */
#include <errno.h>
#include <string.h>

#include "tests/fuzz/fuzz-model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	vram_model *m = NULL;
	int r = vram_model_open(path, &m);

	if (r < 0) {
		fuzz_check_refusal(r, m, path);
		return 0;
	}
	fuzz_check_model(m, path, size);
	vram_model_close(m);
	return 0;
}

/* Mutates the header text of a file whose length field is right, and
 * rewrites the length; other inputs (and one in four) as bytes. */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
	uint64_t n = 0;
	size_t tail, room;
	uint8_t *saved;

	if (size >= 8)
		for (int i = 7; i >= 0; i--)
			n = n << 8 | data[i];
	if (size < 8 || n == 0 || n > size - 8 || seed % 4 == 0 || max_size <= size)
		return LLVMFuzzerMutate(data, size, max_size);
	tail = size - 8 - (size_t)n;
	room = max_size - 8 - tail;
	saved = malloc(tail ? tail : 1);
	if (!saved)
		return LLVMFuzzerMutate(data, size, max_size);
	memcpy(saved, data + 8 + n, tail);
	n = LLVMFuzzerMutate(data + 8, (size_t)n, room);
	memcpy(data + 8 + n, saved, tail);
	free(saved);
	for (int i = 0; i < 8; i++)
		data[i] = (uint8_t)(n >> (8 * i));
	return 8 + (size_t)n + tail;
}
