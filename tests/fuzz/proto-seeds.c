/* SPDX-License-Identifier: MIT */
/*
 * Writes the seed corpus of fuzz-proto into DIR (files seed-NAME): one
 * well-formed message of every opcode, built from the structs of
 * uapi/vramd.h (so the seeds follow the ABI as it is compiled), each
 * checked with proto_validate().
 *
 *   proto-seeds DIR
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/proto.h"

static const char *dir;
static int failed;

static void put(const char *name, void *msg, size_t len, uint16_t op)
{
	char path[4096];
	const char *why = NULL;
	int fd;

	proto_hdr_init(msg, op, (uint32_t)len, 7);
	if (proto_validate(msg, len, &why) < 0) {
		fprintf(stderr, "proto-seeds: %s does not validate: %s\n", name, why);
		failed = 1;
		return;
	}
	snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, msg, len) != (ssize_t)len) {
		fprintf(stderr, "proto-seeds: %s: %s\n", path, strerror(errno));
		failed = 1;
	}
	if (fd >= 0)
		close(fd);
}

static void device(struct vramd_device *d, uint32_t i)
{
	d->index = i;
	d->backend = i ? VRAMD_BACKEND_SIM : VRAMD_BACKEND_CPU;
	d->flags = VRAMD_DEV_HOST_MAPPABLE | (i ? VRAMD_DEV_SIMULATED : 0);
	d->numa_node = -1;
	d->total = 64ull << 20;
	d->granularity = 2 << 20;
	d->ordinal = -1;
	snprintf(d->name, sizeof(d->name), i ? "cuda:%u" : "cpu", i - 1);
	snprintf(d->label, sizeof(d->label), "simulated GPU");
}

int main(int argc, char **argv)
{
	static union {
		unsigned char b[VRAMD_MSG_MAX];
		struct vramd_hdr h;
	} u;

	if (argc != 2) {
		fprintf(stderr, "usage: proto-seeds DIR\n");
		return 2;
	}
	dir = argv[1];

#define MSG(T) (memset(&u, 0, sizeof(u)), (T *)&u)
	snprintf(MSG(struct vramd_hello)->name, VRAMD_NAME_MAX, "comfyui");
	put("hello", &u, sizeof(struct vramd_hello), VRAMD_HELLO);
	{
		struct vramd_hello_reply *m = MSG(struct vramd_hello_reply);
		m->ndevices = 2;
		m->max_alloc = UINT64_MAX;
		snprintf(m->note, sizeof(m->note), "no CUDA driver");
		device((struct vramd_device *)(m + 1), 0);
		device((struct vramd_device *)(m + 1) + 1, 1);
		put("hello_reply", &u, sizeof(*m) + 2 * sizeof(struct vramd_device), VRAMD_HELLO_REPLY);
	}
	{
		struct vramd_alloc *m = MSG(struct vramd_alloc);
		m->device = 1;
		m->flags = VRAMD_ALLOC_RECLAIMABLE;
		m->size = 1 << 20;
		put("alloc", &u, sizeof(*m), VRAMD_ALLOC);
	}
	{
		struct vramd_alloc_reply *m = MSG(struct vramd_alloc_reply);
		m->grant_id = 1;
		m->size = 2 << 20;
		put("alloc_reply", &u, sizeof(*m), VRAMD_ALLOC_REPLY);
	}
	MSG(struct vramd_free)->grant_id = 1;
	put("free", &u, sizeof(struct vramd_free), VRAMD_FREE);
	MSG(struct vramd_hdr);
	put("ok", &u, sizeof(struct vramd_hdr), VRAMD_OK);
	MSG(struct vramd_status);
	put("status", &u, sizeof(struct vramd_status), VRAMD_STATUS);
	{
		struct vramd_status_reply *m = MSG(struct vramd_status_reply);
		struct vramd_device *d = (void *)(m + 1);
		struct vramd_client_info *c = (void *)(d + 1);
		m->ndevices = 1;
		m->nclients = 2;
		m->clients_total = 2;
		device(d, 0);
		snprintf(c[0].name, sizeof(c[0].name), "comfyui");
		c[0].flags = VRAMD_CLIENT_SELF;
		snprintf(c[1].name, sizeof(c[1].name), "other");
		put("status_reply", &u, sizeof(*m) + sizeof(*d) + 2 * sizeof(*c), VRAMD_STATUS_REPLY);
	}
	{
		struct vramd_error *m = MSG(struct vramd_error);
		m->error = -ENOSPC;
		m->req_opcode = VRAMD_ALLOC;
		snprintf(m->reason, sizeof(m->reason), "cuda:0: 1.00 GiB wanted, 512 MiB free");
		put("error", &u, sizeof(*m), VRAMD_ERROR);
	}
	{
		struct vramd_reclaim *m = MSG(struct vramd_reclaim);
		m->reclaim_id = 3;
		m->bytes = 4 << 20;
		m->deadline_ms = 2000;
		put("reclaim", &u, sizeof(*m), VRAMD_RECLAIM);
	}
	MSG(struct vramd_reclaim_done)->reclaim_id = 3;
	put("reclaim_done", &u, sizeof(struct vramd_reclaim_done), VRAMD_RECLAIM_DONE);
	{
		struct vramd_quota_set *m = MSG(struct vramd_quota_set);
		snprintf(m->subject, sizeof(m->subject), "user:alice");
		snprintf(m->device, sizeof(m->device), "cuda:0");
		m->flags = VRAMD_QUOTA_SET_FLOOR | VRAMD_QUOTA_SET_CEILING;
		m->floor = 1 << 30;
		m->ceiling = UINT64_MAX;
		put("quota_set", &u, sizeof(*m), VRAMD_QUOTA_SET);
	}
	snprintf(MSG(struct vramd_quota_rm)->subject, VRAMD_SUBJECT_MAX, "default");
	put("quota_rm", &u, sizeof(struct vramd_quota_rm), VRAMD_QUOTA_RM);
	MSG(struct vramd_hdr);
	put("quota_list", &u, sizeof(struct vramd_hdr), VRAMD_QUOTA_LIST);
	{
		struct vramd_text *m = MSG(struct vramd_text);
		static const char text[] = "{\"quotas\":[]}";
		m->len = sizeof(text) - 1;
		memcpy(m + 1, text, m->len);
		put("text", &u, sizeof(*m) + m->len, VRAMD_TEXT);
	}
	MSG(struct vramd_evict)->client_id = 2;
	put("evict", &u, sizeof(struct vramd_evict), VRAMD_EVICT);
	{
		struct vramd_register *m = MSG(struct vramd_register);
		m->uuid[0] = 0xab;
		m->size = 2 << 20;
		put("register", &u, sizeof(*m), VRAMD_REGISTER);
	}
	MSG(struct vramd_hdr);
	put("reload", &u, sizeof(struct vramd_hdr), VRAMD_RELOAD);
#undef MSG
	return failed;
}
