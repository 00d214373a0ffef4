/* SPDX-License-Identifier: MIT */
/*
 * Placement planner with DisTorch2 semantics (docs/plan.md).
 *
 * Layout of this file:
 *  - device lists (parse by hand, from the broker), placement order;
 *  - the core, plan_build(), on plain arrays of layers (no vram_model);
 *  - the adapter vram_plan_create() that feeds it from a vram_model;
 *  - getters and the JSON document.
 *
 * Everything is decided before any byte of the checkpoint is read, and every
 * byte of a component is placed exactly once: the per-device bytes of a
 * component add up to the component's bytes.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/cleanup.h"
#include "common/util.h"
#include "runtime/dtype.h"
#include "runtime/internal.h"
#include "runtime/modules.h"
#include "runtime/plan.h"

#define PLAN_FLAGS_MASK        VRAM_PLAN_HIGH_PRECISION_LORAS
#define PLAN_VIRTUAL_VRAM_MAX  128.0
/* A layer is tiny when nbytes * PLAN_TINY_DIV < its component's bytes
 * (DisTorch2's 0.01 %). */
#define PLAN_TINY_DIV          10000u

enum plan_source { PLAN_SRC_WHOLE = 0, PLAN_SRC_VIRTUAL_VRAM, PLAN_SRC_EXPERT };
static const char *const plan_source_names[] = { "whole", "virtual_vram", "expert" };
/* As vram_component_name(), kept here so that the core needs no model code. */
static const char *const plan_comp_names[VRAM_COMP_COUNT] = { "unet", "clip", "vae", "other" };

struct plan_u {
	uint64_t nbytes;
	const char *name;        /* into vram_plan.names */
	uint32_t comp;
	uint32_t flags;
	uint32_t dev;
	uint32_t pinned;
	uint32_t layer;          /* index into vram_plan.layers */
	uint32_t pad;
};

/* A model layer (with a map; without one, each unit is a layer). */
struct plan_l {
	const char *name;        /* into vram_plan.names */
	uint64_t nbytes;
	uint32_t comp;
	uint32_t dev;            /* the device holding most of its bytes */
	uint32_t ndevs;          /* devices it spans (1, or more where the plan splits it) */
	uint32_t pinned;         /* all its units are pinned */
};

struct plan_comp {
	uint32_t compute;        /* device index */
	int32_t  donor;          /* virtual VRAM donor, -1 if none */
	uint32_t source;         /* enum plan_source */
	uint32_t nunits;
	double   virtual_vram_gb;
	char    *allocation;     /* expert string as given, or NULL */
	char     order[24];      /* module order ("sd-unet", ...), "" without a map */
	uint64_t bytes;
	uint64_t pinned_bytes;
	uint64_t asked[PLAN_MAX_DEVICES];  /* what the inputs ask of each device */
	uint64_t quota[PLAN_MAX_DEVICES];  /* after the pinned charge */
	uint64_t placed[PLAN_MAX_DEVICES];
};

struct vram_plan {
	uint32_t flags;
	uint32_t ndevs;
	uint32_t nunits;
	uint32_t nlayers;
	uint32_t ntensors;       /* 0 without a map */
	uint32_t pad;
	char    *model;
	char    *names;          /* arena of unit and layer names */
	struct plan_u *units;
	struct plan_l *layers;
	uint32_t *tensor_unit;   /* ntensors */
	struct vram_plan_device devs[PLAN_MAX_DEVICES];
	uint32_t order[PLAN_MAX_DEVICES];
	uint64_t planned[PLAN_MAX_DEVICES];
	struct plan_comp comp[VRAM_COMP_COUNT];
};

/* ======================================================================
 * Devices
 * ====================================================================== */

/* NULL if name is usable in allocation strings and device specs, else why. */
static const char *device_name_problem(const char *name, size_t cap)
{
	size_t n = strnlen(name, cap);
	if (n == cap)
		return "is longer than 31 characters";
	if (!n)
		return "is empty";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if (isspace(c) || !isprint(c) || c == ',' || c == ';' || c == '=' || c == '/')
			return "contains a character that is not allowed (space, , ; = /)";
	}
	return NULL;
}

/* N for a canonical "cuda:N", else -1. */
static long cuda_ordinal(const char *name)
{
	if (strncmp(name, "cuda:", 5) || !isdigit((unsigned char)name[5]))
		return -1;
	if (name[5] == '0' && name[6])
		return -1;  /* "cuda:01" is not cuda:1 */
	long v = 0;
	for (const char *p = name + 5; *p; p++) {
		if (!isdigit((unsigned char)*p) || v > 1000000)
			return -1;
		v = v * 10 + (*p - '0');
	}
	return v;
}

/* Placement order: cuda:N by N, other names as listed, cpu last (plan.h). */
void plan_device_order(const char *const *names, uint32_t ndevs, uint32_t *ret_order)
{
	uint32_t k = 0;

	/* cuda:N ascending (insertion sort: at most PLAN_MAX_DEVICES) */
	for (uint32_t i = 0; i < ndevs; i++) {
		long o = cuda_ordinal(names[i]);
		if (o < 0)
			continue;
		uint32_t j = k++;
		while (j > 0 && cuda_ordinal(names[ret_order[j - 1]]) > o) {
			ret_order[j] = ret_order[j - 1];
			j--;
		}
		ret_order[j] = i;
	}
	for (uint32_t i = 0; i < ndevs; i++)
		if (cuda_ordinal(names[i]) < 0 && strcmp(names[i], "cpu"))
			ret_order[k++] = i;
	for (uint32_t i = 0; i < ndevs; i++)
		if (!strcmp(names[i], "cpu"))
			ret_order[k++] = i;
}

/* "name=size[/available],..." into ret_devs (see vram.h, docs/plan.md).  0;
 * -EINVAL naming the entry; -ENOBUFS when more than max devices.  The
 * outputs are untouched on failure. */
