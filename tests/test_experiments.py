"""tinybridge.experiments and the train / eval / experiment verbs, end to end on the (sanitized) sim:
the small test network (tests/tiny_model.py) or MCUNet at a low resolution, on real LFW faces and
on COCO files the tests generate (tests/coco_files.py)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tiny_model
from coco_files import person_set, write_coco
from sim_helpers import require_arm_tools
from tinybridge import compile, experiments
from tinybridge.errors import TinyBridgeError


def setup(tmp_path, **fields):
    """A quick Setup: the tiny network (32x32 gray, 2 classes) on 20 + 10 LFW images per class."""
    base = dict(data="lfw", model=tiny_model.sparse_model(), lr=0.003, train_per_class=20, val_per_class=10,
                out=str(tmp_path))
    return experiments.Setup(**dict(base, **fields))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_files(results, out, stem):
    """The CSV holds every run's every evaluation as the JSON does; the PNG is a figure."""
    rows = read_csv(out / (stem + ".csv"))
    saved = json.loads((out / (stem + "-results.json")).read_text())
    assert saved["experiment"] == results["experiment"] and len(saved["runs"]) == len(results["runs"])
    records = [(r["name"], rec) for r in saved["runs"] for rec in r["records"]]
    assert [(row["run"], int(row["step"])) for row in rows] == [(name, rec["step"]) for name, rec in records]
    assert [float(row["f1"]) for row in rows] == pytest.approx([rec["f1"] for _, rec in records], abs=1e-6)
    with Image.open(out / (stem + ".png")) as png:
        assert png.size[0] > 800 and png.size[1] > 300
    return saved


# ---------------- training orders ----------------

def test_training_orders():
    labels = np.array([0] * 6 + [1] * 6)
    rng = np.random.default_rng(1)
    shuffled = experiments.training_sequence(labels, 30, "shuffled", rng)
    assert sorted(shuffled[:12]) == list(range(12)) and sorted(shuffled[12:24]) == list(range(12))
    interleaved = experiments.training_sequence(labels, 12, "interleaved", rng)
    assert labels[interleaved].tolist() == [0, 1] * 6 and sorted(interleaved) == list(range(12))
    blocked = experiments.training_sequence(labels, 16, "blocked", rng, run_length=4)
    assert labels[blocked].tolist() == [0] * 4 + [1] * 4 + [0] * 2 + [1] * 2 + [0] * 4
    # a class that runs out leaves the turns to the others
    uneven = np.array([0] * 2 + [1] * 5)
    assert uneven[experiments.training_sequence(uneven, 7, "interleaved", rng)].tolist() == [0, 1, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="order must be one of"):
        experiments.training_sequence(labels, 5, "sorted", rng)


# ---------------- the experiments, end to end on the sim ----------------

def test_steps_experiment_learns_and_is_deterministic(tmp_path):
    results = experiments.run("steps", setup(tmp_path, epochs=3, eval_steps=(20, 60)))
    saved = check_files(results, tmp_path, "steps")
    records = saved["runs"][0]["records"]
    assert [r["step"] for r in records] == [0, 20, 60, 120]
    assert records[-1]["f1"] > records[0]["f1"] + 0.3 and records[-1]["accuracy"] >= 0.75
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert sum(map(sum, records[-1]["confusion"])) == 20 and records[-1]["per_class"]["support"] == [10, 10]
    trace = saved["runs"][0]["trace"]
    assert len(trace["loss"]) == 120 and sorted(trace["image"][:40]) == list(range(40))
    again = experiments.run("steps", setup(tmp_path / "again", epochs=3, eval_steps=(20, 60)))
    assert again["runs"][0]["records"] == results["runs"][0]["records"]


