"""Recording of kernel calls at the binding layer, for replay on another target.

    from tinybridge import kernels
    with kernels.recording() as rec:
        kernels.conv2d(...)                  # any wrapper that calls C through _checks.lib
    rec.calls                                # one Call per C call: its vector and its host results

`_checks.lib` is a LibProxy over the cffi lib. While a Recorder is active, every C function it
hands out is wrapped: each argument is serialized by its cffi type (scalars and structs by value as
raw bytes, pointer buffers as bytes, NULL marked), the real call runs, and the return value and the
post-call bytes of every pointer buffer (inputs and outputs alike) are kept. Nothing here is
per-kernel: a function declared in the cdef is recorded as soon as it exists. With no recorder
active the proxy hands out the real cffi functions, cached as plain attributes: no cost.

Pointer arguments must have a known extent: sized arrays (`_checks.ptr`, `_checks.scratch`,
`ffi.new("T[]", n)`, `ffi.from_buffer("T[]", a)`), owning pointers to one item (`ffi.new("T *")`),
pointers to structs (one struct), or Python lists (made into the temporary array cffi would make).
A bare `ffi.cast("T *", ...)` into a larger buffer cannot be recorded (RecordingError). Pointer
arguments whose memory overlaps (an in-place kernel called with out == in) become one shared
buffer ("blob"), so aliasing is replayed too.

Only types with one layout on x86-64 and ARM32 are recordable: fixed-width integers, float,
double, enums (as int32), structs of those, and pointers to them or void.
A parameter named `scratch...` is recorded like any buffer; the comparison skips its contents.

File formats (all little-endian; the C runner tests/target/kernel_runner.c reads and writes them):

vectors file, one record after another:
    u32 VECTOR_MAGIC, u32 body_len (multiple of 8, <= the runner's buffer), body:
    u32 name_len, name bytes, pad to 4
    u32 n_blobs; per blob: u32 size, u32 data_offset (from body start; data_offset % 8 equals the
        host address % 8, so alignment is kept); GUARD_BYTES of GUARD_FILL on each side of the data
    u32 n_args; per arg: u32 kind; VALUE: u32 size, bytes, pad to 4;
        POINTER: u32 blob, u32 offset, u32 size; NULL: nothing
    then the blob data at their offsets.
results file, one per record, then a trailer:
    u32 RESULT_MAGIC, u32 record index, u32 status (0, or STATUS_GUARD + blob: the call wrote
    outside that buffer), u32 ret_size, u32 n_blobs, ret bytes pad to 4,
    per blob: u32 size, bytes pad to 4.
    trailer: u32 END_MAGIC, u32 number of records.
"""
import contextlib
import struct

from .. import _kernels

ffi = _kernels.ffi

VECTOR_MAGIC = 0x43524254  # "TBRC"
RESULT_MAGIC = 0x53524254  # "TBRS"
END_MAGIC = 0x4E454254     # "TBEN"
VALUE, POINTER, NULL = 0, 1, 2
STATUS_GUARD = 0x100
GUARD_BYTES, GUARD_FILL = 8, 0xA5
# The Cortex-M7 runner streams one record at a time through a static buffer of this size (its
# 320 KB SRAM holds the buffer, the stack and little else); larger calls are skipped, and listed in
# Recorder.skipped.
MAX_RECORD_BYTES = 256 * 1024

FIXED_SCALARS = {"int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t",
                 "uint64_t", "float", "double"}


class RecordingError(Exception):
    """A kernel call that cannot be recorded portably (a type or a pointer of unknown extent)."""


def portable_type(t, what):
    """Raise RecordingError unless ctype t has the same size and layout on x86-64 and ARM32."""
    if t.kind == "primitive":
        if t.cname not in FIXED_SCALARS:
            raise RecordingError("%s: type %s has no fixed size across targets" % (what, t.cname))
    elif t.kind == "enum":
        pass
    elif t.kind == "struct":
        for name, field in t.fields:
            if field.bitsize != -1:
                raise RecordingError("%s: bit-field %s.%s" % (what, t.cname, name))
            if field.type.kind == "array":
                portable_type(field.type.item, what)
            else:
                portable_type(field.type, "%s (field %s.%s)" % (what, t.cname, name))
    else:
        raise RecordingError("%s: type %s (%s) is not recordable" % (what, t.cname, t.kind))


