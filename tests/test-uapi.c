/* SPDX-License-Identifier: MIT */
/* The wire ABI: layout, validation of every malformed header, fd passing. */
#include <stddef.h>

#include "common/proto.h"
#include "common/util.h"
#include "testlib.h"

START_TEST(test_layout)
{
	ck_assert_uint_eq(sizeof(struct vramd_hdr), 24);
	ck_assert_uint_eq(offsetof(struct vramd_hdr, magic), 0);
	ck_assert_uint_eq(offsetof(struct vramd_hdr, version), 4);
	ck_assert_uint_eq(offsetof(struct vramd_hdr, opcode), 6);
	ck_assert_uint_eq(offsetof(struct vramd_hdr, size), 8);
	ck_assert_uint_eq(offsetof(struct vramd_hdr, flags), 12);
	ck_assert_uint_eq(offsetof(struct vramd_hdr, seq), 16);

	ck_assert_uint_eq(offsetof(struct vramd_hello, flags), 24);
	ck_assert_uint_eq(offsetof(struct vramd_hello, name), 32);
	ck_assert_uint_eq(offsetof(struct vramd_hello, reserved), 96);
	ck_assert_uint_eq(sizeof(struct vramd_hello), 128);

	ck_assert_uint_eq(offsetof(struct vramd_device, total), 16);
	ck_assert_uint_eq(offsetof(struct vramd_device, uuid), 48);
	ck_assert_uint_eq(offsetof(struct vramd_device, ordinal), 64);
	ck_assert_uint_eq(offsetof(struct vramd_device, name), 72);
	ck_assert_uint_eq(offsetof(struct vramd_device, label), 104);
	ck_assert_uint_eq(offsetof(struct vramd_device, ready), 168);
	ck_assert_uint_eq(offsetof(struct vramd_device, cache), 208);
	ck_assert_uint_eq(offsetof(struct vramd_device, cache_hits), 224);
	ck_assert_uint_eq(offsetof(struct vramd_device, reserved), 248);
	ck_assert_uint_eq(sizeof(struct vramd_device), 264);

	ck_assert_uint_eq(offsetof(struct vramd_hello_reply, client_id), 24);
	ck_assert_uint_eq(offsetof(struct vramd_hello_reply, max_alloc), 32);
	ck_assert_uint_eq(offsetof(struct vramd_hello_reply, note), 40);
	ck_assert_uint_eq(sizeof(struct vramd_hello_reply), 168);

	ck_assert_uint_eq(offsetof(struct vramd_alloc, device), 24);
	ck_assert_uint_eq(offsetof(struct vramd_alloc, flags), 28);
	ck_assert_uint_eq(offsetof(struct vramd_alloc, size), 32);
	ck_assert_uint_eq(offsetof(struct vramd_alloc, reserved), 40);
	ck_assert_uint_eq(sizeof(struct vramd_alloc), 56);

	ck_assert_uint_eq(offsetof(struct vramd_alloc_reply, grant_id), 24);
	ck_assert_uint_eq(offsetof(struct vramd_alloc_reply, size), 32);
	ck_assert_uint_eq(offsetof(struct vramd_alloc_reply, device), 40);
	ck_assert_uint_eq(sizeof(struct vramd_alloc_reply), 64);

	ck_assert_uint_eq(offsetof(struct vramd_free, grant_id), 24);
	ck_assert_uint_eq(sizeof(struct vramd_free), 40);

	ck_assert_uint_eq(offsetof(struct vramd_reclaim, reclaim_id), 24);
	ck_assert_uint_eq(offsetof(struct vramd_reclaim, bytes), 32);
	ck_assert_uint_eq(offsetof(struct vramd_reclaim, deadline_ms), 40);
	ck_assert_uint_eq(offsetof(struct vramd_reclaim, device), 48);
	ck_assert_uint_eq(sizeof(struct vramd_reclaim), 56);
	ck_assert_uint_eq(sizeof(struct vramd_reclaim_done), 48);

	ck_assert_uint_eq(offsetof(struct vramd_status, first_client), 24);
	ck_assert_uint_eq(sizeof(struct vramd_status), 40);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, held), 24);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, held_dev), 40);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, name), 176);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, want_dev), 240);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, share_dev), 368);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, shared_dev), 496);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, reclaim_p50_us), 624);
	ck_assert_uint_eq(offsetof(struct vramd_client_info, reclaim_asked), 632);
	ck_assert_uint_eq(sizeof(struct vramd_client_info), 680);
	ck_assert_uint_eq(offsetof(struct vramd_demand, device), 24);
	ck_assert_uint_eq(offsetof(struct vramd_demand, want), 32);
	ck_assert_uint_eq(offsetof(struct vramd_demand, min), 40);
	ck_assert_uint_eq(sizeof(struct vramd_demand), 64);
	ck_assert_uint_eq(offsetof(struct vramd_offer, bytes), 32);
	ck_assert_uint_eq(sizeof(struct vramd_offer), 56);
	ck_assert_uint_eq(offsetof(struct vramd_register, what), 52);
	ck_assert_uint_eq(sizeof(struct vramd_share_run), 32);
	ck_assert_uint_eq(offsetof(struct vramd_share_run, src_dtype), 16);
	ck_assert_uint_eq(offsetof(struct vramd_share, nruns), 32);
	ck_assert_uint_eq(sizeof(struct vramd_share), 56);
	ck_assert_uint_eq(offsetof(struct vramd_share_reply, how), 44);
	ck_assert_uint_eq(sizeof(struct vramd_share_reply), 64);
	ck_assert_uint_eq(sizeof(struct vramd_share_progress), 56);
	ck_assert_uint_eq(sizeof(struct vramd_unshare), 40);
	ck_assert_uint_eq(sizeof(struct vramd_cache_drop), 48);
	ck_assert_uint_eq(offsetof(struct vramd_status_reply, grants), 40);
	ck_assert_uint_eq(offsetof(struct vramd_status_reply, note), 72);
	ck_assert_uint_eq(sizeof(struct vramd_status_reply), 200);

	ck_assert_uint_eq(offsetof(struct vramd_error, error), 24);
	ck_assert_uint_eq(offsetof(struct vramd_error, req_opcode), 28);
	ck_assert_uint_eq(offsetof(struct vramd_error, reason), 32);
	ck_assert_uint_eq(sizeof(struct vramd_error), 192);
}
END_TEST

