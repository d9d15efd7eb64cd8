"""The device's loader and executor (device/model.c, device/exec.c) as a host program built with
AddressSanitizer and UndefinedBehaviorSanitizer (tests/harness/model_harness.c), driven from
Python: load blobs, run infer and train records, read back results and parameters."""
import glob
import os
import struct
import subprocess
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.path.join(ROOT, "build", "tests")
BINARY = os.path.join(BUILD, "model_harness")
FLAGS = ["-std=c99", "-O1", "-g", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
         "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
           UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")


def sources():
    kernels = sorted(glob.glob(os.path.join(ROOT, "native_kernels", "src", "*.c")))
    device = [os.path.join(ROOT, "device", name) for name in ("model.c", "exec.c", "profile.c", "frame.c")]
    return kernels + device + [os.path.join(ROOT, "tests", "harness", "model_harness.c")]


def build():
    """The harness binary, rebuilt when a source or header is newer."""
    inputs = sources() + glob.glob(os.path.join(ROOT, "device", "*.h")) + \
        glob.glob(os.path.join(ROOT, "native_kernels", "*", "*.h"))
    if os.path.exists(BINARY) and os.path.getmtime(BINARY) >= max(map(os.path.getmtime, inputs)):
        return BINARY
    os.makedirs(BUILD, exist_ok=True)
    includes = ["-I" + os.path.join(ROOT, d) for d in ("native_kernels/include", "device")]
    cmd = ["cc"] + FLAGS + includes + sources() + ["-lm", "-o", BINARY + ".tmp"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    os.replace(BINARY + ".tmp", BINARY)
    return BINARY


class HarnessError(AssertionError):
    """The harness crashed or a sanitizer reported an error."""


def _run(capacity, commands):
    p = subprocess.run([build(), str(capacity)] + commands, capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        raise HarnessError("model_harness failed (%d):\n%s\n%s" % (p.returncode, p.stdout[-2000:], p.stderr[-6000:]))
    return p.stdout.splitlines(), p.stderr


def load_many(blobs, capacity):
    """Load each blob in turn (one process); per blob (status, message or (arena, params))."""
    with tempfile.TemporaryDirectory() as tmp:
        lines, _ = _run(capacity, ["load:" + _write(tmp, "%d.blob" % i, b) for i, b in enumerate(blobs)])
    out = []
    for line in lines:
        _, state, rest = line.split(" ", 2)
        if state == "ok":
            out.append((0, tuple(int(v) for v in rest.split())))
        else:
            code, _, message = rest.partition(" ")
            out.append((int(code), message))
    return out


class Record:
    """A run record: kind "infer" or "train", the int8 input tensor, label and lr (train)."""

    def __init__(self, kind, x, label=0, lr=0.0):
        self.kind, self.x, self.label, self.lr = kind, np.ascontiguousarray(x, np.int8), label, lr

    def pack(self):
        return struct.pack("<BBHf", self.kind == "train", 0, self.label, self.lr) + self.x.tobytes()


def _write(tmp, name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _parse(data, records):
    """Per record ("infer", status, label, logits) or ("train", status, loss, label_pred, step),
    and the params bytes."""
    results, pos = [], 0
    for r in records:
        (status,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if r.kind == "infer":
            if status:
                results.append(("infer", status, None, None))
                continue
            label, n = struct.unpack_from("<HH", data, pos)
            results.append(("infer", status, label, np.frombuffer(data, np.int8, n, pos + 4).copy()))
            pos += 4 + n
        else:
            if status:
                results.append(("train", status, None, None, None))
                continue
            results.append(("train", status) + struct.unpack_from("<fHI", data, pos))
            pos += 10
    (n,) = struct.unpack_from("<I", data, pos)
    return results, data[pos + 4:pos + 4 + n]


def run(blobs, records, capacity):
    """Load `blobs` in order, then run `records` on the current model. Returns (load lines,
    per-record results (see _parse), params bytes, arena bytes used, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmds = ["load:" + _write(tmp, "%d.blob" % i, b) for i, b in enumerate(blobs)]
        script, out = _write(tmp, "script", b"".join(r.pack() for r in records)), os.path.join(tmp, "out")
        lines, err = _run(capacity, cmds + ["run:%s:%s" % (script, out)])
        with open(out, "rb") as f:
            results, params = _parse(f.read(), records)
    if not lines[-1].startswith("run ok"):
        raise HarnessError(lines[-1])
    return lines[:-1], results, params, int(lines[-1].split()[2]), err


def run_each(blobs, records, capacity):
    """For each blob (each must load): load it, run `records`. Returns per blob the results."""
    with tempfile.TemporaryDirectory() as tmp:
        script = _write(tmp, "script", b"".join(r.pack() for r in records))
        cmds = []
        for i, b in enumerate(blobs):
            cmds += ["load:" + _write(tmp, "%d.blob" % i, b), "run:%s:%s" % (script, os.path.join(tmp, "%d.out" % i))]
        lines, _ = _run(capacity, cmds)
        if any(not line.startswith(("load ok", "run ok")) for line in lines):
            raise HarnessError("a blob did not load: %s" % [line for line in lines if "error" in line])
        out = []
        for i in range(len(blobs)):
            with open(os.path.join(tmp, "%d.out" % i), "rb") as f:
                out.append(_parse(f.read(), records)[0])
    return out
