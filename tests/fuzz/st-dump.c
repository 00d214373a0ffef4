/* SPDX-License-Identifier: MIT */
/*
 * The C side of the safetensors differential test (tests/fuzz/st_diff.py):
 * reads paths from stdin, one a line, opens each with vram_model_open() and
 * writes one line per path to stdout, flushed:
 *
 *   O {"format":F,"tensors":[[name,dtype,[shape],file_offset,nbytes],...],"meta":[[key,value],...]}
 *   E <errno> <vram_last_error(), newlines as spaces>
 *
 * Tensors in the model's order (by layer, then name), metadata in the file's
 * order.  Built with the sanitizers by tests/fuzz/fuzz.mk, so that every
 * mutated file of the differential test also runs under ASan/UBSan.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime/vram.h"

/* The model as one JSON line ("O ..."); -ENOMEM when jansson fails. */
static int dump_model(const vram_model *m)
{
	json_t *root = json_object(), *ts = json_array(), *meta = json_array();
	int n = vram_model_tensor_count(m), nm = vram_model_metadata_count(m), r = -ENOMEM;
	char *text = NULL;

	if (!root || !ts || !meta)
		goto out;
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		json_t *shape = json_array();

		if (vram_model_tensor(m, (uint32_t)i, &ti) < 0 || !shape) {
			json_decref(shape);
			goto out;
		}
		for (uint32_t d = 0; d < ti.ndim; d++)
			json_array_append_new(shape, json_integer((json_int_t)ti.shape[d]));
		json_array_append_new(ts, json_pack("[s s o I I]", ti.name, vram_dtype_name(ti.dtype), shape,
						    (json_int_t)ti.file_offset, (json_int_t)ti.nbytes));
	}
	for (int i = 0; i < nm; i++) {
		const char *k, *v;
		if (vram_model_metadata(m, (uint32_t)i, &k, &v) < 0)
			goto out;
		json_array_append_new(meta, json_pack("[s s]", k, v));
	}
	json_object_set_new(root, "format", json_string(vram_model_format(m)));
	json_object_set(root, "tensors", ts);
	json_object_set(root, "meta", meta);
	text = json_dumps(root, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (text) {
		printf("O %s\n", text);
		r = 0;
	}
out:
	free(text);
	json_decref(root);
	json_decref(ts);
	json_decref(meta);
	return r;
}

int main(void)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	while ((len = getline(&line, &cap, stdin)) > 0) {
		vram_model *m = NULL;
		int r;

		if (line[len - 1] == '\n')
			line[--len] = '\0';
		r = vram_model_open(line, &m);
		if (r < 0) {
			char *msg = strdup(vram_last_error());
			if (!msg)
				return 1;
			for (char *p = msg; *p; p++)
				if (*p == '\n' || *p == '\r')
					*p = ' ';
			printf("E %d %s\n", r, msg);
			free(msg);
		} else {
			r = dump_model(m);
			vram_model_close(m);
			if (r < 0) {
				fprintf(stderr, "st-dump: out of memory\n");
				return 1;
			}
		}
		fflush(stdout);
	}
	free(line);
	return 0;
}
