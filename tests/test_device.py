"""The Device API on the sim and on QEMU (input checks, evaluate, read_model, stats) and the
`tinybridge` CLI."""
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tinybridge as tb
from tinybridge import bench
from tinybridge.metrics import classification_metrics

import tiny_model
from sim_helpers import BOARDS, faces, require_arm_tools, tiny_blob


@pytest.fixture
def dev(device_url):
    with tb.connect(device_url) as d:
        d.load_model(tiny_blob(), progress=False)
        yield d


def test_image_checks_name_the_expected_shape(dev):
    with pytest.raises(ValueError, match=r"\(32, 32, 1\) or \(32, 32\)"):
        dev.infer(np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        dev.infer(np.zeros((32, 32), np.float32))
    assert dev.infer(np.zeros((32, 32), np.uint8)).label in (0, 1)  # (H, W) for one channel


def test_label_and_lr_checks_before_sending(dev):
    images, _ = faces(1)
    for label in (2, -1, 1.0, True):
        with pytest.raises(ValueError, match="label"):
            dev.train_step(images[0], label)
    with pytest.raises(ValueError, match="lr"):
        dev.train_step(images[0], 0, lr=float("nan"))
    assert dev.stats()["steps"] == 0


def test_no_model_is_an_error(device_url):
    with tb.connect(device_url) as d:
        with pytest.raises(tb.TinyBridgeError, match="no model"):
            d.infer(np.zeros((32, 32), np.uint8))


def test_infer_train_evaluate_stats(dev):
    images, labels = faces(24)
    p = dev.infer(images[0])
    assert p.scores.shape == (2,) and p.label == int(np.argmax(p.scores))
    for i, (img, label) in enumerate(zip(images, labels), 1):
        result = dev.train_step(img, label, lr=0.02)
        assert result.step == i and np.isfinite(result.loss)
    metrics = dev.evaluate(images, labels)
    assert metrics["n"] == 24 and metrics["average"] == "binary" and 0 <= metrics["accuracy"] <= 1
    scores = np.array([dev.infer(img).scores for img in images], np.float64)
    losses = np.log(np.exp(scores).sum(axis=1)) - scores[np.arange(24), labels]
    assert metrics["loss"] == pytest.approx(losses.mean(), rel=1e-9)
    shares = np.bincount(scores.argmax(axis=1), minlength=2) / 24
    assert metrics["predicted_shares"] == shares.tolist() and metrics["positive_share"] == shares[1]
    stats = dev.stats()
    assert stats["steps"] == 24 and stats["last_step"] > 0 and stats["last_infer"] > 0
    assert 0 < stats["arena_high_water"] <= dev.info()["arena_bytes"]
    with pytest.raises(ValueError, match="labels"):
        dev.evaluate(images[:2], labels[:3])


def test_read_model_carries_the_trained_parameters(dev):
    images, labels = faces(3)
    for img, label in zip(images, labels):
        dev.train_step(img, label)
    model = dev.read_model()
    assert model.graph.step == 3
    assert model.to_bytes() != tiny_blob()


def test_classification_metrics_binary_and_macro():
    m = classification_metrics([1, 1, 0, 0], [1, 0, 0, 1], 2)
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5, 0.5)
    m = classification_metrics([0, 1, 2, 2], [0, 2, 2, 2], 4)
    assert m["average"] == "macro" and m["accuracy"] == 0.75
    assert m["recall"] == pytest.approx((1 + 0 + 1) / 3)  # class 3 never occurs: not averaged
    assert m["precision"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_bench_measures_every_op(dev):
    model = tiny_model.sparse_model()
    images, labels = faces(2)
    r = bench.measure(dev, model, images, labels, steps=2)
    assert [o.name for o in r.ops] == [op.name for op in model.graph.ops]
    assert r.ops[0].what == "conv2d 3x3 s2 32x32x1->16x16x8"
    stats = dev.stats()
    assert r.outside + sum(o.forward + o.backward for o in r.ops) == stats["last_step"]
    assert sum(o.infer for o in r.ops) <= stats["last_infer"] and all(o.infer > 0 for o in r.ops)
    assert all(o.backward == 0 for o in r.ops[:model.graph.backward_stop()])
    assert all(o.backward > 0 for o in r.ops if o.index >= model.graph.backward_stop() and model.graph.ops[o.index].trains)
    assert 0 < r.arena_high_water <= r.planned_arena == model.memory.sram and r.stack_high_water > 0
    text = bench.report(r, top=3)
    names = "|".join(re.escape(op.name) for op in model.graph.ops)
    assert "training step" in text and len(re.findall(r"^\s+\d+\s+(%s)\s" % names, text, re.M)) == 3
    with pytest.raises(ValueError, match="3 steps need"):
        bench.measure(dev, model, images, labels, steps=3)


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tinybridge.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_load_info_infer_train(tmp_path):
    blob = tmp_path / "tiny.blob"
    blob.write_bytes(tiny_blob())
    flash = str(tmp_path / "flash.img")
    images, labels = faces(8)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "data" / ("face" if label else "other")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[:, :, 0]).resize((40, 40)).save(folder / ("%d.png" % i))  # resized back by the CLI
    r = run_cli("--flash", flash, "load", str(blob))
    assert r.returncode == 0, r.stderr
    assert "2 classes" in r.stdout
    r = run_cli("--flash", flash, "train", "--data", "folder:%s" % (tmp_path / "data"), "--split", "all",
                "--epochs", "2", "--save")
    assert r.returncode == 0, r.stderr
    assert "trained 16 steps on 8 images (device step 16)" in r.stdout and "saved checkpoint 1" in r.stdout
    r = run_cli("--flash", flash, "infer", str(next((tmp_path / "data" / "face").iterdir())))
    assert r.returncode == 0 and re.search(r"\.png\t[01]\t", r.stdout)
    r = run_cli("--flash", flash, "info")
    assert "model.step" in r.stdout and re.search(r"model\.step\s+16", r.stdout)


