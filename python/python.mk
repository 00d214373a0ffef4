# python/python.mk: the Python binding (python/vramd) in `make install`
# (read by the top-level Makefile through its */*.mk include).
#
# The package goes to PYTHONDIR (default: PREFIX's site-packages for
# $(PYTHON), as sysconfig names it), with _install.py recording LIBDIR so
# that it finds libvram.so.0 wherever the library was installed.  The
# ComfyUI node pack is not installed here: link comfyui/ into
# ComfyUI/custom_nodes (docs/comfyui.md).
VP_SAVED_GOAL := $(.DEFAULT_GOAL)

PYTHONDIR ?= $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("purelib", vars={"base": "$(PREFIX)", "platbase": "$(PREFIX)"}))' 2>/dev/null)
VP_SRC := $(sort $(wildcard python/vramd/*.py))

.PHONY: install-python uninstall-python
install: install-python
uninstall: uninstall-python

install-python: $(VP_SRC)
	@test -n "$(PYTHONDIR)" || { echo "install-python: set PYTHONDIR (no $(PYTHON) to ask)"; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(PYTHONDIR)/vramd
	$(INSTALL) -m 0644 $(filter-out python/vramd/_install.py,$(VP_SRC)) $(DESTDIR)$(PYTHONDIR)/vramd/
	echo 'LIBDIR = "$(LIBDIR)"' > $(DESTDIR)$(PYTHONDIR)/vramd/_install.py

uninstall-python:
	rm -rf $(DESTDIR)$(PYTHONDIR)/vramd

.DEFAULT_GOAL := $(VP_SAVED_GOAL)
