# systemd/install.mk: `make install` and `make uninstall` (read by the
# top-level Makefile through its */*.mk include).
#
#   make install                       into /usr/local (PREFIX), units too
#   make install PREFIX=/usr           as a distribution package would
#   make install DESTDIR=/tmp/stage    staged; nothing outside DESTDIR changes
#
# Every directory can be overridden (BINDIR=..., UNITDIR=...).  Config goes
# to SYSCONFDIR (/etc: systemd and vramd look there whatever the prefix) as
# an example; an existing vramd.conf is never touched.  The unit files get
# the real paths substituted for @BINDIR@, @SYSCONFDIR@ and @DOCDIR@.
#
# After a real (non-DESTDIR) install, as root:
#   systemd-sysusers && systemd-tmpfiles --create vramd.conf
#   systemctl daemon-reload && systemctl enable --now vramd.socket vramd.service

# This fragment is read before the Makefile's first rule: keep `all` the
# default goal.
VI_SAVED_GOAL := $(.DEFAULT_GOAL)

BINDIR        ?= $(PREFIX)/bin
LIBDIR        ?= $(PREFIX)/lib
INCLUDEDIR    ?= $(PREFIX)/include
PKGCONFIGDIR  ?= $(LIBDIR)/pkgconfig
DATADIR       ?= $(PREFIX)/share
DOCDIR        ?= $(DATADIR)/doc/vramd
SYSCONFDIR    ?= /etc
# systemd reads units, sysusers.d and tmpfiles.d from /usr/lib and from
# /usr/local/lib alike, so both follow PREFIX.
UNITDIR       ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR   ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR   ?= $(PREFIX)/lib/tmpfiles.d
INSTALL       ?= install

