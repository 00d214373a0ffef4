# SPDX-License-Identifier: MIT
"""Finds the vramd Python binding: an installed `vramd` package (pip or
`make install`), else $VRAMD_PYTHONPATH, else ../python next to this pack in
a source checkout (which finds build/lib/libvram.so.0 by itself;
$VRAMD_LIBRARY overrides)."""
import importlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    env = os.environ.get("VRAMD_PYTHONPATH")
    if env:
        yield from env.split(os.pathsep)
    yield os.path.join(os.path.dirname(os.path.realpath(_HERE)), "python")


def import_vramd():
    """The vramd module; ImportError naming every place looked at."""
    try:
        return importlib.import_module("vramd")
    except ImportError as first:
        if "libvram" in str(first):
            raise
    tried = ["an installed package"]
    for d in _candidates():
        if os.path.isfile(os.path.join(d, "vramd", "__init__.py")):
            if d not in sys.path:
                sys.path.insert(0, d)
            return importlib.import_module("vramd")
        tried.append(d)
    raise ImportError("vramd node pack: the vramd Python binding was not found (looked in %s). Install it "
                      "(pip install <vramd>/python, or make install), or set VRAMD_PYTHONPATH to the "
                      "folder that holds vramd/" % ", ".join(tried))
