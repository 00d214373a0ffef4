/* SPDX-License-Identifier: MIT */
/*
 * Helpers of the GGUF and PyTorch readers (reader.h): byte sources, an
 * arena, quoting for messages, UTF-8 and CRC-32.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "runtime/internal.h"
#include "runtime/reader.h"

/* ======================================================================
 * Byte sources
 * ====================================================================== */

/* A memory source (reader.h). */
struct src src_mem(const void *buf, size_t len, const char *path)
{
	return (struct src){ .path = path ? path : "<memory>", .mem = buf, .fd = -1, .size = len };
}

/* A source over the caller's fd (reader.h). */
struct src src_fd(int fd, uint64_t size, const char *path)
{
	return (struct src){ .path = path, .fd = fd, .size = size };
}

/* len bytes at off (reader.h): 0 or -errno with the message set. */
int src_read(const struct src *s, void *dst, size_t len, uint64_t off, const char *what)
{
	char *p = dst;

	if (s->mem) {
		if (off > s->size || len > s->size - off)
			return rt_error(-EIO, "%s: reading %s: past the end of the buffer", s->path, what);
		memcpy(dst, s->mem + off, len);
		return 0;
	}
	while (len) {
		ssize_t n = pread(s->fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return rt_error(-errno, "%s: reading %s: %s", s->path, what, strerror(errno));
		}
		if (n == 0)
			return rt_error(-EIO, "%s: reading %s: file shrank while being read", s->path, what);
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* ======================================================================
 * Arena
 * ====================================================================== */

struct arena_block {
	struct arena_block *next;
	size_t pad;              /* keeps data 16-byte aligned */
	unsigned char data[];
};

#define ARENA_BLOCK (64u * 1024)

/* n zeroed bytes, 8-aligned (reader.h); NULL when out of memory. */
void *arena_alloc(struct arena *a, size_t n)
{
	size_t need = (n + 7) & ~(size_t)7;
	void *p;

	if (need < n)
		return NULL;
	if (!a->head || a->cap - a->used < need) {
		size_t cap = need > ARENA_BLOCK ? need : ARENA_BLOCK;
		struct arena_block *b;

		if (cap > SIZE_MAX - sizeof(*b))
			return NULL;
		b = malloc(sizeof(*b) + cap);
		if (!b)
			return NULL;
		/* A big allocation gets a block of its own behind the
		 * current one, so the current one's free room stays usable. */
		if (need > ARENA_BLOCK && a->head) {
			b->next = a->head->next;
			a->head->next = b;
			a->total += cap;
			memset(b->data, 0, n);
			return b->data;
		}
		b->next = a->head;
		a->head = b;
		a->used = 0;
		a->cap = cap;
		a->total += cap;
	}
	p = a->head->data + a->used;
	a->used += need;
	memset(p, 0, n);
	return p;
}

/* A NUL-terminated copy (reader.h). */
char *arena_strndup(struct arena *a, const char *s, size_t n)
{
	char *p;

	if (n == SIZE_MAX)
		return NULL;
	p = arena_alloc(a, n + 1);
	if (!p)
		return NULL;
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

/* Frees every block (reader.h). */
void arena_free(struct arena *a)
{
	struct arena_block *b = a->head;

	while (b) {
		struct arena_block *next = b->next;
		free(b);
		b = next;
	}
	*a = (struct arena){ 0 };
}

/* ======================================================================
 * Messages
 * ====================================================================== */

/* s[0, n) quoted; '\' escaped unless the text is JSON as written. */
static const char *quote(struct qname *b, const char *s, size_t n, bool json)
{
	size_t o = 0, cut = n;
	bool cutoff = false;

	if (n > QNAME_MAX) {
		cut = QNAME_MAX;
		while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80)
			cut--;
		cutoff = true;
	}
	/* Text that is not UTF-8 shows every non-ASCII byte escaped. */
	bool raw8 = utf8_valid((const uint8_t *)s, cut);

	b->s[o++] = '"';
	for (size_t i = 0; i < cut; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || (c >= 0x80 && !raw8)) {
			o += (size_t)snprintf(b->s + o, 5, "\\x%02x", c);
		} else if (c == '"' || (c == '\\' && !json)) {
			b->s[o++] = '\\';
			b->s[o++] = (char)c;
		} else {
			b->s[o++] = (char)c;
		}
	}
	if (cutoff) {
		memcpy(b->s + o, "...", 3);
		o += 3;
	}
	b->s[o++] = '"';
	b->s[o] = '\0';
	return b->s;
}

/* s[0, n) quoted for a message (reader.h). */
const char *qname(struct qname *b, const char *s, size_t n)
{
	return quote(b, s, n, false);
}

/* JSON text quoted for a message (reader.h). */
const char *qname_json(struct qname *b, const char *s, size_t n)
{
	return quote(b, s, n, true);
}

/* "[2, 4]" (reader.h). */
const char *fmt_shape(char *buf, size_t len, const uint64_t *dims, uint32_t ndim)
{
	size_t o = 0;

	o += (size_t)snprintf(buf, len, "[");
	for (uint32_t i = 0; i < ndim && o < len; i++) {
		if (i == 8) {
			o += (size_t)snprintf(buf + o, len - o, ", ...");
			break;
		}
		o += (size_t)snprintf(buf + o, len - o, "%s%" PRIu64, i ? ", " : "", dims[i]);
	}
	if (o < len)
		snprintf(buf + o, len - o, "]");
	return buf;
}

/* ======================================================================
 * Checks
 * ====================================================================== */

/* Where strict UTF-8 ends (reader.h). */
size_t utf8_invalid_at(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = s[i], lo = 0x80, hi = 0xbf;
		size_t k;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			if (c == 0xe0)
				lo = 0xa0;
			else if (c == 0xed)
				hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			if (c == 0xf0)
				lo = 0x90;
			else if (c == 0xf4)
				hi = 0x8f;
		} else {
			return i;
		}
		if (n - i <= k || s[i + 1] < lo || s[i + 1] > hi)
			return i;
		for (size_t j = 2; j <= k; j++)
			if ((s[i + j] & 0xc0) != 0x80)
				return i;
		i += k + 1;
	}
	return SIZE_MAX;
}

/* Strict UTF-8 (reader.h). */
bool utf8_valid(const uint8_t *s, size_t n)
{
	return utf8_invalid_at(s, n) == SIZE_MAX;
}

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* CRC-32 of zip (reader.h): reflected, polynomial 0xedb88320. */
uint32_t crc32_update(uint32_t crc, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	const uint32_t *table = crc_table;

	pthread_once(&crc_once, crc_init);
	crc = ~crc;
	while (n--)
		crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}
