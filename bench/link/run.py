"""Link benchmark (docs/benchmarks.md, "Link"):

    python3 bench/link/run.py [--bauds 115200,921600]

The sim (the package's build, not the sanitized one) serves TCP; a relay (relay.py) paces both
directions like a UART at each baud rate; tinybridge connects through it with socket://.
Measured: model upload throughput as a fraction of the raw rate (baud/10 bytes/s), and the
TRAIN_STEP round trip beyond the device's own step time (STATS.last_step, in ns on the sim).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

import tinybridge as tb  # noqa: E402
from tinybridge import graph, transport  # noqa: E402
from tinybridge.model import Model  # noqa: E402
from tinybridge.protocol import Command, Slot  # noqa: E402

from relay import UartRelay  # noqa: E402


def fc_model(h, w, classes):
    """One fully connected layer (bias trained) over an h x w x 3 image: a blob of about h*w*3*classes bytes."""
    rng = np.random.default_rng(0)
    b = graph.Builder(rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8))
    fc = b.fully_connected(b.input, rng.normal(0, 0.01, (classes, h * w * 3)), None, name="fc")
    g = b.build(fc)
    g.train("fc", bias=True)
    return Model(g)


def start_sim():
    if "TINYBRIDGE_SIM" in os.environ:
        del os.environ["TINYBRIDGE_SIM"]  # the optimized build
    proc = subprocess.Popen([transport.sim_executable(), "--tcp", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = int(re.search(r":(\d+)", proc.stderr.readline()).group(1))
    return proc, port


def upload_seconds(dev, blob):
    """Seconds from XFER_BEGIN to the last data acknowledgement (the commit is not counted)."""
    start = time.monotonic()
    dev.client.upload(Slot.MODEL, blob)
    seconds = time.monotonic() - start
    dev.client.request(Command.XFER_COMMIT, bytes([Slot.MODEL]), timeout=60)
    return seconds


def train_round_trips(dev, n=20):
    """Host-measured TRAIN_STEP round trips and the device's own step times (seconds)."""
    import tiny_model

    images, labels = tiny_model.faces()
    dev.load_model(tiny_model.sparse_model(), progress=False)
    round_trips, steps, whole = [], [], []
    for i in range(n):
        t0 = time.monotonic()
        dev._send_input(images[i])
        t1 = time.monotonic()
        dev.client.request(Command.TRAIN_STEP, np.array([labels[i]], "<u2").tobytes() + b"\0\0\0\0")
        t2 = time.monotonic()
        round_trips.append(t2 - t1)
        whole.append(t2 - t0)
        steps.append(dev.stats()["last_step_s"])
    return statistics.median(round_trips), statistics.median(steps), statistics.median(whole)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bauds", default="115200,921600")
    args = p.parse_args()
    sim, sim_port = start_sim()
    rows = []
    try:
        for baud in [int(b) for b in args.bauds.split(",")]:
            relay = UartRelay(sim_port, baud)
            # about 8 s of line time at this rate, within the model area
            side = 64 if baud <= 115200 else 128
            classes = max(2, int(min(baud / 10 * 8, 700000) / (side * side * 3)))
            blob = fc_model(side, side, classes).to_bytes()
            with tb.connect("socket://127.0.0.1:%d" % relay.port, timeout=10) as dev:
                sent = upload_seconds(dev, blob)
                rt, step, whole = train_round_trips(dev)
            relay.close()
            rows.append((baud, len(blob), sent, len(blob) / sent, len(blob) / sent / (baud / 10.0), rt, step, whole))
        # the same over the sim's own pipe: what the protocol and the host cost without a line rate
        with tb.connect("sim") as dev:
            blob = fc_model(128, 128, 12).to_bytes()
            sent = upload_seconds(dev, blob)
            rt, step, whole = train_round_trips(dev)
            rows.append(("pipe", len(blob), sent, len(blob) / sent, None, rt, step, whole))
    finally:
        sim.kill()
        sim.wait()
    print("| link | blob bytes | upload s | payload B/s | of raw rate | TRAIN_STEP round trip ms"
          " | device step ms | overhead ms | train_step() incl. input ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for baud, size, sent, rate, frac, rt, step, whole in rows:
        print("| %s | %d | %.2f | %.0f | %s | %.2f | %.2f | %.2f | %.2f |" % (
            baud if baud == "pipe" else "%d baud" % baud, size, sent, rate,
            "%.1f %%" % (100 * frac) if frac else "-", rt * 1e3, step * 1e3, (rt - step) * 1e3, whole * 1e3))


if __name__ == "__main__":
    main()
