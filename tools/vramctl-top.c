/* SPDX-License-Identifier: MIT */
/*
 * vramctl top: a live view of the broker, refreshed every interval (1 s),
 * like top or nvidia-smi dmon: each device's use, and each client's held,
 * wanted and fair share per device, RECLAIMs answered and how fast, and the
 * rates at which the broker asks it for memory and it gives memory back.
 *
 * On a terminal each frame replaces the last (the screen is cleared, the
 * cursor hidden, and q or Ctrl-C quits); elsewhere frames follow one
 * another.  --count N stops after N frames.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "tools/vramctl.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	stop = 1;
}

/* What a client's counters were at the previous frame, for rates. */
struct prev {
	uint32_t id;
	uint32_t answered;
	uint64_t asked, freed;
};

struct top {
	unsigned interval_ms;
	unsigned count;           /* frames to draw, 0: until told to stop */
	bool tty;
	struct prev *prev;
	uint32_t nprev;
	uint64_t prev_ns;
	struct termios saved;
	bool raw;
};

static int parse_args(struct ctl *ctl, struct top *t)
{
	for (int i = 1; i < ctl->argc; i++) {
		const char *a = ctl->argv[i];
		char *end;
		if ((!strcmp(a, "--interval") || !strcmp(a, "--count")) && i + 1 < ctl->argc) {
			unsigned long v = strtoul(ctl->argv[++i], &end, 10);
			if (*end || end == ctl->argv[i] || v > 3600000 || (!strcmp(a, "--interval") && v < 50)) {
				fprintf(stderr, "vramctl top: %s \"%s\" is not a number%s\n", a, ctl->argv[i],
					!strcmp(a, "--interval") ? " of milliseconds from 50" : "");
				return EX_USAGE_;
			}
			*(!strcmp(a, "--count") ? &t->count : &t->interval_ms) = (unsigned)v;
		} else {
			fprintf(stderr, "vramctl top: unknown argument \"%s\" (usage: top [--interval MS] [--count N])\n", a);
			return EX_USAGE_;
		}
	}
	return 0;
}

/* [#####.....] of width w, filled in the proportion part/whole. */
static void bar(char *out, int w, uint64_t part, uint64_t whole)
{
	int fill = whole ? (int)((double)part / (double)whole * w + 0.5) : 0;
	fill = fill > w ? w : fill;
	out[0] = '[';
	for (int i = 0; i < w; i++)
		out[1 + i] = i < fill ? '#' : '.';
	out[w + 1] = ']';
	out[w + 2] = '\0';
}

static const struct prev *prev_of(const struct top *t, uint32_t id)
{
	for (uint32_t i = 0; i < t->nprev; i++)
		if (t->prev[i].id == id)
			return &t->prev[i];
	return NULL;
}

static void draw_devices(FILE *f, const struct vram_status *s)
{
	char a[32], b[32], r[32], g[64];
	fprintf(f, "%-8s %-26s %11s %11s %11s  %s\n", "DEVICE", "", "USED", "TOTAL", "RECLAIMABLE", "LABEL");
	for (uint32_t i = 0; i < s->ndevices; i++) {
		const struct vram_device_info *d = &s->devices[i];
		bar(g, 24, d->used, d->total);
		fprintf(f, "%-8s %s %11s %11s %11s  %s%s\n", d->name, g, ctl_size(d->used, a, sizeof(a)),
			ctl_size(d->total, b, sizeof(b)), ctl_size(d->reclaimable, r, sizeof(r)), d->label,
			(d->flags & VRAM_DEV_SIMULATED) ? " [SIMULATED]" : "");
	}
}

/* One line per client and device it holds or wants memory on. */
static void draw_clients(FILE *f, const struct top *t, const struct vram_status *s, double dt)
{
	char h[32], w[32], sh[32], ask[32], fr[32];
	fprintf(f, "\n%-5s %-18s %-8s %11s %11s %11s %8s %7s %7s %11s %11s\n", "ID", "CLIENT", "DEVICE", "HELD",
		"WANTED", "FAIR SHARE", "RECLAIMS", "P50 MS", "P99 MS", "ASKED/S", "FREED/S");
	for (uint32_t i = 0; i < s->nclients; i++) {
		const struct vram_client_status *c = &s->clients[i];
		if (c->flags & VRAM_CLIENT_SELF)
			continue;
		const struct prev *p = prev_of(t, c->id);
		double asked = p && dt > 0 ? (double)(c->reclaim_asked - p->asked) / dt : 0;
		double freed = p && dt > 0 ? (double)(c->reclaim_freed - p->freed) / dt : 0;
		bool first = true;
		for (uint32_t d = 0; d < s->ndevices && d < 16; d++) {
			if (!c->held_dev[d] && !c->want_dev[d])
				continue;
			fprintf(f, "%-5u %-18.18s %-8s %11s %11s %11s %8u %7.1f %7.1f %11s %11s\n", c->id, c->name,
				s->devices[d].name, ctl_size(c->held_dev[d], h, sizeof(h)),
				ctl_size(c->want_dev[d], w, sizeof(w)), ctl_size(c->share_dev[d], sh, sizeof(sh)),
				c->reclaims_answered, c->reclaim_p50_us / 1000.0, c->reclaim_p99_us / 1000.0,
				first ? ctl_size((uint64_t)asked, ask, sizeof(ask)) : "",
				first ? ctl_size((uint64_t)freed, fr, sizeof(fr)) : "");
			first = false;
		}
		if (first)
			fprintf(f, "%-5u %-18.18s %-8s %11s\n", c->id, c->name, "-", "0 B");
	}
}

