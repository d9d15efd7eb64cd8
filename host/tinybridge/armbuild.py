"""Cross-compiling C for the Cortex-M7 with the system arm-none-eabi-gcc (Debian gcc-arm-none-eabi):
one set of flags for everything that runs on the `qemu` target (test runners, benchmarks, firmware)."""
import glob
import os
import shutil
import subprocess

from .errors import TinyBridgeError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
QEMU_BOARD = os.path.join(ROOT, "boards", "qemu_mps2_an500")
CC = "arm-none-eabi-gcc"
CPU_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]
CFLAGS = CPU_FLAGS + ["-O2", "-std=c99", "-ffp-contract=off", "-ffunction-sections", "-fdata-sections",
                      "-Wall", "-Wextra", "-Werror"]
LDFLAGS = ["-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections"]


def kernel_sources():
    """native_kernels: its sources and include directories."""
    nk = os.path.join(ROOT, "native_kernels")
    return sorted(glob.glob(os.path.join(nk, "src", "*.c"))), [os.path.join(nk, "include"), os.path.join(nk, "src")]


def require_toolchain():
    if shutil.which(CC) is None:
        raise TinyBridgeError("%s not found: install Debian's gcc-arm-none-eabi and libnewlib-arm-none-eabi" % CC)


def build_elf(out, sources, include_dirs=(), defines=(), linker_script=None, extra_flags=()):
    """Compile and link `sources` (plus the qemu board's startup) into the ELF `out`; returns out.
    Rebuilds only when a source, header or this module is newer than `out`."""
    require_toolchain()
    board_sources = [os.path.join(QEMU_BOARD, "startup.c")]
    all_sources = list(board_sources) + list(sources)
    includes = [QEMU_BOARD] + list(include_dirs)
    inputs = all_sources + [__file__] + [h for d in includes for h in glob.glob(os.path.join(d, "*.h"))]
    if os.path.exists(out) and os.path.getmtime(out) >= max(os.path.getmtime(p) for p in inputs):
        return out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = "%s.%d.tmp" % (out, os.getpid())  # concurrent builds of one target never share a temp file
    cmd = ([CC] + CFLAGS + list(extra_flags) + ["-I" + d for d in includes] + ["-D" + d for d in defines]
           + all_sources + ["-T", linker_script or os.path.join(QEMU_BOARD, "link.ld")] + LDFLAGS
           + ["-o", tmp])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise TinyBridgeError("arm build failed:\n%s\n%s" % (" ".join(cmd), result.stderr))
    os.replace(tmp, out)
    return out
