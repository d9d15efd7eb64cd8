"""Generates the typed part of the Cortex-M7 kernel runner from the public kernel headers.

    python3 tests/target/gen_runner.py [OUT_DIR]     (default build/target)

Reads the cdef that the cffi build parses (tinybridge._build_kernels.cdef_source(): the headers in
its PUBLIC_HEADERS), finds every function prototype, and writes into OUT_DIR:

- kernel_thunks.h: the limits the runner is built with (record buffer size, most arguments, largest
  return value);
- kernel_thunks.c: one thunk per kernel function, which checks each recorded argument against the
  parameter's type, unpacks it into a local of exactly that type and calls the kernel (no
  function-pointer casts), and the name -> thunk table; plus compile-time checks that every struct
  in an argument has the host's size and field offsets on the target.

Files are rewritten only when their content changes, so armbuild's mtime check stays meaningful.
Nothing here is per-kernel: a new prototype in a public header is a new thunk.
"""
import copy
import os
import sys

from cffi import FFI
from pycparser import c_ast, c_generator, c_parser

from tinybridge import _build_kernels
from tinybridge.kernels import record

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(ROOT, "build", "target")
# typedef names the headers take from the C library; declared for pycparser only (cffi knows them)
LIBC_TYPEDEFS = ["int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t",
                 "uint64_t", "intptr_t", "uintptr_t", "size_t", "ptrdiff_t", "bool"]


class Function:
    """A kernel prototype: name, result ctype, params [(name, ctype)] (cffi ctypes)."""

    def __init__(self, name, result, params):
        self.name, self.result, self.params = name, result, params

    def __repr__(self):
        return "Function(%s(%s) -> %s)" % (self.name, ", ".join("%s %s" % (t.cname, n) for n, t in self.params),
                                           self.result.cname)


def _type_string(node):
    """The C type of a declaration node, without its name."""
    node = copy.deepcopy(node)
    inner = node
    while not isinstance(inner, c_ast.TypeDecl):
        inner = inner.type
    inner.declname = None
    return c_generator.CGenerator().visit(c_ast.Typename(name=None, quals=[], align=None, type=node))


def prototypes(cdef=None):
    """Every function declared in the cdef, in declaration order."""
    cdef = _build_kernels.cdef_source() if cdef is None else cdef
    ffi = FFI()
    ffi.cdef(cdef)
    prelude = "".join("typedef int %s;\n" % n for n in LIBC_TYPEDEFS)
    ast = c_parser.CParser().parse(prelude + cdef)
    out = []
    for decl in ast.ext:
        if not (isinstance(decl, c_ast.Decl) and isinstance(decl.type, c_ast.FuncDecl)):
            continue
        fdecl = decl.type
        params = []
        plist = fdecl.args.params if fdecl.args is not None else []
        for i, p in enumerate(plist):
            if isinstance(p, c_ast.EllipsisParam):
                raise record.RecordingError("%s: variadic" % decl.name)
            t = ffi.typeof(_type_string(p.type))
            if t.kind == "void":  # f(void)
                continue
            if t.kind == "array":  # a parameter declared T x[] is a T *
                t = ffi.typeof(t.item.cname + " *")
            params.append((p.name or "arg%d" % i, t))
        result = ffi.typeof(_type_string(fdecl.type))
        fn = Function(decl.name, result, params)
        ftype = ffi.typeof("%s(*)(%s)" % (result.cname, ", ".join(t.cname for _, t in params) or "void"))
        record.check_function(decl.name, ftype)
        out.append(fn)
    return out, ffi


def _structs(t, ffi, seen):
    """Struct ctypes reachable from t (by value, through pointers, inside structs)."""
    if t.kind == "pointer":
        t = t.item
    if t.kind == "array":
        t = t.item
    if t.kind == "struct" and t.cname not in seen:
        seen[t.cname] = t
        for _, f in t.fields:
            _structs(f.type, ffi, seen)


