# kernels/: CUDA kernels built into one fatbin and embedded in libvram.
#
#   kernels/*.cu --nvcc--> $(BUILD)/gen/kernels.fatbin --embed.sh-->
#   $(BUILD)/gen/kernels_fatbin.c --cc--> $(BUILD)/gen/kernels_fatbin.o,
#   which joins libvram through EXTRA_RUNTIME_OBJ.
#
# Without nvcc (NVCC empty) the same C file is written with an empty image,
# and the runtime uses the C references (kernels/*.c, compiled with the rest
# of the runtime by the top-level Makefile).  nvcc runs only when a .cu
# file, a header it includes (kernels/abi.h, kernels/fpconv.h: the .cu files
# include nothing else of ours), or the nvcc command line (kept in
# kernels.config) changed.  Everything generated lives under $(BUILD)/gen.

# This fragment is read before the Makefile's first rule: keep `all` the
# default goal.
VK_SAVED_GOAL := $(.DEFAULT_GOAL)

VK_GEN      := $(BUILD)/gen
VK_CU       := $(sort $(wildcard kernels/*.cu))
VK_GENCODE  := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	       -gencode arch=compute_90,code=compute_90
NVCCFLAGS   ?= -O3
# Uncompressed, so that the kernel names can be found in the image (the
# tests do) and the driver does not inflate it at load; -t 0: one host
# thread per target architecture.
VK_NVCC_FLAGS := -fatbin --no-compress -t 0 -std=c++17 -I. $(VK_GENCODE) $(NVCCFLAGS)
# Not part of the configuration below: toggling WERROR does not change the
# image, so it does not rebuild it.
VK_NVCC_WERROR := $(if $(filter 1,$(WERROR)),-Werror all-warnings)
VK_CONFIG := nvcc=$(NVCC) flags=$(VK_NVCC_FLAGS) sources=$(VK_CU)

EXTRA_RUNTIME_OBJ += $(VK_GEN)/kernels_fatbin.o

# Rewritten only when the configuration changed, so that its mtime tells
# the rules below when NVCC, the flags or the set of .cu files changed.
$(VK_GEN)/kernels.config: vk-force
	@mkdir -p $(@D)
	@echo '$(VK_CONFIG)' | cmp -s - $@ || echo '$(VK_CONFIG)' > $@

ifneq ($(NVCC),)
# One translation unit for all .cu files: nvcc writes one fatbin per input.
$(VK_GEN)/kernels_all.cu: $(VK_GEN)/kernels.config
	@mkdir -p $(@D)
	printf '#include "%s"\n' $(VK_CU) > $@

# nvcc writes the header dependencies (kernels.fatbin.d, included below).
$(VK_GEN)/kernels.fatbin: $(VK_GEN)/kernels_all.cu $(VK_CU) $(VK_GEN)/kernels.config
	@mkdir -p $(@D)
	$(NVCC) $(VK_NVCC_FLAGS) $(VK_NVCC_WERROR) -MD -MP -MT $@ -MF $@.d -o $@.tmp$$$$ $< && mv $@.tmp$$$$ $@

$(VK_GEN)/kernels_fatbin.c: $(VK_GEN)/kernels.fatbin kernels/embed.sh
	sh kernels/embed.sh $< "$$($(NVCC) --version | sed -n 's/^Cuda compilation tools, //p'); sm_80 sm_90 compute_90" \
		> $@.tmp$$$$ && mv $@.tmp$$$$ $@
else
$(VK_GEN)/kernels_fatbin.c: $(VK_GEN)/kernels.config kernels/embed.sh
	@mkdir -p $(@D)
	sh kernels/embed.sh - "" > $@.tmp$$$$ && mv $@.tmp$$$$ $@
endif

$(VK_GEN)/kernels_fatbin.o: $(VK_GEN)/kernels_fatbin.c
	$(CC) $(CFLAGS) -c -o $@ $<

.PHONY: vk-force
vk-force:

-include $(wildcard $(VK_GEN)/*.d)

.DEFAULT_GOAL := $(VK_SAVED_GOAL)