def check_function(name, ftype):
    """Raise RecordingError unless every argument and the result of function ctype ftype are
    recordable (see portable_type; pointers to those or void; results: no pointers)."""
    if ftype.ellipsis:
        raise RecordingError("%s: variadic" % name)
    for i, t in enumerate(ftype.args):
        what = "%s argument %d" % (name, i)
        if t.kind == "pointer":
            if t.item.kind != "void":
                portable_type(t.item, what)
        else:
            portable_type(t, what)
    if ftype.result.kind != "void":
        portable_type(ftype.result, "%s result" % name)


def _scalar_bytes(t, value):
    """(bytes as the target reads them, the value to pass on) for a scalar/enum/struct argument."""
    if t.kind == "enum":
        box = ffi.new(t.cname + " *", value)
        return struct.pack("<i", box[0]), box[0]
    box = ffi.new(t.cname + " *", value)
    return bytes(ffi.buffer(box)), box[0]


def _result_bytes(t, value):
    if t.kind == "void":
        return b""
    return _scalar_bytes(t, value)[0]


def _pointer(t, value):
    """(address, size in bytes, the object to pass on) for a pointer argument; None for NULL."""
    if isinstance(value, (list, tuple)):  # cffi passes a temporary array; make it ourselves
        if t.item.kind == "void":
            raise TypeError("a list for a void pointer")
        value = ffi.new(t.item.cname + "[]", value)
    if not isinstance(value, ffi.CData):
        raise TypeError("not a cdata")
    vt = ffi.typeof(value)
    addr = int(ffi.cast("uintptr_t", value))
    if vt.kind == "array":
        size = ffi.sizeof(value)
    elif vt.kind == "pointer":
        if addr == 0:
            return None
        if vt.item.kind == "void":
            raise RecordingError("a void pointer of unknown extent")
        if vt.item.kind != "struct" and "owning" not in repr(value):
            raise RecordingError("a %s of unknown extent (pass a sized array: _checks.ptr or "
                                 "ffi.new('T[]', n))" % vt.cname)
        size = ffi.sizeof(vt.item)
    else:
        raise TypeError("not a pointer")
    return addr, size, value


def _read(addr, size):
    return bytes(ffi.buffer(ffi.cast("char *", addr), size)) if size else b""


def _pad4(b):
    return b + b"\0" * (-len(b) % 4)


class Call:
    """One recorded C call: `vector` (a vectors-file record), `expected` (its host results, in the
    results-file format with index 0), `name`, `context` (what the recorder was told, e.g. a test
    id), `args` (per argument: ("value", size) / ("pointer", blob, offset, size) / ("null",))."""
    __slots__ = ("name", "context", "args", "vector", "expected")

    def __init__(self, name, context, args, vector, expected):
        self.name, self.context, self.args, self.vector, self.expected = name, context, args, vector, expected


def encode_vector(name, values, blobs, args):
    """values[i]: bytes of VALUE argument i; blobs: [(host address, bytes)]; args: as in Call."""
    nb = name.encode()
    head = struct.pack("<I", len(nb)) + _pad4(nb) + struct.pack("<I", len(blobs))
    arg_bytes = struct.pack("<I", len(args))
    for i, a in enumerate(args):
        if a[0] == "value":
            arg_bytes += struct.pack("<II", VALUE, len(values[i])) + _pad4(values[i])
        elif a[0] == "pointer":
            arg_bytes += struct.pack("<IIII", POINTER, a[1], a[2], a[3])
        else:
            arg_bytes += struct.pack("<I", NULL)
    data_start = len(head) + 8 * len(blobs) + len(arg_bytes)
    table, data = b"", bytearray()
    for addr, content in blobs:
        pos = data_start + len(data)
        start = pos + GUARD_BYTES
        start += (addr - start) % 8           # same alignment as on the host
        data += bytes([GUARD_FILL]) * (start - pos) + content
        table += struct.pack("<II", len(content), start)
    data += bytes([GUARD_FILL]) * GUARD_BYTES
    body = head + table + arg_bytes + bytes(data)
    body += bytes([GUARD_FILL]) * (-len(body) % 8)
    return struct.pack("<II", VECTOR_MAGIC, len(body)) + body


