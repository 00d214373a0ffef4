/* SPDX-License-Identifier: MIT */
/*
 * The broker connection: HELLO, ALLOC (receive the fd, map it), FREE,
 * STATUS, and unsolicited RECLAIM requests.  One request is in flight at a
 * time per connection (a mutex); replies are matched by sequence number.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/proto.h"
#include "common/util.h"
#include "runtime/client.h"

extern char *program_invocation_short_name;

static int connect_socket(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return rt_error(-ENAMETOOLONG, "socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return rt_error(-errno, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		close(fd);
		return rt_error(r, "cannot reach vramd at %s: %s", path, strerror(-r));
	}
	return fd;
}

/* Keeps an unsolicited message (RECLAIM, OFFER) for run_pending; true if
 * it was one. */
static bool queue_unsolicited(struct vram_client *c, const struct vramd_hdr *h)
{
	if (h->opcode == VRAMD_RECLAIM) {
		if (c->npending < CLIENT_MAX_PENDING) {
			c->pending_ns[c->npending] = now_ns();
			c->pending[c->npending++] = *(const struct vramd_reclaim *)h;
		}
		return true;
	}
	if (h->opcode == VRAMD_OFFER) {
		const struct vramd_offer *o = (const void *)h;
		if (o->device < VRAMD_MAX_DEVICES)
			c->offered[o->device] = o->bytes; /* the latest says it all */
		return true;
	}
	return false;
}

/* Receives the reply to seq (handling unsolicited messages on the way).
 * Returns its length in c->rxbuf.  The reply must carry exactly one fd,
 * stored in *ret_fd, when ret_fd is given, and none when it is NULL.
 * ERROR replies are turned into their errno with the reason set. */
static ssize_t recv_reply(struct vram_client *c, uint64_t seq, uint16_t want, int *ret_fd)
{
	int fds[PROTO_MAX_FDS], nfds;
	int want_fds = ret_fd ? 1 : 0;
	if (ret_fd)
		*ret_fd = -1;
	for (int reset = 0;;) {
		ssize_t n = proto_recv(c->fd, c->rxbuf, VRAMD_MSG_MAX, fds, &nfds, reset ? MSG_DONTWAIT : 0);
		/* A broker that closes a connection it refused while our
		 * request sits unread in it makes the first receive fail with
		 * ECONNRESET; its reason is still queued behind that. */
		if (n == -ECONNRESET && !reset++)
			continue;
		if (n == 0 || (reset && n == -EAGAIN))
			return rt_error(-ECONNRESET, "vramd closed the connection");
		if (n < 0)
			return rt_error((int)n, "receiving from vramd: %s", strerror((int)-n));
		const char *why = NULL;
		const struct vramd_hdr *h = c->rxbuf;
		int r = proto_validate(c->rxbuf, (size_t)n, &why);
		if (r < 0) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			return rt_error(-EPROTO, "malformed message from vramd: %s", why);
		}
		if (h->opcode == VRAMD_RECLAIM || h->opcode == VRAMD_OFFER) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			queue_unsolicited(c, h);
			continue;
		}
		if (h->opcode == VRAMD_SHARE_PROGRESS && h->seq == seq) {
			const struct vramd_share_progress *pg = c->rxbuf;
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			if (c->share_progress)
				c->share_progress(c->share_user, pg->done, pg->total);
			continue;
		}
		if (h->opcode == VRAMD_ERROR && h->seq == 0) {
			/* unsolicited: the broker refused the connection */
			const struct vramd_error *e = c->rxbuf;
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			return rt_error(e->error, "%s", e->reason);
		}
		if (h->seq != seq) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			return rt_error(-EPROTO, "vramd answered request %llu, expected %llu",
					(unsigned long long)h->seq, (unsigned long long)seq);
		}
		if (h->opcode == VRAMD_ERROR) {
			const struct vramd_error *e = c->rxbuf;
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			return rt_error(e->error, "%s", e->reason);
		}
		if (h->opcode != want || nfds != want_fds) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			return rt_error(-EPROTO, "vramd sent %s with %d fds, expected %s", proto_opcode_name(h->opcode),
					nfds, proto_opcode_name(want));
		}
		if (ret_fd)
			*ret_fd = fds[0];
		return n;
	}
}

static int send_req(struct vram_client *c, void *msg, size_t len, uint16_t op)
{
	struct vramd_hdr *h = msg;
	proto_hdr_init(h, op, (uint32_t)len, ++c->seq);
	int r = proto_send(c->fd, msg, len, -1, 0);
	if (r < 0)
		return rt_error(r, "sending to vramd: %s", strerror(-r));
	return 0;
}

static void dev_from_wire(struct vram_device_info *o, const struct vramd_device *d)
{
	memset(o, 0, sizeof(*o));
	o->struct_size = sizeof(*o);
	o->index = d->index;
	o->backend = d->backend;
	o->flags = d->flags;
	o->numa_node = d->numa_node;
	o->ordinal = d->ordinal;
	o->total = d->total;
	o->used = d->used;
	o->granularity = d->granularity;
	o->reclaimable = d->reclaimable;
	memcpy(o->uuid, d->uuid, 16);
	str_copy(o->name, d->name, sizeof(o->name));
	str_copy(o->label, d->label, sizeof(o->label));
	o->ready = d->ready;
	o->ready_target = d->ready_target;
	o->ready_hits = d->ready_hits;
	o->ready_misses = d->ready_misses;
	o->ready_refilled = d->ready_refilled;
	o->cache = d->cache;
	o->cache_max = d->cache_max;
	o->cache_hits = d->cache_hits;
	o->cache_fills = d->cache_fills;
	o->cache_evictions = d->cache_evictions;
}