def test_order_experiment_tracks_positive_predictions(tmp_path):
    results = experiments.run("order", setup(tmp_path, run_length=10, eval_every=10))
    saved = check_files(results, tmp_path, "order")
    runs = {r["name"]: r for r in saved["runs"]}
    assert list(runs) == ["shuffled", "interleaved", "blocked"]
    inter, blocked = runs["interleaved"]["trace"]["label"], runs["blocked"]["trace"]["label"]
    assert all(a != b for a, b in zip(inter, inter[1:])) and len(inter) == 40
    assert blocked == ([blocked[0]] * 10 + [1 - blocked[0]] * 10) * 2
    for run in saved["runs"]:
        assert [r["step"] for r in run["records"]] == [0, 10, 20, 30, 40]
        shares = [r["positive_share"] for r in run["records"]]
        assert shares == [r["predicted_shares"][1] for r in run["records"]]
        assert run["summary"]["positive_share_min"] == min(shares[3:])   # the second half: steps 30 and 40
        assert run["summary"]["positive_share_max"] == max(shares[3:])
    assert saved["data"]["val_positive_share"] == 0.5


def test_samples_experiment_trains_nested_subsets_for_the_same_steps(tmp_path):
    results = experiments.run("samples", setup(tmp_path, steps=30), values=[2, 5, 20])
    saved = check_files(results, tmp_path, "samples")
    for run, n in zip(saved["runs"], [2, 5, 20]):
        assert run["value"] == n and run["summary"]["train_images"] == 2 * n
        assert run["summary"]["steps"] == 30 and len(run["trace"]["image"]) == 30
        seen = set(run["trace"]["image"])   # indexes into the run's images: the subset
        assert seen == set(range(2 * n)) if 2 * n <= 30 else seen < set(range(2 * n))


def test_threshold_experiment_on_generated_coco(tmp_path):
    ann, images = write_coco(tmp_path / "coco", person_set(12))
    results = experiments.run("threshold", setup(tmp_path, data="vww:%s:%s" % (ann, images), train_per_class=8,
                                                 val_per_class=4), values=[None, 0.0, 0.005, 0.1])
    saved = check_files(results, tmp_path, "threshold")
    runs = saved["runs"]
    assert [r["name"] for r in runs] == ["COCO labels", "area > 0", "area > 0.005", "area > 0.1"]
    shares = [r["summary"]["train_positive_share"] for r in runs]
    # the 16 training images: 8 large persons (VWW's), the rest drawn from small persons, dogs and nothing
    assert shares[2] == 0.5 and runs[2]["summary"]["train_label_agreement"] == 1.0
    assert shares[0] == shares[1] > 0.5 > shares[3]
    assert runs[0]["summary"]["train_label_agreement"] < 1.0
    for run in runs:   # every run evaluates on the same VWW labels
        assert [sum(map(sum, r["confusion"])) for r in run["records"]] == [8, 8]
        assert run["records"][0]["per_class"]["support"] == [4, 4]


def test_lr_and_scheme_sweeps(tmp_path):
    results = experiments.run("lr", setup(tmp_path / "lr", steps=20), values=[0.001, 0.01])
    saved = check_files(results, tmp_path / "lr", "lr")
    assert [r["value"] for r in saved["runs"]] == [0.001, 0.01]
    assert saved["runs"][0]["trace"]["image"] == saved["runs"][1]["trace"]["image"]   # only the rate differs
    assert saved["runs"][0]["trace"]["loss"] != saved["runs"][1]["trace"]["loss"]
    results = experiments.run("scheme", setup(tmp_path / "scheme", model="mcunet-5fps", input_shape=(32, 32, 3),
                                              train_per_class=5, val_per_class=3, lr=None),
                              values=["last:1", "49kb", "full"])
    saved = check_files(results, tmp_path / "scheme", "scheme")
    last1, paper, full = (r["summary"] for r in saved["runs"])
    assert full["fits"] is False and full["sram"] > 256 * 1024 and saved["runs"][2]["records"] == []
    assert "does not fit" in experiments.table(saved).splitlines()[3]
    assert last1["sram"] == compile("mcunet-5fps", num_classes=2, update="last:1", input_shape=(32, 32, 3)).memory.sram
    assert last1["params"] < paper["params"] and last1["sram"] < paper["sram"]
    assert saved["setup"]["update"] == "swept" and saved["device"]["board"] == "sim"


