"""The kernels on the Cortex-M7 give the host's results byte for byte: every C call that the kernel
test modules make (test_forward_tflm.py, and any other test module importing tinybridge's kernels)
is recorded at the binding layer, replayed under QEMU (mps2-an500, Cortex-M7, built with the
target's flags, so with the DSP path where there is one) and every return value and buffer compared.
Needs qemu-system-arm and arm-none-eabi-gcc: without them this fails (CI installs them)."""
import os
import struct
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "target"))

import qemu_replay  # noqa: E402
from tinybridge import _kernels, kernels  # noqa: E402
from tinybridge.kernels import _checks, record  # noqa: E402

MIN_RECORDS = 100


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    missing = qemu_replay.missing_tools()
    if missing:
        pytest.fail("%s not found: install Debian's qemu-system-arm, gcc-arm-none-eabi and "
                    "libnewlib-arm-none-eabi (CI does)" % ", ".join(missing))
    return qemu_replay.replay(str(tmp_path_factory.mktemp("qemu_replay")))


def _run(replayed, name, vectors):
    path = os.path.join(replayed["work_dir"], name + ".bin")
    with open(path, "wb") as f:
        f.write(vectors)
    results = os.path.join(replayed["work_dir"], name + ".results.bin")
    proc = qemu_replay.run_qemu(replayed["elf"], path, results)
    return proc, open(results, "rb").read() if os.path.exists(results) else b""


def test_kernel_calls_are_byte_identical_on_the_cortex_m7(replayed):
    q = replayed["qemu"]
    assert q.returncode == 0, "the runner exited with %s:\n%s%s" % (
        qemu_replay.describe_exit(q.returncode), q.stdout, q.stderr)
    diffs = replayed["differences"]
    assert not diffs, "%d difference(s) between the host and the Cortex-M7:\n%s" % (len(diffs), "\n".join(diffs))


def test_the_replay_is_not_vacuous(replayed):
    assert replayed["returncode"] in (0, 1), "recording the kernel tests failed:\n" + replayed["output"]
    assert any(f.endswith("test_forward_tflm.py") for f in replayed["files"])
    assert replayed["n_records"] >= MIN_RECORDS, replayed["n_records"]
    skipped = replayed["skipped"]
    assert len(skipped) < replayed["n_records"], "most calls are over the size cap: %s" % skipped[:10]
    results, end = record.decode_results(replayed["actual"])
    assert end == len(results) == replayed["n_records"]
    # the target ran real kernels on real data: most outputs are not what the inputs were
    # (among calls with buffers: a scratch-size query has none)
    pairs = [(v, r) for v, r in zip(record.decode_vectors(replayed["vectors"]), results) if v.blobs]
    changed = sum(any(a != b for a, b in zip(v.blobs, r.blobs)) for v, r in pairs)
    assert changed >= len(pairs) // 2 > 0


def test_every_kernel_is_replayed(replayed):
    """Every function of the public headers is called by some host test, so it runs on the M7 too."""
    replayed_names = {v.name for v in record.decode_vectors(replayed["vectors"])}
    missing = sorted(set(qemu_replay.param_names()) - replayed_names)
    assert not missing, "kernels no host test calls (so never checked on the Cortex-M7): %s" % ", ".join(missing)


def _first(replayed, name):
    vecs = record.decode_vectors(replayed["vectors"])
    i = next(i for i, v in enumerate(vecs) if v.name == name)
    return i, vecs[i]


def _arg(name, param):
    return [n for n, _ in qemu_replay.param_names()[name]].index(param)


def test_a_differing_byte_is_reported_with_kernel_and_buffer(replayed):
    """compare() on the host's own results with one byte changed (independent of the target)."""
    i, v = _first(replayed, "tb_conv2d_s8")
    results, _ = record.decode_results(replayed["expected"])
    assert not qemu_replay.compare(replayed["vectors"], replayed["expected"], record.encode_results(results))
    _, blob, off, size = v.args[_arg("tb_conv2d_s8", "y")]
    r = results[i]
    corrupt = bytearray(r.blobs[blob])
    corrupt[off + size - 1] ^= 0x01
    results[i] = record.Result(r.index, r.status, r.ret, r.blobs[:blob] + [bytes(corrupt)] + r.blobs[blob + 1:])
    diffs = qemu_replay.compare(replayed["vectors"], replayed["expected"], record.encode_results(results),
                                replayed["contexts"])
    assert len(diffs) == 1, diffs
    assert "record %d: tb_conv2d_s8" % i in diffs[0] and "int8_t * y" in diffs[0], diffs[0]
    assert "1 of %d bytes" % size in diffs[0] and "(from %s)" % replayed["contexts"][i] in diffs[0], diffs[0]
    # a return value too, and a missing tail
    results[i] = record.Result(r.index, r.status, b"\xff\xff\xff\xff", r.blobs)
    diffs = qemu_replay.compare(replayed["vectors"], replayed["expected"],
                                record.encode_results(results[:i + 1], count=i + 1))
    assert any("return value differs" in d and "tb_conv2d_s8" in d for d in diffs), diffs
    assert any("produced %d of" % (i + 1) in d for d in diffs), diffs