/* HELLO on c->fd; fills id, note and devices.  Lock held (or not yet
 * shared). */
static int hello(struct vram_client *c)
{
	struct vramd_hello m;
	int r;
	memset(&m, 0, sizeof(m));
	str_copy(m.name, c->name, sizeof(m.name));
	r = send_req(c, &m, sizeof(m), VRAMD_HELLO);
	/* A refused connection is closed by the broker after its reason,
	 * which is still there to read when the HELLO met the closed end. */
	if (r == 0 || r == -EPIPE || r == -ECONNRESET)
		r = (int)recv_reply(c, c->seq, VRAMD_HELLO_REPLY, NULL);
	if (r < 0) {
		if (r == -ECONNRESET)
			r = rt_error(-EPROTO, "vramd at %s refused the handshake (protocol version %u?)", c->socket,
				     VRAMD_PROTO_VERSION);
		return r;
	}
	const struct vramd_hello_reply *rep = c->rxbuf;
	c->id = rep->client_id;
	str_copy(c->note, rep->note, sizeof(c->note));
	c->ndev = rep->ndevices;
	const struct vramd_device *d = (const void *)(rep + 1);
	for (uint32_t i = 0; i < c->ndev; i++)
		dev_from_wire(&c->dev[i], &d[i]);
	return 0;
}

static bool conn_lost(int r)
{
	return r == -EPIPE || r == -ECONNRESET || r == -ENOTCONN || r == -ECONNREFUSED || r == -ECONNABORTED;
}

/* Says every DEMAND of c again (to a broker that restarted).  Lock held.
 * 0 or the first error. */
static int redeclare_demands(struct vram_client *c)
{
	int first_err = 0;
	for (uint32_t d = 0; d < c->ndev && d < VRAMD_MAX_DEVICES; d++) {
		if (!c->demand_want[d])
			continue;
		struct vramd_demand m;
		memset(&m, 0, sizeof(m));
		m.device = d;
		m.want = c->demand_want[d];
		m.min = c->demand_min[d];
		proto_hdr_init(&m.hdr, VRAMD_DEMAND, sizeof(m), ++c->seq);
		int r = proto_send(c->fd, &m, sizeof(m), -1, 0);
		if (r == 0)
			r = (int)recv_reply(c, c->seq, VRAMD_OK, NULL);
		if (r < 0 && !first_err)
			first_err = r;
	}
	return first_err;
}

/* The broker went away (restart, crash): connect again with backoff, say
 * HELLO, and hand every grant's fd back (REGISTER: the memfd, or the CUDA
 * export the broker sent) so that the new broker accounts what this process
 * holds.  Mappings stay valid throughout: the memory lives in the fds and,
 * for CUDA, in this process's imported handles.  Lock held.  0 or -errno. */
static int reconnect(struct vram_client *c)
{
	uint64_t budget_ms = 10000, delay_ms = 10;
	const char *env = getenv("VRAMD_RECONNECT_TIMEOUT_MS");
	if (env && *env)
		budget_ms = strtoull(env, NULL, 10);
	uint8_t old_uuid[VRAMD_MAX_DEVICES][16];
	for (uint32_t i = 0; i < c->ndev; i++)
		memcpy(old_uuid[i], c->dev[i].uuid, 16);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	/* What the old broker asked or offered is void: the new one has
	 * other reclaim ids and its own view of who holds what.  Cleared
	 * now, not once the grants are registered: the new broker may ask
	 * (RECLAIM) as soon as it accounts them, while the replies to the
	 * rest are read, and that ask must be answered. */
	c->npending = 0;
	memset(c->offered, 0, sizeof(c->offered));
	uint64_t t0 = now_ns();
	for (;;) {
		int fd = connect_socket(c->socket);
		if (fd >= 0) {
			c->fd = fd;
			if (hello(c) == 0)
				break;
			close(c->fd);
			c->fd = -1;
		}
		if ((now_ns() - t0) / 1000000 >= budget_ms)
			return rt_error(-ECONNRESET, "vramd at %s went away and did not come back within %llu ms",
					c->socket, (unsigned long long)budget_ms);
		struct timespec ts = { (time_t)(delay_ms / 1000), (long)(delay_ms % 1000) * 1000000L };
		nanosleep(&ts, NULL);
		delay_ms = MIN(delay_ms * 2, 1000);
	}
	int first_err = 0;
	for (struct vram_grant *g = c->grants; g; g = g->next) {
		if (g->fd < 0 && g->freeing) {
			g->id = 0; /* unknown to this broker: nothing to free there */
			continue;
		}
		if (g->fd < 0) {
			if (!first_err)
				first_err = rt_error(-EOPNOTSUPP, "grant %llu has no fd to re-register",
						     (unsigned long long)g->id);
			continue;
		}
		struct vramd_register m;
		memset(&m, 0, sizeof(m));
		memcpy(m.uuid, old_uuid[g->device < VRAMD_MAX_DEVICES ? g->device : 0], 16);
		m.size = g->size;
		m.flags = g->shared ? 0 : g->flags;
		m.what = g->shared ? VRAMD_REGISTER_COPY : VRAMD_REGISTER_GRANT;
		proto_hdr_init(&m.hdr, VRAMD_REGISTER, sizeof(m), ++c->seq);
		int r = proto_send(c->fd, &m, sizeof(m), g->fd, 0);
		if (r == 0)
			r = (int)recv_reply(c, c->seq, VRAMD_ALLOC_REPLY, NULL); /* REGISTER: no fd back */
		if (r < 0) {
			if (!first_err)
				first_err = r;
			g->id = 0; /* unknown to this broker: nothing to free there */
			continue;
		}
		const struct vramd_alloc_reply *rep = c->rxbuf;
		g->id = rep->grant_id;
		g->device = rep->device;
	}
	int r = redeclare_demands(c);
	if (r < 0 && !first_err)
		first_err = r;
	c->reconnects++;
	return first_err;
}

