# tests/fuzz/: libFuzzer targets and the safetensors differential test,
# built with clang, libFuzzer, ASan and UBSan into $(FUZZ_BUILD).
# docs/fuzzing.md has the targets, the commands and the long runs' figures.
#
#   make fuzz            each target for FUZZ_SECONDS (60), one at a time;
#                        FUZZ_TARGETS="safetensors" picks, FUZZ_ARGS adds
#                        libFuzzer options (-runs=10000000)
#   make fuzz-smoke      each target for FUZZ_SMOKE_SECONDS (4) and the
#                        differential test (ST_DIFF_CASES, ST_DIFF_SEED);
#                        part of `make check`
#   make fuzz-merge      what `make fuzz` found, minimised into tests/fuzz/corpus
#   make fuzz-seed       the seed inputs rewritten into tests/fuzz/corpus
#
# Included by the Makefile after its variables (PKG_CFLAGS, PYTHON, VENV).

FUZZ_CC            ?= clang
FUZZ_BUILD         ?= build-fuzz
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 4
ST_DIFF_CASES      ?= 3000
ST_DIFF_SEED       ?=

# A target is fuzz-NAME.c plus the sources it exercises, listed here (not
# the whole library: only what is under test is compiled with coverage).
# The checkpoint targets open models with vram_model_open(), which reads
# every format: they link all the readers.  A new target: fuzz-NAME.c, a
# line here, seeds in tests/fuzz/corpus/NAME (a case in seed.py), a
# max_len in run.sh, a row in docs/fuzzing.md.
FUZZ_ALL := proto safetensors allocstr config gguf pickle
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_SRC_model := runtime/model.c runtime/model-formats.c runtime/safetensors.c runtime/gguf.c \
	runtime/torchzip.c runtime/pickle.c runtime/reader.c runtime/dtype.c runtime/error.c common/util.c
FUZZ_SRC_proto       := common/proto.c common/util.c
FUZZ_SRC_safetensors := $(FUZZ_SRC_model)
FUZZ_SRC_gguf        := $(FUZZ_SRC_model)
FUZZ_SRC_pickle      := $(FUZZ_SRC_model)
FUZZ_SRC_allocstr    := runtime/allocstr.c runtime/error.c common/util.c
FUZZ_SRC_config      := broker/config.c common/util.c
FUZZ_LIBS := $(shell pkg-config --libs jansson 2>/dev/null) -lm

FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# -Wno-missing-field-initializers: clang warns on designated initializers
# that leave fields out (dtype.c), gcc (the main build) does not.
FUZZ_CFLAGS := -O1 -g -std=gnu11 -Wall -Wextra -Wshadow -Wno-unused-parameter -Wno-missing-field-initializers -Wmissing-prototypes \
	-Wstrict-prototypes -pthread -MMD -MP -I. -D_GNU_SOURCE -DVRAM_BUILDING $(PKG_CFLAGS) $(FUZZ_SAN) \
	$(if $(filter 1,$(WERROR)),-Werror)

fuzz_obj = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(1))

# Objects with coverage for libFuzzer; st-dump and proto-seeds link the
# same objects without it (the sanitizer runtime answers the hooks).
$(FUZZ_BUILD)/obj/%.o: %.c | fuzz-cc
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

define fuzz_target
$(FUZZ_BUILD)/fuzz-$(1): $(call fuzz_obj,tests/fuzz/fuzz-$(1).c $(FUZZ_SRC_$(1)))
	$$(FUZZ_CC) $$(FUZZ_SAN) -fsanitize=fuzzer -pthread -o $$@ $$^ $$(FUZZ_LIBS)
endef
$(foreach t,$(FUZZ_ALL),$(eval $(call fuzz_target,$(t))))

$(FUZZ_BUILD)/st-dump: $(call fuzz_obj,tests/fuzz/st-dump.c $(FUZZ_SRC_safetensors))
	$(FUZZ_CC) $(FUZZ_SAN) -pthread -o $@ $^ $(FUZZ_LIBS)
$(FUZZ_BUILD)/proto-seeds: $(call fuzz_obj,tests/fuzz/proto-seeds.c $(FUZZ_SRC_proto))
	$(FUZZ_CC) $(FUZZ_SAN) -pthread -o $@ $^ $(FUZZ_LIBS)

FUZZ_BINS := $(patsubst %,$(FUZZ_BUILD)/fuzz-%,$(FUZZ_TARGETS))

.PHONY: fuzz fuzz-build fuzz-smoke fuzz-merge fuzz-seed fuzz-clean fuzz-cc
fuzz-cc:
	@command -v $(FUZZ_CC) >/dev/null || { echo "fuzz: $(FUZZ_CC) not found (make deps installs clang)"; exit 1; }
fuzz-build: $(FUZZ_BINS) $(FUZZ_BUILD)/st-dump

fuzz: fuzz-build
	@sh tests/fuzz/run.sh fuzz $(FUZZ_SECONDS) $(FUZZ_BUILD) $(FUZZ_TARGETS)

# The differential test first: it is seeded, so a failure names its seed.
fuzz-smoke: fuzz-build
	@$(VENV)/bin/python tests/fuzz/st_diff.py --helper $(FUZZ_BUILD)/st-dump --cases $(ST_DIFF_CASES) \
		$(if $(ST_DIFF_SEED),--seed $(ST_DIFF_SEED))
	@sh tests/fuzz/run.sh smoke $(FUZZ_SMOKE_SECONDS) $(FUZZ_BUILD) $(FUZZ_TARGETS)

fuzz-merge: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p tests/fuzz/corpus/$$t $(FUZZ_BUILD)/corpus/$$t; \
		$(FUZZ_BUILD)/fuzz-$$t -merge=1 tests/fuzz/corpus/$$t $(FUZZ_BUILD)/corpus/$$t 2>&1 | \
			grep -E 'MERGE-OUTER: [0-9]+ new files' || exit 1; \
	done

fuzz-seed: $(FUZZ_BUILD)/proto-seeds
	@for t in $(FUZZ_ALL); do rm -f tests/fuzz/corpus/$$t/seed-*; mkdir -p tests/fuzz/corpus/$$t; done
	$(FUZZ_BUILD)/proto-seeds tests/fuzz/corpus/proto
	$(VENV)/bin/python tests/fuzz/seed.py safetensors tests/fuzz/corpus/safetensors
	$(VENV)/bin/python tests/fuzz/seed.py allocstr tests/fuzz/corpus/allocstr
	$(VENV)/bin/python tests/fuzz/seed.py config tests/fuzz/corpus/config
	$(VENV)/bin/python tests/fuzz/seed.py gguf tests/fuzz/corpus/gguf
	$(VENV)/bin/python tests/fuzz/seed.py pickle tests/fuzz/corpus/pickle

clean: fuzz-clean
fuzz-clean:
	rm -rf $(FUZZ_BUILD)

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
