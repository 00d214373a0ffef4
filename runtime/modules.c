/* SPDX-License-Identifier: MIT */
/*
 * Leaf modules in ComfyUI's registration order (runtime/modules.h).
 *
 * ComfyUI's models register their submodules in __init__ order, and
 * DisTorch2 walks that order (ModelPatcher._load_list, i.e.
 * named_modules()) from the tail.  The checkpoint keeps only names, so the
 * order is rebuilt from the attribute names: for each family the words its
 * classes use, listed so that every class's own attributes appear in the
 * order that class registers them (read from ComfyUI's model definitions:
 * openaimodel.py and attention.py, flux/model.py and layers.py, mmdit.py,
 * wan/model.py, qwen_image/model.py, clip_model.py, t5.py, llama.py).
 * Siblings then compare by their word's place in the list, ModuleList
 * items by number, and a module comes before the modules under it (a
 * pre-order walk, as named_modules() is).  docs/plan.md lists the words.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "runtime/dtype.h"
#include "runtime/internal.h"
#include "runtime/model.h"
#include "runtime/modules.h"

/* ======================================================================
 * Families
 * ====================================================================== */

static const char *const w_sd_unet[] = {
	"time_embed", "label_emb", "input_blocks", "in_layers", "h_upd", "x_upd", "emb_layers", "out_layers",
	"skip_connection", "time_stack", "time_mixer", "norm", "proj_in", "transformer_blocks", "norm_in", "ff_in",
	"attn1", "to_q", "to_k", "to_v", "to_out", "ff", "net", "proj", "attn2", "norm2", "norm1", "norm3",
	"proj_out", "op", "conv", "middle_block", "output_blocks", "out", "id_predictor", NULL,
};

static const char *const w_flux[] = {
	"img_in", "time_in", "in_layer", "out_layer", "vector_in", "guidance_in", "txt_in", "txt_norm",
	"double_blocks", "img_mod", "lin", "img_norm1", "img_attn", "linear1", "linear2", "qkv", "norm",
	"query_norm", "key_norm", "scale", "proj", "img_norm2", "img_mlp", "txt_mod", "txt_norm1", "txt_attn",
	"txt_norm2", "txt_mlp", "single_blocks", "pre_norm", "modulation", "final_layer", "norm_final", "linear",
	"adaLN_modulation", "double_stream_modulation_img", "double_stream_modulation_txt",
	"single_stream_modulation", NULL,
};

static const char *const w_sd3[] = {
	"x_embedder", "t_embedder", "y_embedder", "context_processor", "layers", "context_embedder", "register",
	"pos_embed", "joint_blocks", "context_block", "x_block", "norm1", "attn", "fc1", "qkv", "proj", "norm",
	"ln_q", "ln_k", "attn2", "norm2", "mlp", "fc2", "w1", "w2", "w3", "norm_final", "linear",
	"adaLN_modulation", "final_layer", NULL,
};

static const char *const w_wan[] = {
	"patch_embedding", "text_embedding", "time_embedding", "time_projection", "blocks", "norm1", "self_attn",
	"q", "k", "v", "o", "norm_q", "norm_k", "k_img", "v_img", "norm_k_img", "norm3", "cross_attn", "norm2",
	"ffn", "norm", "head", "modulation", "before_proj", "after_proj", "img_emb", "proj", "emb_pos",
	"vace_patch_embedding", "vace_blocks", NULL,
};

static const char *const w_qwen_image[] = {
	"time_text_embed", "timestep_embedder", "linear_1", "cond_proj", "linear_2", "addition_t_embedding",
	"txt_norm", "img_in", "txt_in", "transformer_blocks", "img_mod", "img_norm1", "img_norm2", "img_mlp", "net",
	"proj", "txt_mod", "txt_norm1", "txt_norm2", "txt_mlp", "attn", "norm_q", "norm_k", "norm_added_q",
	"norm_added_k", "to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out", "to_add_out",
	"norm_out", "linear", "norm", "proj_out", NULL,
};

