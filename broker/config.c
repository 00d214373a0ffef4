/* SPDX-License-Identifier: MIT */
/* vramd configuration: command-line options and the INI file share keys. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/config.h"
#include "broker/log.h"
#include "common/cleanup.h"
#include "common/util.h"

void broker_config_init(struct broker_config *c)
{
	memset(c, 0, sizeof(*c));
	c->socket_path = "/run/vramd/vramd.sock";
	c->max_clients = 256;
	c->max_clients_per_uid = 64;
	c->hello_timeout_ms = 5000;
	c->cache_max_pct = 50;
	c->max_grants = 4096;
	c->listen_fd = -1;
	c->reclaim_deadline_ms = 2000;
	c->fdstore = 0;
	c->ready_reserve = (struct broker_amount){ .bp = 2500, .share = true };
	c->ready_min_free = (struct broker_amount){ .bp = 500, .share = true };
}

uint64_t broker_amount_of(const struct broker_amount *a, uint64_t whole)
{
	if (!a->share)
		return a->bytes;
	/* whole / 10000 * bp without overflow for any 64-bit whole */
	return whole / 10000 * a->bp + whole % 10000 * a->bp / 10000;
}

/* "12.5%" (0 to 100, up to two decimals) into basis points. */
static int parse_share(const char *v, uint32_t *ret)
{
	size_t n = strlen(v);
	uint32_t whole = 0, frac = 0, fdigits = 0;
	const char *p = v;
	if (n < 2 || v[n - 1] != '%')
		return -EINVAL;
	for (; isdigit((unsigned char)*p) && whole <= 100; p++)
		whole = whole * 10 + (uint32_t)(*p - '0');
	if (p == v)
		return -EINVAL;
	if (*p == '.')
		for (p++; isdigit((unsigned char)*p) && fdigits < 2; p++, fdigits++)
			frac = frac * 10 + (uint32_t)(*p - '0');
	if (p != v + n - 1 || (fdigits == 0 && p[-1] == '.'))
		return -EINVAL;
	uint32_t bp = whole * 100 + (fdigits == 1 ? frac * 10 : frac);
	if (whole > 100 || bp > 10000)
		return -EINVAL;
	*ret = bp;
	return 0;
}

/* A size, or "N%" where shares are allowed. */
static int set_amount(struct broker_amount *dst, const char *key, const char *v, char *err, size_t errlen)
{
	struct broker_amount a = { 0 };
	int r;
	if (strchr(v, '%')) {
		if (parse_share(v, &a.bp) < 0) {
			snprintf(err, errlen, "%s: \"%s\" is not a share from 0%% to 100%%", key, v);
			return -EINVAL;
		}
		a.share = true;
	} else if ((r = size_parse(v, &a.bytes)) < 0) {
		snprintf(err, errlen, "%s: \"%s\" is %s (use e.g. 4GiB or 25%%)", key, v,
			 r == -ERANGE ? "too large" : "not a size or a share");
		return -EINVAL;
	}
	*dst = a;
	return 0;
}

static int parse_bool(const char *v, bool *ret)
{
	if (!strcmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcasecmp(v, "on"))
		*ret = true;
	else if (!strcmp(v, "0") || !strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcasecmp(v, "off"))
		*ret = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_u32(const char *v, uint32_t min, uint32_t max, uint32_t *ret, int base)
{
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, base);
	if (errno || end == v || *end || x < min || x > max || v[0] == '-')
		return -EINVAL;
	*ret = (uint32_t)x;
	return 0;
}

static int size_err(char *err, size_t errlen, const char *key, const char *v, int r)
{
	snprintf(err, errlen, "%s: \"%s\" is %s (use e.g. 8GiB, 512MiB, 4GB)", key, v,
		 r == -ERANGE ? "too large" : "not a size");
	return -EINVAL;
}

/* The strings of every configuration live as long as the process:
 * interned, each distinct value kept once.  A configuration's strings never
 * change under it, whatever is parsed later (a reload parses the file into a
 * fresh configuration while the running one still points at its paths).
 * Only the fuzz target, between inputs, lets them go
 * (broker_config_forget_strings). */
static pthread_mutex_t intern_lock = PTHREAD_MUTEX_INITIALIZER;
static struct interned {
	struct interned *next;
	char s[];
} *intern_list;

static const char *intern(const char *v)
{
	size_t n = strlen(v) + 1;
	struct interned *p;
	pthread_mutex_lock(&intern_lock);
	for (p = intern_list; p && strcmp(p->s, v); p = p->next)
		;
	if (!p && (p = malloc(sizeof(*p) + n))) {
		memcpy(p->s, v, n);
		p->next = intern_list;
		intern_list = p;
	}
	pthread_mutex_unlock(&intern_lock);
	return p ? p->s : NULL;
}

void broker_config_forget_strings(void)
{
	pthread_mutex_lock(&intern_lock);
	while (intern_list) {
		struct interned *p = intern_list;
		intern_list = p->next;
		free(p);
	}
	pthread_mutex_unlock(&intern_lock);
}

