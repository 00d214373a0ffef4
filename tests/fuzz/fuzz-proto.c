/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: proto_validate() on a received message (the input, as
 * the bytes of one packet), then a reading of every field a receiver reads
 * of a message that passed: strings as C strings, the arrays its counts
 * announce, a TEXT's text.  The message is copied into a heap block of
 * exactly its size, so ASan reports any read past what arrived.
 *
 * Properties: the result is 0, -EPROTO or -EINVAL with a reason; a message
 * that passes has its size in its header and a known opcode.
 */
#include <errno.h>
#include <string.h>

#include "common/proto.h"
#include "tests/fuzz/fuzz.h"

static volatile size_t sink;

static void read_device(const struct vramd_device *d)
{
	sink += strlen(d->name) + strlen(d->label) + d->total + d->uuid[15];
}

/* What a receiver reads of a message proto_validate() passed. */
static void read_message(const void *msg)
{
	const struct vramd_hdr *h = msg;

	switch (h->opcode) {
	case VRAMD_HELLO:
		sink += strlen(((const struct vramd_hello *)msg)->name);
		break;
	case VRAMD_HELLO_REPLY: {
		const struct vramd_hello_reply *m = msg;
		const struct vramd_device *d = (const void *)(m + 1);
		sink += strlen(m->note);
		for (uint32_t i = 0; i < m->ndevices; i++)
			read_device(&d[i]);
		break;
	}
	case VRAMD_STATUS_REPLY: {
		const struct vramd_status_reply *m = msg;
		const struct vramd_device *d = (const void *)(m + 1);
		const struct vramd_client_info *c = (const void *)(d + m->ndevices);
		sink += strlen(m->note);
		for (uint32_t i = 0; i < m->ndevices; i++)
			read_device(&d[i]);
		for (uint32_t i = 0; i < m->nclients; i++)
			sink += strlen(c[i].name) + c[i].held_dev[VRAMD_MAX_DEVICES - 1];
		break;
	}
	case VRAMD_ERROR:
		sink += strlen(((const struct vramd_error *)msg)->reason);
		break;
	case VRAMD_QUOTA_SET: {
		const struct vramd_quota_set *m = msg;
		sink += strlen(m->subject) + strlen(m->device) + m->ceiling;
		break;
	}
	case VRAMD_QUOTA_RM: {
		const struct vramd_quota_rm *m = msg;
		sink += strlen(m->subject) + strlen(m->device);
		break;
	}
	case VRAMD_TEXT: {
		const struct vramd_text *m = msg;
		const char *text = (const char *)(m + 1);
		for (uint32_t i = 0; i < m->len; i++)
			sink += (unsigned char)text[i];
		break;
	}
	default:
		/* fixed-size messages: the last byte of the size the header gives */
		sink += ((const unsigned char *)msg)[h->size - 1];
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *why = NULL;
	void *msg;
	int r;

	if (size > VRAMD_MSG_MAX)
		return 0; /* longer packets are cut by proto_recv (-EMSGSIZE) */
	msg = malloc(size ? size : 1);
	if (!msg)
		return 0;
	memcpy(msg, data, size);
	r = proto_validate(msg, size, &why);
	if (r < 0) {
		FUZZ_ASSERT(r == -EPROTO || r == -EINVAL, "returned %d", r);
		FUZZ_ASSERT(why && *why, "no reason for %d", r);
	} else {
		const struct vramd_hdr *h = msg;
		FUZZ_ASSERT(r == 0, "returned %d", r);
		FUZZ_ASSERT(h->size == size, "size %u of %zu", h->size, size);
		FUZZ_ASSERT(strcmp(proto_opcode_name(h->opcode), "?"), "opcode %u passed", h->opcode);
		read_message(msg);
	}
	free(msg);
	return 0;
}
