/* SPDX-License-Identifier: MIT */
/*
 * The checkpoint formats behind vram_model_open: which one a file is (by
 * its first bytes, never its name), and the GGUF and PyTorch readers'
 * results turned into struct vram_model as the safetensors reader fills
 * it.  docs/formats.md describes what each format's model looks like.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "runtime/gguf.h"
#include "runtime/internal.h"
#include "runtime/model.h"
#include "runtime/reader.h"
#include "runtime/torchzip.h"

/* Which reader a file that starts with h[0, n) and has size bytes needs. */
static enum model_format detect(const uint8_t *h, size_t n, uint64_t size)
{
	uint64_t len = 0;

	/* A plausible safetensors header first: its length's bytes could
	 * look like a pickle's start (0x80 0x02 is a 640-byte header). */
	if (n >= 9) {
		for (int i = 7; i >= 0; i--)
			len = len << 8 | h[i];
		if (len && len <= ST_MAX_HEADER && len <= size - 8 &&
		    (h[8] == '{' || h[8] == ' ' || h[8] == '\t' || h[8] == '\r' || h[8] == '\n'))
			return MODEL_SAFETENSORS;
	}
	if (n >= 4 && !memcmp(h, "GGUF", 4))
		return MODEL_GGUF;
	if (tz_sniff(h, n) != TZ_OTHER)
		return MODEL_PYTORCH;
	return MODEL_SAFETENSORS; /* its reader names what is wrong */
}

static int nomem(const struct vram_model *m)
{
	return rt_error(-ENOMEM, "%s: out of memory", m->path);
}

/* ======================================================================
 * GGUF
 * ====================================================================== */

/* general.architecture values of text encoders (ComfyUI-GGUF's CLIP
 * loaders); every other GGUF is a diffusion model. */
static bool text_arch(const char *a)
{
	static const char *const text[] = {
		"t5", "t5encoder", "umt5", "clip", "bert", "llama", "mistral3", "qwen2", "qwen2vl", "qwen25vl",
		"qwen3", "qwen3vl", "gemma2", "gemma3",
	};
	for (size_t i = 0; i < ARRAY_SIZE(text); i++)
		if (!strcmp(a, text[i]))
			return true;
	return false;
}

/* The metadata value as the model shows it: general.file_type gets its
 * name, "15 (Q4_K_M)". */
static void kv_text(const struct gguf_kv *kv, char *buf, size_t len, const char **ret)
{
	const char *ft;

	*ret = kv->value;
	if (!strcmp(kv->key, "general.file_type") && kv->type != GGUF_VT_STRING && kv->type != GGUF_VT_ARRAY &&
	    (ft = gguf_file_type_name(kv->u))) {
		snprintf(buf, len, "%s (%s)", kv->value, ft);
		*ret = buf;
	}
}

static int from_gguf(struct vram_model *m, const struct src *s)
{
	struct gguf_file g = { 0 };
	const struct gguf_kv *arch;
	size_t nstr = 0, ndims = 0;
	uint32_t comp;
	char *sp, ftbuf[64];
	uint64_t *dp;
	int r;

	if ((r = gguf_parse(s, &g)) < 0)
		return r;
	m->format = MODEL_GGUF;
	m->components_set = 1;
	m->file_size = g.file_size;
	m->header_size = g.info_end;
	m->data_offset = g.data_offset;
	m->data_size = g.file_size > g.data_offset ? g.file_size - g.data_offset : 0;
	arch = gguf_find_kv(&g, "general.architecture");
	comp = arch && arch->type == GGUF_VT_STRING && text_arch(arch->value) ? VRAM_COMP_CLIP : VRAM_COMP_UNET;
	for (uint64_t i = 0; i < g.ntensors; i++) {
		nstr += g.tensors[i].name_len + 1;
		ndims += g.tensors[i].ndim;
	}
	for (uint64_t i = 0; i < g.nkv; i++) {
		const char *v;
		kv_text(&g.kv[i], ftbuf, sizeof(ftbuf), &v);
		nstr += strlen(g.kv[i].key) + strlen(v) + 2;
	}
	m->tensors = calloc(g.ntensors ? g.ntensors : 1, sizeof(*m->tensors));
	m->dims = malloc((ndims ? ndims : 1) * sizeof(*m->dims));
	m->strings = malloc(nstr ? nstr : 1);
	m->meta = malloc((g.nkv ? 2 * g.nkv : 1) * sizeof(*m->meta));
	if (!m->tensors || !m->dims || !m->strings || !m->meta) {
		gguf_free(&g);
		return nomem(m);
	}
	sp = m->strings;
	dp = m->dims;
	for (uint64_t i = 0; i < g.ntensors; i++) {
		const struct gguf_tensor *gt = &g.tensors[i];
		struct model_tensor *t = &m->tensors[i];

		memcpy(sp, gt->name, gt->name_len + 1);
		t->name = sp;
		t->name_len = gt->name_len;
		sp += gt->name_len + 1;
		/* ggml lists the row first; the model's shapes are row-major
		 * (outermost first), as PyTorch and safetensors write them. */
		for (uint32_t j = 0; j < gt->ndim; j++)
			dp[j] = gt->ne[gt->ndim - 1 - j];
		t->shape = gt->ndim ? dp : NULL;
		t->ndim = gt->ndim;
		dp += gt->ndim;
		t->dtype = gguf_vram_dtype(gt->type);
		t->begin = gt->offset;
		t->end = gt->offset + gt->nbytes;
		t->component = comp;
	}
	m->ntensors = (uint32_t)g.ntensors;
	for (uint64_t i = 0; i < g.nkv; i++) {
		const char *v;
		size_t kn = strlen(g.kv[i].key), vn;
		kv_text(&g.kv[i], ftbuf, sizeof(ftbuf), &v);
		vn = strlen(v);
		memcpy(sp, g.kv[i].key, kn + 1);
		m->meta[2 * i] = sp;
		sp += kn + 1;
		memcpy(sp, v, vn + 1);
		m->meta[2 * i + 1] = sp;
		sp += vn + 1;
	}
	m->nmeta = (uint32_t)g.nkv;
	gguf_free(&g);
	return 0;
}