int vram_plan_devices_parse(const char *spec, struct vram_plan_device *ret_devs, uint32_t max, uint32_t *ret_n)
{
	struct vram_plan_device devs[PLAN_MAX_DEVICES];
	_cleanup_free_ char *buf = NULL;
	uint32_t n = 0, k = 0;

	rt_error_clear();
	if (!spec || !ret_n || (max && !ret_devs))
		return rt_error(-EINVAL, "vram_plan_devices_parse: bad arguments");
	buf = strdup(spec);
	if (!buf)
		return rt_error(-ENOMEM, "device list: out of memory");

#define FAIL(...) do { \
		char why_[256]; \
		snprintf(why_, sizeof(why_), __VA_ARGS__); \
		return rt_error(-EINVAL, "device list \"%s\": entry %u: %s", spec, k, why_); \
	} while (0)

	for (char *save = buf, *next;; save = next + 1) {
		next = strchr(save, ',');
		if (next)
			*next = '\0';
		k++;
		char *e = save;
		while (isspace((unsigned char)*e))
			e++;
		char *eq = strchr(e, '=');
		if (!*e)
			FAIL("is empty (expected name=size)");
		if (!eq)
			FAIL("\"%s\" has no size (expected name=size)", e);
		*eq = '\0';
		char *end = eq;
		while (end > e && isspace((unsigned char)end[-1]))
			*--end = '\0';
		if (strlen(e) >= sizeof(devs[0].name))
			FAIL("device name \"%s\" is longer than 31 characters", e);
		const char *why = device_name_problem(e, sizeof(devs[0].name));
		if (why)
			FAIL("device name \"%s\" %s", e, why);
		for (uint32_t j = 0; j < n; j++)
			if (!strcmp(devs[j].name, e))
				FAIL("%s is already given in entry %u", e, j + 1);
		if (n == PLAN_MAX_DEVICES)
			FAIL("more than %u devices", PLAN_MAX_DEVICES);

		char *size = eq + 1, *slash = strchr(size, '/');
		uint64_t total = 0, avail = 0;
		if (slash)
			*slash = '\0';
		if (size_parse(size, &total) < 0)
			FAIL("\"%s\" is not a size (e.g. 24GiB)", size);
		avail = total;
		if (slash) {
			if (size_parse(slash + 1, &avail) < 0)
				FAIL("\"%s\" is not a size (e.g. 20GiB)", slash + 1);
			if (avail > total)
				FAIL("%s has more available than in total", e);
		}
		memset(&devs[n], 0, sizeof(devs[n]));
		devs[n].struct_size = sizeof(devs[n]);
		str_copy(devs[n].name, e, sizeof(devs[n].name));
		devs[n].total = total;
		devs[n].available = avail;
		n++;
		if (!next)
			break;
	}
#undef FAIL
	if (n > max)
		return rt_error(-ENOBUFS, "device list \"%s\": %u devices, room for %u", spec, n, max);
	memcpy(ret_devs, devs, n * sizeof(devs[0]));
	*ret_n = n;
	return 0;
}

/* The broker's devices as c last saw them, available = total - used +
 * reclaimable (memory others can be asked to give back) + the bytes of
 * shared copies (mapped by a shared load of their file, evicted first
 * otherwise).  0;
 * -ENOBUFS when more than max; errors of vram_device_info. */
int vram_plan_devices_from_client(const vram_client *c, struct vram_plan_device *ret_devs, uint32_t max, uint32_t *ret_n)
{
	struct vram_plan_device devs[PLAN_MAX_DEVICES];

	rt_error_clear();
	if (!c || !ret_n || (max && !ret_devs))
		return rt_error(-EINVAL, "vram_plan_devices_from_client: bad arguments");
	int n = vram_device_count(c);
	if (n < 0)
		return n;
	if ((uint32_t)n > max || (uint32_t)n > PLAN_MAX_DEVICES)
		return rt_error(-ENOBUFS, "the broker has %d devices, room for %u", n, MIN(max, PLAN_MAX_DEVICES));
	for (int i = 0; i < n; i++) {
		struct vram_device_info info = { .struct_size = sizeof(info) };
		int r = vram_device_info(c, (uint32_t)i, &info);
		if (r < 0)
			return r;
		memset(&devs[i], 0, sizeof(devs[i]));
		devs[i].struct_size = sizeof(devs[i]);
		info.name[sizeof(info.name) - 1] = '\0';
		str_copy(devs[i].name, info.name, sizeof(devs[i].name));
		devs[i].total = info.total;
		/* Reclaimable memory counts as available: the broker asks its
		 * holders to give it back when this client allocates (cooperative
		 * reclaim).  So do the shared copies: a shared load of their
		 * file maps them without new memory (a second instance of a
		 * model on a device its first fills), and copies nobody maps are
		 * evicted before anyone is asked to reclaim.  Refreshed from the
		 * broker by the caller as needed. */
		uint64_t freeable = MIN(info.reclaimable + info.cache, info.used);
		devs[i].available = info.total - MIN(info.used - freeable, info.total);
	}
	if (n)
		memcpy(ret_devs, devs, (size_t)n * sizeof(devs[0]));
	*ret_n = (uint32_t)n;
	return 0;
}

/* ======================================================================
 * Options
 * ====================================================================== */

/* The node's defaults; device strings NULL (= default).  NULL is ignored. */
void vram_plan_options_init(struct vram_plan_options *o)
{
	if (!o)
		return;
	memset(o, 0, sizeof(*o));
	o->struct_size = sizeof(*o);
	o->flags = VRAM_PLAN_HIGH_PRECISION_LORAS;
	o->unet_virtual_vram_gb = 4.0;
	o->clip_virtual_vram_gb = 2.0;
}

static int blank(const char *s)
{
	if (!s)
		return 1;
	while (isspace((unsigned char)*s))
		s++;
	return *s == '\0';
}

