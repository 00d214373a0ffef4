/* SPDX-License-Identifier: MIT */
/*
 * The restricted unpickler (pickle.h).  A pickle is a program for a stack
 * machine; this machine runs the opcodes torch.save uses (protocol 2, and
 * the binary opcodes of 3 to 5 a later protocol would use for the same
 * objects) over a small value model: none, bool, int, float, str, bytes,
 * tuple, list, dict, and three kinds Python has not: a global (one of a
 * fixed list of names, a tag: nothing is imported), a storage (a
 * persistent id naming a zip record) and a tensor (a view of a storage).
 * REDUCE is only ever the rebuild of a tensor, an empty OrderedDict, a
 * torch.Size or _codecs.encode of a latin-1 string, done here in C.
 *
 * The machine's memory is bounded (PK_MAX_MEMORY): each opcode makes at
 * most one value, containers grow by doubling in an arena, and the memo
 * index is bounded by the pickle's size.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "runtime/internal.h"
#include "runtime/pickle.h"
#include "runtime/vram.h"

/* ======================================================================
 * Values and globals
 * ====================================================================== */

enum pv_kind {
	PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_BYTES, PV_TUPLE, PV_LIST, PV_DICT, PV_GLOBAL,
	PV_STORAGE, PV_TENSOR,
};

static const char *const kind_names[] = {
	"None", "a bool", "an int", "a float", "a str", "bytes", "a tuple", "a list", "a dict", "a global",
	"a storage", "a tensor",
};

struct ptensor {
	uint32_t storage;
	uint32_t dtype;
	int64_t offset;          /* elements */
	struct pv *size, *stride;
	size_t pos;              /* of the REDUCE, for messages */
};

struct pv {
	uint8_t kind;
	uint8_t g;               /* PV_GLOBAL: enum glob */
	uint32_t n, cap;         /* tuple/list items; dict: pairs (2n items) */
	union {
		int64_t i;
		double f;
		struct {
			const char *s;
			uint64_t len;
		} str;
		struct pv **items;
		uint32_t storage;    /* PV_STORAGE: index */
		struct ptensor *t;
		uint32_t dtype;      /* PV_GLOBAL: storage type's or dtype's */
	};
};

enum glob {
	G_ODICT, G_REBUILD_V2, G_REBUILD_V3, G_PARAM, G_PARAM_STATE, G_SIZE, G_ENCODE,
	G_STORAGE, G_UNTYPED, G_DTYPE,
};
#define NO_DTYPE 0xfffffffeu   /* a name torch knows that has no vramd dtype */