/* CLIP as ComfyUI names it (HF) and as SDXL checkpoints store CLIP-G
 * (OpenCLIP: ComfyUI converts it to the HF layout, whose order counts),
 * T5, and the Llama/Qwen text models; the encoders of one checkpoint in
 * the order ComfyUI's multi-encoder models register them. */
static const char *const w_text[] = {
	"clip_l", "clip_g", "t5xxl", "t5xl", "umt5xxl", "llama", "qwen25_7b", "model", "text_model", "embeddings",
	"token_embedding", "position_embedding", "positional_embedding", "transformer", "resblocks", "encoder",
	"block", "layer", "SelfAttention", "q", "k", "v", "o", "relative_attention_bias", "DenseReluDense", "wi",
	"wi_0", "wi_1", "wo", "layer_norm", "embed_tokens", "layers", "layer_norm1", "ln_1", "self_attn", "attn",
	"q_proj", "k_proj", "v_proj", "in_proj_weight", "in_proj_bias", "out_proj", "o_proj", "q_norm", "k_norm", "layer_norm2", "ln_2", "mlp", "fc1",
	"fc2", "c_fc", "c_proj", "gate_proj", "up_proj", "down_proj", "input_layernorm", "post_attention_layernorm",
	"final_layer_norm", "norm", "ln_final", "shared", "lm_head", "text_projection", "logit_scale", NULL,
};

static const struct family {
	const char *name;
	const char *marker;      /* a path segment that marks a diffusion model of the family */
	const char *const *words;
} families[MOD_FAMILY_COUNT] = {
	[MOD_NATURAL] = { "natural", NULL, NULL },
	[MOD_SD_UNET] = { "sd-unet", "input_blocks", w_sd_unet },
	[MOD_FLUX] = { "flux", "double_blocks", w_flux },
	[MOD_SD3] = { "sd3", "joint_blocks", w_sd3 },
	[MOD_WAN] = { "wan", "patch_embedding", w_wan },
	[MOD_QWEN_IMAGE] = { "qwen-image", "time_text_embed", w_qwen_image },
	[MOD_TEXT] = { "text-encoders", NULL, w_text },
};

/* Family name (modules.h). */
const char *mod_family_name(uint32_t family)
{
	return family < MOD_FAMILY_COUNT ? families[family].name : "?";
}

/* ======================================================================
 * Order
 * ====================================================================== */

static bool all_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return n > 0;
}

/* Place of word s[0, n) in words, or a value past every place. */
static size_t rank(const char *const *words, const char *s, size_t n)
{
	size_t i = 0;
	for (; words && words[i]; i++)
		if (strlen(words[i]) == n && !memcmp(words[i], s, n))
			return i;
	return SIZE_MAX;
}

static int seg_cmp(const char *const *words, const char *a, size_t an, const char *b, size_t bn)
{
	bool da = all_digits(a, an), db = all_digits(b, bn);
	if (da != db)
		return da ? -1 : 1;
	if (!da) {
		size_t ra = rank(words, a, an), rb = rank(words, b, bn);
		if (ra != rb)
			return ra < rb ? -1 : 1;
	}
	return model_natcmp(a, an, b, bn);
}

/* Module paths in family's order (modules.h). */
int modules_cmp(uint32_t family, const char *a, size_t alen, const char *b, size_t blen)
{
	const char *const *words = family < MOD_FAMILY_COUNT ? families[family].words : NULL;
	size_t i = 0, j = 0;

	while (i < alen && j < blen) {
		const char *ea = memchr(a + i, '.', alen - i), *eb = memchr(b + j, '.', blen - j);
		size_t an = ea ? (size_t)(ea - a) - i : alen - i, bn = eb ? (size_t)(eb - b) - j : blen - j;
		int r = seg_cmp(words, a + i, an, b + j, bn);
		if (r)
			return r;
		i += an + 1;
		j += bn + 1;
	}
	/* one is the other's parent: the parent first (pre-order) */
	if ((i >= alen) != (j >= blen))
		return i >= alen ? -1 : 1;
	return 0;
}

