/* SPDX-License-Identifier: MIT */
/*
 * The model API: a validated checkpoint (safetensors.c reads it), split into
 * ComfyUI's components by key prefix and grouped into layers (blocks), with
 * tensors in model order: component (unet, clip, vae, other), then layer,
 * then name, names compared naturally.  docs/safetensors.md has the rules.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "runtime/internal.h"
#include "runtime/model.h"

/* ======================================================================
 * Components and layers
 * ====================================================================== */

static const char *const comp_names[VRAM_COMP_COUNT] = {
	[VRAM_COMP_UNET] = "unet",
	[VRAM_COMP_CLIP] = "clip",
	[VRAM_COMP_VAE] = "vae",
	[VRAM_COMP_OTHER] = "other",
};

/* "unet", "clip", "vae", "other"; NULL when out of range. */
const char *vram_component_name(uint32_t comp)
{
	return comp < VRAM_COMP_COUNT ? comp_names[comp] : NULL;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool starts_with(const char *s, const char *prefix, size_t *ret_len)
{
	size_t n = strlen(prefix);

	if (strncmp(s, prefix, n))
		return false;
	*ret_len = n;
	return true;
}

/* Component of tensor name and its prefix length (model.h). */
uint32_t model_component(const char *name, size_t *ret_prefix_len)
{
	static const struct {
		const char *prefix;
		uint32_t comp;
	} fixed[] = {
		{ "model.diffusion_model.", VRAM_COMP_UNET },
		{ "model.model.", VRAM_COMP_UNET },
		{ "net.", VRAM_COMP_UNET },
		{ "first_stage_model.", VRAM_COMP_VAE },
		{ "vae.", VRAM_COMP_VAE },
		{ "cond_stage_model.", VRAM_COMP_CLIP },
	};
	size_t n;

	for (size_t i = 0; i < ARRAY_SIZE(fixed); i++) {
		if (starts_with(name, fixed[i].prefix, ret_prefix_len))
			return fixed[i].comp;
	}
	/* conditioner.embedders.N. (SDXL: 0 = CLIP-L, 1 = CLIP-G): the
	 * encoder's number belongs to the prefix, not to a block. */
	if (starts_with(name, "conditioner.embedders.", &n)) {
		size_t j = n;
		while (is_digit(name[j]))
			j++;
		if (j > n && name[j] == '.') {
			*ret_prefix_len = j + 1;
			return VRAM_COMP_CLIP;
		}
	}
	/* text_encoders.{clip_l,clip_g,t5xxl,...}. (SD3, Flux) */
	if (starts_with(name, "text_encoders.", &n)) {
		const char *dot = strchr(name + n, '.');
		*ret_prefix_len = dot && dot > name + n ? (size_t)(dot - name) + 1 : n;
		return VRAM_COMP_CLIP;
	}
	*ret_prefix_len = 0;
	return VRAM_COMP_OTHER;
}

/* Length of the layer name of tensor name (model.h). */
size_t model_layer_len(const char *name, size_t prefix_len)
{
	size_t n = strlen(name), i = prefix_len;
	const char *dot;

	while (i < n) {
		size_t j = i;
		bool digits = true;

		while (j < n && name[j] != '.') {
			digits = digits && is_digit(name[j]);
			j++;
		}
		if (j > i && digits)
			return j;
		i = j + 1;
	}
	dot = strrchr(name, '.');
	return dot ? (size_t)(dot - name) : n;
}

/* Natural order, total (model.h): <0, 0, >0. */
int model_natcmp(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t i = 0, j = 0;
	int r;

	while (i < alen && j < blen) {
		if (is_digit(a[i]) && is_digit(b[j])) {
			size_t ai, bj, an, bn;

			while (i < alen && a[i] == '0' && i + 1 < alen && is_digit(a[i + 1]))
				i++;
			while (j < blen && b[j] == '0' && j + 1 < blen && is_digit(b[j + 1]))
				j++;
			for (ai = i; ai < alen && is_digit(a[ai]); ai++)
				;
			for (bj = j; bj < blen && is_digit(b[bj]); bj++)
				;
			an = ai - i;
			bn = bj - j;
			if (an != bn)
				return an < bn ? -1 : 1;
			r = memcmp(a + i, b + j, an);
			if (r)
				return r;
			i = ai;
			j = bj;
			continue;
		}
		if (a[i] != b[j])
			return (unsigned char)a[i] < (unsigned char)b[j] ? -1 : 1;
		i++;
		j++;
	}
	if (alen - i != blen - j)
		return alen - i < blen - j ? -1 : 1;
	/* Equal as numbers ("a01" and "a1"): bytes decide. */
	r = memcmp(a, b, MIN(alen, blen));
	if (r)
		return r;
	return alen < blen ? -1 : alen > blen;
}

/* Model order: component, layer name, tensor name. */
static int order_cmp(const void *pa, const void *pb, void *arg)
{
	const struct model_tensor *t = arg;
	const struct model_tensor *x = &t[*(const uint32_t *)pa], *y = &t[*(const uint32_t *)pb];
	int r;

	if (x->component != y->component)
		return x->component < y->component ? -1 : 1;
	r = model_natcmp(x->name, x->layer_len, y->name, y->layer_len);
	if (r)
		return r;
	return model_natcmp(x->name, x->name_len, y->name, y->name_len);
}

static int name_cmp(const void *pa, const void *pb, void *arg)
{
	const struct model_tensor *t = arg;
	return strcmp(t[*(const uint32_t *)pa].name, t[*(const uint32_t *)pb].name);
}

static bool same_layer(const struct model_tensor *a, const struct model_tensor *b)
{
	return a->component == b->component && a->layer_len == b->layer_len &&
	       !memcmp(a->name, b->name, a->layer_len);
}

/* Splits m's tensors into components and layers and puts them in model
 * order.  0 or -ENOMEM. */
static int model_index(struct vram_model *m)
{
	_cleanup_free_ uint32_t *order = NULL;
	_cleanup_free_ struct model_tensor *sorted = NULL;
	uint32_t n = m->ntensors, nl = 0;
	size_t names = 0;
	char *sp;

	order = malloc((n ? n : 1) * sizeof(*order));
	sorted = malloc((n ? n : 1) * sizeof(*sorted));
	m->by_name = malloc((n ? n : 1) * sizeof(*m->by_name));
	if (!order || !sorted || !m->by_name)
		return -ENOMEM;

	for (uint32_t i = 0; i < n; i++) {
		struct model_tensor *t = &m->tensors[i];
		size_t plen;

		if (m->components_set)
			plen = 0;
		else
			t->component = model_component(t->name, &plen);
		t->layer_len = (uint32_t)model_layer_len(t->name, plen);
		order[i] = i;
	}
	qsort_r(order, n, sizeof(*order), order_cmp, m->tensors);
	for (uint32_t i = 0; i < n; i++) {
		sorted[i] = m->tensors[order[i]];
		if (i == 0 || !same_layer(&sorted[i - 1], &sorted[i])) {
			nl++;
			names += sorted[i].layer_len + 1;
		}
	}
	memcpy(m->tensors, sorted, n * sizeof(*sorted));

	m->layers = calloc(nl ? nl : 1, sizeof(*m->layers));
	m->layer_names = malloc(names ? names : 1);
	if (!m->layers || !m->layer_names)
		return -ENOMEM;
	sp = m->layer_names;
	for (uint32_t i = 0; i < n; i++) {
		struct model_tensor *t = &m->tensors[i];
		struct model_layer *l;
		uint64_t nbytes = t->end - t->begin;

		if (i == 0 || !same_layer(&m->tensors[i - 1], t)) {
			l = &m->layers[m->nlayers++];
			memcpy(sp, t->name, t->layer_len);
			sp[t->layer_len] = '\0';
			l->name = sp;
			sp += t->layer_len + 1;
			l->component = t->component;
			l->first = i;
			if (t->component == VRAM_COMP_CLIP && strstr(l->name, "embedding"))
				l->flags |= VRAM_LAYER_EMBEDDING;
			m->comp[t->component].nlayers++;
		}
		l = &m->layers[m->nlayers - 1];
		l->count++;
		l->nbytes += nbytes;
		t->layer = m->nlayers - 1;
		m->comp[t->component].ntensors++;
		m->comp[t->component].nbytes += nbytes;
	}
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++)
		m->comp[c].struct_size = sizeof(m->comp[c]);

	for (uint32_t i = 0; i < n; i++)
		m->by_name[i] = i;
	qsort_r(m->by_name, n, sizeof(*m->by_name), name_cmp, m->tensors);
	return 0;
}

