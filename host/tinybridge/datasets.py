"""Image datasets as uint8 arrays of a model's input shape (through tinybridge.preprocess)."""
import os
from dataclasses import dataclass

import numpy as np

from . import preprocess
from .errors import TinyBridgeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Split:
    """A train / validation split: images uint8 (N, H, W, C), labels int (N,), class names."""
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    classes: tuple


def load_image(path, shape):
    """An image file as uint8 of `shape` (H, W, C), converted and resized (preprocess.resize)."""
    from PIL import Image

    with Image.open(path) as img:
        return preprocess.resize(np.asarray(img.convert("RGB")), shape)


def image_folder(folder):
    """(paths, labels, class names) of FOLDER/<class>/<image>, classes in name order."""
    if not os.path.isdir(folder):
        raise TinyBridgeError("%s is not a folder" % folder)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise TinyBridgeError("%s has no class subfolders" % folder)
    paths, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(folder, name))):
            if file.lower().endswith(IMAGE_SUFFIXES):
                paths.append(os.path.join(folder, name, file))
                labels.append(label)
    if not paths:
        raise TinyBridgeError("no images under %s" % folder)
    return paths, labels, classes


def lfw_faces(shape, n_val_per_class=30, seed=0):
    """Faces vs non-faces: scikit-image's LFW subset (100 real 25x25 faces, 100 non-faces; installed
    with scikit-image, no network), resized to `shape`. Label 1 = face ("person"), 0 = not. A fixed
    seeded split: n_val_per_class of each class for validation, the rest for training, both shuffled."""
    from skimage import data

    raw = data.lfw_subset()
    images = np.stack([preprocess.resize(im, shape) for im in raw])
    labels = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    rng = np.random.default_rng(seed)
    val = rng.permutation(np.r_[rng.permutation(100)[:n_val_per_class], 100 + rng.permutation(100)[:n_val_per_class]])
    train = rng.permutation(np.setdiff1d(np.arange(200), val))
    return Split(images[train], labels[train], images[val], labels[val], ("not face", "face"))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")


def _read_idx(path):
    """An IDX file (the MNIST format: magic 0x0000 0x08 ndim, big-endian dims, uint8 data), gzipped."""
    import gzip

    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise TinyBridgeError("%s is not a uint8 IDX file" % path)
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise TinyBridgeError("%s: %d bytes of data for shape %s" % (path, data.size, dims))
    return data.reshape(dims)


def fashion_mnist(shape, n_train_per_class=100, n_val_per_class=50, classes=None, seed=0,
                  folder=FASHION_MNIST_DIR):
    """Zalando's Fashion-MNIST (28x28 gray photos of clothes, 10 classes), from Debian's
    dataset-fashion-mnist package (`apt-get install dataset-fashion-mnist`; no other network),
    resized to `shape`. A fixed seeded subset: n_train_per_class images of each class from its
    training set, n_val_per_class from its test set. `classes`: indexes into FASHION_MNIST_CLASSES
    to keep (relabelled 0, 1, ... in that order); default all ten."""
    files = {part: [os.path.join(folder, "%s-%s-idx%d-ubyte.gz" % (part, kind, nd)) for kind, nd in
                    (("images", 3), ("labels", 1))] for part in ("train", "t10k")}
    missing = [p for pair in files.values() for p in pair if not os.path.exists(p)]
    if missing:
        raise TinyBridgeError("Fashion-MNIST is not installed (%s missing): apt-get install dataset-fashion-mnist"
                              % missing[0])
    keep = tuple(range(10)) if classes is None else tuple(classes)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= c < 10 for c in keep):
        raise ValueError("classes must be distinct indexes 0..9 of Fashion-MNIST's classes, got %r" % (classes,))
    rng = np.random.default_rng(seed)

    def pick(part, per_class):
        images, labels = (_read_idx(p) for p in files[part])
        chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in keep])
        chosen = rng.permutation(chosen)
        new_label = {c: i for i, c in enumerate(keep)}
        return (np.stack([preprocess.resize(images[i], shape) for i in chosen]),
                np.array([new_label[int(labels[i])] for i in chosen], np.int64))

    train_images, train_labels = pick("train", n_train_per_class)
    val_images, val_labels = pick("t10k", n_val_per_class)
    return Split(train_images, train_labels, val_images, val_labels, tuple(FASHION_MNIST_CLASSES[c] for c in keep))