/* *dst = the interned v; 0 or -ENOMEM with err set. */
static int set_str(const char **dst, const char *key, const char *v, char *err, size_t errlen)
{
	if (!(*dst = intern(v))) {
		snprintf(err, errlen, "%s: out of memory", key);
		return -ENOMEM;
	}
	return 0;
}

/* sim-gpus = SIZE[,SIZE...] */
static int set_sim_gpus(struct broker_config *cfg, const char *v, char *err, size_t errlen)
{
	const char *key = "sim-gpus";
	int r;
	_cleanup_free_ char *copy = strdup(v);
	char *save = NULL;
	cfg->nsim = 0;
	if (!copy)
		return -ENOMEM;
	if (!*v)
		return 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		uint64_t s;
		if (cfg->nsim == VRAMD_MAX_DEVICES - 1) {
			snprintf(err, errlen, "sim-gpus: at most %u devices", VRAMD_MAX_DEVICES - 1);
			return -EINVAL;
		}
		if ((r = size_parse(tok, &s)) < 0)
			return size_err(err, errlen, key, tok, r);
		if (s < (2u << 20)) {
			snprintf(err, errlen, "sim-gpus: \"%s\" is smaller than 2 MiB", tok);
			return -EINVAL;
		}
		cfg->sim_gpus[cfg->nsim++] = s;
	}
	return 0;
}

/* cache-max = SIZE | N% (of each device; 0 or 0%: no shared copies) */
static int set_cache_max(struct broker_config *cfg, const char *v, char *err, size_t errlen)
{
	char num[16];
	size_t n = strlen(v);
	int r;
	if (n > 1 && v[n - 1] == '%') {
		uint32_t pct;
		if (n - 1 >= sizeof(num))
			n = 1; /* too long: not a percentage */
		memcpy(num, v, n - 1);
		num[n - 1] = '\0';
		if (parse_u32(num, 0, 100, &pct, 10) < 0) {
			snprintf(err, errlen, "cache-max: \"%s\" is not a percentage from 0%% to 100%%", v);
			return -EINVAL;
		}
		cfg->cache_max = 0;
		cfg->cache_max_pct = pct;
		return 0;
	}
	uint64_t sz;
	if ((r = size_parse(v, &sz)) < 0)
		return size_err(err, errlen, "cache-max", v, r);
	cfg->cache_max = sz;
	cfg->cache_max_pct = sz ? 100 : 0;
	return 0;
}