/* Keeps this frame's counters for the next frame's rates. */
static void remember(struct top *t, const struct vram_status *s)
{
	struct prev *p = realloc(t->prev, (s->nclients ? s->nclients : 1) * sizeof(*p));
	if (!p)
		return;
	t->prev = p;
	t->nprev = s->nclients;
	for (uint32_t i = 0; i < s->nclients; i++)
		p[i] = (struct prev){ s->clients[i].id, s->clients[i].reclaims_answered, s->clients[i].reclaim_asked,
				       s->clients[i].reclaim_freed };
}

static void draw(struct top *t, const struct vram_status *s, const char *socket)
{
	uint64_t now = now_ns();
	double dt = t->prev_ns ? (double)(now - t->prev_ns) / 1e9 : 0;
	time_t wall = time(NULL);
	struct tm tm;
	char clock[16];
	localtime_r(&wall, &tm);
	strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
	FILE *f = stdout;
	if (t->tty)
		fputs("\033[H\033[2J", f);
	fprintf(f, "vramd pid %u on %s, up %llu s, %llu grants, %u clients   %s%s\n\n", s->broker_pid, socket,
		(unsigned long long)(s->uptime_ms / 1000), (unsigned long long)s->grants, s->nclients, clock,
		t->tty ? "   (q quits)" : "");
	draw_devices(f, s);
	draw_clients(f, t, s, dt);
	if (!t->tty)
		fputc('\n', f);
	fflush(f);
	remember(t, s);
	t->prev_ns = now;
}

/* Waits the interval, or less when q comes in on a terminal.  true: go on. */
static bool wait_tick(struct top *t)
{
	struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
	uint64_t until = now_ns() + (uint64_t)t->interval_ms * 1000000ull;
	while (!stop) {
		uint64_t now = now_ns();
		if (now >= until)
			return true;
		int ms = (int)((until - now) / 1000000) + 1;
		int r = poll(&p, t->raw ? 1 : 0, ms);
		if (r > 0) {
			char ch;
			if (read(STDIN_FILENO, &ch, 1) == 1 && (ch == 'q' || ch == 'Q'))
				return false;
			if (r > 0 && (p.revents & (POLLHUP | POLLERR)))
				t->raw = false; /* stdin went away: keep drawing */
		}
	}
	return false;
}

static void terminal_enter(struct top *t)
{
	if (!t->tty)
		return;
	if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &t->saved) == 0) {
		struct termios raw = t->saved;
		raw.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		t->raw = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
	}
	fputs("\033[?25l", stdout); /* hide the cursor */
}

static void terminal_leave(struct top *t)
{
	if (!t->tty)
		return;
	if (t->raw)
		tcsetattr(STDIN_FILENO, TCSANOW, &t->saved);
	fputs("\033[?25h", stdout);
	fflush(stdout);
}

int cmd_top(struct ctl *ctl)
{
	struct top t = { .interval_ms = 1000, .tty = ctl->tty };
	int r = parse_args(ctl, &t);
	if (r)
		return r;
	_cleanup_(vram_closep) vram_client *c = NULL;
	if ((r = ctl_connect(ctl, &c)))
		return r;
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	terminal_enter(&t);
	for (unsigned n = 0; !stop && (!t.count || n < t.count); n++) {
		_cleanup_(vram_status_freep) struct vram_status *s = NULL;
		if (vram_get_status(c, &s) < 0) {
			terminal_leave(&t);
			fprintf(stderr, "vramctl top: %s\n", vram_last_error());
			free(t.prev);
			return EX_UNAVAILABLE_;
		}
		draw(&t, s, vram_client_socket(c));
		if ((t.count && n + 1 == t.count) || !wait_tick(&t))
			break;
	}
	terminal_leave(&t);
	free(t.prev);
	return 0;
}