/* ======================================================================
 * Public API
 * ====================================================================== */

/* Frees m and all it owns; NULL is fine. */
void model_free(struct vram_model *m)
{
	if (!m)
		return;
	if (m->fd >= 0)
		close(m->fd);
	free(m->path);
	free(m->tensors);
	free(m->layers);
	free(m->by_name);
	free(m->meta);
	free(m->dims);
	free(m->strings);
	free(m->layer_names);
	free(m);
}

/* Opens m->path once, for good: the parser, the loader and the pager all
 * read through m->fd, so a file renamed over the path later is never read
 * (docs/safetensors.md).  0 or -errno with "PATH: MESSAGE". */
static int model_open_file(struct vram_model *m)
{
	m->fd = open(m->path, O_RDONLY | O_CLOEXEC);
	if (m->fd < 0)
		return rt_error(-errno, "%s: %s", m->path, strerror(errno));
	if (fstat(m->fd, &m->st) < 0)
		return rt_error(-errno, "%s: %s", m->path, strerror(errno));
	if (S_ISDIR(m->st.st_mode))
		return rt_error(-EISDIR, "%s: %s", m->path, strerror(EISDIR));
	if (!S_ISREG(m->st.st_mode))
		return rt_error(-EINVAL, "%s: not a regular file", m->path);
	return 0;
}