int broker_config_set(struct broker_config *cfg, const char *key, const char *v, char *err, size_t errlen)
{
	int r;
	if (!strcmp(key, "socket")) {
		if (!*v || v[0] != '/') {
			snprintf(err, errlen, "socket: \"%s\" is not an absolute path", v);
			return -EINVAL;
		}
		if (strlen(v) >= 108) { /* sun_path */
			snprintf(err, errlen, "socket: path longer than 107 bytes");
			return -EINVAL;
		}
		return set_str(&cfg->socket_path, key, v, err, errlen);
	}
	if (!strcmp(key, "admin-socket") || !strcmp(key, "state-dir")) {
		if (!*v || v[0] != '/' || strlen(v) >= 4096) {
			snprintf(err, errlen, "%s: \"%s\" is not an absolute path", key, v);
			return -EINVAL;
		}
		if (!strcmp(key, "admin-socket") && strlen(v) >= 108) {
			snprintf(err, errlen, "admin-socket: path longer than 107 bytes");
			return -EINVAL;
		}
		return set_str(!strcmp(key, "state-dir") ? &cfg->state_dir : &cfg->admin_socket, key, v, err, errlen);
	}
	if (!strcmp(key, "admin-group") || !strcmp(key, "socket-group")) {
		if (strlen(v) >= 64 || strchr(v, ':') || strchr(v, '\n')) {
			snprintf(err, errlen, "%s: \"%s\" is not a group name", key, v);
			return -EINVAL;
		}
		const char **dst = !strcmp(key, "admin-group") ? &cfg->admin_group : &cfg->socket_group;
		*dst = NULL; /* empty: none */
		return *v ? set_str(dst, key, v, err, errlen) : 0;
	}
	if (!strcmp(key, "sim-gpus"))
		return set_sim_gpus(cfg, v, err, errlen);
	if (!strcmp(key, "host-pool") || !strcmp(key, "client-max")) {
		uint64_t s;
		if ((r = size_parse(v, &s)) < 0)
			return size_err(err, errlen, key, v, r);
		if (!strcmp(key, "host-pool")) {
			if (s < (2u << 20)) {
				snprintf(err, errlen, "host-pool: \"%s\" is smaller than 2 MiB", v);
				return -EINVAL;
			}
			cfg->host_pool = s;
		} else {
			cfg->client_max = s;
		}
		return 0;
	}
	if (!strcmp(key, "cache-max"))
		return set_cache_max(cfg, v, err, errlen);
	if (!strcmp(key, "ready-reserve"))
		return set_amount(&cfg->ready_reserve, key, v, err, errlen);
	if (!strcmp(key, "ready-min-free"))
		return set_amount(&cfg->ready_min_free, key, v, err, errlen);
	if (!strcmp(key, "ready-refill-rate")) {
		uint64_t s;
		if ((r = size_parse(v, &s)) < 0)
			return size_err(err, errlen, key, v, r);
		cfg->ready_refill_rate = s;
		return 0;
	}
	if (!strcmp(key, "max-clients") || !strcmp(key, "max-grants") || !strcmp(key, "max-clients-per-uid")) {
		uint32_t *dst = !strcmp(key, "max-clients") ? &cfg->max_clients
				: !strcmp(key, "max-grants") ? &cfg->max_grants : &cfg->max_clients_per_uid;
		if (parse_u32(v, 1, 1u << 20, dst, 10) < 0) {
			snprintf(err, errlen, "%s: \"%s\" is not a number from 1 to 1048576", key, v);
			return -EINVAL;
		}
		return 0;
	}
	if (!strcmp(key, "socket-mode")) {
		uint32_t mode;
		if (parse_u32(v, 0, 0777, &mode, 8) < 0) {
			snprintf(err, errlen, "socket-mode: \"%s\" is not an octal mode", v);
			return -EINVAL;
		}
		/* 0 would let nobody but root connect; it is never "the
		 * default", which is what leaving the key out means */
		if (mode == 0) {
			snprintf(err, errlen, "socket-mode: 0 lets nobody but root connect; give a mode such as 0660");
			return -EINVAL;
		}
		cfg->socket_mode = mode;
		return 0;
	}
	if (!strcmp(key, "reclaim-deadline-ms") || !strcmp(key, "hello-timeout-ms")) {
		uint32_t x;
		if (parse_u32(v, 1, 600000, &x, 10) < 0) {
			snprintf(err, errlen, "%s: \"%s\" is not a number from 1 to 600000", key, v);
			return -EINVAL;
		}
		*(!strcmp(key, "hello-timeout-ms") ? &cfg->hello_timeout_ms : &cfg->reclaim_deadline_ms) = x;
		return 0;
	}
	if (!strcmp(key, "cuda")) {
		bool on;
		if (parse_bool(v, &on) < 0) {
			snprintf(err, errlen, "cuda: \"%s\" is not yes or no", v);
			return -EINVAL;
		}
		cfg->no_cuda = !on;
		return 0;
	}
	if (!strcmp(key, "fdstore")) {
		bool on;
		if (!strcmp(v, "auto")) {
			cfg->fdstore = -1;
			return 0;
		}
		if (parse_bool(v, &on) < 0) {
			snprintf(err, errlen, "fdstore: \"%s\" is not yes, no or auto", v);
			return -EINVAL;
		}
		cfg->fdstore = on;
		return 0;
	}
	if (!strcmp(key, "verbose")) {
		bool on;
		if (parse_bool(v, &on) < 0) {
			snprintf(err, errlen, "verbose: \"%s\" is not yes or no", v);
			return -EINVAL;
		}
		cfg->verbose = on;
		return 0;
	}
	snprintf(err, errlen, "unknown key \"%s\"", key);
	return -ENOENT;
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

int broker_config_load(struct broker_config *cfg, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	char line[1024], why[256];
	unsigned lineno = 0;
	int r = 0;

	if (!f)
		return errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			r = errf(err, errlen, -EINVAL, "%s:%u: line too long (at most %zu bytes)", path, lineno,
				 sizeof(line) - 2);
			break;
		}
		char *s = trim(line);
		if (!*s || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			if (strcmp(s, "[vramd]")) {
				r = errf(err, errlen, -EINVAL, "%s:%u: unknown section %s (only [vramd])", path, lineno, s);
				break;
			}
			continue;
		}
		char *eq = strchr(s, '=');
		if (!eq) {
			r = errf(err, errlen, -EINVAL, "%s:%u: expected key = value", path, lineno);
			break;
		}
		*eq = '\0';
		char *k = trim(s), *v = trim(eq + 1);
		if (!strcmp(k, "config")) {
			r = errf(err, errlen, -EINVAL, "%s:%u: config files do not nest", path, lineno);
			break;
		}
		if (broker_config_set(cfg, k, v, why, sizeof(why)) < 0) {
			r = errf(err, errlen, -EINVAL, "%s:%u: %s", path, lineno, why);
			break;
		}
	}
	fclose(f);
	return r;
}

int broker_config_reload(const struct broker_config *running, struct broker_config *ret, char *err, size_t errlen)
{
	struct broker_config cfg;
	broker_config_init(&cfg);
	cfg.socket_path = NULL;
	if (running->config_path) {
		int r = broker_config_load(&cfg, running->config_path, err, errlen);
		if (r == -ENOENT && running->config_optional)
			r = 0; /* no file (any more): the defaults */
		if (r < 0)
			return r;
	}
	*ret = cfg;
	return 0;
}
