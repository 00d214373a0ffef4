# SPDX-License-Identifier: MIT
"""Ownership of libvram handles: each pointer is released exactly once, by
close() or, when the caller forgets, by a finalizer; a handle keeps the
handles it depends on (a load: its client and model) alive until it is
released itself, so the C objects are torn down in a valid order even at
interpreter exit."""
import ctypes as C
import weakref


def _release(fn, ptr, deps, keep):
    # deps and keep are held here (by the finalizer) only to outlive the call.
    if ptr:
        fn(ptr)


class Handle:
    """A C pointer plus the function that releases it.  The pointer is
    released when the last Python reference to the Handle goes (objects that
    need it, such as tensor views, hold the Handle), or at once by
    release().  `keep` holds objects the C side points to (callbacks) until
    the release has run."""

    __slots__ = ("ptr", "_fin", "deps", "keep", "__weakref__")

    def __init__(self, ptr, release, deps=()):
        if isinstance(ptr, C.c_void_p):
            ptr = ptr.value
        self.ptr = ptr
        self.deps = tuple(deps)
        self.keep = []
        self._fin = weakref.finalize(self, _release, release, ptr, self.deps, self.keep)

    @property
    def alive(self):
        return self._fin.alive

    def release(self):
        """Releases now (idempotent)."""
        self._fin()

    def get(self, what="handle"):
        if not self._fin.alive:
            raise ValueError("vramd: %s is closed" % what)
        return self.ptr


class Owner:
    """Base of the objects that hold a Handle in self._h (a client, model,
    plan, load, pager): close() drops this object's hold (the C object goes
    once nothing else needs it), `with` closes at the end, and using the
    object after close() raises ValueError naming what it was."""

    _what = "object"
    _h = None

    @property
    def _ptr(self):
        if self._h is None:
            raise ValueError("vramd: the %s is closed" % self._what)
        return self._h.get(self._what)

    def close(self):
        """Drops this object's hold on its C object."""
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