/* The device called name, or -EINVAL naming the input (label). */
static int device_lookup(const vram_plan *p, const char *label, const char *name)
{
	for (uint32_t i = 0; i < p->ndevs; i++)
		if (!strcmp(p->devs[i].name, name))
			return (int)i;
	char list[512];
	size_t off = 0;
	list[0] = '\0';
	for (uint32_t i = 0; i < p->ndevs && off < sizeof(list); i++) {
		int w = snprintf(list + off, sizeof(list) - off, "%s%s", i ? ", " : "", p->devs[i].name);
		if (w < 0)
			break;
		off += (size_t)w;
	}
	return rt_error(-EINVAL, "%s \"%s\" is not a device of this broker (devices: %s)", label, name, list);
}

static int check_virtual_vram(const char *label, double gb)
{
	if (!isfinite(gb) || gb < 0.0 || gb > PLAN_VIRTUAL_VRAM_MAX)
		return rt_error(-EINVAL, "%s %g is out of range 0-%g", label, gb, PLAN_VIRTUAL_VRAM_MAX);
	return 0;
}

/* ======================================================================
 * Core
 * ====================================================================== */

/* Charges pinned bytes to the compute device's quota.  Where its quota is
 * smaller, the excess comes off the other devices, the last in placement
 * order first, so that the quotas keep adding up to the distributed bytes. */
static void charge_pinned(const vram_plan *p, struct plan_comp *pc)
{
	uint64_t own = MIN(pc->quota[pc->compute], pc->pinned_bytes);
	uint64_t excess = pc->pinned_bytes - own;

	pc->quota[pc->compute] -= own;
	for (uint32_t k = p->ndevs; k-- > 0 && excess;) {
		uint32_t d = p->order[k];
		if (d == pc->compute)
			continue;
		uint64_t take = MIN(pc->quota[d], excess);
		pc->quota[d] -= take;
		excess -= take;
	}
}

/* Places the distributed (not pinned) units of comp by the quotas: from the
 * component's tail backwards (units are in placement order), the devices
 * in placement order, each taking units while they fit in what is left of
 * its quota; the first unit that does not fit moves on to the next device
 * (never back, so each device holds one contiguous run).  The last device
 * with a quota takes all that is left, which is less than one unit per
 * earlier device more than its quota. */
static void place_distributed(vram_plan *p, uint32_t comp)
{
	struct plan_comp *pc = &p->comp[comp];
	uint64_t rem[PLAN_MAX_DEVICES];
	int32_t sink = -1;
	uint32_t pos = 0;

	memcpy(rem, pc->quota, sizeof(rem));
	for (uint32_t k = 0; k < p->ndevs; k++)
		if (pc->quota[p->order[k]])
			sink = (int32_t)k;
	if (sink < 0) {
		/* no distributed bytes: only zero-byte units of an empty
		 * component can be left */
		for (uint32_t i = 0; i < p->nunits; i++)
			if (p->units[i].comp == comp && !p->units[i].pinned)
				p->units[i].dev = pc->compute;
		return;
	}
	for (uint32_t i = p->nunits; i-- > 0;) {
		struct plan_u *u = &p->units[i];
		if (u->comp != comp || u->pinned)
			continue;
		while ((int32_t)pos < sink && u->nbytes > rem[p->order[pos]])
			pos++;
		uint32_t d = p->order[pos];
		u->dev = d;
		rem[d] -= MIN(rem[d], u->nbytes);
	}
}

/* Pins comp's units that stay on its compute device: those of a tiny
 * layer (under 0.01 % of the component, DisTorch2's threshold, taken per
 * layer: a tiny module inside a larger block goes with its block) and a
 * text encoder's embeddings. */
static void pin_units(vram_plan *p, uint32_t comp)
{
	struct plan_comp *pc = &p->comp[comp];

	for (uint32_t i = 0; i < p->nunits; i++) {
		struct plan_u *u = &p->units[i];
		if (u->comp != comp)
			continue;
		int tiny = (unsigned __int128)p->layers[u->layer].nbytes * PLAN_TINY_DIV < pc->bytes;
		int embed = comp == VRAM_COMP_CLIP && (u->flags & VRAM_LAYER_EMBEDDING);
		if (tiny || embed) {
			u->pinned = 1;
			u->dev = pc->compute;
			pc->pinned_bytes += u->nbytes;
		}
	}
}

/* Plans a distributed component (unet or clip). */
static int plan_distributed(vram_plan *p, uint32_t comp, const char *what, const char *expert,
			    const struct alloc_spec *spec, double vv_gb, int donor, int cpu_dev)
{
	struct plan_comp *pc = &p->comp[comp];
	uint64_t total[PLAN_MAX_DEVICES];

	pin_units(p, comp);
	if (spec) {
		for (uint32_t d = 0; d < p->ndevs; d++)
			total[d] = p->devs[d].total;
		int r = alloc_quotas(what, expert, spec, total, p->ndevs, cpu_dev, pc->bytes, pc->quota);
		if (r < 0)
			return r;
		pc->source = PLAN_SRC_EXPERT;
		pc->allocation = strdup(expert);
		if (!pc->allocation)
			return rt_error(-ENOMEM, "plan: out of memory");
	} else {
		/* vv_gb is GiB, as in DisTorch2; 0..128 GiB fits easily */
		uint64_t vv = (uint64_t)llround(vv_gb * (double)(1ull << 30));
		uint64_t give = MIN(vv, pc->bytes);
		pc->source = PLAN_SRC_VIRTUAL_VRAM;
		pc->virtual_vram_gb = vv_gb;
		pc->donor = donor;
		if (donor < 0 || (uint32_t)donor == pc->compute)
			give = 0;
		pc->quota[pc->compute] = pc->bytes - give;
		if (give)
			pc->quota[donor] += give;
	}
	memcpy(pc->asked, pc->quota, sizeof(pc->asked));
	charge_pinned(p, pc);
	place_distributed(p, comp);
	return 0;
}

