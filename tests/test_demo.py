"""`tinybridge demo` end to end on the sim (sanitized build), with a reduced number of steps."""
import csv
import json
import subprocess
import sys

from PIL import Image


def test_demo_learns_and_writes_its_table_csv_json_and_plot(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinybridge.cli", "demo", "--out", str(tmp_path), "--epochs", "1",
                        "--train-per-class", "20", "--val-per-class", "10", "--eval-steps", "0,20"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "accuracy  precision  recall      F1" in r.stdout
    results = json.loads((tmp_path / "demo-results.json").read_text())
    assert results["setup"]["model"] == "mcunet-5fps" and results["setup"]["update"] == "49kb"
    records = results["runs"][0]["records"]
    assert [rec["step"] for rec in records] == [0, 20, 40]
    assert set(records[0]) >= {"step", "accuracy", "precision", "recall", "f1", "val_loss"}
    assert records[-1]["f1"] > records[0]["f1"]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    with open(tmp_path / "demo.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [0, 20, 40]
    with Image.open(tmp_path / "demo.png") as png:
        assert png.size[0] > 500 and png.size[1] > 300