def test_the_target_computes_from_the_recorded_inputs(replayed):
    """Changing a recorded input changes the target's output: the runner really runs the kernel."""
    i, v = _first(replayed, "tb_conv2d_s8")
    _, xb, xoff, xsize = v.args[_arg("tb_conv2d_s8", "x")]
    raw = bytearray(v.raw)
    start = v.offsets[xb] + xoff
    raw[start:start + xsize] = bytes(b ^ 0x5A for b in raw[start:start + xsize])
    proc, actual = _run(replayed, "changed_input", bytes(raw))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected, _ = record.decode_results(replayed["expected"])
    diffs = qemu_replay.compare(bytes(raw), record.encode_results([record.Result(0, 0, expected[i].ret,
                                                                                 expected[i].blobs)]),
                                actual)
    assert any("int8_t * x" in d for d in diffs), diffs
    assert any("int8_t * y" in d for d in diffs), diffs


def _reencode(v, blobs=None, args=None, name=None):
    """v re-encoded, with blobs/args/name replaced; blob alignment kept."""
    blobs = v.blobs if blobs is None else blobs
    args = v.args if args is None else args
    values = {j: a[1] for j, a in enumerate(args) if a[0] == "value"}
    desc = [("value", len(a[1])) if a[0] == "value" else a for a in args]
    return record.encode_vector(name or v.name, values, [(v.offsets[k] - 8, b) for k, b in enumerate(blobs)], desc)


def test_a_write_outside_a_buffer_is_reported(replayed):
    """A kernel that writes past the end of a buffer on the target is caught by the guard bytes:
    here tb_add_s8 is handed a y shorter than n."""
    i, v = _first(replayed, "tb_add_s8")
    j = _arg("tb_add_s8", "y")
    _, yb, yoff, ysize = v.args[j]
    assert yoff == 0 and ysize == len(v.blobs[yb]) > 1
    blobs = list(v.blobs)
    blobs[yb] = blobs[yb][:-1]
    args = list(v.args)
    args[j] = ("pointer", yb, 0, ysize - 1)
    proc, actual = _run(replayed, "overrun", _reencode(v, blobs, args))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results, _ = record.decode_results(actual)
    assert results[0].status == record.STATUS_GUARD + yb
    diffs = qemu_replay.compare(_reencode(v, blobs, args), record.encode_results(
        [record.Result(0, 0, results[0].ret, results[0].blobs)]), actual)
    assert any("wrote outside the buffer of int8_t * y" in d for d in diffs), diffs


def test_malformed_records_fail_the_runner(replayed):
    i, v = _first(replayed, "tb_add_s8")
    good = v.raw
    cases = {
        "truncated": (good + good[:len(good) // 2], 2),
        "bad_magic": (b"XXXX" + good[4:], 2),
        "unknown_kernel": (_reencode(v, name="tb_no_such_kernel"), 3),
        "wrong_argument": (_reencode(v, args=[("value", b"\0" * 4)] + list(v.args[1:])), 4),
        "too_big": (struct.pack("<II", record.VECTOR_MAGIC, record.MAX_RECORD_BYTES + 8), 5),
    }
    for name, (data, code) in cases.items():
        proc, _ = _run(replayed, name, data)
        assert proc.returncode == code, "%s: exit %s, expected %d\n%s%s" % (
            name, qemu_replay.describe_exit(proc.returncode), code, proc.stdout, proc.stderr)


def test_recording_keeps_aliasing_and_costs_nothing_when_off():
    # off: the proxy hands out cffi's own functions
    assert record.active() is None
    assert _checks.lib.tb_add_s8 is _kernels.lib.tb_add_s8
    a = np.arange(16, dtype=np.int8)
    params = kernels.add_params(0, 1 << 30, 0, 0, 1 << 30, 0, 20, 0, 1 << 30, 0)
    with record.recording() as rec:
        assert _checks.lib.tb_add_s8 is not _kernels.lib.tb_add_s8
        # in place: y overlaps a and b; one shared buffer, offsets kept
        _checks.lib.tb_add_s8(params, _checks.ptr("int8_t", a), _checks.ptr("int8_t", a), 8,
                              _checks.ptr("int8_t", a[8:]))
        with pytest.raises(record.RecordingError, match="unknown extent"):
            _checks.lib.tb_add_s8(params, _checks.ffi.cast("int8_t *", _checks.ptr("int8_t", a)),
                                  _checks.ptr("int8_t", a), 1, _checks.ptr("int8_t", a))
    assert _checks.lib.tb_add_s8 is _kernels.lib.tb_add_s8
    (call,) = rec.calls
    assert call.args[1] == call.args[2] and call.args[1][0] == "pointer"
    assert call.args[4] == ("pointer", call.args[1][1], 8, 8)
    (v,) = record.decode_vectors(call.vector)
    assert v.blobs[call.args[1][1]] == bytes(range(16))