static void plan_whole(vram_plan *p, uint32_t comp, uint32_t dev)
{
	struct plan_comp *pc = &p->comp[comp];
	pc->source = PLAN_SRC_WHOLE;
	pc->compute = dev;
	pc->quota[dev] = pc->bytes;
	pc->asked[dev] = pc->bytes;
	for (uint32_t i = 0; i < p->nunits; i++)
		if (p->units[i].comp == comp)
			p->units[i].dev = dev;
}

/* Copies the devices after checking them.  0 or -EINVAL. */
static int plan_set_devices(vram_plan *p, const struct vram_plan_device *devs, uint32_t ndevs)
{
	const char *names[PLAN_MAX_DEVICES];

	if (!devs || !ndevs)
		return rt_error(-EINVAL, "plan: no devices given");
	if (ndevs > PLAN_MAX_DEVICES)
		return rt_error(-EINVAL, "plan: %u devices given, at most %u", ndevs, PLAN_MAX_DEVICES);
	for (uint32_t i = 0; i < ndevs; i++) {
		const struct vram_plan_device *d = &devs[i];
		if (d->struct_size != sizeof(*d))
			return rt_error(-EINVAL, "plan: device %u: struct_size %u, expected %zu",
					i, d->struct_size, sizeof(*d));
		const char *why = device_name_problem(d->name, sizeof(d->name));
		if (why)
			return rt_error(-EINVAL, "plan: device %u: name \"%.*s\" %s", i,
					(int)strnlen(d->name, sizeof(d->name)), d->name, why);
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(devs[j].name, d->name))
				return rt_error(-EINVAL, "plan: device %s is given twice (%u and %u)", d->name, j, i);
		p->devs[i] = *d;
		names[i] = p->devs[i].name;
	}
	p->ndevs = ndevs;
	plan_device_order(names, ndevs, p->order);
	return 0;
}

/* Checks the units and the map against each other.  0 or -EINVAL. */
static int check_units(const struct plan_unit *units, uint32_t nunits, const struct plan_map *map)
{
	uint64_t all = 0;

	if (nunits && !units)
		return rt_error(-EINVAL, "plan: no unit array");
	if (map && ((map->nlayers && !map->layers) || (map->ntensors && !map->tensor_unit)))
		return rt_error(-EINVAL, "plan: a map without its arrays");
	for (uint32_t i = 0; i < nunits; i++) {
		const struct plan_unit *u = &units[i];
		if (u->component >= VRAM_COMP_COUNT)
			return rt_error(-EINVAL, "plan: unit %u: component %u is not a component", i, u->component);
		if (map && (u->layer >= map->nlayers || map->layers[u->layer].component != u->component))
			return rt_error(-EINVAL, "plan: unit %u: layer %u is not a layer of its component", i, u->layer);
		/* so that no per-component or per-device sum can overflow */
		if (all > UINT64_MAX - u->nbytes)
			return rt_error(-EOVERFLOW, "plan: the units add up to more than 2^64 bytes");
		all += u->nbytes;
	}
	for (uint32_t t = 0; map && t < map->ntensors; t++)
		if (map->tensor_unit[t] >= nunits)
			return rt_error(-EINVAL, "plan: tensor %u: unit %u is not a unit", t, map->tensor_unit[t]);
	return 0;
}

/* Copies the units, the layers (the map's, else one per unit) and their
 * names, and the tensors' units.  0 or -EINVAL/-ENOMEM/-EOVERFLOW. */
static int plan_set_units(vram_plan *p, const struct plan_unit *units, uint32_t nunits, const struct plan_map *map)
{
	uint32_t nlayers = map ? map->nlayers : nunits;
	size_t arena = 0;
	int r = check_units(units, nunits, map);

	if (r < 0)
		return r;
	for (uint32_t i = 0; i < nunits; i++)
		arena += units[i].name ? strlen(units[i].name) + 1 : 24;
	for (uint32_t i = 0; map && i < nlayers; i++)
		arena += map->layers[i].name ? strlen(map->layers[i].name) + 1 : 24;
	p->units = calloc(nunits ? nunits : 1, sizeof(*p->units));
	p->layers = calloc(nlayers ? nlayers : 1, sizeof(*p->layers));
	p->tensor_unit = malloc((map && map->ntensors ? map->ntensors : 1) * sizeof(*p->tensor_unit));
	p->names = malloc(arena ? arena : 1);
	if (!p->units || !p->layers || !p->tensor_unit || !p->names)
		return rt_error(-ENOMEM, "plan: out of memory for %u units", nunits);
	char *w = p->names;
	for (uint32_t i = 0; i < nunits; i++) {
		struct plan_u *u = &p->units[i];
		u->comp = units[i].component;
		u->flags = units[i].flags;
		u->nbytes = units[i].nbytes;
		u->layer = map ? units[i].layer : i;
		u->name = w;
		if (units[i].name)
			w = stpcpy(w, units[i].name) + 1;
		else
			w += snprintf(w, 24, "unit %u", i) + 1;
		p->comp[u->comp].bytes += u->nbytes;
		p->comp[u->comp].nunits++;
		p->layers[u->layer].nbytes += u->nbytes;
		if (!map) {
			p->layers[i].name = u->name;
			p->layers[i].comp = u->comp;
		}
	}
	for (uint32_t i = 0; map && i < nlayers; i++) {
		p->layers[i].comp = map->layers[i].component;
		p->layers[i].name = w;
		if (map->layers[i].name)
			w = stpcpy(w, map->layers[i].name) + 1;
		else
			w += snprintf(w, 24, "layer %u", i) + 1;
	}
	if (map && map->ntensors)
		memcpy(p->tensor_unit, map->tensor_unit, map->ntensors * sizeof(*p->tensor_unit));
	for (uint32_t c = 0; map && c < VRAM_COMP_COUNT; c++)
		str_copy(p->comp[c].order, map->order[c] ? map->order[c] : "", sizeof(p->comp[c].order));
	p->nunits = nunits;
	p->nlayers = nlayers;
	p->ntensors = map ? map->ntensors : 0;
	return 0;
}

