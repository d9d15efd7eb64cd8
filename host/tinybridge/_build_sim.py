"""Builds the `sim` device: native_kernels + device + boards/host as one POSIX executable.

setup.py builds it into the package (tinybridge/bin/tinybridge-sim); the tests build a sanitized
variant (AddressSanitizer + UndefinedBehaviorSanitizer) under build/. Standalone on purpose (no
package imports): setup.py runs it before the package exists.

    python3 host/tinybridge/_build_sim.py OUT [--sanitize]
"""
import glob
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CC = os.environ.get("CC", "cc")
CFLAGS = ["-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]
SANITIZE_FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all"]
LIBS = ["-lpthread", "-lm"]


def source_dirs():
    return [os.path.join(ROOT, "native_kernels", "src"), os.path.join(ROOT, "device"),
            os.path.join(ROOT, "boards", "host")]


def include_dirs():
    return [os.path.join(ROOT, "native_kernels", "include")] + source_dirs()


def sources(exclude=()):
    found = sorted(p for d in source_dirs() for p in glob.glob(os.path.join(d, "*.c")))
    return [p for p in found if os.path.basename(p) not in exclude]


def build(out, sanitize=False, exclude=(), extra_sources=()):
    """Compiles and links into `out` (atomically); returns out. Skips the work when `out` is newer
    than every source, header and this script. `exclude`/`extra_sources` swap source files (tests)."""
    srcs = sources(exclude) + list(extra_sources)
    inputs = srcs + [__file__] + [h for d in include_dirs() + [os.path.dirname(p) for p in extra_sources]
                                  for h in glob.glob(os.path.join(d, "*.h"))]
    if os.path.exists(out) and os.path.getmtime(out) >= max(os.path.getmtime(p) for p in inputs):
        return out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    flags = CFLAGS + (SANITIZE_FLAGS if sanitize else [])
    cmd = ([CC] + flags + ["-I" + d for d in include_dirs()] + srcs + LIBS + ["-o", out + ".tmp"])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("building the sim failed:\n%s\n%s" % (" ".join(cmd), result.stderr))
    os.replace(out + ".tmp", out)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--sanitize"]):
        sys.exit(__doc__)
    print(build(sys.argv[1], sanitize=len(sys.argv) == 3))
