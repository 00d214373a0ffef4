# SPDX-License-Identifier: MIT
"""pip install ./python from a built checkout: the package gets a copy of
build/lib/libvram.so.0 (or $VRAMD_LIBRARY) so that it works wherever it is
installed.  Without a built library the package is pure Python and finds
libvram through $VRAMD_LIBRARY or the system's search path at import."""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPy(build_py):
    def run(self):
        super().run()
        src = os.environ.get("VRAMD_LIBRARY") or os.path.join(
            HERE, "..", os.environ.get("VRAM_BUILD", "build"), "lib", "libvram.so.0")
        if os.path.exists(src):
            dst = os.path.join(self.build_lib, "vramd", "libvram.so.0")
            shutil.copy2(os.path.realpath(src), dst)


setup(cmdclass={"build_py": BuildPy})