def test_qemu_runs_the_same_experiment_as_the_sim(tmp_path):
    require_arm_tools()
    runs = {device: experiments.run("steps", setup(tmp_path / device, device=device, train_per_class=5,
                                                   val_per_class=3, eval_steps=(5,)))["runs"][0]
            for device in ("sim", "qemu")}
    assert runs["qemu"]["records"] == runs["sim"]["records"] and runs["qemu"]["trace"] == runs["sim"]["trace"]


def test_setup_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment 'size'"):
        experiments.run("size", setup(tmp_path))
    with pytest.raises(TinyBridgeError, match="the threshold experiment needs COCO annotations"):
        experiments.run("threshold", setup(tmp_path))
    with pytest.raises(ValueError, match="compiles the model once per scheme"):
        experiments.run("scheme", setup(tmp_path))
    with pytest.raises(ValueError, match="is compiled: its blob fixes what trains"):
        experiments.run("lr", setup(tmp_path, update="bias"))
    with pytest.raises(TinyBridgeError, match="the model has 2 classes, the data 3"):
        experiments.run("lr", setup(tmp_path, data="fashion-mnist:0,1,2"))


# ---------------- the command line ----------------

def tinybridge(*args):
    return subprocess.run([sys.executable, "-m", "tinybridge.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_load_train_eval(tmp_path):
    blob = tmp_path / "tiny.tbm"
    tiny_model.sparse_model().save(blob)
    flash = str(tmp_path / "flash.img")
    assert tinybridge("--flash", flash, "load", str(blob)).returncode == 0
    data = ["--data", "lfw", "--train-per-class", "20", "--val-per-class", "10"]
    before = tinybridge("--flash", flash, "eval", *data, "--out", str(tmp_path / "before"))
    assert before.returncode == 0, before.stderr
    r = tinybridge("--flash", flash, "train", *data, "--epochs", "3", "--lr", "0.003", "--order", "interleaved",
                   "--save")
    assert r.returncode == 0, r.stderr
    assert "trained 120 steps on 40 images (device step 120)" in r.stdout and "saved checkpoint 1" in r.stdout
    r = tinybridge("--flash", flash, "eval", *data, "--out", str(tmp_path / "after"))
    assert r.returncode == 0, r.stderr
    assert "precision  recall      F1  support" in r.stdout and "confusion (rows: true class" in r.stdout
    rows = read_csv(tmp_path / "after" / "eval.csv")
    assert [row["class"] for row in rows] == ["not face", "face", "binary"]
    assert [int(row["support"]) for row in rows] == [10, 10, 20]
    after = json.loads((tmp_path / "after" / "eval-results.json").read_text())
    first = json.loads((tmp_path / "before" / "eval-results.json").read_text())
    assert after["split"] == "val" and after["classes"] == ["not face", "face"]
    assert after["f1"] > first["f1"] and after["loss"] < first["loss"]
    assert float(rows[2]["f1"]) == pytest.approx(after["f1"], abs=1e-6)


def test_cli_experiment_and_its_errors(tmp_path):
    blob = tmp_path / "tiny.tbm"
    tiny_model.sparse_model().save(blob)
    r = tinybridge("experiment", "lr", "--model", str(blob), "--rates", "0.003,0.03", "--steps", "10",
                   "--train-per-class", "5", "--val-per-class", "5", "--out", str(tmp_path / "lr"))
    assert r.returncode == 0, r.stderr
    assert "lr 0.003" in r.stdout and "lr 0.03" in r.stdout
    assert {row["run"] for row in read_csv(tmp_path / "lr" / "lr.csv")} == {"lr 0.003", "lr 0.03"}
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [], "annotations": []}')
    for args, message in (
            (("experiment", "threshold", "--data", "vww:%s:%s" % (broken, tmp_path)), "no 'categories' list"),
            (("experiment", "threshold", "--data", "lfw"), "needs COCO annotations"),
            (("experiment", "lr", "--rates", "fast"), "invalid float_list value: 'fast'"),
            (("eval", "--data", "lfw"), "no model"),
            (("train", "--data", "imagenet"), "unknown dataset 'imagenet'")):
        r = tinybridge(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.startswith("tinybridge: error:") and message in r.stderr, (args, r.stderr)