static int val(const void *m, size_t len)
{
	const char *why = NULL;
	int r = proto_validate(m, len, &why);
	if (r < 0)
		ck_assert_ptr_nonnull(why);
	return r;
}

START_TEST(test_valid_messages)
{
	struct vramd_hello h = { 0 };
	proto_hdr_init(&h.hdr, VRAMD_HELLO, sizeof(h), 1);
	strcpy(h.name, "comfy-1");
	ck_assert_int_eq(val(&h, sizeof(h)), 0);

	struct vramd_alloc a = { 0 };
	proto_hdr_init(&a.hdr, VRAMD_ALLOC, sizeof(a), 2);
	a.size = 1;
	a.flags = VRAMD_ALLOC_RECLAIMABLE;
	ck_assert_int_eq(val(&a, sizeof(a)), 0);

	struct vramd_free f = { 0 };
	proto_hdr_init(&f.hdr, VRAMD_FREE, sizeof(f), 3);
	ck_assert_int_eq(val(&f, sizeof(f)), 0);

	struct vramd_status s = { 0 };
	proto_hdr_init(&s.hdr, VRAMD_STATUS, sizeof(s), 4);
	ck_assert_int_eq(val(&s, sizeof(s)), 0);

	struct vramd_hdr ok;
	proto_hdr_init(&ok, VRAMD_OK, sizeof(ok), 5);
	ck_assert_int_eq(val(&ok, sizeof(ok)), 0);

	struct vramd_error e = { 0 };
	proto_hdr_init(&e.hdr, VRAMD_ERROR, sizeof(e), 6);
	e.error = -ENOMEM;
	strcpy(e.reason, "no");
	ck_assert_int_eq(val(&e, sizeof(e)), 0);

	struct vramd_reclaim_done d = { 0 };
	proto_hdr_init(&d.hdr, VRAMD_RECLAIM_DONE, sizeof(d), 7);
	ck_assert_int_eq(val(&d, sizeof(d)), 0);

	/* A HELLO_REPLY with two devices. */
	size_t len = sizeof(struct vramd_hello_reply) + 2 * sizeof(struct vramd_device);
	struct vramd_hello_reply *r = calloc(1, len);
	proto_hdr_init(&r->hdr, VRAMD_HELLO_REPLY, (uint32_t)len, 8);
	r->ndevices = 2;
	ck_assert_int_eq(val(r, len), 0);
	r->ndevices = 3; /* count no longer matches the size */
	ck_assert_int_eq(val(r, len), -EPROTO);
	r->ndevices = 2;
	struct vramd_device *dv = (void *)(r + 1);
	memset(dv[1].name, 'x', sizeof(dv[1].name)); /* unterminated */
	ck_assert_int_eq(val(r, len), -EINVAL);
	free(r);
}
END_TEST