def encode_result(index, status, ret, blobs):
    out = struct.pack("<IIIII", RESULT_MAGIC, index, status, len(ret), len(blobs)) + _pad4(ret)
    for content in blobs:
        out += struct.pack("<I", len(content)) + _pad4(content)
    return out


class Vector:
    """A decoded vectors-file record."""
    __slots__ = ("name", "blobs", "offsets", "args", "raw")

    def __init__(self, name, blobs, offsets, args, raw):
        self.name, self.blobs, self.offsets, self.args, self.raw = name, blobs, offsets, args, raw


def decode_vectors(data):
    """[Vector(name, blobs=[bytes], offsets=[each blob's data offset in raw], args=[("value", bytes)
    | ("pointer", blob, offset, size) | ("null",)], raw=the record's bytes)]."""
    out, pos = [], 0
    while pos < len(data):
        magic, blen = struct.unpack_from("<II", data, pos)
        if magic != VECTOR_MAGIC:
            raise ValueError("bad vector magic at byte %d" % pos)
        body = data[pos + 8:pos + 8 + blen]
        (nl,) = struct.unpack_from("<I", body, 0)
        name = body[4:4 + nl].decode()
        p = 4 + nl + (-nl % 4)
        (nb,) = struct.unpack_from("<I", body, p)
        p += 4
        blobs, offsets = [], []
        for _ in range(nb):
            size, off = struct.unpack_from("<II", body, p)
            blobs.append(body[off:off + size])
            offsets.append(8 + off)
            p += 8
        (na,) = struct.unpack_from("<I", body, p)
        p += 4
        args = []
        for _ in range(na):
            (kind,) = struct.unpack_from("<I", body, p)
            p += 4
            if kind == VALUE:
                (size,) = struct.unpack_from("<I", body, p)
                args.append(("value", body[p + 4:p + 4 + size]))
                p += 4 + size + (-size % 4)
            elif kind == POINTER:
                args.append(("pointer",) + struct.unpack_from("<III", body, p))
                p += 12
            else:
                args.append(("null",))
        out.append(Vector(name, blobs, offsets, args, data[pos:pos + 8 + blen]))
        pos += 8 + blen
    return out


class Result:
    __slots__ = ("index", "status", "ret", "blobs")

    def __init__(self, index, status, ret, blobs):
        self.index, self.status, self.ret, self.blobs = index, status, ret, blobs


def decode_results(data):
    """([Result], number in the trailer or None when the file has no trailer)."""
    out, pos, end = [], 0, None
    while pos + 8 <= len(data):
        magic, = struct.unpack_from("<I", data, pos)
        if magic == END_MAGIC:
            end = struct.unpack_from("<I", data, pos + 4)[0]
            break
        if magic != RESULT_MAGIC or pos + 20 > len(data):
            raise ValueError("bad result record at byte %d" % pos)
        _, index, status, rsize, nb = struct.unpack_from("<IIIII", data, pos)
        pos += 20
        ret = data[pos:pos + rsize]
        pos += rsize + (-rsize % 4)
        blobs = []
        for _ in range(nb):
            (size,) = struct.unpack_from("<I", data, pos)
            blobs.append(data[pos + 4:pos + 4 + size])
            pos += 4 + size + (-size % 4)
        out.append(Result(index, status, ret, blobs))
    return out, end


def encode_results(results, count=None):
    """A results file (with trailer) from [Result]."""
    return (b"".join(encode_result(r.index, r.status, r.ret, r.blobs) for r in results)
            + struct.pack("<II", END_MAGIC, len(results) if count is None else count))