/* send + receive, reconnecting once if the broker went away.  A request
 * that names something of the old connection (a FREE names a grant id,
 * which the reconnect changes) is not sent again: resend false makes it
 * return 0 once the reconnect is done, the caller deciding what that
 * means. */
static ssize_t transact_ex(struct vram_client *c, void *msg, size_t len, uint16_t op, uint16_t want, int *ret_fd,
			   bool resend)
{
	for (int attempt = 0;; attempt++) {
		ssize_t r = send_req(c, msg, len, op);
		if (r == 0)
			r = recv_reply(c, c->seq, want, ret_fd);
		if (r >= 0 || attempt || !conn_lost((int)r))
			return r;
		char keep[1024];
		str_copy(keep, vram_last_error(), sizeof(keep));
		if (reconnect(c) < 0 && c->fd < 0)
			return rt_error((int)r, "%s; reconnecting failed: %s", keep, vram_last_error());
		if (!resend) {
			rt_error_clear();
			return 0;
		}
	}
}

static ssize_t transact(struct vram_client *c, void *msg, size_t len, uint16_t op, uint16_t want, int *ret_fd)
{
	return transact_ex(c, msg, len, op, want, ret_fd, true);
}

int vram_connect(const char *socket_path, const char *name, vram_client **ret)
{
	rt_error_clear();
	if (!ret)
		return rt_error(-EINVAL, "vram_connect: ret_client is NULL");
	if (!socket_path || !*socket_path)
		socket_path = getenv("VRAMD_SOCKET");
	if (!socket_path || !*socket_path)
		socket_path = VRAM_DEFAULT_SOCKET;
	if (!name)
		name = program_invocation_short_name;
	if (strlen(name) >= VRAMD_NAME_MAX)
		return rt_error(-ENAMETOOLONG, "client name longer than %u bytes", VRAMD_NAME_MAX - 1);

	struct vram_client *c = calloc(1, sizeof(*c));
	if (!c)
		return rt_error(-ENOMEM, "out of memory");
	c->fd = -1;
	pthread_mutex_init(&c->lock, NULL);
	c->socket = strdup(socket_path);
	c->name = strdup(name);
	c->rxbuf = malloc(VRAMD_MSG_MAX);
	if (!c->socket || !c->name || !c->rxbuf) {
		vram_close(c);
		return rt_error(-ENOMEM, "out of memory");
	}
	int r = connect_socket(socket_path);
	if (r < 0) {
		vram_close(c);
		return r;
	}
	c->fd = r;

	if ((r = hello(c)) < 0) {
		vram_close(c);
		return r;
	}
	*ret = c;
	return 0;
}

static void grant_unmap(struct vram_grant *g)
{
	if (g->fd >= 0)
		close(g->fd);
	g->fd = -1;
	if (g->host)
		munmap(g->host, g->size);
	if (g->cuda)
		cuda_grant_unimport(g);
	g->host = NULL;
}

void vram_close(vram_client *c)
{
	if (!c)
		return;
	/* Closing the socket returns every grant at once; unmap ours.  The
	 * broker revokes host memory itself, but cannot revoke a CUDA import:
	 * a connection that closes holding one stays charged until this
	 * process exits, so those are freed one by one, once released. */
	while (c->grants) {
		struct vram_grant *g = c->grants;
		c->grants = g->next;
		bool cuda = !g->shared && g->device < c->ndev && c->dev[g->device].backend == VRAM_BACKEND_CUDA;
		grant_unmap(g);
		if (cuda && c->fd >= 0) {
			struct vramd_free m;
			memset(&m, 0, sizeof(m));
			m.grant_id = g->id;
			if (send_req(c, &m, sizeof(m), VRAMD_FREE) == 0)
				recv_reply(c, c->seq, VRAMD_OK, NULL);
		}
		free(g);
	}
	client_prepared_release(c);
	if (c->fd >= 0)
		close(c->fd);
	pthread_mutex_destroy(&c->lock);
	free(c->socket);
	free(c->name);
	free(c->rxbuf);
	free(c);
}

const char *vram_client_socket(const vram_client *c) { return c->socket; }
uint32_t vram_client_id(const vram_client *c) { return c->id; }
const char *vram_client_note(const vram_client *c) { return c->note; }
int vram_client_fd(const vram_client *c) { return c->fd; }
int vram_device_count(const vram_client *c) { return (int)c->ndev; }

int vram_device_info(const vram_client *c, uint32_t index, struct vram_device_info *ret)
{
	if (index >= c->ndev)
		return rt_error(-ENODEV, "no device %u", index);
	*ret = c->dev[index];
	return 0;
}

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Parses 32 hex digits (dashes ignored, optional "GPU-" prefix). */
static int parse_uuid(const char *s, uint8_t out[16])
{
	if (!strncmp(s, "GPU-", 4))
		s += 4;
	int n = 0;
	for (; *s; s++) {
		if (*s == '-')
			continue;
		int v = hexval(*s);
		if (v < 0 || n >= 32)
			return -EINVAL;
		if (n % 2 == 0)
			out[n / 2] = (uint8_t)(v << 4);
		else
			out[n / 2] |= (uint8_t)v;
		n++;
	}
	return n == 32 ? 0 : -EINVAL;
}