/* Every malformed-header case is rejected. */
START_TEST(test_malformed_headers)
{
	struct vramd_alloc a;
	memset(&a, 0, sizeof(a));
	proto_hdr_init(&a.hdr, VRAMD_ALLOC, sizeof(a), 1);
	a.size = 4096;
	ck_assert_int_eq(val(&a, sizeof(a)), 0);

	ck_assert_int_eq(val(&a, 0), -EPROTO);
	ck_assert_int_eq(val(&a, 23), -EPROTO);           /* shorter than a header */
	ck_assert_int_eq(val(&a, sizeof(a) - 1), -EPROTO); /* size != length */

	struct vramd_alloc b = a;
	b.hdr.magic ^= 1;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.hdr.version = VRAMD_PROTO_VERSION + 1;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.hdr.version = VRAMD_PROTO_VERSION - 1; /* an older runtime or broker */
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.hdr.version = 0;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.hdr.size = sizeof(a) + 8;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.hdr.flags = 1;
	ck_assert_int_eq(val(&b, sizeof(b)), -EINVAL);
	b = a;
	b.hdr.opcode = 0;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.hdr.opcode = VRAMD_OPCODE_MAX + 1;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.hdr.opcode = 0xffff;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);
	b = a;
	b.flags = 1u << 5; /* unknown flag bit */
	ck_assert_int_eq(val(&b, sizeof(b)), -EINVAL);
	b = a;
	b.reserved[1] = 1;
	ck_assert_int_eq(val(&b, sizeof(b)), -EINVAL);
	/* the right opcode with the body of another */
	b = a;
	b.hdr.opcode = VRAMD_FREE;
	ck_assert_int_eq(val(&b, sizeof(b)), -EPROTO);

	struct vramd_hello h;
	memset(&h, 0, sizeof(h));
	proto_hdr_init(&h.hdr, VRAMD_HELLO, sizeof(h), 1);
	memset(h.name, 'a', sizeof(h.name)); /* no NUL */
	ck_assert_int_eq(val(&h, sizeof(h)), -EINVAL);
	h.name[5] = 0;
	ck_assert_int_eq(val(&h, sizeof(h)), 0);
	h.reserved[3] = 7;
	ck_assert_int_eq(val(&h, sizeof(h)), -EINVAL);
	h.reserved[3] = 0;
	h.reserved0 = 1;
	ck_assert_int_eq(val(&h, sizeof(h)), -EINVAL);

	struct vramd_free f;
	memset(&f, 0, sizeof(f));
	proto_hdr_init(&f.hdr, VRAMD_FREE, sizeof(f), 1);
	f.reserved = 1;
	ck_assert_int_eq(val(&f, sizeof(f)), -EINVAL);

	struct vramd_status s;
	memset(&s, 0, sizeof(s));
	proto_hdr_init(&s.hdr, VRAMD_STATUS, sizeof(s), 1);
	s.flags = 2;
	ck_assert_int_eq(val(&s, sizeof(s)), -EINVAL);

	struct vramd_error e;
	memset(&e, 0, sizeof(e));
	proto_hdr_init(&e.hdr, VRAMD_ERROR, sizeof(e), 1);
	e.error = 5; /* must be negative */
	ck_assert_int_eq(val(&e, sizeof(e)), -EINVAL);
}
END_TEST