VI_GEN     := $(BUILD)/install
VI_UNITS   := vramd.service vramd.socket vramd-metrics.service vramd-metrics.timer
VI_DOCS    := $(sort $(wildcard docs/*.md)) systemd/README.md
VI_VERSION := $(shell sed -n 's/^\#define VRAM_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' runtime/vram.h | paste -sd.)
# What a static link of libvram needs besides libvram.a (pkg-config
# --static); the shared library records its own dependencies.  As plain
# -l flags, not Requires.private: pkg-config resolves Requires.private even
# for --cflags, so a program that only includes vram.h (which needs neither
# library's headers) would need liburing-dev and libjansson-dev to build.
VI_LIBS_PRIVATE := -luring -ljansson -ldl -lm -pthread

VI_SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'

# Paths are part of the generated files: regenerate when they change.
VI_CONFIG := $(BINDIR):$(LIBDIR):$(INCLUDEDIR):$(SYSCONFDIR):$(DOCDIR):$(PREFIX):$(VI_VERSION)
$(VI_GEN)/paths: vi-force
	@mkdir -p $(@D)
	@echo '$(VI_CONFIG)' | cmp -s - $@ || echo '$(VI_CONFIG)' > $@

$(addprefix $(VI_GEN)/,$(VI_UNITS)): $(VI_GEN)/%: systemd/% $(VI_GEN)/paths
	@mkdir -p $(@D)
	$(VI_SUBST) $< > $@.tmp && mv $@.tmp $@

$(VI_GEN)/vram.pc: $(VI_GEN)/paths systemd/install.mk runtime/vram.h
	@mkdir -p $(@D)
	{ echo 'prefix=$(PREFIX)'; \
	  echo 'libdir=$(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))'; \
	  echo 'includedir=$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))'; \
	  echo; \
	  echo 'Name: vram'; \
	  echo 'Description: vramd client runtime: GPU and pinned memory from the vramd broker'; \
	  echo 'URL: file://$(DOCDIR)'; \
	  echo 'Version: $(VI_VERSION)'; \
	  echo 'Libs: -L$${libdir} -lvram'; \
	  echo 'Libs.private: $(VI_LIBS_PRIVATE)'; \
	  echo 'Cflags: -I$${includedir}'; \
	} > $@.tmp && mv $@.tmp $@

.PHONY: install uninstall vi-force
vi-force:

install: $(VRAMD) $(VRAMCTL) $(LIBVRAM_SO) $(LIBVRAM_A) $(addprefix $(VI_GEN)/,$(VI_UNITS) vram.pc)
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(INCLUDEDIR)/vramd \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(SYSCONFDIR)/vramd $(DESTDIR)$(DOCDIR)
	$(INSTALL) -m 0755 $(VRAMD) $(VRAMCTL) $(DESTDIR)$(BINDIR)/
	$(INSTALL) -m 0755 $(LIBVRAM_SO) $(DESTDIR)$(LIBDIR)/libvram.so.0
	ln -sf libvram.so.0 $(DESTDIR)$(LIBDIR)/libvram.so
	$(INSTALL) -m 0644 $(LIBVRAM_A) $(DESTDIR)$(LIBDIR)/libvram.a
	$(INSTALL) -m 0644 runtime/vram.h $(DESTDIR)$(INCLUDEDIR)/vram.h
	$(INSTALL) -m 0644 uapi/vramd.h $(DESTDIR)$(INCLUDEDIR)/vramd/vramd.h
	$(INSTALL) -m 0644 $(VI_GEN)/vram.pc $(DESTDIR)$(PKGCONFIGDIR)/vram.pc
	$(INSTALL) -m 0644 $(addprefix $(VI_GEN)/,$(VI_UNITS)) $(DESTDIR)$(UNITDIR)/
	$(INSTALL) -m 0644 systemd/vramd.sysusers $(DESTDIR)$(SYSUSERSDIR)/vramd.conf
	$(INSTALL) -m 0644 systemd/vramd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/vramd.conf
	$(INSTALL) -m 0644 systemd/vramd.conf.example $(DESTDIR)$(SYSCONFDIR)/vramd/vramd.conf.example
	$(INSTALL) -m 0644 $(VI_DOCS) systemd/vramd.conf.example $(DESTDIR)$(DOCDIR)/
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi
	@echo "installed into $(DESTDIR)$(PREFIX); next (as root): systemd-sysusers; systemd-tmpfiles --create vramd.conf;"
	@echo "  systemctl daemon-reload; systemctl enable --now vramd.socket vramd.service (see $(DOCDIR)/admin.md)"

# Removes what install put there; vramd.conf, the state directory and the
# users are the administrator's and stay.  On a running system (no DESTDIR,
# root, systemd as init) the units are stopped and disabled first, so that
# no running service or dangling wants link is left behind.
uninstall:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then \
		echo "stopping and disabling vramd's units"; \
		systemctl disable --now vramd-metrics.timer vramd.service vramd.socket 2>/dev/null || true; \
	fi
	rm -f $(DESTDIR)$(BINDIR)/vramd $(DESTDIR)$(BINDIR)/vramctl \
		$(DESTDIR)$(LIBDIR)/libvram.so.0 $(DESTDIR)$(LIBDIR)/libvram.so $(DESTDIR)$(LIBDIR)/libvram.a \
		$(DESTDIR)$(INCLUDEDIR)/vram.h $(DESTDIR)$(INCLUDEDIR)/vramd/vramd.h \
		$(DESTDIR)$(PKGCONFIGDIR)/vram.pc \
		$(addprefix $(DESTDIR)$(UNITDIR)/,$(VI_UNITS)) \
		$(DESTDIR)$(SYSUSERSDIR)/vramd.conf $(DESTDIR)$(TMPFILESDIR)/vramd.conf \
		$(DESTDIR)$(SYSCONFDIR)/vramd/vramd.conf.example
	rm -rf $(DESTDIR)$(DOCDIR)
	@rmdir $(DESTDIR)$(INCLUDEDIR)/vramd 2>/dev/null || true
	@rmdir $(DESTDIR)$(SYSCONFDIR)/vramd 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then \
		systemctl daemon-reload || true; \
	fi

.DEFAULT_GOAL := $(VI_SAVED_GOAL)