int vram_device_find(const vram_client *c, const char *name)
{
	uint8_t uuid[16];
	bool by_uuid = parse_uuid(name, uuid) == 0;
	for (uint32_t i = 0; i < c->ndev; i++) {
		if (!strcmp(c->dev[i].name, name))
			return (int)i;
		if (by_uuid && !memcmp(c->dev[i].uuid, uuid, 16))
			return (int)i;
	}
	char list[512] = "";
	for (uint32_t i = 0; i < c->ndev; i++) {
		if (i)
			strncat(list, ", ", sizeof(list) - strlen(list) - 1);
		strncat(list, c->dev[i].name, sizeof(list) - strlen(list) - 1);
	}
	return rt_error(-ENODEV, "no device \"%s\" (devices: %s)", name, list);
}

/* Runs the reclaim handler for every queued RECLAIM, outside the lock. */
/* Hands the OFFERs that came to the offer handler, one device at a time,
 * unless a handler (of either kind) runs already.  Returns how many. */
static int run_offers(struct vram_client *c)
{
	int handled = 0;
	for (uint32_t d = 0; d < VRAMD_MAX_DEVICES; d++) {
		pthread_mutex_lock(&c->lock);
		uint64_t bytes = c->offered[d];
		vram_offer_fn fn = c->offer_fn;
		void *user = c->offer_user;
		if (!bytes || !fn || c->handling) {
			pthread_mutex_unlock(&c->lock);
			continue;
		}
		c->offered[d] = 0;
		c->handling = true;
		pthread_mutex_unlock(&c->lock);
		fn(user, d, bytes);
		pthread_mutex_lock(&c->lock);
		c->handling = false;
		pthread_mutex_unlock(&c->lock);
		handled++;
	}
	return handled;
}

/* Removes and returns pending RECLAIM i.  Lock held. */
static struct vramd_reclaim pending_take(struct vram_client *c, uint32_t i)
{
	struct vramd_reclaim m = c->pending[i];
	memmove(&c->pending[i], &c->pending[i + 1], sizeof(m) * (c->npending - i - 1));
	memmove(&c->pending_ns[i], &c->pending_ns[i + 1], sizeof(c->pending_ns[0]) * (c->npending - i - 1));
	c->npending--;
	return m;
}

/* RECLAIM_DONE for reclaim_id with bytes freed.  Lock held. */
static void reclaim_done(struct vram_client *c, uint64_t reclaim_id, uint64_t freed)
{
	struct vramd_reclaim_done d;
	memset(&d, 0, sizeof(d));
	d.reclaim_id = reclaim_id;
	d.bytes_freed = freed;
	send_req(c, &d, sizeof(d), VRAMD_RECLAIM_DONE);
}

/* Without a handler (a pager being made) RECLAIMs wait for one, but not
 * past half their deadline: then the client says it freed nothing, so that
 * the broker asks others or fails the asker at once instead of waiting out
 * the deadline ("ignored").  While a load streams no handler can come
 * before it ends: at once.  Lock held. */
static void answer_unhandled(struct vram_client *c)
{
	uint64_t now = now_ns();
	for (uint32_t i = 0; i < c->npending;) {
		if (!c->loading && (now - c->pending_ns[i]) / 1000000 < c->pending[i].deadline_ms / 2) {
			i++;
			continue;
		}
		struct vramd_reclaim m = pending_take(c, i);
		reclaim_done(c, m.reclaim_id, 0);
	}
}

static int run_pending(struct vram_client *c)
{
	int handled = 0;
	for (;;) {
		pthread_mutex_lock(&c->lock);
		/* Without a handler, RECLAIMs wait for one for half their
		 * deadline (answer_unhandled). */
		/* One handler at a time: a call the handler makes (vram_free)
		 * or another thread's call comes here too, and would run a
		 * second handler inside or beside the first (the pager's would
		 * wait for the first one's demotion: a deadlock).  The running
		 * one's loop takes what arrives meanwhile. */
		if (!c->reclaim_fn)
			answer_unhandled(c);
		if (!c->npending || !c->reclaim_fn || (c->handling && !handled)) {
			if (handled)
				c->handling = false;
			pthread_mutex_unlock(&c->lock);
			return handled + run_offers(c);
		}
		c->handling = true;
		struct vramd_reclaim m = pending_take(c, 0);
		pthread_mutex_unlock(&c->lock);

		uint64_t freed = 0;
		if (c->reclaim_fn)
			freed = c->reclaim_fn(c->reclaim_user, m.device, m.bytes, m.deadline_ms);
		pthread_mutex_lock(&c->lock);
		reclaim_done(c, m.reclaim_id, freed);
		pthread_mutex_unlock(&c->lock);
		handled++;
	}
}

/* Puts a new grant g into c's list, unlocks, runs the RECLAIMs that came
 * meanwhile, and hands g out.  Lock held on entry; 0. */
static int grant_publish(struct vram_client *c, struct vram_grant *g, vram_grant **ret)
{
	g->next = c->grants;
	if (c->grants)
		c->grants->prev = g;
	c->grants = g;
	pthread_mutex_unlock(&c->lock);
	run_pending(c);
	*ret = g;
	return 0;
}

