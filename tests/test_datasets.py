"""tinybridge.datasets: the bundled and Debian-packaged image sets."""
import gzip

import numpy as np
import pytest

from tinybridge import datasets
from tinybridge.errors import TinyBridgeError


def test_fashion_mnist_subset_is_fixed_balanced_and_resized():
    a = datasets.fashion_mnist((32, 32, 3), n_train_per_class=5, n_val_per_class=3, classes=(9, 0), seed=1)
    b = datasets.fashion_mnist((32, 32, 3), n_train_per_class=5, n_val_per_class=3, classes=(9, 0), seed=1)
    assert a.classes == ("ankle boot", "T-shirt/top")
    assert a.train_images.shape == (10, 32, 32, 3) and a.train_images.dtype == np.uint8
    assert a.val_images.shape == (6, 32, 32, 3)
    assert sorted(a.train_labels.tolist()) == [0] * 5 + [1] * 5
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.val_labels, b.val_labels)
    # real photos: boots and shirts differ in where they are dark (mean over each class)
    boots, shirts = a.train_images[a.train_labels == 0], a.train_images[a.train_labels == 1]
    assert np.abs(boots.mean(axis=0) - shirts.mean(axis=0)).max() > 50


def test_fashion_mnist_rejects_bad_classes_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="distinct indexes"):
        datasets.fashion_mnist((8, 8, 1), classes=(3, 3))
    with pytest.raises(TinyBridgeError, match="apt-get install dataset-fashion-mnist"):
        datasets.fashion_mnist((8, 8, 1), folder=str(tmp_path))


def test_idx_reader_refuses_damaged_files(tmp_path):
    good = tmp_path / "x.gz"
    with gzip.open(good, "wb") as f:
        f.write(b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6)))
    assert datasets._read_idx(str(good)).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(5))
    with pytest.raises(TinyBridgeError, match="5 bytes of data"):
        datasets._read_idx(str(short))
    wrong = tmp_path / "wrong.gz"
    with gzip.open(wrong, "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + bytes(4))
    with pytest.raises(TinyBridgeError, match="not a uint8 IDX"):
        datasets._read_idx(str(wrong))