/* ======================================================================
 * Grouping
 * ====================================================================== */

/* Length of the module path of a tensor name: up to its last ".", or the
 * whole name for one without a ".". */
static size_t path_len(const char *name)
{
	const char *dot = strrchr(name, '.');
	return dot ? (size_t)(dot - name) : strlen(name);
}

struct path {
	const char *s;
	size_t n;
};

static int path_cmp(const void *pa, const void *pb)
{
	const struct path *a = pa, *b = pb;
	int r = memcmp(a->s, b->s, MIN(a->n, b->n));
	return r ? r : (a->n > b->n) - (a->n < b->n);
}

/* Whether a path in the sorted paths[0, n) lies under p (starts "p."). */
static bool has_children(const struct path *paths, uint32_t n, const struct path *p)
{
	uint32_t lo = 0, hi = n;

	/* the first path not below "p." in byte order */
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct path *q = &paths[mid];
		int r = memcmp(q->s, p->s, MIN(q->n, p->n));
		if (!r)
			r = q->n <= p->n ? -1 : (unsigned char)q->s[p->n] - (unsigned char)'.';
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && paths[lo].n > p->n && !memcmp(paths[lo].s, p->s, p->n) && paths[lo].s[p->n] == '.';
}

/* Module path lengths: a tensor's module is its name up to the last ".";
 * a tensor of a module that also has submodules with tensors (ComfyUI's
 * _load_list skips such modules; their tensors become leaf modules of
 * their own once ComfyUI converts them, like OpenCLIP's
 * text_projection) is a unit by itself, its whole name. */
static int path_lens(const struct mod_tensor *t, uint32_t n, size_t *plen)
{
	_cleanup_free_ struct path *paths = malloc((n ? n : 1) * sizeof(*paths));
	if (!paths)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		plen[i] = path_len(t[i].name);
		paths[i] = (struct path){ t[i].name, plen[i] };
	}
	qsort(paths, n, sizeof(*paths), path_cmp);
	for (uint32_t i = 0; i < n; i++) {
		struct path p = { t[i].name, plen[i] };
		if (t[i].name[plen[i]] && has_children(paths, n, &p))
			plen[i] = strlen(t[i].name);
	}
	return 0;
}

struct sort_ctx {
	const struct mod_tensor *t;
	const size_t *plen;
};

/* Tensors of one unit next to each other: component, layer, path. */
static int group_cmp(const void *pa, const void *pb, void *arg)
{
	const struct sort_ctx *x = arg;
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
	const struct mod_tensor *ta = &x->t[a], *tb = &x->t[b];

	if (ta->component != tb->component)
		return ta->component < tb->component ? -1 : 1;
	if (ta->layer != tb->layer)
		return ta->layer < tb->layer ? -1 : 1;
	if (x->plen[a] != x->plen[b])
		return x->plen[a] < x->plen[b] ? -1 : 1;
	int r = memcmp(ta->name, tb->name, x->plen[a]);
	if (r)
		return r;
	return a < b ? -1 : a > b;
}

static bool same_unit(const struct sort_ctx *x, uint32_t a, uint32_t b)
{
	const struct mod_tensor *ta = &x->t[a], *tb = &x->t[b];
	return ta->component == tb->component && ta->layer == tb->layer && x->plen[a] == x->plen[b] &&
	       !memcmp(ta->name, tb->name, x->plen[a]);
}

/* Whether a path segment of name[0, len) is word. */
static bool has_segment(const char *name, size_t len, const char *word)
{
	size_t wn = strlen(word);
	for (size_t i = 0; i + wn <= len; i++)
		if ((i == 0 || name[i - 1] == '.') && !memcmp(name + i, word, wn) && (i + wn == len || name[i + wn] == '.'))
			return true;
	return false;
}