int vram_alloc(vram_client *c, uint32_t device, uint64_t size, uint32_t flags, vram_grant **ret)
{
	rt_error_clear();
	if (device >= c->ndev)
		return rt_error(-ENODEV, "no device %u", device);
	if (flags & ~VRAM_ALLOC_RECLAIMABLE)
		return rt_error(-EINVAL, "unknown alloc flags 0x%x", flags);
	if (size == 0)
		return rt_error(-EINVAL, "allocation of 0 bytes");
	struct vram_grant *g = calloc(1, sizeof(*g));
	if (!g)
		return rt_error(-ENOMEM, "out of memory");
	g->fd = -1;

	struct vramd_alloc m;
	memset(&m, 0, sizeof(m));
	m.device = device;
	m.flags = flags;
	m.size = size;
	int fd = -1;
	pthread_mutex_lock(&c->lock);
	int r = (int)transact(c, &m, sizeof(m), VRAMD_ALLOC, VRAMD_ALLOC_REPLY, &fd);
	if (r < 0) {
		pthread_mutex_unlock(&c->lock);
		free(g);
		run_pending(c);
		return r;
	}
	const struct vramd_alloc_reply *rep = c->rxbuf;
	g->id = rep->grant_id;
	g->size = rep->size;
	g->device = device;
	g->flags = flags;
	g->backend = c->dev[device].backend;
	if (rep->size < size || rep->device != device) {
		r = rt_error(-EPROTO, "vramd granted %llu bytes on device %u for %llu on %u",
			     (unsigned long long)rep->size, rep->device, (unsigned long long)size, device);
	} else if (c->dev[device].flags & VRAM_DEV_HOST_MAPPABLE) {
		void *p = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED)
			r = rt_error(-errno, "mapping grant %llu (%llu bytes): %s", (unsigned long long)g->id,
				     (unsigned long long)g->size, strerror(errno));
		else {
			g->host = p;
			/* kept: the proof of this memory if the broker restarts */
			g->fd = fd;
			fd = -1;
		}
	} else if (g->backend == VRAM_BACKEND_CUDA) {
		r = cuda_grant_import(c, g, fd);
		if (r == 0) {
			/* kept too: importing leaves the export usable, and it is
			 * what proves the memory to a restarted broker (it also
			 * holds the memory, until grant_unmap closes it) */
			g->fd = fd;
			fd = -1;
		}
	} else {
		r = rt_error(-ENOTSUP, "device %s cannot be mapped by this runtime", c->dev[device].name);
	}
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		/* Give it back so nothing stays accounted to us (the reason
		 * for the failure stays the message). */
		struct vramd_free f;
		struct rt_saved_error e;
		memset(&f, 0, sizeof(f));
		f.grant_id = g->id;
		rt_error_save(&e);
		if (send_req(c, &f, sizeof(f), VRAMD_FREE) == 0)
			recv_reply(c, c->seq, VRAMD_OK, NULL);
		rt_error_restore(&e);
		pthread_mutex_unlock(&c->lock);
		free(g);
		return r;
	}
	return grant_publish(c, g, ret);
}

/* FREE (or UNSHARE, for a shared copy) of g, not sent again if the
 * broker went away meanwhile (0 then): the reconnect gave the grants new
 * ids.  Lock held. */
static int free_msg(struct vram_client *c, const struct vram_grant *g)
{
	if (!g->id)
		return 0; /* the broker does not know it: nothing to free there */
	if (g->shared) {
		struct vramd_unshare u;
		memset(&u, 0, sizeof(u));
		u.copy_id = g->id;
		return (int)transact_ex(c, &u, sizeof(u), VRAMD_UNSHARE, VRAMD_OK, NULL, false);
	}
	struct vramd_free m;
	memset(&m, 0, sizeof(m));
	m.grant_id = g->id;
	return (int)transact_ex(c, &m, sizeof(m), VRAMD_FREE, VRAMD_OK, NULL, false);
}

int vram_free(vram_client *c, vram_grant *g)
{
	if (!g)
		return 0;
	rt_error_clear();
	pthread_mutex_lock(&c->lock);
	/* The memory goes out of reach first; a memfd's fd stays, and g stays
	 * listed, until the broker has freed it: a FREE that meets a broker
	 * restart is not resent with the old id (it may name another grant
	 * now), but the reconnect re-registered g under a new one (with the
	 * fd store, it took the restored grant over), which is freed then.  A
	 * CUDA export's fd goes first (the broker recycles the memory only
	 * once no process holds it): such a grant is not re-registered, and
	 * with the fd store its restored copy stays until this process exits. */
	bool cuda = !g->shared && g->device < c->ndev && c->dev[g->device].backend == VRAM_BACKEND_CUDA;
	int fd = g->fd;
	g->fd = -1;
	g->freeing = true;
	grant_unmap(g);
	if (!cuda)
		g->fd = fd;
	else if (fd >= 0)
		close(fd);
	uint32_t before = c->reconnects;
	int r = free_msg(c, g);
	if (r == 0 && c->reconnects != before)
		r = free_msg(c, g);
	if (g->prev)
		g->prev->next = g->next;
	else
		c->grants = g->next;
	if (g->next)
		g->next->prev = g->prev;
	grant_unmap(g);
	pthread_mutex_unlock(&c->lock);
	free(g);
	run_pending(c);
	return r < 0 ? r : 0;
}

uint64_t vram_grant_id(const vram_grant *g) { return g->id; }
uint64_t vram_grant_size(const vram_grant *g) { return g->size; }
uint32_t vram_grant_device(const vram_grant *g) { return g->device; }
void *vram_grant_host_ptr(const vram_grant *g) { return g->host; }
uint64_t vram_grant_device_ptr(const vram_grant *g) { return g->dptr; }