def _thunk(fn):
    n = len(fn.params)
    lines = ["static int thunk_%s(const tb_arg *a, uint32_t n, uint8_t *ret, uint32_t *ret_size)" % fn.name,
             "{"]
    if n == 0:
        lines.append("    (void)a;")
    lines.append("    if (n != %du) return 1;" % n)
    call = []
    for i, (pname, t) in enumerate(fn.params):
        local = "a%d" % i
        lines.append("    /* %s %s */" % (t.cname, pname))
        if t.kind == "pointer":
            item = "1" if t.item.kind == "void" else "sizeof(%s)" % t.item.cname
            lines.append("    void *p%d;" % i)
            lines.append("    if (tb_arg_pointer(&a[%d], %s, &p%d)) return 1;" % (i, item, i))
            lines.append("    %s%s = p%d;" % (t.cname, local, i))
        elif t.kind == "enum":
            lines.append("    int32_t v%d;" % i)
            lines.append("    if (tb_arg_value(&a[%d], &v%d, sizeof v%d)) return 1;" % (i, i, i))
            lines.append("    %s %s = (%s)v%d;" % (t.cname, local, t.cname, i))
        else:
            lines.append("    %s %s;" % (t.cname, local))
            lines.append("    if (tb_arg_value(&a[%d], &%s, sizeof %s)) return 1;" % (i, local, local))
        call.append(local)
    invoke = "%s(%s)" % (fn.name, ", ".join(call))
    r = fn.result
    if r.kind == "void":
        lines += ["    %s;" % invoke, "    (void)ret;", "    *ret_size = 0;"]
    elif r.kind == "enum":
        lines += ["    int32_t r = (int32_t)%s;" % invoke, "    memcpy(ret, &r, sizeof r);",
                  "    *ret_size = sizeof r;"]
    else:
        lines += ["    %s r = %s;" % (r.cname, invoke), "    memcpy(ret, &r, sizeof r);",
                  "    *ret_size = sizeof r;"]
    lines += ["    return 0;", "}", ""]
    return lines


def generate_sources(max_record=record.MAX_RECORD_BYTES, cdef=None):
    """{file name: content} of the generated sources."""
    fns, ffi = prototypes(cdef)
    if not fns:
        raise record.RecordingError("no function prototypes in the kernel headers")
    headers = list(_build_kernels.PUBLIC_HEADERS)
    banner = ("/* Generated by tests/target/gen_runner.py from %s: do not edit, do not commit. */\n"
              % ", ".join(headers))
    max_args = max(len(f.params) for f in fns)
    max_ret = max([4] + [ffi.sizeof(f.result) for f in fns if f.result.kind not in ("void", "enum")])
    h = [banner, "#ifndef KERNEL_THUNKS_H", "#define KERNEL_THUNKS_H",
         "#define TB_RECORD_MAX %du" % max_record,
         "#define TB_MAX_ARGS %d" % max(max_args, 1),
         "#define TB_MAX_RET %d" % max_ret,
         "#define TB_RECORD_GUARD_BYTES %d" % record.GUARD_BYTES,
         "#define TB_RECORD_GUARD_FILL 0x%02Xu" % record.GUARD_FILL,
         "#endif", ""]
    c = [banner, "#include <stddef.h>", "#include <stdint.h>", "#include <string.h>", ""]
    c += ['#include "%s"' % name for name in headers]
    c += ['#include "kernel_runner.h"', "", "/* every struct a kernel takes has the host's layout */"]
    seen = {}
    for f in fns:
        for _, t in f.params:
            _structs(t, ffi, seen)
        _structs(f.result, ffi, seen)
    k = 0
    for name, t in seen.items():
        c.append("typedef char tb_layout_%d[(sizeof(%s) == %du) ? 1 : -1];" % (k, name, ffi.sizeof(t)))
        k += 1
        for fname, field in t.fields:
            c.append("typedef char tb_layout_%d[(offsetof(%s, %s) == %du) ? 1 : -1];"
                     % (k, name, fname, field.offset))
            k += 1
    c.append("")
    for f in fns:
        c += _thunk(f)
    c.append("const tb_kernel tb_kernel_table[] = {")
    c += ['    {"%s", thunk_%s},' % (f.name, f.name) for f in fns]
    c += ["};", "const uint32_t tb_kernel_count = %du;" % len(fns), ""]
    return {"kernel_thunks.h": "\n".join(h), "kernel_thunks.c": "\n".join(c)}


def generate(out_dir=DEFAULT_OUT, max_record=record.MAX_RECORD_BYTES):
    """Write the generated sources into out_dir (only when changed); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, text in generate_sources(max_record).items():
        path = os.path.join(out_dir, name)
        old = None
        if os.path.exists(path):
            with open(path) as f:
                old = f.read()
        if old != text:
            tmp = "%s.%d.tmp" % (path, os.getpid())
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in generate(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT):
        print(p)