/* Size and mtime of m->fd against those at open (model.h). */
int model_check_unchanged(const struct vram_model *m)
{
	struct stat st;

	if (fstat(m->fd, &st) < 0)
		return rt_error(-errno, "%s: %s", m->path, strerror(errno));
	if (st.st_size != m->st.st_size)
		return rt_error(-ESTALE, "%s: file changed since it was opened (size %" PRIu64 " -> %" PRIu64 ")",
				m->path, (uint64_t)m->st.st_size, (uint64_t)st.st_size);
	if (st.st_mtim.tv_sec != m->st.st_mtim.tv_sec || st.st_mtim.tv_nsec != m->st.st_mtim.tv_nsec)
		return rt_error(-ESTALE, "%s: file changed since it was opened (modified)", m->path);
	return 0;
}

/* m->path against the file open at m->fd (model.h). */
int model_check_path(const struct vram_model *m)
{
	struct stat st;

	if (stat(m->path, &st) < 0)
		return rt_error(-ESTALE, "%s: file changed since it was opened (the path is gone: %s)", m->path,
				strerror(errno));
	if (st.st_dev != m->st.st_dev || st.st_ino != m->st.st_ino)
		return rt_error(-ESTALE, "%s: file changed since it was opened (the path names another file now)",
				m->path);
	return 0;
}

/* Opens path (once: its fd is kept), validates it (safetensors, GGUF or a
 * PyTorch zip) and indexes it.  On success *ret_model owns everything
 * (free with vram_model_close); on failure *ret_model is untouched and
 * nothing stays open.  -EINVAL "PATH: invalid FORMAT: REASON", -ENOTSUP
 * "PATH: unsupported FORMAT: REASON", -ENOMEM, or -errno from open/read
 * with "PATH: MESSAGE". */
int vram_model_open(const char *path, vram_model **ret_model)
{
	struct vram_model *m;
	int r;

	rt_error_clear();
	if (!path || !ret_model)
		return rt_error(-EINVAL, "vram_model_open: path and ret_model must not be NULL");
	m = calloc(1, sizeof(*m));
	if (!m)
		return rt_error(-ENOMEM, "%s: out of memory", path);
	m->fd = -1;
	m->path = strdup(path);
	if (!m->path) {
		free(m);
		return rt_error(-ENOMEM, "%s: out of memory", path);
	}
	r = model_open_file(m);
	if (r == 0)
		r = model_read(m);
	if (r == 0) {
		r = model_index(m);
		if (r < 0)
			rt_error(r, "%s: out of memory", path);
	}
	if (r < 0) {
		model_free(m);
		return r;
	}
	*ret_model = m;
	return 0;
}

/* Frees m and all names/shapes it handed out.  NULL is fine. */
void vram_model_close(vram_model *m)
{
	model_free(m);
}

/* The path given to vram_model_open (owned by m), NULL for NULL. */
const char *vram_model_path(const vram_model *m)
{
	return m ? m->path : NULL;
}

/* The fd the model read the file through, owned by m (vram.h), or -EINVAL
 * for NULL. */
int vram_model_fd(const vram_model *m)
{
	if (!m)
		return rt_error(-EINVAL, "vram_model_fd: NULL model");
	return m->fd;
}

/* "safetensors", "gguf" or "pytorch", NULL for NULL. */
const char *vram_model_format(const vram_model *m)
{
	static const char *const names[] = { "safetensors", "gguf", "pytorch" };

	return m && m->format < ARRAY_SIZE(names) ? names[m->format] : NULL;
}

/* Size of the file in bytes (0 for NULL). */
uint64_t vram_model_file_size(const vram_model *m)
{
	return m ? m->file_size : 0;
}

/* N: the JSON header's length in bytes (0 for NULL). */
uint64_t vram_model_header_size(const vram_model *m)
{
	return m ? m->header_size : 0;
}

/* Absolute offset of the data section, 8 + N (0 for NULL). */
uint64_t vram_model_data_offset(const vram_model *m)
{
	return m ? m->data_offset : 0;
}

/* Bytes of tensor data: file size - 8 - N (0 for NULL). */
uint64_t vram_model_data_size(const vram_model *m)
{
	return m ? m->data_size : 0;
}