void vram_set_offer_handler(vram_client *c, vram_offer_fn fn, void *user)
{
	pthread_mutex_lock(&c->lock);
	c->offer_fn = fn;
	c->offer_user = user;
	pthread_mutex_unlock(&c->lock);
}

int vram_demand(vram_client *c, uint32_t device, uint64_t want, uint64_t min)
{
	rt_error_clear();
	if (device >= c->ndev)
		return rt_error(-ENODEV, "no device %u (the broker has %u)", device, c->ndev);
	if (min > want)
		return rt_error(-EINVAL, "demand on %s: min %llu above want %llu", c->dev[device].name,
				(unsigned long long)min, (unsigned long long)want);
	struct vramd_demand m;
	memset(&m, 0, sizeof(m));
	m.device = device;
	m.want = want;
	m.min = min;
	pthread_mutex_lock(&c->lock);
	int r = (int)transact(c, &m, sizeof(m), VRAMD_DEMAND, VRAMD_OK, NULL);
	if (r >= 0) {
		c->demand_want[device] = want;
		c->demand_min[device] = want ? min : 0;
	}
	pthread_mutex_unlock(&c->lock);
	run_pending(c);
	return r < 0 ? r : 0;
}

void vram_set_reclaim_handler(vram_client *c, vram_reclaim_fn fn, void *user)
{
	pthread_mutex_lock(&c->lock);
	c->reclaim_fn = fn;
	c->reclaim_user = user;
	pthread_mutex_unlock(&c->lock);
	run_pending(c); /* RECLAIMs that came before a handler existed */
}

int vram_dispatch(vram_client *c)
{
	int fds[PROTO_MAX_FDS], nfds;
	pthread_mutex_lock(&c->lock);
	if (c->fd < 0 && reconnect(c) < 0 && c->fd < 0) {
		/* an earlier reconnect gave up: try again (with its backoff) */
		pthread_mutex_unlock(&c->lock);
		return rt_error(-ECONNRESET, "vramd connection lost: %s", vram_last_error());
	}
	for (;;) {
		ssize_t n = proto_recv(c->fd, c->rxbuf, VRAMD_MSG_MAX, fds, &nfds, MSG_DONTWAIT);
		if (n == -EAGAIN)
			break;
		if (n <= 0) {
			int r = n == 0 ? -ECONNRESET : (int)n;
			if (conn_lost(r) && reconnect(c) == 0)
				break;
			pthread_mutex_unlock(&c->lock);
			return rt_error(r, "vramd connection lost: %s", vram_last_error());
		}
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		const char *why;
		const struct vramd_hdr *h = c->rxbuf;
		if (proto_validate(c->rxbuf, (size_t)n, &why) < 0 || nfds || !queue_unsolicited(c, h)) {
			pthread_mutex_unlock(&c->lock);
			return rt_error(-EPROTO, "unexpected message from vramd");
		}
	}
	pthread_mutex_unlock(&c->lock);
	return run_pending(c);
}

int client_dispatch_wait(struct vram_client *c, int ms, bool reconnect)
{
	int fd = vram_client_fd(c);

	if (fd < 0) {
		int r = reconnect ? vram_dispatch(c) : -ENOTCONN;
		if (r < 0) {
			struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
			nanosleep(&ts, NULL);
		}
		return r;
	}
	/* A hang-up is read as the end of the stream: vram_dispatch
	 * reconnects (grants registered again, demands said again). */
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	if (poll(&pf, 1, ms) > 0)
		return vram_dispatch(c);
	return run_pending(c);
}

static void *watch_main(void *arg)
{
	struct client_watch *w = arg;

	while (!atomic_load(&w->stop))
		client_dispatch_wait(w->c, 50, false);
	return NULL;
}

void client_watch_start(struct client_watch *w, struct vram_client *c, bool loading)
{
	w->c = c;
	w->loading = loading;
	atomic_store(&w->stop, false);
	w->started = pthread_create(&w->thread, NULL, watch_main, w) == 0;
	if (w->started && loading) {
		pthread_mutex_lock(&c->lock);
		c->loading++;
		pthread_mutex_unlock(&c->lock);
	}
}

void client_watch_stop(struct client_watch *w)
{
	if (!w->started)
		return;
	atomic_store(&w->stop, true);
	pthread_join(w->thread, NULL);
	w->started = false;
	if (w->loading) {
		pthread_mutex_lock(&w->c->lock);
		w->c->loading--;
		pthread_mutex_unlock(&w->c->lock);
	}
}

