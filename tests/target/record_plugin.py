"""pytest plugin: records every kernel call the collected tests make (tinybridge.kernels.record) and
saves them for replay on the Cortex-M7. Used by tests/target/replay.py, which runs
    TB_RECORD_OUT=DIR python3 -m pytest -p record_plugin [test files]
with tests/target on PYTHONPATH. Writes DIR/vectors.bin (the vectors file), DIR/expected.bin (the
host's results, in the runner's results format) and DIR/meta.json (per record: the test that made
the call; calls skipped for size)."""
import json
import os

import pytest

from tinybridge.kernels import record

_rec = None


def pytest_configure(config):
    global _rec
    if os.environ.get("TB_RECORD_OUT"):
        _rec = record.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # a not_replayed test makes calls whose results no kernel contract defines (deliberately unsafe
    # aliasing): the plain-C and DSP paths may differ there, so those calls are not recorded
    paused = _rec is not None and item.get_closest_marker("not_replayed") is not None
    if paused:
        record.stop()
    elif _rec is not None:
        _rec.context = item.nodeid
    yield
    if paused:
        record.start(_rec)
    elif _rec is not None:
        _rec.context = None


def pytest_sessionfinish(session, exitstatus):
    if _rec is None:
        return
    record.stop()
    out = os.environ["TB_RECORD_OUT"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vectors.bin"), "wb") as f:
        f.write(_rec.vectors())
    with open(os.path.join(out, "expected.bin"), "wb") as f:
        f.write(_rec.expected_results())
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"contexts": [c.context for c in _rec.calls],
                   "skipped": [list(s) for s in _rec.skipped],
                   "max_record_bytes": _rec.max_bytes}, f)