/* Each layer's device (the one with most of its bytes; the first in
 * placement order of those with as many), how many devices it spans and
 * whether it is pinned, from its units'. */
static int plan_layer_devices(vram_plan *p)
{
	uint32_t rank[PLAN_MAX_DEVICES];

	for (uint32_t k = 0; k < p->ndevs; k++)
		rank[p->order[k]] = k;
	_cleanup_free_ uint64_t *by = calloc((size_t)p->nlayers * p->ndevs + 1, sizeof(*by));
	_cleanup_free_ uint32_t *unpinned = calloc((size_t)p->nlayers + 1, sizeof(*unpinned));
	_cleanup_free_ uint32_t *count = calloc((size_t)p->nlayers + 1, sizeof(*count));
	if (!by || !unpinned || !count)
		return rt_error(-ENOMEM, "plan: out of memory for %u layers", p->nlayers);
	for (uint32_t i = 0; i < p->nunits; i++) {
		const struct plan_u *u = &p->units[i];
		by[(size_t)u->layer * p->ndevs + u->dev] += u->nbytes;
		unpinned[u->layer] += !u->pinned;
		count[u->layer]++;
		/* a layer of zero-byte units still has a device */
		if (!u->nbytes && !p->layers[u->layer].nbytes)
			p->layers[u->layer].dev = u->dev;
	}
	for (uint32_t l = 0; l < p->nlayers; l++) {
		struct plan_l *L = &p->layers[l];
		uint64_t best = 0;
		L->ndevs = 0;
		L->pinned = count[l] && !unpinned[l];
		for (uint32_t d = 0; d < p->ndevs; d++) {
			uint64_t b = by[(size_t)l * p->ndevs + d];
			if (!b)
				continue;
			L->ndevs++;
			if (b > best || (b == best && rank[d] < rank[L->dev])) {
				best = b;
				L->dev = d;
			}
		}
		if (!L->ndevs)
			L->ndevs = 1;
	}
	return 0;
}

/* Every device's planned bytes against what is available on it. */
static int plan_check_fit(const vram_plan *p)
{
	for (uint32_t k = 0; k < p->ndevs; k++) {
		uint32_t d = p->order[k];
		if (p->planned[d] <= p->devs[d].available)
			continue;
		char need[32], have[32], shortby[32];
		size_format(p->planned[d], need, sizeof(need));
		size_format(p->devs[d].available, have, sizeof(have));
		size_format(p->planned[d] - p->devs[d].available, shortby, sizeof(shortby));
		return rt_error(-ENOSPC, "plan does not fit: %s needs %s but has %s available (short by %s)",
				p->devs[d].name, need, have, shortby);
	}
	return 0;
}

static int plan_options_check(const struct vram_plan_options *o)
{
	/* the first published struct ended with clip_expert_mode_allocations */
	const size_t first = offsetof(struct vram_plan_options, cast_to);
	if (o->struct_size < first)
		return rt_error(-EINVAL, "plan options: struct_size %u is smaller than %zu (call vram_plan_options_init)",
				o->struct_size, first);
	if (o->struct_size > sizeof(*o) &&
	    !mem_is_zero((const char *)o + sizeof(*o), o->struct_size - sizeof(*o)))
		return rt_error(-E2BIG, "plan options: fields past %zu bytes are set but not known to this libvram",
				sizeof(*o));
	if (o->flags & ~PLAN_FLAGS_MASK)
		return rt_error(-EINVAL, "plan options: unknown flags 0x%x", o->flags & ~PLAN_FLAGS_MASK);
	int r = check_virtual_vram("unet_virtual_vram_gb", o->unet_virtual_vram_gb);
	if (r < 0)
		return r;
	return check_virtual_vram("clip_virtual_vram_gb", o->clip_virtual_vram_gb);
}

/* A device input: given (not blank) must name a device; the default only
 * when it is needed (needed = 1).  Returns the index, -1 (default not
 * needed and not a device), or -EINVAL. */
static int resolve_input(const vram_plan *p, const char *label, const char *given, const char *dflt, int needed)
{
	if (!blank(given))
		return device_lookup(p, label, given);
	for (uint32_t i = 0; i < p->ndevs; i++)
		if (!strcmp(p->devs[i].name, dflt))
			return (int)i;
	if (!needed)
		return -1;
	return device_lookup(p, label, dflt);
}

/* Frees a plan; NULL is fine. */
void vram_plan_free(vram_plan *p)
{
	if (!p)
		return;
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++)
		free(p->comp[c].allocation);
	free(p->units);
	free(p->layers);
	free(p->tensor_unit);
	free(p->names);
	free(p->model);
	free(p);
}

static void plan_freep(vram_plan **p)
{
	vram_plan_free(*p);
}

/* The planner core (plan.h): 0 with *ret_plan owned by the caller, or
 * -EINVAL (options, devices, allocation strings), -ENOSPC (does not fit),
 * -EOVERFLOW, -ENOMEM; *ret_plan untouched on failure. */