int vram_get_status(vram_client *c, struct vram_status **ret)
{
	rt_error_clear();
	struct vram_status *s = calloc(1, sizeof(*s));
	if (!s)
		return rt_error(-ENOMEM, "out of memory");
	s->struct_size = sizeof(*s);
	uint32_t first = 0;
	int r = 0;
	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct vramd_status m;
		memset(&m, 0, sizeof(m));
		m.first_client = first;
		if ((r = (int)transact(c, &m, sizeof(m), VRAMD_STATUS, VRAMD_STATUS_REPLY, NULL)) < 0)
			break;
		const struct vramd_status_reply *rep = c->rxbuf;
		const struct vramd_device *d = (const void *)(rep + 1);
		const struct vramd_client_info *ci = (const void *)(d + rep->ndevices);
		if (first == 0) {
			s->ndevices = rep->ndevices;
			s->broker_pid = rep->broker_pid;
			s->grants = rep->grants;
			s->protocol_errors = rep->protocol_errors;
			s->uptime_ms = rep->uptime_ms;
			str_copy(s->note, rep->note, sizeof(s->note));
			s->devices = calloc(rep->ndevices ? rep->ndevices : 1, sizeof(*s->devices));
			s->clients = calloc(rep->clients_total ? rep->clients_total : 1, sizeof(*s->clients));
			if (!s->devices || !s->clients) {
				r = rt_error(-ENOMEM, "out of memory");
				break;
			}
			for (uint32_t i = 0; i < rep->ndevices; i++)
				dev_from_wire(&s->devices[i], &d[i]);
			/* keep the HELLO copy fresh too */
			for (uint32_t i = 0; i < rep->ndevices && i < c->ndev; i++)
				dev_from_wire(&c->dev[i], &d[i]);
		}
		uint32_t cap = rep->clients_total;
		for (uint32_t i = 0; i < rep->nclients && s->nclients < cap; i++) {
			struct vram_client_status *o = &s->clients[s->nclients++];
			o->struct_size = sizeof(*o);
			o->id = ci[i].id;
			o->pid = ci[i].pid;
			o->uid = ci[i].uid;
			o->gid = ci[i].gid;
			o->ngrants = ci[i].ngrants;
			o->flags = ci[i].flags;
			o->reclaims_answered = ci[i].reclaims_answered;
			o->reclaims_missed = ci[i].reclaims_missed;
			o->held = ci[i].held;
			o->reclaimable = ci[i].reclaimable;
			memcpy(o->held_dev, ci[i].held_dev, sizeof(o->held_dev));
			str_copy(o->name, ci[i].name, sizeof(o->name));
			memcpy(o->want_dev, ci[i].want_dev, sizeof(o->want_dev));
			memcpy(o->share_dev, ci[i].share_dev, sizeof(o->share_dev));
			memcpy(o->shared_dev, ci[i].shared_dev, sizeof(o->shared_dev));
			o->reclaim_p50_us = ci[i].reclaim_p50_us;
			o->reclaim_p99_us = ci[i].reclaim_p99_us;
			o->reclaim_asked = ci[i].reclaim_asked;
			o->reclaim_freed = ci[i].reclaim_freed;
		}
		first += rep->nclients;
		if (rep->nclients == 0 || first >= rep->clients_total || s->nclients >= cap)
			break;
	}
	pthread_mutex_unlock(&c->lock);
	run_pending(c);
	if (r < 0) {
		vram_status_free(s);
		return r;
	}
	*ret = s;
	return 0;
}

/* One request that answers OK (or TEXT into *ret_text when wanted). */
static int simple_request(vram_client *c, void *msg, size_t len, uint16_t op, char **ret_text)
{
	int r;
	rt_error_clear();
	pthread_mutex_lock(&c->lock);
	r = (int)transact(c, msg, len, op, ret_text ? VRAMD_TEXT : VRAMD_OK, NULL);
	if (r > 0 && ret_text) {
		const struct vramd_text *t = c->rxbuf;
		char *txt = malloc((size_t)t->len + 1);
		if (!txt)
			r = rt_error(-ENOMEM, "out of memory");
		else {
			memcpy(txt, t + 1, t->len);
			txt[t->len] = '\0';
			*ret_text = txt;
		}
	}
	pthread_mutex_unlock(&c->lock);
	run_pending(c);
	return r < 0 ? r : 0;
}

int vram_quota_set(vram_client *c, const char *subject, const char *device, uint32_t flags, uint64_t floor,
		   uint64_t ceiling)
{
	struct vramd_quota_set m;
	memset(&m, 0, sizeof(m));
	if (!subject || !device || strlen(subject) >= sizeof(m.subject) || strlen(device) >= sizeof(m.device))
		return rt_error(-EINVAL, "quota subject or device missing or too long");
	if (!flags || (flags & ~(VRAM_QUOTA_FLOOR | VRAM_QUOTA_CEILING)))
		return rt_error(-EINVAL, "give a floor, a ceiling or both");
	str_copy(m.subject, subject, sizeof(m.subject));
	str_copy(m.device, device, sizeof(m.device));
	m.flags = flags;
	m.floor = floor;
	m.ceiling = ceiling;
	return simple_request(c, &m, sizeof(m), VRAMD_QUOTA_SET, NULL);
}

int vram_quota_rm(vram_client *c, const char *subject, const char *device)
{
	struct vramd_quota_rm m;
	memset(&m, 0, sizeof(m));
	if (!subject || strlen(subject) >= sizeof(m.subject) || (device && strlen(device) >= sizeof(m.device)))
		return rt_error(-EINVAL, "quota subject or device missing or too long");
	str_copy(m.subject, subject, sizeof(m.subject));
	if (device)
		str_copy(m.device, device, sizeof(m.device));
	return simple_request(c, &m, sizeof(m), VRAMD_QUOTA_RM, NULL);
}

int vram_quota_list(vram_client *c, char **ret_json)
{
	struct vramd_hdr h;
	return simple_request(c, &h, sizeof(h), VRAMD_QUOTA_LIST, ret_json);
}

int vram_cache_list(vram_client *c, char **ret_json)
{
	struct vramd_hdr h;
	return simple_request(c, &h, sizeof(h), VRAMD_CACHE_LIST, ret_json);
}

