"""Replays the host kernel tests' C calls on the Cortex-M7 (QEMU mps2-an500) and compares every
output byte with the host's.

    python3 tests/target/qemu_replay.py [TEST_FILE ...]

1. record: the kernel test modules run in a child pytest with record_plugin, which records every
   C call they make through tinybridge.kernels (vectors.bin) and the host's results (expected.bin);
2. build: gen_runner.py generates the typed thunks from the public headers; armbuild links them with
   kernel_runner.c, semihost.c and native_kernels into build/target/kernel_runner.elf;
3. run: qemu-system-arm replays vectors.bin and writes results.bin through semihosting;
4. compare: return values and the post-call bytes of every buffer argument (inputs included,
   `scratch` parameters excluded), byte for byte.
"""
import fcntl
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gen_runner  # noqa: E402
from tinybridge import armbuild  # noqa: E402
from tinybridge.kernels import record  # noqa: E402

ROOT = gen_runner.ROOT
BUILD = gen_runner.DEFAULT_OUT
QEMU = "qemu-system-arm"
THIS_TEST = "test_target_qemu.py"
# Parameters whose contents after the call are unspecified (a kernel's work buffer); the plain-C
# and DSP paths may use them differently, so they are not compared.
SCRATCH = re.compile(r"^scratch")
EXIT_CODES = {0: "every record ran", 1: "bad command line or files", 2: "malformed record", 3: "unknown kernel",
              4: "arguments that do not fit the prototype", 5: "record larger than the runner's buffer",
              0xDEAD & 0xFF: "a fault (HardFault or another exception)"}


def missing_tools():
    """The tools this needs that are not on PATH."""
    return [t for t in (armbuild.CC, QEMU) if shutil.which(t) is None]


def kernel_test_files():
    """tests/test_*.py modules that import tinybridge's kernels (this test excluded), unless they
    set REPLAY_ON_TARGET = False (whole-network training runs: tens of thousands of calls, 0.5 GB
    of vectors, of kernels the kernel tests already cover)."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
        if os.path.basename(path) == THIS_TEST:
            continue
        with open(path) as f:
            text = f.read()
        if re.search(r"^REPLAY_ON_TARGET = False\b", text, re.M):
            continue
        if re.search(r"^\s*(from|import)\s+tinybridge\b.*\bkernels\b|^\s*from\s+tinybridge\.kernels\b",
                     text, re.M):
            out.append(path)
    return out


def record_tests(out_dir, files=None, timeout=600):
    """Runs the kernel test modules in a child pytest that records their calls into out_dir.
    Returns dict(vectors, expected, contexts, skipped, returncode, output)."""
    files = kernel_test_files() if files is None else files
    env = dict(os.environ, TB_RECORD_OUT=out_dir,
               PYTHONPATH=os.pathsep.join([HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    # one process (no xdist): the plugin records the whole session in it
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "record_plugin", "-p", "no:cacheprovider",
           "-p", "no:xdist"] + files
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = dict(returncode=proc.returncode, output=proc.stdout + proc.stderr, files=files)
    if not os.path.exists(os.path.join(out_dir, "meta.json")):
        raise RuntimeError("recording produced nothing (pytest exit %d):\n%s" % (proc.returncode, out["output"]))
    with open(os.path.join(out_dir, "vectors.bin"), "rb") as f:
        out["vectors"] = f.read()
    with open(os.path.join(out_dir, "expected.bin"), "rb") as f:
        out["expected"] = f.read()
    with open(os.path.join(out_dir, "meta.json")) as f:
        meta = json.load(f)
    out["contexts"], out["skipped"] = meta["contexts"], meta["skipped"]
    return out


def build_runner(build_dir=BUILD):
    """Generates the thunks and builds the runner ELF (incrementally); returns its path. A lock file
    keeps concurrent test sessions from building into the same files at once."""
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, ".kernel_runner.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        thunks_h, thunks_c = gen_runner.generate(build_dir)
        sources, includes = armbuild.kernel_sources()
        sources = sources + [os.path.join(armbuild.QEMU_BOARD, "semihost.c"),
                             os.path.join(HERE, "kernel_runner.c"), thunks_c]
        return armbuild.build_elf(os.path.join(build_dir, "kernel_runner.elf"), sources,
                                  include_dirs=includes + [HERE, build_dir])


def run_qemu(elf, vectors_path, results_path, timeout=120):
    """Runs the runner on vectors_path; returns the CompletedProcess (returncode = the runner's exit
    status). results_path must be in the same directory as vectors_path."""
    cwd = os.path.dirname(os.path.abspath(vectors_path))
    rel = [os.path.relpath(p, cwd) for p in (vectors_path, results_path)]
    if any(c in p for p in rel for c in " ,"):
        raise ValueError("paths for the runner must not contain spaces or commas: %s" % rel)
    cmd = [QEMU, "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native,arg=kernel_runner,arg=%s,arg=%s" % tuple(rel),
           "-kernel", os.path.abspath(elf)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def describe_exit(code):
    return "%d (%s)" % (code, EXIT_CODES.get(code, "?"))


_NAMES = None


def param_names():
    """{kernel: [(parameter name, C type)]} from the public headers."""
    global _NAMES
    if _NAMES is None:
        fns, _ = gen_runner.prototypes()
        _NAMES = {f.name: [(n, t.cname) for n, t in f.params] for f in fns}
    return _NAMES


def _value(b):
    if len(b) == 4:
        return "0x%s (int32 %d, float %r)" % (b[::-1].hex(), int.from_bytes(b, "little", signed=True),
                                              struct.unpack("<f", b)[0])
    return "0x" + b[::-1].hex() if b else "(none)"


def _item_size(cname):
    try:
        return record.ffi.sizeof(cname.rstrip(" *"))
    except Exception:
        return 1


class Replay(dict):
    """replay()'s result: a dict with a short repr."""

    def __repr__(self):
        return "Replay(%d records, %d differences)" % (self.get("n_records", 0), len(self.get("differences", ())))