int plan_build(const struct plan_unit *units, uint32_t nunits, const struct plan_map *map, const char *model,
	       const struct vram_plan_options *o, const struct vram_plan_device *devs,
	       uint32_t ndevs, vram_plan **ret_plan)
{
	_cleanup_(plan_freep) vram_plan *p = NULL;
	struct vram_plan_options dflt;
	struct alloc_spec unet_spec, clip_spec;
	const char *names[PLAN_MAX_DEVICES];
	int r;

	if (!ret_plan)
		return rt_error(-EINVAL, "plan: ret_plan is NULL");
	if (!o) {
		vram_plan_options_init(&dflt);
		o = &dflt;
	}
	r = plan_options_check(o);
	if (r < 0)
		return r;
	/* an older caller's smaller struct: the fields it lacks take their
	 * defaults (zero) */
	struct vram_plan_options full;
	memset(&full, 0, sizeof(full));
	memcpy(&full, o, MIN((size_t)o->struct_size, sizeof(full)));
	o = &full;
	p = calloc(1, sizeof(*p));
	if (!p)
		return rt_error(-ENOMEM, "plan: out of memory");
	p->flags = o->flags;
	if (model && !(p->model = strdup(model)))
		return rt_error(-ENOMEM, "plan: out of memory");
	r = plan_set_devices(p, devs, ndevs);
	if (r < 0)
		return r;
	r = plan_set_units(p, units, nunits, map);
	if (r < 0)
		return r;

	int cpu_dev = -1;
	for (uint32_t i = 0; i < p->ndevs; i++) {
		names[i] = p->devs[i].name;
		if (!strcmp(names[i], "cpu"))
			cpu_dev = (int)i;
	}

	/* unet compute device: given, else the lowest cuda:N, else cpu */
	int unet_dev;
	if (!blank(o->unet_compute_device)) {
		unet_dev = device_lookup(p, "unet_compute_device", o->unet_compute_device);
	} else {
		unet_dev = cuda_ordinal(p->devs[p->order[0]].name) >= 0 ? (int)p->order[0] : cpu_dev;
		if (unet_dev < 0)
			unet_dev = rt_error(-EINVAL, "unet_compute_device: no default (no cuda:N and no cpu device); name one");
	}
	if (unet_dev < 0)
		return unet_dev;
	int has_unet_expert = !blank(o->unet_expert_mode_allocations);
	int has_clip_expert = !blank(o->clip_expert_mode_allocations);
	int unet_donor = resolve_input(p, "unet_donor_device", o->unet_donor_device, "cpu",
				       p->comp[VRAM_COMP_UNET].bytes > 0 && !has_unet_expert &&
				       o->unet_virtual_vram_gb > 0);
	if (unet_donor < -1)
		return unet_donor;
	/* An empty CLIP needs no device: its default may be absent (an offline
	 * list without cpu), then the unet's compute device stands in. */
	int has_clip = p->comp[VRAM_COMP_CLIP].bytes > 0;
	int clip_dev = resolve_input(p, "clip_compute_device", o->clip_compute_device, "cpu", has_clip);
	if (clip_dev == -1)
		clip_dev = unet_dev;
	if (clip_dev < 0)
		return clip_dev;
	int clip_donor = resolve_input(p, "clip_donor_device", o->clip_donor_device, "cpu",
				       has_clip && !has_clip_expert && o->clip_virtual_vram_gb > 0);
	if (clip_donor < -1)
		return clip_donor;
	int vae_dev = blank(o->vae_device) ? unet_dev : device_lookup(p, "vae_device", o->vae_device);
	if (vae_dev < 0)
		return vae_dev;

	if (has_unet_expert) {
		r = alloc_parse("unet", o->unet_expert_mode_allocations, names, p->ndevs, &unet_spec);
		if (r < 0)
			return r;
	}
	if (has_clip_expert) {
		r = alloc_parse("clip", o->clip_expert_mode_allocations, names, p->ndevs, &clip_spec);
		if (r < 0)
			return r;
	}

	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++)
		p->comp[c].donor = -1;
	p->comp[VRAM_COMP_UNET].compute = (uint32_t)unet_dev;
	p->comp[VRAM_COMP_CLIP].compute = (uint32_t)clip_dev;
	r = plan_distributed(p, VRAM_COMP_UNET, "unet", o->unet_expert_mode_allocations,
			     has_unet_expert ? &unet_spec : NULL, o->unet_virtual_vram_gb, unet_donor, cpu_dev);
	if (r < 0)
		return r;
	r = plan_distributed(p, VRAM_COMP_CLIP, "clip", o->clip_expert_mode_allocations,
			     has_clip_expert ? &clip_spec : NULL, o->clip_virtual_vram_gb, clip_donor, cpu_dev);
	if (r < 0)
		return r;
	plan_whole(p, VRAM_COMP_VAE, (uint32_t)vae_dev);
	plan_whole(p, VRAM_COMP_OTHER, (uint32_t)unet_dev);

	for (uint32_t i = 0; i < p->nunits; i++) {
		const struct plan_u *u = &p->units[i];
		p->comp[u->comp].placed[u->dev] += u->nbytes;
		p->planned[u->dev] += u->nbytes;  /* sum of all units: < 2^64 */
	}
	if ((r = plan_layer_devices(p)) < 0)
		return r;
	r = plan_check_fit(p);
	if (r < 0)
		return r;
	*ret_plan = TAKE_PTR(p);
	return 0;
}

/* ======================================================================
 * Adapter: vram_model -> plain arrays
 * ====================================================================== */

/* Plans model m: its leaf modules in their registration order
 * (modules.c), mapped onto its layers and tensors, through plan_build().
 * Errors as plan_build, or the model getters'.  The plan keeps copies; m
 * may be closed afterwards. */
int vram_plan_create(const vram_model *m, const struct vram_plan_options *o,
		     const struct vram_plan_device *devs, uint32_t ndevs, vram_plan **ret_plan)
{
	_cleanup_(modules_free) struct mod_units mu = { 0 };
	_cleanup_free_ struct plan_map_layer *layers = NULL;
	struct plan_map map = { 0 };
	int r;

	rt_error_clear();
	if (!m || !ret_plan)
		return rt_error(-EINVAL, "vram_plan_create: bad arguments");
	/* a load that converts stores tensors at their converted size */
	uint32_t cast_to = 0, cast_from = 0;
	if (o && o->struct_size > offsetof(struct vram_plan_options, cast_from)) {
		cast_to = o->cast_to;
		if ((r = dtype_cast_check(cast_to, o->cast_from, &cast_from)) < 0)
			return r;
	}
	int n = vram_model_layer_count(m);
	if (n < 0)
		return n;
	layers = calloc(n ? (size_t)n : 1, sizeof(*layers));
	if (!layers)
		return rt_error(-ENOMEM, "plan: out of memory for %d layers", n);
	for (int i = 0; i < n; i++) {
		struct vram_layer_info li = { .struct_size = sizeof(li) };
		if ((r = vram_model_layer(m, (uint32_t)i, &li)) < 0)
			return r;
		layers[i] = (struct plan_map_layer){ .component = li.component, .name = li.name };
	}
	if ((r = modules_from_model(m, cast_to, cast_from, &mu)) < 0)
		return r;
	map = (struct plan_map){ .nlayers = (uint32_t)n, .ntensors = mu.ntensors, .layers = layers,
				 .tensor_unit = mu.tensor_unit };
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++)
		map.order[c] = mod_family_name(mu.family[c]);
	return plan_build(mu.units, mu.nunits, &map, vram_model_path(m), o, devs, ndevs, ret_plan);
}