/* The family of component comp, from the units' names. */
static uint32_t detect(const struct plan_unit *u, uint32_t n, uint32_t comp)
{
	if (comp == VRAM_COMP_CLIP)
		return MOD_TEXT;
	if (comp != VRAM_COMP_UNET)
		return MOD_NATURAL;
	for (uint32_t f = 0; f < MOD_FAMILY_COUNT; f++)
		for (uint32_t i = 0; families[f].marker && i < n; i++)
			if (u[i].component == comp && has_segment(u[i].name, strlen(u[i].name), families[f].marker))
				return f;
	return MOD_NATURAL;
}

/* A text encoder's embedding module: its layer is flagged, its own name
 * says "embedding" (OpenCLIP's positional_embedding), or it is T5's token
 * table ("shared") or a Llama's ("embed_tokens"). */
static uint32_t unit_flags(const struct mod_tensor *t, size_t plen)
{
	const char *dot = memrchr(t->name, '.', plen);
	const char *last = dot ? dot + 1 : t->name;
	size_t ln = plen - (size_t)(last - t->name);

	if (t->component != VRAM_COMP_CLIP)
		return 0;
	if (t->layer_flags & VRAM_LAYER_EMBEDDING || memmem(last, ln, "embedding", 9))
		return VRAM_LAYER_EMBEDDING;
	if (has_segment(t->name, plen, "shared") || has_segment(t->name, plen, "embed_tokens"))
		return VRAM_LAYER_EMBEDDING;
	return 0;
}

static int order_cmp(const void *pa, const void *pb, void *arg)
{
	const struct mod_units *m = arg;
	const struct plan_unit *a = &m->units[*(const uint32_t *)pa], *b = &m->units[*(const uint32_t *)pb];

	if (a->component != b->component)
		return a->component < b->component ? -1 : 1;
	int r = modules_cmp(m->family[a->component], a->name, strlen(a->name), b->name, strlen(b->name));
	if (r)
		return r;
	return a->layer < b->layer ? -1 : a->layer > b->layer;
}

/* Groups into m->units (unsorted), filling tensor_unit with group indices. */
static int group(const struct mod_tensor *t, uint32_t n, const uint32_t *by, const size_t *plen,
		 const struct sort_ctx *x, struct mod_units *m)
{
	size_t arena = 0;
	uint32_t nu = 0;

	for (uint32_t i = 0; i < n; i++) {
		if (i == 0 || !same_unit(x, by[i - 1], by[i])) {
			nu++;
			arena += plen[by[i]] + 1;
		}
	}
	m->units = calloc(nu ? nu : 1, sizeof(*m->units));
	m->names = malloc(arena ? arena : 1);
	if (!m->units || !m->names)
		return -ENOMEM;
	char *w = m->names;
	for (uint32_t i = 0; i < n; i++) {
		const struct mod_tensor *ti = &t[by[i]];
		if (i == 0 || !same_unit(x, by[i - 1], by[i])) {
			struct plan_unit *u = &m->units[m->nunits++];
			memcpy(w, ti->name, plen[by[i]]);
			w[plen[by[i]]] = '\0';
			u->name = w;
			w += plen[by[i]] + 1;
			u->component = ti->component;
			u->layer = ti->layer;
			u->flags = unit_flags(ti, plen[by[i]]);
		}
		m->units[m->nunits - 1].nbytes += ti->nbytes;
		m->tensor_unit[by[i]] = m->nunits - 1;
	}
	return 0;
}