/* ======================================================================
 * PyTorch
 * ====================================================================== */

static int from_torch(struct vram_model *m, const struct src *s)
{
	struct torch_file t = { 0 };
	size_t nstr = 0, ndims = 0;
	char *sp;
	uint64_t *dp;
	int r;

	if ((r = torch_parse(s, &t)) < 0)
		return r;
	m->format = MODEL_PYTORCH;
	m->file_size = t.file_size;
	m->header_size = t.pickle_size;
	m->data_offset = t.data_begin;
	m->data_size = t.data_end - t.data_begin;
	for (uint32_t i = 0; i < t.ntensors; i++) {
		nstr += t.tensors[i].name_len + 1;
		ndims += t.tensors[i].ndim;
	}
	m->tensors = calloc(t.ntensors ? t.ntensors : 1, sizeof(*m->tensors));
	m->dims = malloc((ndims ? ndims : 1) * sizeof(*m->dims));
	m->strings = malloc(nstr ? nstr : 1);
	m->meta = malloc(sizeof(*m->meta));
	if (!m->tensors || !m->dims || !m->strings || !m->meta) {
		torch_free(&t);
		return nomem(m);
	}
	sp = m->strings;
	dp = m->dims;
	for (uint32_t i = 0; i < t.ntensors; i++) {
		const struct tz_tensor *x = &t.tensors[i];
		struct model_tensor *mt = &m->tensors[i];

		memcpy(sp, x->name, x->name_len + 1);
		mt->name = sp;
		mt->name_len = x->name_len;
		sp += x->name_len + 1;
		memcpy(dp, x->shape, x->ndim * sizeof(*dp));
		mt->shape = x->ndim ? dp : NULL;
		mt->ndim = x->ndim;
		dp += x->ndim;
		mt->dtype = x->dtype;
		/* Tensors of one storage may overlap: each is its own range. */
		mt->begin = x->file_offset - t.data_begin;
		mt->end = mt->begin + x->nbytes;
	}
	m->ntensors = t.ntensors;
	torch_free(&t);
	return 0;
}

/* ======================================================================
 * Dispatch
 * ====================================================================== */

/* Reads the file open at m->fd whichever format it is (model.h). */
int model_read(struct vram_model *m)
{
	struct src s = src_fd(m->fd, (uint64_t)m->st.st_size, m->path);
	uint8_t head[16] = { 0 };
	size_t n = (size_t)MIN(s.size, sizeof(head));
	int r;

	if ((r = src_read(&s, head, n, 0, "the first bytes")) < 0)
		return r;
	switch (detect(head, n, s.size)) {
	case MODEL_GGUF:
		return from_gguf(m, &s);
	case MODEL_PYTORCH:
		return from_torch(m, &s);
	default:
		m->format = MODEL_SAFETENSORS;
		return st_read(m);
	}
}