int vram_cache_drop(vram_client *c, int fd, uint32_t flags)
{
	struct vramd_cache_drop m;
	rt_error_clear();
	if (flags & ~(VRAM_CACHE_DROP_ALL | VRAM_CACHE_DROP_FORCE))
		return rt_error(-EINVAL, "unknown cache drop flags 0x%x", flags);
	if ((fd < 0) != !!(flags & VRAM_CACHE_DROP_ALL))
		return rt_error(-EINVAL, "a cache drop takes a file's fd or VRAM_CACHE_DROP_ALL");
	memset(&m, 0, sizeof(m));
	m.flags = (flags & VRAM_CACHE_DROP_ALL ? VRAMD_CACHE_DROP_ALL : 0) |
		  (flags & VRAM_CACHE_DROP_FORCE ? VRAMD_CACHE_DROP_FORCE : 0);
	pthread_mutex_lock(&c->lock);
	proto_hdr_init(&m.hdr, VRAMD_CACHE_DROP, sizeof(m), ++c->seq);
	int r = proto_send(c->fd, &m, sizeof(m), fd, 0);
	if (r < 0)
		r = rt_error(r, "sending to vramd: %s", strerror(-r));
	else
		r = (int)recv_reply(c, c->seq, VRAMD_OK, NULL);
	pthread_mutex_unlock(&c->lock);
	run_pending(c);
	return r < 0 ? r : 0;
}

int vram_evict(vram_client *c, uint32_t client_id)
{
	struct vramd_evict m;
	memset(&m, 0, sizeof(m));
	m.client_id = client_id;
	return simple_request(c, &m, sizeof(m), VRAMD_EVICT, NULL);
}

int vram_reload(vram_client *c)
{
	struct vramd_hdr h;
	return simple_request(c, &h, sizeof(h), VRAMD_RELOAD, NULL);
}

int vram_refresh_devices(vram_client *c)
{
	struct vram_status *s;
	int r = vram_get_status(c, &s);
	if (r < 0)
		return r;
	vram_status_free(s);
	return 0;
}

void vram_status_free(struct vram_status *s)
{
	if (!s)
		return;
	free(s->devices);
	free(s->clients);
	free(s);
}

/* Maps the copy a SHARE_REPLY brought (fd: taken) read-only into g. */
static int map_copy(struct vram_client *c, struct vram_grant *g, int fd)
{
	int r = 0;
	if (c->dev[g->device].flags & VRAM_DEV_HOST_MAPPABLE) {
		void *p = mmap(NULL, g->size, PROT_READ, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED)
			r = rt_error(-errno, "mapping copy %llu (%llu bytes): %s", (unsigned long long)g->id,
				     (unsigned long long)g->size, strerror(errno));
		else
			g->host = p;
	} else if (g->backend == VRAM_BACKEND_CUDA) {
		r = cuda_grant_import(c, g, fd);
	} else {
		r = rt_error(-ENOTSUP, "device %s cannot be mapped by this runtime", c->dev[g->device].name);
	}
	if (r < 0) {
		close(fd);
		return r;
	}
	g->fd = fd; /* kept: what proves the copy to a restarted broker */
	return 0;
}

int client_share(struct vram_client *c, uint32_t device, const struct vramd_share_run *runs, uint32_t nruns,
		 int file_fd, vram_progress_fn progress, void *user, struct vram_grant **ret, uint32_t *ret_how)
{
	if (device >= c->ndev)
		return rt_error(-ENODEV, "no device %u", device);
	if (!nruns || nruns > VRAMD_SHARE_RUNS_MAX)
		return rt_error(-EINVAL, "a shared copy of %u runs (1 to %u)", nruns, VRAMD_SHARE_RUNS_MAX);
	size_t len = sizeof(struct vramd_share) + (size_t)nruns * sizeof(*runs);
	_cleanup_free_ struct vramd_share *m = calloc(1, len);
	struct vram_grant *g = calloc(1, sizeof(*g));
	if (!m || !g) {
		free(g);
		return rt_error(-ENOMEM, "out of memory");
	}
	m->device = device;
	m->nruns = nruns;
	memcpy(m + 1, runs, (size_t)nruns * sizeof(*runs));
	int fd = -1;
	pthread_mutex_lock(&c->lock);
	proto_hdr_init(&m->hdr, VRAMD_SHARE, (uint32_t)len, ++c->seq);
	c->share_progress = progress;
	c->share_user = user;
	int r = proto_send(c->fd, m, len, file_fd, 0);
	if (r < 0)
		r = rt_error(r, "sending to vramd: %s", strerror(-r));
	else
		r = (int)recv_reply(c, c->seq, VRAMD_SHARE_REPLY, &fd);
	c->share_progress = NULL;
	if (r >= 0) {
		const struct vramd_share_reply *rep = c->rxbuf;
		*g = (struct vram_grant){ .id = rep->copy_id, .size = rep->size, .device = device, .fd = -1,
					  .backend = c->dev[device].backend, .shared = true };
		*ret_how = rep->how;
		r = rep->device == device ? map_copy(c, g, fd)
					  : rt_error(-EPROTO, "vramd sent a copy on device %u for %u", rep->device, device);
		if (r < 0 && rep->device == device) {
			/* not ours after all: the broker counts it no more */
			struct vramd_unshare u = { .copy_id = g->id };
			struct rt_saved_error e;
			rt_error_save(&e);
			if (send_req(c, &u, sizeof(u), VRAMD_UNSHARE) == 0)
				recv_reply(c, c->seq, VRAMD_OK, NULL);
			rt_error_restore(&e);
		}
	}
	if (r < 0) {
		pthread_mutex_unlock(&c->lock);
		free(g);
		run_pending(c);
		return r;
	}
	return grant_publish(c, g, ret);
}
