/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: vram_model_open() on a whole .safetensors file (the
 * input, as bytes), then every accessor of the model it returns.
 *
 * Properties checked beyond the sanitizers: a refusal is a negative errno
 * with "PATH: ..." as the message; an accepted model is consistent (the
 * tensors tile the data exactly, each lies inside the file with the size
 * its dtype and shape give, every name finds its own tensor, layers and
 * components account for every tensor and byte).
 *
 * The custom mutator keeps the 8-byte length in step with the header most
 * of the time: it mutates the JSON text alone and rewrites the length, so
 * that mutations reach the JSON rules instead of stopping at the length.
 */
#include <errno.h>
#include <string.h>

#include "runtime/vram.h"
#include "tests/fuzz/fuzz.h"

static void check_tensors(const vram_model *m, uint64_t *ret_bytes)
{
	int n = vram_model_tensor_count(m), nl = vram_model_layer_count(m);
	uint64_t total = 0;

	FUZZ_ASSERT(n >= 0 && nl >= 0, "counts %d %d", n, nl);
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		struct vram_layer_info li = { .struct_size = sizeof(li) };
		unsigned __int128 bits;

		FUZZ_ASSERT(vram_model_tensor(m, (uint32_t)i, &ti) == 0, "tensor %d", i);
		FUZZ_ASSERT(ti.name && vram_dtype_name(ti.dtype) && ti.component < VRAM_COMP_COUNT, "tensor %d", i);
		FUZZ_ASSERT(vram_model_find_tensor(m, ti.name) == i, "find \"%s\" (%d)", ti.name, i);
		bits = vram_dtype_bits(ti.dtype);
		for (uint32_t d = 0; d < ti.ndim; d++)
			bits *= ti.shape[d];
		FUZZ_ASSERT(bits == (unsigned __int128)ti.nbytes * 8, "tensor \"%s\": size", ti.name);
		FUZZ_ASSERT(ti.file_offset >= vram_model_data_offset(m) &&
			    ti.file_offset + ti.nbytes <= vram_model_file_size(m), "tensor \"%s\": offsets", ti.name);
		FUZZ_ASSERT(ti.layer < (uint32_t)nl, "tensor \"%s\": layer %u", ti.name, ti.layer);
		FUZZ_ASSERT(vram_model_layer(m, ti.layer, &li) == 0, "layer %u", ti.layer);
		FUZZ_ASSERT((uint32_t)i >= li.first_tensor && (uint32_t)i - li.first_tensor < li.ntensors &&
			    li.component == ti.component, "tensor \"%s\" not in its layer", ti.name);
		total += ti.nbytes;
	}
	FUZZ_ASSERT(vram_model_tensor(m, (uint32_t)n, &(struct vram_tensor_info){ .struct_size = 8 }) == -EINVAL,
		    "tensor past the end");
	*ret_bytes = total;
}

static void check_model(const vram_model *m, const char *path, size_t size)
{
	uint64_t bytes = 0, lbytes = 0, cbytes = 0;
	uint32_t ltensors = 0, ctensors = 0, clayers = 0;
	int n, nl, nm;

	FUZZ_ASSERT(!strcmp(vram_model_path(m), path), "path");
	FUZZ_ASSERT(vram_model_file_size(m) == size, "file size");
	FUZZ_ASSERT(vram_model_data_offset(m) == 8 + vram_model_header_size(m) &&
		    vram_model_data_offset(m) + vram_model_data_size(m) == size, "layout");
	check_tensors(m, &bytes);
	FUZZ_ASSERT(bytes == vram_model_data_size(m), "tensors hold %llu of %llu data bytes",
		    (unsigned long long)bytes, (unsigned long long)vram_model_data_size(m));

	n = vram_model_tensor_count(m);
	nl = vram_model_layer_count(m);
	for (int i = 0; i < nl; i++) {
		struct vram_layer_info li = { .struct_size = sizeof(li) };
		FUZZ_ASSERT(vram_model_layer(m, (uint32_t)i, &li) == 0 && li.name, "layer %d", i);
		FUZZ_ASSERT(li.first_tensor == ltensors && li.ntensors > 0, "layer %d: not contiguous", i);
		ltensors += li.ntensors;
		lbytes += li.nbytes;
	}
	FUZZ_ASSERT(ltensors == (uint32_t)n && lbytes == bytes, "layers account for the tensors");
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++) {
		struct vram_component_info ci = { .struct_size = sizeof(ci) };
		FUZZ_ASSERT(vram_model_component(m, c, &ci) == 0, "component %u", c);
		ctensors += ci.ntensors;
		clayers += ci.nlayers;
		cbytes += ci.nbytes;
	}
	FUZZ_ASSERT(ctensors == (uint32_t)n && clayers == (uint32_t)nl && cbytes == bytes,
		    "components account for the tensors");

	nm = vram_model_metadata_count(m);
	FUZZ_ASSERT(nm >= 0, "metadata count");
	for (int i = 0; i < nm; i++) {
		const char *k = NULL, *v = NULL;
		FUZZ_ASSERT(vram_model_metadata(m, (uint32_t)i, &k, &v) == 0 && k && v, "metadata %d", i);
		(void)strlen(k);
		(void)strlen(v);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_file(data, size);
	vram_model *m = NULL;
	int r = vram_model_open(path, &m);

	if (r < 0) {
		const char *msg = vram_last_error();
		FUZZ_ASSERT(r == -EINVAL || r == -ENOMEM, "returned %d: %s", r, msg);
		FUZZ_ASSERT(m == NULL, "model set on failure");
		FUZZ_ASSERT(!strncmp(msg, path, strlen(path)) && msg[strlen(path)] == ':', "message \"%s\"", msg);
		return 0;
	}
	check_model(m, path, size);
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
