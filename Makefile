# vramd — GNU make build.  `make` builds, `make check` tests, `make run` demos.
# CFLAGS/LDFLAGS are the user's; what the build needs is appended with override.

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
CFLAGS  ?= -O2 -g
PYTHON  ?= python3
VENV    ?= .venv
NVCC    ?= $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
CUDA_INC ?= $(firstword $(wildcard /usr/local/cuda/include))

PKGS := liburing numa jansson libxxhash libsystemd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) check 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(filter-out numa,$(PKGS)) 2>/dev/null) -lnuma
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null) -lutil

override CFLAGS += -std=gnu11 -Wall -Wextra -Wshadow -Wno-unused-parameter \
	-Wmissing-prototypes -Wstrict-prototypes -fPIC -pthread -fvisibility=hidden \
	-MMD -MP -I. -D_GNU_SOURCE -DVRAM_BUILDING $(PKG_CFLAGS)
ifneq ($(CUDA_INC),)
override CFLAGS += -I$(CUDA_INC) -DVRAM_HAVE_CUDA_H=1
endif
ifeq ($(WERROR),1)
override CFLAGS += -Werror
endif
ifeq ($(SAN),1)
override CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
override LDFLAGS += -fsanitize=address,undefined
endif
override LDFLAGS += -pthread
LIBS := $(PKG_LIBS) -ldl -lm

COMMON_SRC  := $(sort $(wildcard common/*.c))
RUNTIME_SRC := $(sort $(wildcard runtime/*.c kernels/*.c))
BROKER_SRC  := $(sort $(filter-out broker/main.c,$(wildcard broker/*.c)))
TOOLS_SRC   := $(sort $(wildcard tools/vramctl*.c))
TEST_SRC    := $(sort $(wildcard tests/test-*.c))
HELPER_SRC  := $(sort $(wildcard tests/helper-*.c))
# What the test programs share (the fake CUDA driver, ...): every other .c in tests/.
TESTLIB_SRC := $(sort $(filter-out $(TEST_SRC) $(HELPER_SRC),$(wildcard tests/*.c)))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

COMMON_OBJ  := $(call obj,$(COMMON_SRC))
RUNTIME_OBJ := $(call obj,$(RUNTIME_SRC))
BROKER_OBJ  := $(call obj,$(BROKER_SRC))
TOOLS_OBJ   := $(call obj,$(TOOLS_SRC))
TESTLIB_OBJ := $(call obj,$(TESTLIB_SRC))
TEST_BIN    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
HELPER_BIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(HELPER_SRC))

LIBVRAM_A  := $(BUILD)/lib/libvram.a
LIBVRAM_SO := $(BUILD)/lib/libvram.so.0
LIBBROKER  := $(BUILD)/lib/libbroker.a
LIBCOMMON  := $(BUILD)/lib/libvramcommon.a
LIBTEST    := $(BUILD)/lib/libvramtest.a
VRAMD      := $(BUILD)/bin/vramd
VRAMCTL    := $(BUILD)/bin/vramctl

EXTRA_RUNTIME_OBJ :=
# Fragments (kernels/kernels.mk: nvcc rules) may add to EXTRA_RUNTIME_OBJ.
-include $(sort $(wildcard */*.mk))