/* ======================================================================
 * Getters
 * ====================================================================== */

/* Device index of layer (the one holding most of its bytes); -EINVAL for
 * a bad plan or index. */
int vram_plan_layer_device(const vram_plan *p, uint32_t layer)
{
	if (!p || layer >= p->nlayers)
		return rt_error(-EINVAL, "vram_plan_layer_device: no layer %u", layer);
	return (int)p->layers[layer].dev;
}

/* Device index of the model's tensor; -EINVAL for a bad plan or index. */
int vram_plan_tensor_device(const vram_plan *p, uint32_t tensor)
{
	if (!p || tensor >= p->ntensors)
		return rt_error(-EINVAL, "vram_plan_tensor_device: no tensor %u", tensor);
	return (int)p->units[p->tensor_unit[tensor]].dev;
}

/* Device of unit (plan.h). */
int plan_unit_device(const vram_plan *p, uint32_t unit)
{
	if (!p || unit >= p->nunits)
		return -EINVAL;
	return (int)p->units[unit].dev;
}

/* Compute device index of comp (vae: vae_device; other: the unet's);
 * -EINVAL for a bad plan or component. */
int vram_plan_compute_device(const vram_plan *p, uint32_t comp)
{
	if (!p || comp >= VRAM_COMP_COUNT)
		return rt_error(-EINVAL, "vram_plan_compute_device: no component %u", comp);
	return (int)p->comp[comp].compute;
}

/* Bytes of comp placed on dev; 0 for bad arguments. */
uint64_t vram_plan_bytes(const vram_plan *p, uint32_t comp, uint32_t dev)
{
	if (!p || comp >= VRAM_COMP_COUNT || dev >= p->ndevs)
		return 0;
	return p->comp[comp].placed[dev];
}

/* Bytes of comp the inputs ask of dev; 0 for bad arguments. */
uint64_t vram_plan_asked_bytes(const vram_plan *p, uint32_t comp, uint32_t dev)
{
	if (!p || comp >= VRAM_COMP_COUNT || dev >= p->ndevs)
		return 0;
	return p->comp[comp].asked[dev];
}

/* comp's quota on dev after the pinned charge (plan.h); 0 for bad arguments. */
uint64_t plan_quota(const vram_plan *p, uint32_t comp, uint32_t dev)
{
	if (!p || comp >= VRAM_COMP_COUNT || dev >= p->ndevs)
		return 0;
	return p->comp[comp].quota[dev];
}

/* 1 if every unit of layer is pinned to its compute device, 0 if not,
 * -EINVAL. */
int plan_layer_pinned(const vram_plan *p, uint32_t layer)
{
	if (!p || layer >= p->nlayers)
		return -EINVAL;
	return (int)p->layers[layer].pinned;
}

/* Devices of the plan (as given to vram_plan_create); 0 for NULL. */
uint32_t vram_plan_device_count(const vram_plan *p)
{
	return p ? p->ndevs : 0;
}

/* Name of device dev, owned by the plan; NULL for bad arguments. */
const char *vram_plan_device_name(const vram_plan *p, uint32_t dev)
{
	if (!p || dev >= p->ndevs)
		return NULL;
	return p->devs[dev].name;
}

/* The options' flags (VRAM_PLAN_*); 0 for NULL. */
uint32_t vram_plan_flags(const vram_plan *p)
{
	return p ? p->flags : 0;
}

/* ======================================================================
 * JSON
 * ====================================================================== */

/* Byte counts above 2^63 (only a hand-written device list can have them)
 * become reals rather than wrapping negative. */
static json_t *json_u64(uint64_t v)
{
	if (v > (uint64_t)INT64_MAX)
		return json_real((double)v);
	return json_integer((json_int_t)v);
}

/* json_object_set_new / json_array_append_new that remember a failure. */
static void jset(json_t *obj, const char *key, json_t *v, int *err)
{
	/* the _new setters drop v themselves when obj is NULL or on failure */
	if (!v || json_object_set_new(obj, key, v) < 0)
		*err = 1;
}

static void jappend(json_t *arr, json_t *v, int *err)
{
	if (!v || json_array_append_new(arr, v) < 0)
		*err = 1;
}

static json_t *json_devmap(const vram_plan *p, const uint64_t *bytes, int *err)
{
	json_t *o = json_object();
	for (uint32_t d = 0; d < p->ndevs; d++)
		jset(o, p->devs[d].name, json_u64(bytes[d]), err);
	return o;
}

/* Signed differences: placed - asked per device. */
static json_t *json_diffmap(const vram_plan *p, const struct plan_comp *pc, int *err)
{
	json_t *o = json_object();
	for (uint32_t d = 0; d < p->ndevs; d++) {
		uint64_t a = pc->asked[d], b = pc->placed[d];
		json_t *v;
		if (a <= (uint64_t)INT64_MAX && b <= (uint64_t)INT64_MAX)
			v = json_integer((json_int_t)b - (json_int_t)a);
		else
			v = json_real((double)b - (double)a);
		jset(o, p->devs[d].name, v, err);
	}
	return o;
}

/* Runs of comp's distributed units in placement order on one device
 * (pinned units are left out and do not break a run). */
