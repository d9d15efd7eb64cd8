"""Argument checking for the kernel bindings: a wrong dtype or shape is a ValueError, never a crash."""
import numpy as np

from .. import _kernels
from . import record

ffi = _kernels.ffi
# The cffi lib behind a proxy that can record every call (record.py); without an active recorder
# it hands out the real cffi functions.
lib = record.LibProxy(_kernels.lib)


def array(name, value, dtype, shape=None, ndim=None):
    """value as a C-contiguous numpy array of exactly `dtype` (no silent casting) and, where given,
    `shape` (None entries match anything) or `ndim`."""
    if not isinstance(value, np.ndarray):
        raise ValueError("%s must be a numpy array of %s, got %s" % (name, np.dtype(dtype), type(value).__name__))
    if value.dtype != np.dtype(dtype):
        raise ValueError("%s must have dtype %s, got %s" % (name, np.dtype(dtype), value.dtype))
    if ndim is not None and value.ndim != ndim:
        raise ValueError("%s must have %d dimensions, got shape %s" % (name, ndim, value.shape))
    if shape is not None:
        if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError("%s must have shape %s, got %s" % (name, want, value.shape))
    if value.size == 0:
        raise ValueError("%s must not be empty" % name)
    return np.ascontiguousarray(value)


def integer(name, value, lo, hi):
    """An int in [lo, hi]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError("%s must be an int, got %r" % (name, value))
    if not lo <= value <= hi:
        raise ValueError("%s must be in [%d, %d], got %d" % (name, lo, hi, value))
    return int(value)


def ptr(ctype, a):
    """A `ctype[]` C array over numpy array a's memory (None -> NULL): it passes as a `ctype *`
    and knows its length, so a recorder can serialize it."""
    if a is None:
        return ffi.NULL
    return ffi.from_buffer(ctype + "[]", a)


def scratch(nbytes):
    """A scratch buffer (a sized uint8_t[]) for kernels that need one (NULL when none is needed)."""
    return ffi.new("uint8_t[]", nbytes) if nbytes > 0 else ffi.NULL


def shape(h, w, c):
    return ffi.new("tb_shape *", (h, w, c))[0]


def check(status, what):
    if status != lib.TB_OK:
        raise ValueError("%s: the kernel rejected its arguments (status %d)" % (what, status))
