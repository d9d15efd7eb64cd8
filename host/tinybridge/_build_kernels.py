"""cffi builder for tinybridge._kernels: the native_kernels C library, compiled by the install."""
import glob
import os
import re

from cffi import FFI

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KERNELS = os.path.join(ROOT, "native_kernels")
PUBLIC_HEADERS = ["tb_kernels.h", "tb_train.h"]
# Same numerics on every target: no fused multiply-add contraction, strict C99.
CFLAGS = ["-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]


def cdef_source():
    """The public headers without preprocessor lines and comments: what cffi's parser accepts."""
    text = ""
    for name in PUBLIC_HEADERS:
        with open(os.path.join(KERNELS, "include", name)) as f:
            text += f.read() + "\n"
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(cdef_source())
ffibuilder.set_source(
    "tinybridge._kernels",
    "".join('#include "%s"\n' % h for h in PUBLIC_HEADERS),
    sources=sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(KERNELS, "src", "*.c"))),
    include_dirs=[os.path.join(KERNELS, "include"), os.path.join(KERNELS, "src")],
    extra_compile_args=CFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