def compare(vectors, expected, actual, contexts=None, limit=50):
    """Differences between the host's results (expected) and the target's (actual) for the records
    in `vectors` (file contents), one readable line each; [] when byte-identical."""
    vecs = record.decode_vectors(vectors)
    exp, exp_end = record.decode_results(expected)
    try:
        act, act_end = record.decode_results(actual)
    except ValueError as e:
        return ["the target's results file is malformed: %s" % e]
    names = param_names()
    msgs = []
    if len(exp) != len(vecs):
        msgs.append("the expected results have %d records for %d vectors" % (len(exp), len(vecs)))
    if act_end is None or len(act) != len(vecs):
        nxt = vecs[len(act)].name if len(act) < len(vecs) else "?"
        msgs.append("the target produced %d of %d results%s (next record: %s)"
                    % (len(act), len(vecs), "" if act_end is not None else " and no trailer", nxt))
    for i, (v, e, a) in enumerate(zip(vecs, exp, act)):
        ctx = contexts[i] if contexts and i < len(contexts) else None
        where = "record %d: %s%s" % (i, v.name, " (from %s)" % ctx if ctx else "")
        params = names.get(v.name, [])
        pname = (lambda j: "%s %s (argument %d)" % (params[j][1], params[j][0], j)
                 if j < len(params) else "argument %d" % j)
        if a.index != i:
            msgs.append("%s: the target reported it as record %d" % (where, a.index))
        if a.status >= record.STATUS_GUARD:
            b = a.status - record.STATUS_GUARD
            culprits = [pname(j) for j, arg in enumerate(v.args) if arg[0] == "pointer" and arg[1] == b]
            msgs.append("%s: on the target the call wrote outside the buffer of %s"
                        % (where, ", ".join(culprits) or "blob %d" % b))
        elif a.status:
            msgs.append("%s: target status %d" % (where, a.status))
        if a.ret != e.ret:
            msgs.append("%s: return value differs: host %s, target %s" % (where, _value(e.ret), _value(a.ret)))
        if len(a.blobs) != len(e.blobs):
            msgs.append("%s: %d buffers on the target, %d on the host" % (where, len(a.blobs), len(e.blobs)))
            continue
        for j, arg in enumerate(v.args):
            if arg[0] != "pointer" or (j < len(params) and SCRATCH.match(params[j][0])):
                continue
            _, b, off, size = arg
            host, target = e.blobs[b][off:off + size], a.blobs[b][off:off + size]
            if host != target:
                diff = [k for k in range(min(len(host), len(target))) if host[k] != target[k]]
                first = diff[0] if diff else min(len(host), len(target))
                item = _item_size(params[j][1]) if j < len(params) else 1
                msgs.append("%s: %s differs in %d of %d bytes; first at byte %d%s: host 0x%02x, target 0x%02x"
                            % (where, pname(j), len(diff) or abs(len(host) - len(target)), size, first,
                               " (element %d)" % (first // item) if item > 1 else "",
                               host[first] if first < len(host) else 0,
                               target[first] if first < len(target) else 0))
        if len(msgs) >= limit:
            msgs.append("... (stopped after %d differences)" % limit)
            break
    return msgs


def replay(work_dir, files=None, timeout=120):
    """Record, build, run, compare. Returns a dict with everything (see the keys)."""
    t0 = time.monotonic()
    rec = Replay(record_tests(work_dir, files))
    t1 = time.monotonic()
    elf = build_runner()
    t2 = time.monotonic()
    results = os.path.join(work_dir, "results.bin")
    if os.path.exists(results):
        os.remove(results)
    proc = run_qemu(elf, os.path.join(work_dir, "vectors.bin"), results, timeout)
    t3 = time.monotonic()
    actual = open(results, "rb").read() if os.path.exists(results) else b""
    rec.update(elf=elf, work_dir=work_dir, qemu=proc, actual=actual,
               n_records=len(record.decode_vectors(rec["vectors"])),
               seconds=dict(record=t1 - t0, build=t2 - t1, qemu=t3 - t2))
    rec["differences"] = compare(rec["vectors"], rec["expected"], actual, rec["contexts"])
    return rec


def main(argv):
    missing = missing_tools()
    if missing:
        print("missing: %s" % ", ".join(missing))
        return 2
    work = os.path.join(BUILD, "replay")
    os.makedirs(work, exist_ok=True)
    r = replay(work, [os.path.abspath(a) for a in argv] or None)
    print("recorded %d calls from %s (child pytest exit %d) in %.1f s; build %.1f s; qemu %.1f s, exit %s"
          % (r["n_records"], ", ".join(os.path.relpath(f, ROOT) for f in r["files"]), r["returncode"],
             r["seconds"]["record"], r["seconds"]["build"], r["seconds"]["qemu"],
             describe_exit(r["qemu"].returncode)))
    if r["skipped"]:
        print("skipped (over %d bytes): %d calls" % (record.MAX_RECORD_BYTES, len(r["skipped"])))
    for m in r["differences"]:
        print(m)
    print("byte-identical" if not r["differences"] and r["qemu"].returncode == 0 else "DIFFERENT")
    return 0 if not r["differences"] and r["qemu"].returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