class Recorder:
    """Collects Calls while active (see recording()). `context` is stored with each call;
    `skipped` lists (name, record bytes, context) of calls over max_bytes."""

    def __init__(self, max_bytes=MAX_RECORD_BYTES):
        self.max_bytes = max_bytes
        self.calls = []
        self.skipped = []
        self.context = None
        self._checked = {}

    def _call(self, name, fn, ftype, args):
        if name not in self._checked:
            try:
                check_function(name, ftype)
                self._checked[name] = None
            except RecordingError as e:
                self._checked[name] = e
        if self._checked[name] is not None:
            raise self._checked[name]
        if len(args) != len(ftype.args):
            return fn(*args)  # cffi's own error
        try:
            passed, values, ptrs, kinds = [], {}, [], []
            for i, (t, a) in enumerate(zip(ftype.args, args)):
                if t.kind == "pointer":
                    p = _pointer(t, a)
                    if p is None:
                        passed.append(ffi.NULL)
                        kinds.append("null")
                    else:
                        passed.append(p[2])
                        kinds.append("pointer")
                        ptrs.append((i, p[0], p[1]))
                else:
                    b, obj = _scalar_bytes(t, a)
                    values[i] = b
                    passed.append(obj)
                    kinds.append("value")
        except (TypeError, OverflowError, ValueError):
            fn(*args)  # raises what an unrecorded call raises
            raise
        # group overlapping buffers into blobs
        blobs, where = [], {}
        for i, addr, size in sorted(ptrs, key=lambda p: (p[1], -p[2])):
            if blobs and size and addr < blobs[-1][1]:
                blobs[-1][1] = max(blobs[-1][1], addr + size)
            else:
                blobs.append([addr, addr + size])
            where[i] = (len(blobs) - 1, addr - blobs[-1][0], size)
        desc = []
        for i, k in enumerate(kinds):
            if k == "value":
                desc.append(("value", len(values[i])))
            elif k == "pointer":
                desc.append(("pointer",) + where[i])
            else:
                desc.append(("null",))
        vector = encode_vector(name, values, [(lo, _read(lo, hi - lo)) for lo, hi in blobs], desc)
        if len(vector) - 8 > self.max_bytes:
            self.skipped.append((name, len(vector), self.context))
            return fn(*passed)
        ret = fn(*passed)
        expected = encode_result(0, 0, _result_bytes(ftype.result, ret),
                                 [_read(lo, hi - lo) for lo, hi in blobs])
        self.calls.append(Call(name, self.context, desc, vector, expected))
        return ret

    def vectors(self):
        """The vectors file's content."""
        return b"".join(c.vector for c in self.calls)

    def expected_results(self):
        """The host's results, in the results-file format (with trailer)."""
        out = []
        for i, c in enumerate(self.calls):
            out.append(c.expected[:4] + struct.pack("<I", i) + c.expected[8:])
        return b"".join(out) + struct.pack("<II", END_MAGIC, len(self.calls))


_active = None


def active():
    """The active Recorder, or None."""
    return _active


class LibProxy:
    """The cffi lib, with recording (see the module doc). Attributes are looked up once and cached
    on the instance; starting or stopping a recorder clears that cache."""

    def __init__(self, real):
        object.__setattr__(self, "_real", real)
        _proxies.append(self)

    def __getattr__(self, name):
        value = getattr(self._real, name)
        if _active is not None and callable(value):
            value = _wrap(name, value)
        self.__dict__[name] = value
        return value

    def __dir__(self):
        return dir(self._real)

    def _flush(self):
        real = self._real
        self.__dict__.clear()
        object.__setattr__(self, "_real", real)


_proxies = []


def _wrap(name, fn):
    ftype = ffi.typeof(fn)

    def call(*args):
        rec = _active
        if rec is None:
            return fn(*args)
        return rec._call(name, fn, ftype, args)

    call.__name__ = name
    call.__doc__ = fn.__doc__
    return call


def _set_active(rec):
    global _active
    _active = rec
    for p in _proxies:
        p._flush()


def start(recorder=None, **kw):
    """Activate `recorder` (a new Recorder(**kw) by default) and return it; see stop()."""
    if _active is not None:
        raise RuntimeError("a recorder is already active")
    rec = recorder if recorder is not None else Recorder(**kw)
    _set_active(rec)
    return rec


def stop():
    """Deactivate the active recorder and return it."""
    rec = _active
    _set_active(None)
    return rec


@contextlib.contextmanager
def recording(max_bytes=MAX_RECORD_BYTES):
    """`with recording() as rec:` records every kernel call made inside the block into rec.calls."""
    rec = start(max_bytes=max_bytes)
    try:
        yield rec
    finally:
        stop()