static json_t *json_ranges(const vram_plan *p, uint32_t comp, int *err)
{
	json_t *ranges = json_array();
	int32_t first = -1, last = -1;
	uint64_t run = 0;
	uint32_t count = 0;

	for (uint32_t i = 0; i <= p->nunits; i++) {
		const struct plan_u *u = i < p->nunits ? &p->units[i] : NULL;
		if (u && (u->comp != comp || u->pinned))
			continue;
		if (first >= 0 && (!u || u->dev != p->units[first].dev)) {
			json_t *r = json_object();
			jset(r, "device", json_string(p->devs[p->units[first].dev].name), err);
			jset(r, "first_module", json_integer(first), err);
			jset(r, "last_module", json_integer(last), err);
			jset(r, "first", json_string(p->units[first].name), err);
			jset(r, "last", json_string(p->units[last].name), err);
			jset(r, "modules", json_integer(count), err);
			jset(r, "bytes", json_u64(run), err);
			jappend(ranges, r, err);
			first = -1;
		}
		if (!u)
			break;
		if (first < 0) {
			first = (int32_t)i;
			run = 0;
			count = 0;
		}
		last = (int32_t)i;
		run += u->nbytes;
		count++;
	}
	return ranges;
}

/* Every layer of comp: its device, and its bytes per device where the
 * plan splits it. */
static json_t *json_layers(const vram_plan *p, uint32_t comp, int *err)
{
	json_t *layers = json_array();
	_cleanup_free_ uint64_t *by = NULL;

	for (uint32_t l = 0; l < p->nlayers; l++) {
		const struct plan_l *L = &p->layers[l];
		if (L->comp != comp)
			continue;
		json_t *lj = json_object(), *split = NULL;
		jset(lj, "index", json_integer(l), err);
		jset(lj, "name", json_string(L->name), err);
		jset(lj, "bytes", json_u64(L->nbytes), err);
		jset(lj, "device", json_string(p->devs[L->dev].name), err);
		jset(lj, "pinned", json_boolean(L->pinned), err);
		if (L->ndevs > 1 && (by || (by = malloc(p->ndevs * sizeof(*by))))) {
			memset(by, 0, p->ndevs * sizeof(*by));
			for (uint32_t i = 0; i < p->nunits; i++)
				if (p->units[i].layer == l)
					by[p->units[i].dev] += p->units[i].nbytes;
			split = json_object();
			for (uint32_t d = 0; d < p->ndevs; d++)
				if (by[d])
					jset(split, p->devs[d].name, json_u64(by[d]), err);
		} else if (L->ndevs > 1) {
			*err = 1;
		}
		jset(lj, "split", split ? split : json_null(), err);
		jappend(layers, lj, err);
	}
	return layers;
}

static json_t *json_component(const vram_plan *p, uint32_t comp, int *err)
{
	const struct plan_comp *pc = &p->comp[comp];
	json_t *o = json_object();

	jset(o, "compute_device", json_string(p->devs[pc->compute].name), err);
	jset(o, "bytes", json_u64(pc->bytes), err);
	jset(o, "source", json_string(plan_source_names[pc->source]), err);
	jset(o, "allocation", pc->allocation ? json_string(pc->allocation) : json_null(), err);
	if (pc->source == PLAN_SRC_VIRTUAL_VRAM) {
		jset(o, "virtual_vram_gb", json_real(pc->virtual_vram_gb), err);
		jset(o, "donor_device", pc->donor >= 0 ? json_string(p->devs[pc->donor].name) : json_null(), err);
	} else {
		jset(o, "virtual_vram_gb", json_null(), err);
		jset(o, "donor_device", json_null(), err);
	}
	jset(o, "module_order", pc->order[0] ? json_string(pc->order) : json_null(), err);
	jset(o, "modules", json_integer(pc->nunits), err);
	jset(o, "pinned_bytes", json_u64(pc->pinned_bytes), err);
	jset(o, "asked", json_devmap(p, pc->asked, err), err);
	jset(o, "quota", json_devmap(p, pc->quota, err), err);
	jset(o, "placement", json_devmap(p, pc->placed, err), err);
	jset(o, "difference", json_diffmap(p, pc, err), err);
	jset(o, "ranges", json_ranges(p, comp, err), err);
	jset(o, "layers", json_layers(p, comp, err), err);
	return o;
}

/* The plan as JSON (schema in docs/plan.md) in *ret_json, which the caller
 * free()s.  0, -EINVAL, -ENOMEM. */
int vram_plan_to_json(const vram_plan *p, char **ret_json)
{
	json_t *root = NULL;
	int err = 0;

	rt_error_clear();
	if (!p || !ret_json)
		return rt_error(-EINVAL, "vram_plan_to_json: bad arguments");
	root = json_object();
	jset(root, "model", p->model ? json_string(p->model) : json_null(), &err);

	json_t *devs = json_array(), *order = json_array();
	for (uint32_t d = 0; d < p->ndevs; d++) {
		json_t *dj = json_object();
		jset(dj, "name", json_string(p->devs[d].name), &err);
		jset(dj, "total", json_u64(p->devs[d].total), &err);
		jset(dj, "available", json_u64(p->devs[d].available), &err);
		jset(dj, "planned", json_u64(p->planned[d]), &err);
		jappend(devs, dj, &err);
		jappend(order, json_string(p->devs[p->order[d]].name), &err);
	}
	jset(root, "devices", devs, &err);
	jset(root, "placement_order", order, &err);
	jset(root, "high_precision_loras", json_boolean(p->flags & VRAM_PLAN_HIGH_PRECISION_LORAS), &err);

	json_t *comps = json_object();
	for (uint32_t c = 0; c < VRAM_COMP_COUNT; c++)
		jset(comps, plan_comp_names[c], json_component(p, c, &err), &err);
	jset(root, "components", comps, &err);

	char *s = err ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (!s)
		return rt_error(-ENOMEM, "plan JSON: out of memory");
	*ret_json = s;
	return 0;
}