/* encode -> socket -> decode, with and without an fd; truncation closes fds */
START_TEST(test_roundtrip_fds)
{
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	int before = t_count_fds();

	struct vramd_alloc_reply r;
	memset(&r, 0, sizeof(r));
	proto_hdr_init(&r.hdr, VRAMD_ALLOC_REPLY, sizeof(r), 42);
	r.grant_id = 7;
	r.size = 2 << 20;
	int mfd = memfd_create("t", MFD_CLOEXEC);
	ck_assert_int_ge(mfd, 0);
	ck_assert_int_eq(proto_send(sv[0], &r, sizeof(r), mfd, 0), 0);
	close(mfd);

	char buf[VRAMD_MSG_MAX];
	int fds[PROTO_MAX_FDS], nfds;
	ssize_t n = proto_recv(sv[1], buf, sizeof(buf), fds, &nfds, 0);
	ck_assert_int_eq(n, sizeof(r));
	ck_assert_int_eq(nfds, 1);
	ck_assert_int_eq(fcntl(fds[0], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	const char *why;
	ck_assert_int_eq(proto_validate(buf, (size_t)n, &why), 0);
	ck_assert_uint_eq(((struct vramd_alloc_reply *)buf)->grant_id, 7);
	ck_assert_uint_eq(((struct vramd_hdr *)buf)->seq, 42);
	close(fds[0]);

	/* Truncated: message longer than the receive buffer; its fd is closed. */
	mfd = memfd_create("t", MFD_CLOEXEC);
	ck_assert_int_eq(proto_send(sv[0], &r, sizeof(r), mfd, 0), 0);
	close(mfd);
	n = proto_recv(sv[1], buf, 16, fds, &nfds, 0);
	ck_assert_int_eq(n, -EMSGSIZE);
	ck_assert_int_eq(nfds, 0);
	ck_assert_int_eq(t_count_fds(), before);

	/* Orderly EOF */
	close(sv[0]);
	ck_assert_int_eq(proto_recv(sv[1], buf, sizeof(buf), fds, &nfds, 0), 0);
	close(sv[1]);
}
END_TEST

START_TEST(test_size_parse)
{
	uint64_t v;
	ck_assert_int_eq(size_parse("8GiB", &v), 0);
	ck_assert_uint_eq(v, 8ull << 30);
	ck_assert_int_eq(size_parse("4GB", &v), 0);
	ck_assert_uint_eq(v, 4000000000ull);
	ck_assert_int_eq(size_parse("512 MiB", &v), 0);
	ck_assert_uint_eq(v, 512ull << 20);
	ck_assert_int_eq(size_parse("1.5GiB", &v), 0);
	ck_assert_uint_eq(v, 3ull << 29);
	ck_assert_int_eq(size_parse("123", &v), 0);
	ck_assert_uint_eq(v, 123);
	ck_assert_int_eq(size_parse("123B", &v), 0);
	ck_assert_int_eq(size_parse("1TiB", &v), 0);
	ck_assert_uint_eq(v, 1ull << 40);
	ck_assert_int_eq(size_parse("2TB", &v), 0);
	ck_assert_uint_eq(v, 2000000000000ull);
	ck_assert_int_eq(size_parse("8 KiB ", &v), 0);
	ck_assert_uint_eq(v, 8192);
	ck_assert_int_eq(size_parse("8gb", &v), -EINVAL);   /* units as written */
	ck_assert_int_eq(size_parse("8 apples", &v), -EINVAL);
	ck_assert_int_eq(size_parse("", &v), -EINVAL);
	ck_assert_int_eq(size_parse("GiB", &v), -EINVAL);
	ck_assert_int_eq(size_parse("-1GiB", &v), -EINVAL);
	ck_assert_int_eq(size_parse("1.5", &v), -EINVAL);
	ck_assert_int_eq(size_parse("99999999999999999999", &v), -ERANGE);
	ck_assert_int_eq(size_parse("20000000TiB", &v), -ERANGE);
	char buf[32];
	ck_assert_str_eq(size_format(8ull << 30, buf, sizeof(buf)), "8.00 GiB");
	ck_assert_str_eq(size_format(512, buf, sizeof(buf)), "512 B");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("uapi");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_layout);
	tcase_add_test(tc, test_valid_messages);
	tcase_add_test(tc, test_malformed_headers);
	tcase_add_test(tc, test_roundtrip_fds);
	tcase_add_test(tc, test_size_parse);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