/* Number of tensors, or -EINVAL for NULL. */
int vram_model_tensor_count(const vram_model *m)
{
	if (!m)
		return rt_error(-EINVAL, "vram_model_tensor_count: NULL model");
	return (int)m->ntensors;
}

/* Fills *ret_info for tensor index (model order).  Name and shape stay
 * owned by m.  -EINVAL for NULL, an index out of range or struct_size not
 * set. */
int vram_model_tensor(const vram_model *m, uint32_t index, struct vram_tensor_info *ret_info)
{
	struct vram_tensor_info ti = { .struct_size = sizeof(ti) };
	const struct model_tensor *t;

	rt_error_clear();
	if (!m || !ret_info)
		return rt_error(-EINVAL, "vram_model_tensor: NULL argument");
	if (index >= m->ntensors)
		return rt_error(-EINVAL, "%s: tensor index %u out of range (%u tensors)", m->path, index,
				m->ntensors);
	t = &m->tensors[index];
	ti.dtype = t->dtype;
	ti.ndim = t->ndim;
	ti.component = t->component;
	ti.layer = t->layer;
	ti.name = t->name;
	ti.shape = t->shape;
	ti.file_offset = m->data_offset + t->begin;
	ti.nbytes = t->end - t->begin;
	return rt_struct_out(ret_info, &ti, sizeof(ti), "vram_model_tensor");
}

/* Index of the tensor called name (binary search over the names), or
 * -ENOENT; -EINVAL for NULL. */
int vram_model_find_tensor(const vram_model *m, const char *name)
{
	size_t lo = 0, hi;

	rt_error_clear();
	if (!m || !name)
		return rt_error(-EINVAL, "vram_model_find_tensor: NULL argument");
	hi = m->ntensors;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uint32_t idx = m->by_name[mid];
		int r = strcmp(m->tensors[idx].name, name);
		if (r == 0)
			return (int)idx;
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return rt_error(-ENOENT, "%s: no tensor called \"%s\"", m->path, name);
}

/* Number of layers, or -EINVAL for NULL. */
int vram_model_layer_count(const vram_model *m)
{
	if (!m)
		return rt_error(-EINVAL, "vram_model_layer_count: NULL model");
	return (int)m->nlayers;
}

/* Fills *ret_info for layer index.  The name stays owned by m.  -EINVAL
 * for NULL, an index out of range or struct_size not set. */
int vram_model_layer(const vram_model *m, uint32_t index, struct vram_layer_info *ret_info)
{
	struct vram_layer_info li = { .struct_size = sizeof(li) };
	const struct model_layer *l;

	rt_error_clear();
	if (!m || !ret_info)
		return rt_error(-EINVAL, "vram_model_layer: NULL argument");
	if (index >= m->nlayers)
		return rt_error(-EINVAL, "%s: layer index %u out of range (%u layers)", m->path, index,
				m->nlayers);
	l = &m->layers[index];
	li.component = l->component;
	li.first_tensor = l->first;
	li.ntensors = l->count;
	li.name = l->name;
	li.nbytes = l->nbytes;
	li.flags = l->flags;
	return rt_struct_out(ret_info, &li, sizeof(li), "vram_model_layer");
}

/* Fills *ret_info with the totals of component comp (zeros when the
 * checkpoint has none of it).  -EINVAL for NULL, comp out of range or
 * struct_size not set. */
int vram_model_component(const vram_model *m, uint32_t comp, struct vram_component_info *ret_info)
{
	rt_error_clear();
	if (!m || !ret_info)
		return rt_error(-EINVAL, "vram_model_component: NULL argument");
	if (comp >= VRAM_COMP_COUNT)
		return rt_error(-EINVAL, "vram_model_component: component %u out of range", comp);
	return rt_struct_out(ret_info, &m->comp[comp], sizeof(m->comp[comp]), "vram_model_component");
}

/* Number of __metadata__ entries (0 when absent or null), -EINVAL for NULL. */
int vram_model_metadata_count(const vram_model *m)
{
	if (!m)
		return rt_error(-EINVAL, "vram_model_metadata_count: NULL model");
	return (int)m->nmeta;
}

/* Entry index of __metadata__, in file order; key and value stay owned by
 * m (either ret_* may be NULL).  -EINVAL for NULL m or index out of range. */
int vram_model_metadata(const vram_model *m, uint32_t index, const char **ret_key, const char **ret_value)
{
	rt_error_clear();
	if (!m)
		return rt_error(-EINVAL, "vram_model_metadata: NULL model");
	if (index >= m->nmeta)
		return rt_error(-EINVAL, "%s: metadata index %u out of range (%u entries)", m->path, index,
				m->nmeta);
	if (ret_key)
		*ret_key = m->meta[2 * index];
	if (ret_value)
		*ret_value = m->meta[2 * index + 1];
	return 0;
}