/* Puts the units in placement order and renumbers tensor_unit. */
static int sort_units(struct mod_units *m)
{
	_cleanup_free_ uint32_t *ord = malloc((m->nunits ? m->nunits : 1) * sizeof(*ord));
	_cleanup_free_ uint32_t *pos = malloc((m->nunits ? m->nunits : 1) * sizeof(*pos));
	_cleanup_free_ struct plan_unit *sorted = malloc((m->nunits ? m->nunits : 1) * sizeof(*sorted));

	if (!ord || !pos || !sorted)
		return -ENOMEM;
	for (uint32_t i = 0; i < m->nunits; i++)
		ord[i] = i;
	qsort_r(ord, m->nunits, sizeof(*ord), order_cmp, m);
	for (uint32_t i = 0; i < m->nunits; i++) {
		sorted[i] = m->units[ord[i]];
		pos[ord[i]] = i;
	}
	memcpy(m->units, sorted, m->nunits * sizeof(*sorted));
	for (uint32_t i = 0; i < m->ntensors; i++)
		m->tensor_unit[i] = pos[m->tensor_unit[i]];
	return 0;
}

/* Frees what modules_build allocated (modules.h). */
void modules_free(struct mod_units *u)
{
	free(u->units);
	free(u->tensor_unit);
	free(u->names);
	memset(u, 0, sizeof(*u));
}

static void modules_freep(struct mod_units *u)
{
	modules_free(u);
}

/* Groups and orders (modules.h). */
int modules_build(const struct mod_tensor *t, uint32_t n, struct mod_units *ret)
{
	_cleanup_(modules_freep) struct mod_units m = { 0 };
	_cleanup_free_ uint32_t *by = malloc((n ? n : 1) * sizeof(*by));
	_cleanup_free_ size_t *plen = malloc((n ? n : 1) * sizeof(*plen));
	int r;

	m.tensor_unit = malloc((n ? n : 1) * sizeof(*m.tensor_unit));
	if (!by || !plen || !m.tensor_unit)
		return rt_error(-ENOMEM, "plan: out of memory for %u tensors", n);
	m.ntensors = n;
	for (uint32_t i = 0; i < n; i++) {
		if (t[i].component >= VRAM_COMP_COUNT)
			return rt_error(-EINVAL, "plan: tensor %u: component %u is not a component", i, t[i].component);
		by[i] = i;
	}
	if ((r = path_lens(t, n, plen)) < 0)
		return rt_error(r, "plan: out of memory for %u tensors", n);
	struct sort_ctx x = { t, plen };
	qsort_r(by, n, sizeof(*by), group_cmp, &x);
	if ((r = group(t, n, by, plen, &x, &m)) < 0)
		return rt_error(r, "plan: out of memory for %u tensors", n);
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++)
		m.family[c] = detect(m.units, m.nunits, c);
	if ((r = sort_units(&m)) < 0)
		return rt_error(r, "plan: out of memory for %u modules", m.nunits);
	*ret = m;
	memset(&m, 0, sizeof(m));
	return 0;
}

/* modules_build over a model's tensors (modules.h). */
int modules_from_model(const vram_model *m, uint32_t cast_to, uint32_t cast_from, struct mod_units *ret)
{
	int n = vram_model_tensor_count(m), r;
	if (n < 0)
		return n;
	_cleanup_free_ struct mod_tensor *t = calloc(n ? (size_t)n : 1, sizeof(*t));
	if (!t)
		return rt_error(-ENOMEM, "plan: out of memory for %d tensors", n);
	for (int i = 0; i < n; i++) {
		struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
		struct vram_layer_info li = { .struct_size = sizeof(li) };
		if ((r = vram_model_tensor(m, (uint32_t)i, &ti)) < 0 || (r = vram_model_layer(m, ti.layer, &li)) < 0)
			return r;
		t[i] = (struct mod_tensor){ .name = ti.name, .component = ti.component, .layer = ti.layer,
					    .layer_flags = li.flags,
					    .nbytes = dtype_cast_nbytes(ti.dtype, ti.nbytes, cast_to, cast_from) };
	}
	return modules_build(t, (uint32_t)n, ret);
}