static const struct glob_def {
	const char *module, *name;
	uint8_t g;
	uint32_t dtype;
} globs[] = {
	{ "collections", "OrderedDict", G_ODICT, 0 },
	{ "torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2, 0 },
	{ "torch._utils", "_rebuild_tensor_v3", G_REBUILD_V3, 0 },
	{ "torch._utils", "_rebuild_parameter", G_PARAM, 0 },
	{ "torch._utils", "_rebuild_parameter_with_state", G_PARAM_STATE, 0 },
	{ "torch", "Size", G_SIZE, 0 },
	{ "_codecs", "encode", G_ENCODE, 0 },
	{ "torch.storage", "UntypedStorage", G_UNTYPED, PK_UNTYPED },
	{ "torch", "DoubleStorage", G_STORAGE, VRAM_DTYPE_F64 },
	{ "torch", "FloatStorage", G_STORAGE, VRAM_DTYPE_F32 },
	{ "torch", "HalfStorage", G_STORAGE, VRAM_DTYPE_F16 },
	{ "torch", "BFloat16Storage", G_STORAGE, VRAM_DTYPE_BF16 },
	{ "torch", "LongStorage", G_STORAGE, VRAM_DTYPE_I64 },
	{ "torch", "IntStorage", G_STORAGE, VRAM_DTYPE_I32 },
	{ "torch", "ShortStorage", G_STORAGE, VRAM_DTYPE_I16 },
	{ "torch", "CharStorage", G_STORAGE, VRAM_DTYPE_I8 },
	{ "torch", "ByteStorage", G_STORAGE, VRAM_DTYPE_U8 },
	{ "torch", "BoolStorage", G_STORAGE, VRAM_DTYPE_BOOL },
	{ "torch", "ComplexFloatStorage", G_STORAGE, VRAM_DTYPE_C64 },
	{ "torch", "ComplexDoubleStorage", G_STORAGE, NO_DTYPE },
	{ "torch", "QInt8Storage", G_STORAGE, NO_DTYPE },
	{ "torch", "QUInt8Storage", G_STORAGE, NO_DTYPE },
	{ "torch", "QInt32Storage", G_STORAGE, NO_DTYPE },
	{ "torch", "QUInt4x2Storage", G_STORAGE, NO_DTYPE },
	{ "torch", "QUInt2x4Storage", G_STORAGE, NO_DTYPE },
	{ "torch", "float64", G_DTYPE, VRAM_DTYPE_F64 },
	{ "torch", "float32", G_DTYPE, VRAM_DTYPE_F32 },
	{ "torch", "float16", G_DTYPE, VRAM_DTYPE_F16 },
	{ "torch", "bfloat16", G_DTYPE, VRAM_DTYPE_BF16 },
	{ "torch", "int64", G_DTYPE, VRAM_DTYPE_I64 },
	{ "torch", "int32", G_DTYPE, VRAM_DTYPE_I32 },
	{ "torch", "int16", G_DTYPE, VRAM_DTYPE_I16 },
	{ "torch", "int8", G_DTYPE, VRAM_DTYPE_I8 },
	{ "torch", "uint8", G_DTYPE, VRAM_DTYPE_U8 },
	{ "torch", "uint16", G_DTYPE, VRAM_DTYPE_U16 },
	{ "torch", "uint32", G_DTYPE, VRAM_DTYPE_U32 },
	{ "torch", "uint64", G_DTYPE, VRAM_DTYPE_U64 },
	{ "torch", "bool", G_DTYPE, VRAM_DTYPE_BOOL },
	{ "torch", "complex64", G_DTYPE, VRAM_DTYPE_C64 },
	{ "torch", "float8_e4m3fn", G_DTYPE, VRAM_DTYPE_F8_E4M3 },
	{ "torch", "float8_e5m2", G_DTYPE, VRAM_DTYPE_F8_E5M2 },
	{ "torch", "float8_e4m3fnuz", G_DTYPE, VRAM_DTYPE_F8_E4M3FNUZ },
	{ "torch", "float8_e5m2fnuz", G_DTYPE, VRAM_DTYPE_F8_E5M2FNUZ },
	{ "torch", "float8_e8m0fnu", G_DTYPE, VRAM_DTYPE_F8_E8M0 },
	{ "torch", "complex128", G_DTYPE, NO_DTYPE },
	{ "torch", "complex32", G_DTYPE, NO_DTYPE },
	{ "torch", "float4_e2m1fn_x2", G_DTYPE, NO_DTYPE },
};

/* ======================================================================
 * The machine
 * ====================================================================== */

struct pk {
	const uint8_t *buf;
	size_t len, pos, op;     /* op: offset of the opcode being run */
	const char *path, *what;
	struct arena vm;         /* values */
	uint64_t mem;            /* bytes of the stack, marks and memo arrays */
	struct pv **stack;
	size_t sp, scap;
	size_t *marks;
	size_t nmarks, mcap;
	struct pv **memo;
	size_t memo_cap, memo_used;
	struct pk_storage *st;
	uint32_t nst, stcap;
	struct arena *out;       /* the result's arena */
	struct pv *result;
};

static int pk_fail(const struct pk *p, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int pk_fail(const struct pk *p, int err, const char *fmt, ...)
{
	char reason[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	return rt_error(err, "%s: %s PyTorch checkpoint: %s byte %zu: %s", p->path,
			err == -ENOTSUP ? "unsupported" : "invalid", p->what, p->op, reason);
}
#define pk_invalid(p, ...) pk_fail(p, -EINVAL, __VA_ARGS__)

static int pk_nomem(const struct pk *p)
{
	return rt_error(-ENOMEM, "%s: out of memory", p->path);
}

static int pk_over_budget(const struct pk *p)
{
	return pk_invalid(p, "the pickle needs more than %llu MiB of memory to read (a state dict needs far less)",
			  PK_MAX_MEMORY >> 20);
}

/* A value from the machine's arena, within the budget. */
static void *pk_alloc(struct pk *p, size_t n, int *r)
{
	void *v;

	if (p->vm.total + p->mem + n > PK_MAX_MEMORY) {
		*r = pk_over_budget(p);
		return NULL;
	}
	v = arena_alloc(&p->vm, n);
	if (!v)
		*r = pk_nomem(p);
	return v;
}

static struct pv *pv_new(struct pk *p, uint8_t kind, int *r)
{
	struct pv *v = pk_alloc(p, sizeof(*v), r);

	if (v)
		v->kind = kind;
	return v;
}

/* Grows an array of *cap elements of size sz to hold need. */
static int grow(struct pk *p, void **arr, size_t *cap, size_t need, size_t sz)
{
	size_t ncap = *cap ? *cap : 16;
	void *n;

	if (need <= *cap)
		return 0;
	while (ncap < need)
		ncap *= 2;
	if (p->vm.total + p->mem + (ncap - *cap) * sz > PK_MAX_MEMORY)
		return pk_over_budget(p);
	n = realloc(*arr, ncap * sz);
	if (!n)
		return pk_nomem(p);
	p->mem += (ncap - *cap) * sz;
	*arr = n;
	*cap = ncap;
	return 0;
}

static int push(struct pk *p, struct pv *v)
{
	int r = grow(p, (void **)&p->stack, &p->scap, p->sp + 1, sizeof(*p->stack));

	if (r == 0)
		p->stack[p->sp++] = v;
	return r;
}

/* The top of the stack above the innermost mark, or an error. */
static int pop(struct pk *p, struct pv **ret, const char *opname)
{
	size_t floor = p->nmarks ? p->marks[p->nmarks - 1] : 0;

	if (p->sp <= floor)
		return pk_invalid(p, "%s on an empty stack", opname);
	*ret = p->stack[--p->sp];
	return 0;
}

/* Pops to the innermost mark: the items are stack[*ret_first, sp). */
static int pop_mark(struct pk *p, size_t *ret_first, const char *opname)
{
	if (!p->nmarks)
		return pk_invalid(p, "%s without a MARK", opname);
	*ret_first = p->marks[--p->nmarks];
	return 0;
}

/* Appends n items to a list or tuple v (to a dict: n/2 pairs, key first). */
static int pv_add(struct pk *p, struct pv *v, struct pv *const *items, size_t n)
{
	size_t per = v->kind == PV_DICT ? 2 : 1, have = (size_t)v->n * per, need = have + n;
	int r = 0;

	if (need > UINT32_MAX)
		return pk_over_budget(p);
	if (need > v->cap) {
		size_t ncap = v->cap ? (size_t)v->cap * 2 : 4;
		struct pv **a;
		while (ncap < need)
			ncap *= 2;
		a = pk_alloc(p, ncap * sizeof(*a), &r);
		if (!a)
			return r;
		if (have)
			memcpy(a, v->items, have * sizeof(*a));
		v->items = a;
		v->cap = (uint32_t)ncap;
	}
	if (n)
		memcpy(v->items + have, items, n * sizeof(*items));
	v->n = (uint32_t)(need / per);
	return 0;
}

/* ======================================================================
 * Reading the operands
 * ====================================================================== */

static const struct {
	uint8_t op;
	const char *name;
} opnames[] = {
	{ '(', "MARK" }, { '.', "STOP" }, { '0', "POP" }, { '1', "POP_MARK" }, { '2', "DUP" }, { 'F', "FLOAT" },
	{ 'I', "INT" }, { 'J', "BININT" }, { 'K', "BININT1" }, { 'L', "LONG" }, { 'M', "BININT2" }, { 'N', "NONE" },
	{ 'P', "PERSID" }, { 'Q', "BINPERSID" }, { 'R', "REDUCE" }, { 'S', "STRING" }, { 'T', "BINSTRING" },
	{ 'U', "SHORT_BINSTRING" }, { 'V', "UNICODE" }, { 'X', "BINUNICODE" }, { 'a', "APPEND" }, { 'b', "BUILD" },
	{ 'c', "GLOBAL" }, { 'd', "DICT" }, { '}', "EMPTY_DICT" }, { 'e', "APPENDS" }, { 'g', "GET" },
	{ 'h', "BINGET" }, { 'i', "INST" }, { 'j', "LONG_BINGET" }, { 'l', "LIST" }, { ']', "EMPTY_LIST" },
	{ 'o', "OBJ" }, { 'p', "PUT" }, { 'q', "BINPUT" }, { 'r', "LONG_BINPUT" }, { 's', "SETITEM" },
	{ 't', "TUPLE" }, { ')', "EMPTY_TUPLE" }, { 'u', "SETITEMS" }, { 'G', "BINFLOAT" }, { 0x80, "PROTO" },
	{ 0x81, "NEWOBJ" }, { 0x82, "EXT1" }, { 0x83, "EXT2" }, { 0x84, "EXT4" }, { 0x85, "TUPLE1" },
	{ 0x86, "TUPLE2" }, { 0x87, "TUPLE3" }, { 0x88, "NEWTRUE" }, { 0x89, "NEWFALSE" }, { 0x8a, "LONG1" },
	{ 0x8b, "LONG4" }, { 'B', "BINBYTES" }, { 'C', "SHORT_BINBYTES" }, { 0x8c, "SHORT_BINUNICODE" },
	{ 0x8d, "BINUNICODE8" }, { 0x8e, "BINBYTES8" }, { 0x8f, "EMPTY_SET" }, { 0x90, "ADDITEMS" },
	{ 0x91, "FROZENSET" }, { 0x92, "NEWOBJ_EX" }, { 0x93, "STACK_GLOBAL" }, { 0x94, "MEMOIZE" },
	{ 0x95, "FRAME" }, { 0x96, "BYTEARRAY8" }, { 0x97, "NEXT_BUFFER" }, { 0x98, "READONLY_BUFFER" },
};

static const char *opname(uint8_t op)
{
	for (size_t i = 0; i < ARRAY_SIZE(opnames); i++)
		if (opnames[i].op == op)
			return opnames[i].name;
	return NULL;
}

/* The n operand bytes of the current opcode. */
static int operand(struct pk *p, size_t n, const uint8_t **ret)
{
	if (n > p->len - p->pos)
		return pk_invalid(p, "%s needs %zu more bytes, the pickle has %zu", opname(p->buf[p->op]), n,
				  p->len - p->pos);
	*ret = p->buf + p->pos;
	p->pos += n;
	return 0;
}

static int operand_uint(struct pk *p, size_t n, uint64_t *ret)
{
	const uint8_t *b;
	int r = operand(p, n, &b);

	if (r == 0) {
		*ret = 0;
		for (size_t i = n; i-- > 0;)
			*ret = *ret << 8 | b[i];
	}
	return r;
}

/* ======================================================================
 * Opcodes: constants
 * ====================================================================== */

static int op_int(struct pk *p, uint8_t op)
{
	struct pv *v;
	uint64_t u = 0, n = 0;
	int r;

	switch (op) {
	case 'J': r = operand_uint(p, 4, &u); u = (uint64_t)(int64_t)(int32_t)u; break;
	case 'K': r = operand_uint(p, 1, &u); break;
	case 'M': r = operand_uint(p, 2, &u); break;
	default: /* LONG1, LONG4: n bytes of two's complement */
		if ((r = operand_uint(p, op == 0x8a ? 1 : 4, &n)) < 0)
			return r;
		if (n > 8)
			return pk_invalid(p, "a %" PRIu64 "-byte integer (at most 8 bytes)", n);
		if ((r = operand_uint(p, (size_t)n, &u)) < 0)
			return r;
		if (n && n < 8 && (u >> (8 * n - 1)) & 1)
			u |= ~0ull << (8 * n);
		break;
	}
	if (r < 0 || !(v = pv_new(p, PV_INT, &r)))
		return r;
	v->i = (int64_t)u;
	return push(p, v);
}

static int op_str(struct pk *p, uint8_t op)
{
	bool bytes = op == 'B' || op == 'C' || op == 0x8e;
	size_t w = op == 0x8c || op == 'C' ? 1 : op == 0x8d || op == 0x8e ? 8 : 4;
	const uint8_t *b;
	struct pv *v;
	uint64_t n = 0;
	int r;

	if ((r = operand_uint(p, w, &n)) < 0)
		return r;
	if (n > p->len - p->pos)
		return pk_invalid(p, "%s of %" PRIu64 " bytes runs past the end of the pickle (%zu bytes left)",
				  opname(op), n, p->len - p->pos);
	if ((r = operand(p, (size_t)n, &b)) < 0)
		return r;
	if (!bytes && !utf8_valid(b, (size_t)n))
		return pk_invalid(p, "%s is not valid UTF-8", opname(op));
	if (!(v = pv_new(p, bytes ? PV_BYTES : PV_STR, &r)))
		return r;
	v->str.s = (const char *)b;
	v->str.len = n;
	return push(p, v);
}

static int op_const(struct pk *p, uint8_t op)
{
	struct pv *v;
	uint64_t u = 0;
	int r = 0;

	if (op == 'G' && (r = operand_uint(p, 8, &u)) < 0)
		return r;
	if (!(v = pv_new(p, op == 'N' ? PV_NONE : op == 'G' ? PV_FLOAT : PV_BOOL, &r)))
		return r;
	if (op == 'G') {
		/* big-endian IEEE 754 */
		union { uint64_t u; double d; } f = { .u = __builtin_bswap64(u) };
		v->f = f.d;
	} else {
		v->i = op == 0x88;
	}
	return push(p, v);
}

/* ======================================================================
 * Opcodes: containers, memo, stack
 * ====================================================================== */

static int op_tuple(struct pk *p, uint8_t op)
{
	size_t first = 0;
	struct pv *v;
	int r;

	if (op == 't' || op == 'l' || op == 'd') {
		if ((r = pop_mark(p, &first, opname(op))) < 0)
			return r;
	} else {
		size_t n = op == ')' || op == ']' || op == '}' ? 0 : (size_t)(op - 0x85 + 1);
		size_t floor = p->nmarks ? p->marks[p->nmarks - 1] : 0;
		if (p->sp - floor < n)
			return pk_invalid(p, "%s needs %zu items, the stack has %zu", opname(op), n, p->sp - floor);
		first = p->sp - n;
	}
	if (!(v = pv_new(p, op == 'l' || op == ']' ? PV_LIST : op == 'd' || op == '}' ? PV_DICT : PV_TUPLE, &r)))
		return r;
	if (v->kind == PV_DICT && (p->sp - first) % 2)
		return pk_invalid(p, "DICT with an odd number of items");
	if ((r = pv_add(p, v, p->stack + first, p->sp - first)) < 0)
		return r;
	p->sp = first;
	return push(p, v);
}

static bool hashable(const struct pv *k)
{
	if (k->kind == PV_LIST || k->kind == PV_DICT)
		return false;
	if (k->kind == PV_TUPLE)
		for (uint32_t i = 0; i < k->n; i++)
			if (!hashable(k->items[i]))
				return false;
	return true;
}

/* APPEND, APPENDS, SETITEM, SETITEMS: into the list or dict below. */
static int op_add(struct pk *p, uint8_t op)
{
	bool many = op == 'e' || op == 'u', dict = op == 's' || op == 'u';
	size_t first = 0, n;
	struct pv *target;
	int r;

	if (many) {
		if ((r = pop_mark(p, &first, opname(op))) < 0)
			return r;
	} else {
		size_t floor = p->nmarks ? p->marks[p->nmarks - 1] : 0;
		if (p->sp - floor < (dict ? 2u : 1u))
			return pk_invalid(p, "%s on a stack too short", opname(op));
		first = p->sp - (dict ? 2 : 1);
	}
	/* The list or dict sits below the items, above any open mark. */
	if (first <= (p->nmarks ? p->marks[p->nmarks - 1] : 0))
		return pk_invalid(p, "%s with nothing to add to", opname(op));
	target = p->stack[first - 1];
	if (target->kind != (dict ? PV_DICT : PV_LIST))
		return pk_invalid(p, "%s to %s", opname(op), kind_names[target->kind]);
	n = p->sp - first;
	if (dict && n % 2)
		return pk_invalid(p, "%s with an odd number of items", opname(op));
	if (dict)
		for (size_t i = first; i < p->sp; i += 2)
			if (!hashable(p->stack[i]))
				return pk_invalid(p, "%s with a key that is %s (unhashable)", opname(op),
						  kind_names[p->stack[i]->kind]);
	if ((r = pv_add(p, target, p->stack + first, n)) < 0)
		return r;
	p->sp = first;
	return 0;
}

static int op_memo(struct pk *p, uint8_t op)
{
	bool get = op == 'h' || op == 'j';
	uint64_t idx = 0;
	int r;

	if (op == 0x94)
		idx = p->memo_used;
	else if ((r = operand_uint(p, op == 'h' || op == 'q' ? 1 : 4, &idx)) < 0)
		return r;
	if (get) {
		if (idx >= p->memo_cap || !p->memo[idx])
			return pk_invalid(p, "%s %" PRIu64 ": no such memo entry", opname(op), idx);
		return push(p, p->memo[idx]);
	}
	/* Each entry costs a PUT of two bytes or more: an index past the
	 * pickle's size is no pickle's. */
	if (idx >= p->len)
		return pk_invalid(p, "%s %" PRIu64 ": memo index out of range for a %zu-byte pickle", opname(op), idx,
				  p->len);
	if (p->sp == 0 || (p->nmarks && p->sp <= p->marks[p->nmarks - 1]))
		return pk_invalid(p, "%s on an empty stack", opname(op));
	if (idx >= p->memo_cap) {
		size_t old = p->memo_cap;
		if ((r = grow(p, (void **)&p->memo, &p->memo_cap, (size_t)idx + 1, sizeof(*p->memo))) < 0)
			return r;
		memset(p->memo + old, 0, (p->memo_cap - old) * sizeof(*p->memo));
	}
	if (!p->memo[idx])
		p->memo_used++;
	p->memo[idx] = p->stack[p->sp - 1];
	return 0;
}

static int op_stack(struct pk *p, uint8_t op)
{
	struct pv *v;
	size_t first = 0;
	int r;

	switch (op) {
	case '(':
		if ((r = grow(p, (void **)&p->marks, &p->mcap, p->nmarks + 1, sizeof(*p->marks))) < 0)
			return r;
		p->marks[p->nmarks++] = p->sp;
		return 0;
	case '0':
		return pop(p, &v, "POP");
	case '1':
		if ((r = pop_mark(p, &first, "POP_MARK")) < 0)
			return r;
		p->sp = first;
		return 0;
	default: /* DUP */
		if ((r = pop(p, &v, "DUP")) < 0)
			return r;
		p->sp++;
		return push(p, v);
	}
}

/* ======================================================================
 * Opcodes: globals, persistent ids, REDUCE, BUILD
 * ====================================================================== */

static int push_global(struct pk *p, const char *mod, size_t mlen, const char *name, size_t nlen)
{
	struct qname q1, q2;
	struct pv *v;
	int r;

	for (size_t i = 0; i < ARRAY_SIZE(globs); i++) {
		const struct glob_def *g = &globs[i];
		if (strlen(g->module) != mlen || memcmp(g->module, mod, mlen) || strlen(g->name) != nlen ||
		    memcmp(g->name, name, nlen))
			continue;
		if (g->dtype == NO_DTYPE)
			return pk_fail(p, -ENOTSUP, "%s.%s has no vramd dtype", g->module, g->name);
		if (!(v = pv_new(p, PV_GLOBAL, &r)))
			return r;
		v->g = g->g;
		v->dtype = g->dtype;
		return push(p, v);
	}
	return pk_invalid(p, "global %s %s is not allowed: a state dict needs only OrderedDict, torch's tensor "
			  "rebuilds, storage types, dtypes, torch.Size and _codecs.encode (nothing was run)",
			  qname(&q1, mod, mlen), qname(&q2, name, nlen));
}

static int op_global(struct pk *p, uint8_t op)
{
	const char *mod, *name;
	size_t mlen, nlen;
	int r;

	if (op == 'c') {
		const uint8_t *s = p->buf + p->pos, *e = p->buf + p->len;
		const uint8_t *nl1 = memchr(s, '\n', (size_t)(e - s)), *nl2;
		if (!nl1 || !(nl2 = memchr(nl1 + 1, '\n', (size_t)(e - nl1 - 1))))
			return pk_invalid(p, "GLOBAL runs past the end of the pickle");
		mod = (const char *)s;
		mlen = (size_t)(nl1 - s);
		name = (const char *)nl1 + 1;
		nlen = (size_t)(nl2 - nl1 - 1);
		p->pos = (size_t)(nl2 + 1 - p->buf);
	} else {
		struct pv *vn, *vm;
		if ((r = pop(p, &vn, "STACK_GLOBAL")) < 0 || (r = pop(p, &vm, "STACK_GLOBAL")) < 0)
			return r;
		if (vn->kind != PV_STR || vm->kind != PV_STR)
			return pk_invalid(p, "STACK_GLOBAL of %s and %s, not two strs", kind_names[vm->kind],
					  kind_names[vn->kind]);
		mod = vm->str.s;
		mlen = (size_t)vm->str.len;
		name = vn->str.s;
		nlen = (size_t)vn->str.len;
	}
	return push_global(p, mod, mlen, name, nlen);
}

static bool str_is(const struct pv *v, const char *s)
{
	return v->kind == PV_STR && v->str.len == strlen(s) && !memcmp(v->str.s, s, v->str.len);
}

/* BINPERSID: ('storage', TYPE, KEY, LOCATION, NUMEL) names a record. */
static int op_persid(struct pk *p)
{
	struct pv *pid, *v, **it;
	struct qname q;
	uint32_t dtype, bits;
	uint64_t numel, nbytes;
	int r;

	if ((r = pop(p, &pid, "BINPERSID")) < 0)
		return r;
	it = pid->items;
	if (pid->kind != PV_TUPLE || pid->n != 5 || !str_is(it[0], "storage"))
		return pk_invalid(p, "BINPERSID of %s, not a ('storage', type, key, location, numel) tuple",
				  kind_names[pid->kind]);
	if (it[1]->kind != PV_GLOBAL || (it[1]->g != G_STORAGE && it[1]->g != G_UNTYPED))
		return pk_invalid(p, "storage type is %s, not a storage class", kind_names[it[1]->kind]);
	if (it[2]->kind != PV_STR || it[3]->kind != PV_STR || it[4]->kind != PV_INT || it[4]->i < 0)
		return pk_invalid(p, "storage key, location or size of the wrong kind");
	if (!it[2]->str.len || memchr(it[2]->str.s, '/', (size_t)it[2]->str.len) ||
	    memchr(it[2]->str.s, 0, (size_t)it[2]->str.len) || str_is(it[2], ".") || str_is(it[2], ".."))
		return pk_invalid(p, "storage key %s is not a record name",
				  qname(&q, it[2]->str.s, (size_t)it[2]->str.len));
	dtype = it[1]->dtype;
	numel = (uint64_t)it[4]->i;
	bits = dtype == PK_UNTYPED ? 8 : vram_dtype_bits(dtype);
	if (__builtin_mul_overflow(numel, (uint64_t)bits / 8, &nbytes))
		return pk_invalid(p, "storage %s of %" PRIu64 " elements is 2^64 bytes or more",
				  qname(&q, it[2]->str.s, (size_t)it[2]->str.len), numel);
	for (uint32_t i = 0; i < p->nst; i++) {
		struct pk_storage *s = &p->st[i];
		if (strlen(s->key) != it[2]->str.len || memcmp(s->key, it[2]->str.s, (size_t)it[2]->str.len))
			continue;
		if (s->dtype != dtype || s->numel != numel)
			return pk_invalid(p, "storage %s appears with two types or sizes", qname(&q, s->key, strlen(s->key)));
		if (!(v = pv_new(p, PV_STORAGE, &r)))
			return r;
		v->storage = i;
		return push(p, v);
	}
	{
		size_t cap = p->stcap;
		if ((r = grow(p, (void **)&p->st, &cap, (size_t)p->nst + 1, sizeof(*p->st))) < 0)
			return r;
		p->stcap = (uint32_t)cap;
	}
	p->st[p->nst] = (struct pk_storage){ .dtype = dtype, .numel = numel, .nbytes = nbytes };
	p->st[p->nst].key = arena_strndup(p->out, it[2]->str.s, (size_t)it[2]->str.len);
	if (!p->st[p->nst].key)
		return pk_nomem(p);
	if (!(v = pv_new(p, PV_STORAGE, &r)))
		return r;
	v->storage = p->nst++;
	return push(p, v);
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
 * _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]) */
static int rebuild_tensor(struct pk *p, bool v3, struct pv *args, struct pv **ret)
{
	struct pv **a = args->items;
	uint32_t want = v3 ? 7 : 6;
	struct ptensor *t;
	int r = 0;

	if (args->n != want && args->n != want + 1)
		return pk_invalid(p, "_rebuild_tensor_v%d with %u arguments", v3 ? 3 : 2, args->n);
	if (a[0]->kind != PV_STORAGE || a[1]->kind != PV_INT || a[2]->kind != PV_TUPLE || a[3]->kind != PV_TUPLE ||
	    a[4]->kind != PV_BOOL || a[5]->kind != PV_DICT || (v3 && (a[6]->kind != PV_GLOBAL || a[6]->g != G_DTYPE)) ||
	    (args->n > want && a[want]->kind != PV_DICT))
		return pk_invalid(p, "_rebuild_tensor_v%d with arguments of the wrong kinds", v3 ? 3 : 2);
	if (a[1]->i < 0)
		return pk_invalid(p, "a tensor's storage offset is %" PRId64, a[1]->i);
	if (!(t = pk_alloc(p, sizeof(*t), &r)))
		return r;
	t->storage = a[0]->storage;
	t->dtype = v3 ? a[6]->dtype : p->st[t->storage].dtype;
	if (v3 && p->st[t->storage].dtype != PK_UNTYPED && p->st[t->storage].dtype != t->dtype)
		return pk_invalid(p, "_rebuild_tensor_v3: the dtype differs from the storage's");
	if (!v3 && t->dtype == PK_UNTYPED)
		return pk_invalid(p, "_rebuild_tensor_v2 of an untyped storage");
	t->offset = a[1]->i;
	t->size = a[2];
	t->stride = a[3];
	t->pos = p->op;
	if (!(*ret = pv_new(p, PV_TENSOR, &r)))
		return r;
	(*ret)->t = t;
	return 0;
}

/* _codecs.encode(str, "latin1"): the bytes of code points below 256. */
static int encode_latin1(struct pk *p, struct pv *args, struct pv **ret)
{
	const uint8_t *s;
	uint8_t *out;
	size_t o = 0;
	int r = 0;

	if (args->n != 2 || args->items[0]->kind != PV_STR ||
	    !(str_is(args->items[1], "latin1") || str_is(args->items[1], "latin-1")))
		return pk_invalid(p, "_codecs.encode other than (str, \"latin1\")");
	s = (const uint8_t *)args->items[0]->str.s;
	if (!(out = pk_alloc(p, (size_t)args->items[0]->str.len + 1, &r)))
		return r;
	for (size_t i = 0; i < args->items[0]->str.len; o++) {
		if (s[i] < 0x80) {
			out[o] = s[i++];
		} else if ((s[i] & 0xe0) == 0xc0 && s[i] <= 0xc3) { /* U+0080..U+00FF */
			out[o] = (uint8_t)((s[i] & 0x03) << 6 | (s[i + 1] & 0x3f));
			i += 2;
		} else {
			return pk_invalid(p, "_codecs.encode: a character above U+00FF for latin1");
		}
	}
	if (!(*ret = pv_new(p, PV_BYTES, &r)))
		return r;
	(*ret)->str.s = (const char *)out;
	(*ret)->str.len = o;
	return 0;
}

static int op_reduce(struct pk *p)
{
	struct pv *args, *f, *v = NULL;
	int r;

	if ((r = pop(p, &args, "REDUCE")) < 0 || (r = pop(p, &f, "REDUCE")) < 0)
		return r;
	if (f->kind != PV_GLOBAL)
		return pk_invalid(p, "REDUCE calls %s", kind_names[f->kind]);
	if (args->kind != PV_TUPLE)
		return pk_invalid(p, "REDUCE with arguments in %s, not a tuple", kind_names[args->kind]);
	switch (f->g) {
	case G_ODICT:
		if (args->n)
			return pk_invalid(p, "OrderedDict called with arguments");
		if (!(v = pv_new(p, PV_DICT, &r)))
			return r;
		break;
	case G_REBUILD_V2:
	case G_REBUILD_V3:
		if ((r = rebuild_tensor(p, f->g == G_REBUILD_V3, args, &v)) < 0)
			return r;
		break;
	case G_PARAM:
	case G_PARAM_STATE:
		if (args->n != (f->g == G_PARAM ? 3u : 4u) || args->items[0]->kind != PV_TENSOR ||
		    args->items[1]->kind != PV_BOOL || args->items[2]->kind != PV_DICT)
			return pk_invalid(p, "_rebuild_parameter with arguments of the wrong kinds");
		v = args->items[0];
		break;
	case G_SIZE:
		if (args->n != 1 || args->items[0]->kind != PV_TUPLE)
			return pk_invalid(p, "torch.Size called with other than one tuple");
		v = args->items[0];
		break;
	case G_ENCODE:
		if ((r = encode_latin1(p, args, &v)) < 0)
			return r;
		break;
	default:
		return pk_invalid(p, "REDUCE calls a storage type or dtype");
	}
	return push(p, v);
}

/* BUILD: only an OrderedDict's attributes (a state dict's _metadata),
 * which are checked for kind and dropped. */
static int op_build(struct pk *p)
{
	struct pv *state, *obj;
	int r;

	if ((r = pop(p, &state, "BUILD")) < 0 || (r = pop(p, &obj, "BUILD")) < 0)
		return r;
	if (obj->kind != PV_DICT)
		return pk_invalid(p, "BUILD on %s (only a dict's attributes are accepted)", kind_names[obj->kind]);
	if (state->kind != PV_DICT && state->kind != PV_NONE && state->kind != PV_TUPLE)
		return pk_invalid(p, "BUILD with a state that is %s", kind_names[state->kind]);
	return push(p, obj);
}

/* ======================================================================
 * The loop
 * ====================================================================== */

static int step(struct pk *p, uint8_t op)
{
	switch (op) {
	case 'J': case 'K': case 'M': case 0x8a: case 0x8b:
		return op_int(p, op);
	case 'X': case 0x8c: case 0x8d: case 'B': case 'C': case 0x8e:
		return op_str(p, op);
	case 'N': case 0x88: case 0x89: case 'G':
		return op_const(p, op);
	case ')': case 't': case 0x85: case 0x86: case 0x87: case ']': case 'l': case '}': case 'd':
		return op_tuple(p, op);
	case 'a': case 'e': case 's': case 'u':
		return op_add(p, op);
	case 'q': case 'r': case 'h': case 'j': case 0x94:
		return op_memo(p, op);
	case '(': case '0': case '1': case '2':
		return op_stack(p, op);
	case 'c': case 0x93:
		return op_global(p, op);
	case 'Q':
		return op_persid(p);
	case 'R':
		return op_reduce(p);
	case 'b':
		return op_build(p);
	default:
		if (opname(op))
			return pk_invalid(p, "opcode %s (0x%02x) is not allowed in a state dict", opname(op), op);
		return pk_invalid(p, "unknown opcode 0x%02x", op);
	}
}

static int run(struct pk *p)
{
	uint64_t u = 0;
	int r;

	while (p->pos < p->len) {
		uint8_t op = p->buf[p->pos];

		p->op = p->pos++;
		if (op == 0x80) {
			if ((r = operand_uint(p, 1, &u)) < 0)
				return r;
			if (u > 5)
				return pk_invalid(p, "pickle protocol %" PRIu64 " (at most 5)", u);
			continue;
		}
		if (op == 0x95) { /* FRAME: a length hint */
			if ((r = operand_uint(p, 8, &u)) < 0)
				return r;
			if (u > p->len - p->pos)
				return pk_invalid(p, "FRAME of %" PRIu64 " bytes runs past the end of the pickle", u);
			continue;
		}
		if (op == '.') {
			if (p->nmarks || p->sp != 1)
				return pk_invalid(p, "STOP with %zu values on the stack and %zu marks open (1 and 0)", p->sp,
						  p->nmarks);
			if (p->pos != p->len)
				return pk_invalid(p, "%zu %s STOP", p->len - p->pos,
						  p->len - p->pos == 1 ? "byte follows" : "bytes follow");
			p->result = p->stack[0];
			return 0;
		}
		if ((r = step(p, op)) < 0)
			return r;
	}
	p->op = p->len;
	return pk_invalid(p, "the pickle ends without STOP");
}

/* ======================================================================
 * The state dict
 * ====================================================================== */

/* t's sizes, checked: shape, contiguity, bounds in its storage. */
static int tensor_out(struct pk *p, const struct pv *key, const struct ptensor *t, struct pk_tensor *o)
{
	const struct pk_storage *s = &p->st[t->storage];
	struct qname q;
	const char *nm = qname(&q, key->str.s, (size_t)key->str.len);
	uint64_t *shape, numel = 1, esize = vram_dtype_bits(t->dtype) / 8, expect = 1, off, nb;
	uint32_t nd = t->size->n;

	p->op = t->pos;
	if (nd > PK_MAX_DIMS || t->stride->n != nd)
		return pk_invalid(p, "tensor %s: %u dimensions and %u strides (at most %u, equal)", nm, nd, t->stride->n,
				  PK_MAX_DIMS);
	shape = arena_alloc(p->out, (nd ? nd : 1) * sizeof(*shape));
	if (!shape)
		return pk_nomem(p);
	for (uint32_t i = 0; i < nd; i++) {
		const struct pv *d = t->size->items[i], *st = t->stride->items[i];
		if (d->kind != PV_INT || d->i < 0 || st->kind != PV_INT || st->i < 0)
			return pk_invalid(p, "tensor %s: size or stride %u is not a non-negative int", nm, i);
		shape[i] = (uint64_t)d->i;
		if (__builtin_mul_overflow(numel, shape[i], &numel))
			return pk_invalid(p, "tensor %s: 2^64 elements or more", nm);
	}
	for (uint32_t i = nd; numel && i-- > 0;) {
		if (shape[i] != 1 && (uint64_t)t->stride->items[i]->i != expect) {
			char sb[160];
			return pk_fail(p, -ENOTSUP, "tensor %s: shape %s is not contiguous (stride %u is %" PRId64
				       ", not %" PRIu64 "): save tensor.contiguous()", nm,
				       fmt_shape(sb, sizeof(sb), shape, nd), i, t->stride->items[i]->i, expect);
		}
		expect *= shape[i];
	}
	if (__builtin_mul_overflow(numel, esize, &nb) || __builtin_mul_overflow((uint64_t)t->offset, esize, &off))
		return pk_invalid(p, "tensor %s: 2^64 bytes or more", nm);
	if (nb && (off > s->nbytes || nb > s->nbytes - off))
		return pk_invalid(p, "tensor %s: bytes [%" PRIu64 ", %" PRIu64 ") past its storage %s of %" PRIu64
				  " bytes", nm, off, off + nb, s->key, s->nbytes);
	if (!key->str.len || memchr(key->str.s, 0, (size_t)key->str.len))
		return pk_invalid(p, "tensor name %s is empty or contains a NUL", nm);
	o->name = arena_strndup(p->out, key->str.s, (size_t)key->str.len);
	if (!o->name)
		return pk_nomem(p);
	o->name_len = (uint32_t)key->str.len;
	o->dtype = t->dtype;
	o->ndim = nd;
	o->storage = t->storage;
	o->shape = shape;
	o->offset = off;
	o->nbytes = nb;
	return 0;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(((const struct pk_tensor *)a)->name, ((const struct pk_tensor *)b)->name);
}

static int check_names(struct pk *p, const struct pk_state_dict *sd)
{
	_cleanup_free_ struct pk_tensor *v = NULL;
	struct qname q;

	if (sd->ntensors < 2)
		return 0;
	v = malloc(sd->ntensors * sizeof(*v));
	if (!v)
		return pk_nomem(p);
	memcpy(v, sd->tensors, sd->ntensors * sizeof(*v));
	qsort(v, sd->ntensors, sizeof(*v), cmp_name);
	p->op = p->len;
	for (uint32_t i = 1; i < sd->ntensors; i++)
		if (!strcmp(v[i - 1].name, v[i].name))
			return pk_invalid(p, "tensor name %s appears twice", qname(&q, v[i].name, v[i].name_len));
	return 0;
}

/* ComfyUI's rule (pickle.h), then every tensor value. */
static int pick(struct pk *p, struct pk_state_dict *sd)
{
	struct pv *root = p->result, *d;
	const char *rootkey = "";
	size_t rlen = 0;
	int r;

	p->op = p->len;
	if (root->kind != PV_DICT)
		return pk_invalid(p, "the pickle holds %s, not a dict of tensors", kind_names[root->kind]);
	d = root;
	for (uint32_t i = 0; i < root->n; i++)
		if (str_is(root->items[2 * i], "state_dict")) {
			d = root->items[2 * i + 1];
			rootkey = "state_dict";
			rlen = 10;
			if (d->kind != PV_DICT)
				return pk_invalid(p, "\"state_dict\" is %s, not a dict", kind_names[d->kind]);
		}
	if (d == root && root->n == 1 && root->items[1]->kind == PV_DICT && root->items[0]->kind == PV_STR) {
		d = root->items[1];
		rootkey = root->items[0]->str.s;
		rlen = (size_t)root->items[0]->str.len;
	}
	sd->root = arena_strndup(p->out, rootkey, rlen);
	sd->tensors = arena_alloc(p->out, (d->n ? d->n : 1) * sizeof(*sd->tensors));
	if (!sd->root || !sd->tensors)
		return pk_nomem(p);
	for (uint32_t i = 0; i < d->n; i++) {
		struct pv *k = d->items[2 * i], *v = d->items[2 * i + 1];
		if (v->kind != PV_TENSOR) {
			sd->nskipped++;
			continue;
		}
		if (k->kind != PV_STR)
			return pk_invalid(p, "a tensor's key is %s, not a str", kind_names[k->kind]);
		if ((r = tensor_out(p, k, v->t, &sd->tensors[sd->ntensors])) < 0)
			return r;
		sd->ntensors++;
	}
	if ((r = check_names(p, sd)) < 0)
		return r;
	sd->storages = arena_alloc(p->out, (p->nst ? p->nst : 1) * sizeof(*sd->storages));
	if (!sd->storages)
		return pk_nomem(p);
	if (p->nst)
		memcpy(sd->storages, p->st, p->nst * sizeof(*p->st));
	sd->nstorages = p->nst;
	return 0;
}

/* Unpickles buf and picks the state dict (pickle.h). */
int pk_load(const uint8_t *buf, size_t len, const char *path, const char *what, struct pk_state_dict *ret)
{
	struct pk p = { .buf = buf, .len = len, .path = path, .what = what, .out = &ret->arena };
	int r;

	if (len > PK_MAX_PICKLE)
		r = pk_invalid(&p, "the pickle is %zu bytes (at most %u)", len, PK_MAX_PICKLE);
	else if ((r = run(&p)) == 0)
		r = pick(&p, ret);
	arena_free(&p.vm);
	free(p.stack);
	free(p.marks);
	free(p.memo);
	free(p.st);
	if (r < 0)
		pk_free(ret);
	return r;
}

/* Frees *sd (pickle.h). */
void pk_free(struct pk_state_dict *sd)
{
	arena_free(&sd->arena);
	*sd = (struct pk_state_dict){ 0 };
}
