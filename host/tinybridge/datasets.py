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