@pytest.mark.parametrize("device", sorted(BOARDS))
def test_cli_bench(tmp_path, device):
    if device == "qemu":
        require_arm_tools()
    blob = tmp_path / "tiny.blob"
    blob.write_bytes(tiny_blob())
    n_ops = len(tiny_model.sparse_model().graph.ops)
    r = run_cli("-d", device, "bench", str(blob), "--steps", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^training step\s+[\d.]+ M %s" % ("instructions" if device == "qemu" else "ns"), r.stdout, re.M)
    assert "planned arena %d bytes" % tb.Model.from_bytes(blob.read_bytes()).memory.sram in r.stdout
    rows = re.findall(r"^\s+(\d+)\s+op\d+\s", r.stdout, re.M)
    assert sorted(map(int, rows)) == list(range(n_ops))
    r = run_cli("-d", device, "bench", str(blob), "--steps", "1", "--top", "2", timeout=300)
    assert r.returncode == 0 and len(re.findall(r"^\s+\d+\s+op\d+\s", r.stdout, re.M)) == 2


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli("load", str(tmp_path / "missing.blob"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("tinybridge: error:")
    r = run_cli("infer", str(tmp_path / "x.png"))
    assert r.returncode == 1 and "no model" in r.stderr
    r = run_cli("-d", "auto", "info")
    assert r.returncode == 1 and "ST-LINK" in r.stderr


def test_cli_sim_serves_tcp():
    proc = subprocess.Popen([sys.executable, "-m", "tinybridge.cli", "sim", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r":(\d+)", proc.stderr.readline()).group(1))
        with tb.connect("socket://127.0.0.1:%d" % port) as d:
            assert d.info()["board"] == "sim"
        with tb.connect("socket://127.0.0.1:%d" % port) as d:  # the next client after a disconnect
            assert d.info()["board"] == "sim"
    finally:
        proc.kill()
        proc.wait()