.PHONY: all deps check test run bench bench-comfyui bench-gpu check-gpu check-systemd gpu-bundle asan soak install clean distclean
# Keep test objects (otherwise make deletes them as intermediates).
.SECONDARY:
all: $(VRAMD) $(VRAMCTL) $(LIBVRAM_A) $(LIBVRAM_SO) $(TEST_BIN) $(HELPER_BIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIBCOMMON): $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(LIBBROKER): $(BROKER_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
# Linked into every test program; only those that use a helper pull it in.
$(LIBTEST): $(TESTLIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(LIBVRAM_A): $(RUNTIME_OBJ) $(COMMON_OBJ) $(EXTRA_RUNTIME_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(LIBVRAM_SO): $(RUNTIME_OBJ) $(COMMON_OBJ) $(EXTRA_RUNTIME_OBJ) runtime/libvram.map
	@mkdir -p $(dir $@)
	$(CC) -shared -fvisibility=hidden -Wl,-soname,libvram.so.0 -Wl,--version-script=runtime/libvram.map \
		$(LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS)
	ln -sf libvram.so.0 $(BUILD)/lib/libvram.so

$(VRAMD): $(BUILD)/obj/broker/main.o $(LIBBROKER) $(LIBCOMMON) $(BUILD)/obj/kernels/cast.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
$(VRAMCTL): $(TOOLS_OBJ) $(LIBVRAM_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIBTEST) $(LIBBROKER) $(LIBVRAM_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LIBS)

deps:
	@sh scripts/deps.sh "$(PYTHON)" "$(VENV)"

# Each test binary is a Check suite; scripts/run-tests.sh runs them all,
# prints each suite's summary and a total, and fails if any failed.
# Then (not under SAN=1: the fuzz build has the sanitizers already) the
# fuzz smoke: tests/fuzz/fuzz.mk, docs/fuzzing.md.
check: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/check-layout.sh
	@VRAM_BUILD=$(BUILD) VRAM_PYTHON=$(CURDIR)/$(VENV)/bin/python sh scripts/run-tests.sh $(TEST_BIN)
	@$(if $(filter 1,$(SAN)),:,$(MAKE) --no-print-directory fuzz-smoke)
test: check

# ASan/UBSan make every suite several times slower (test-python's torch
# cases the most): Check's per-test timeouts are tripled there.
asan:
	@CK_TIMEOUT_MULTIPLIER=3 $(MAKE) --no-print-directory BUILD=build-asan SAN=1 check

# The long soak (make check runs a 15 s one): SOAK_SECONDS of clients
# loading, allocating and flooding, SIGKILLed at random, the broker
# SIGKILLed every SOAK_BROKER_KILL_S under them; then nothing may be left.
SOAK_SECONDS ?= 300
SOAK_BROKER_KILL_S ?= 20
soak: all
	@d=$$(mktemp -d /var/tmp/vramd-soak.XXXXXX) && chmod 755 $$d && \
	  VRAM_BUILD=$(BUILD) $(BUILD)/tests/helper-soak $$d $(SOAK_SECONDS) $(SOAK_BROKER_KILL_S); r=$$?; rm -rf $$d; exit $$r

run: deps
	@$(MAKE) --no-print-directory all
	@VRAM_BUILD=$(BUILD) VRAM_PYTHON=$(CURDIR)/$(VENV)/bin/python sh scripts/run-demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@VRAM_BUILD=$(BUILD) VRAM_PYTHON=$(CURDIR)/$(VENV)/bin/python sh scripts/bench.sh

# ComfyUI's own checkpoint loader against the vramd node, cold and warm
# (needs COMFYUI_DIR, a ComfyUI checkout; skipped without; docs/comfyui.md).
bench-comfyui:
	@$(MAKE) --no-print-directory all
	@VRAM_BUILD=$(BUILD) sh scripts/bench-comfyui.sh

# On a machine with an NVIDIA GPU: broker with CUDA pools and real client
# processes (exits 77, skipped, where there is none).
check-gpu: deps
	@$(MAKE) --no-print-directory all
	@VRAM_BUILD=$(BUILD) sh scripts/check-gpu.sh

# As root: a Debian 12 container booted with systemd (systemd-nspawn), vramd
# installed into it as docs/admin.md says, and checked under the real
# systemd (docs/systemd-test.md).  Minutes; the first run needs the network
# (debootstrap).  Exits 77, skipped, where no container can be booted.
check-systemd: deps
	@VRAM_BUILD=$(BUILD) VRAM_PYTHON=$(CURDIR)/$(VENV)/bin/python bash scripts/check-systemd.sh

bench-gpu: deps
	@$(MAKE) --no-print-directory all
	@VRAM_BUILD=$(BUILD) VRAM_PYTHON=$(CURDIR)/$(VENV)/bin/python sh scripts/bench-gpu.sh

# Here (apt reaches its mirror): .gpudeps/, the build dependencies for a lent
# GPU machine without network; there, sh scripts/gpu-run.sh (docs/gpu-machine.md).
gpu-bundle:
	@sh scripts/gpu-bundle.sh

clean:
	rm -rf build build-asan
distclean: clean
	rm -rf $(VENV)

# libFuzzer targets, fuzz smoke, differential test (clang; docs/fuzzing.md).
include tests/fuzz/fuzz.mk

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
