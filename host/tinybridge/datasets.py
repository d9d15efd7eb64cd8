"""Image datasets as uint8 arrays of a model's input shape (through tinybridge.preprocess.resize),
split into training and validation images.

One text names a dataset on the command line and in tinybridge.experiments (parse_spec):

    lfw                                         faces vs non-faces, scikit-image's LFW subset
    fashion-mnist[:CLASSES]                     Fashion-MNIST (Debian's dataset-fashion-mnist), CLASSES
                                                e.g. 0,9 (indexes into FASHION_MNIST_CLASSES)
    folder:PATH                                 PATH/<class>/<image>, classes in name order
    vww:ANNOTATIONS.json:IMAGES_DIR[:THRESHOLD] Visual Wake Words from COCO: person if a person
                                                annotation covers more than THRESHOLD of the image
                                                (default 0.005, VWW's 0.5 %)
    coco-person:ANNOTATIONS.json:IMAGES_DIR     plain COCO labels: person if any person annotation
"""
import functools
import json
import os
from dataclasses import dataclass

import numpy as np

from . import preprocess
from .errors import TinyBridgeError
from .progress import ProgressBar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPEC_FORMS = ("lfw", "fashion-mnist[:CLASSES]", "folder:PATH", "vww:ANNOTATIONS.json:IMAGES_DIR[:THRESHOLD]",
              "coco-person:ANNOTATIONS.json:IMAGES_DIR")
# Visual Wake Words (Chowdhery et al. 2019, arXiv:1906.05721): person if a person covers more than 0.5 %
VWW_THRESHOLD = 0.005
# Images per class when the command line does not say: (training, validation); None = all the rest
DEFAULT_PER_CLASS = {"lfw": (None, 30), "fashion-mnist": (100, 50), "folder": (None, None), "vww": (200, 100),
                     "coco-person": (200, 100)}
SPLIT_PARTS = ("train", "val", "all")


@dataclass
class Split:
    """A train / validation split: images uint8 (N, H, W, C), labels int (N,), class names; for
    COCO sets, train_ids / val_ids index the images in their CocoPersons."""
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    classes: tuple
    train_ids: np.ndarray = None
    val_ids: np.ndarray = None

    def part(self, name):
        """(images, labels) of "train", "val" or "all" (both)."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "val":
            return self.val_images, self.val_labels
        if name == "all":
            return (np.concatenate([self.train_images, self.val_images]),
                    np.concatenate([self.train_labels, self.val_labels]))
        raise ValueError("split part must be one of %s, got %r" % (", ".join(SPLIT_PARTS), name))


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset name (parse_spec): kind, and what it needs (path, images folder, classes,
    person threshold)."""
    text: str
    kind: str
    path: str = None
    images: str = None
    classes: tuple = None
    threshold: float = None

    def load(self, shape, *, train_per_class=None, val_per_class=None, seed=0):
        """The Split at `shape` (H, W, C): per class val_per_class validation images and up to
        train_per_class training images (None: DEFAULT_PER_CLASS), drawn with `seed`."""
        default_train, default_val = DEFAULT_PER_CLASS[self.kind]
        n_train = default_train if train_per_class is None else train_per_class
        n_val = default_val if val_per_class is None else val_per_class
        for name, n in (("train_per_class", n_train), ("val_per_class", n_val)):
            if n is not None and n < 1:
                raise ValueError("%s must be at least 1, got %d" % (name, n))
        if self.kind == "lfw":
            return lfw_faces(shape, n_val_per_class=n_val, n_train_per_class=n_train, seed=seed)
        if self.kind == "fashion-mnist":
            return fashion_mnist(shape, n_train_per_class=n_train, n_val_per_class=n_val, classes=self.classes,
                                 seed=seed)
        if self.kind == "folder":
            return folder_split(self.path, shape, n_train_per_class=n_train, n_val_per_class=n_val, seed=seed)
        return coco_split(read_coco_persons(self.path), self.images, shape, threshold=self.threshold,
                          n_train_per_class=n_train, n_val_per_class=n_val, seed=seed)


def parse_spec(text):
    """The DataSpec of a dataset name (module docstring); a TinyBridgeError names the forms."""
    kind, _, rest = str(text).partition(":")
    forms = "expected one of: " + " | ".join(SPEC_FORMS)
    if kind == "lfw" and not rest:
        return DataSpec(text, kind)
    if kind == "fashion-mnist":
        if not rest:
            return DataSpec(text, kind)
        try:
            classes = tuple(int(c) for c in rest.split(","))
            _check_fashion_classes(classes)
        except ValueError:
            raise TinyBridgeError("dataset %r: CLASSES must be distinct comma-separated indexes 0..9 (%s)"
                                  % (text, ", ".join("%d %s" % c for c in enumerate(FASHION_MNIST_CLASSES))))
        return DataSpec(text, kind, classes=classes)
    if kind == "folder" and rest:
        return DataSpec(text, kind, path=rest)
    if kind in ("vww", "coco-person"):
        parts = rest.split(":")
        threshold = VWW_THRESHOLD if kind == "vww" else None
        if kind == "vww" and len(parts) == 3:
            try:
                threshold = float(parts.pop())
            except ValueError:
                raise TinyBridgeError("dataset %r: THRESHOLD must be a fraction of the image area, e.g. 0.005"
                                      % text)
            if not 0.0 <= threshold < 1.0:
                raise TinyBridgeError("dataset %r: THRESHOLD must be in [0, 1), e.g. 0.005 (0.5 %%)" % text)
        if len(parts) != 2 or not all(parts):
            raise TinyBridgeError("dataset %r: %s" % (text, forms))
        return DataSpec(text, kind, path=parts[0], images=parts[1], threshold=threshold)
    hint = " (a folder: folder:%s)" % text if os.path.isdir(str(text)) else ""
    raise TinyBridgeError("unknown dataset %r%s: %s" % (text, hint, forms))


def load_image(path, shape):
    """An image file as uint8 of `shape` (H, W, C), converted and resized (preprocess.resize)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return preprocess.resize(np.asarray(img.convert("RGB")), shape)
    except UnidentifiedImageError:
        raise TinyBridgeError("%s is not an image Pillow can read" % path)


def load_images(paths, shape):
    """Image files as one uint8 array (N, H, W, C) of `shape`, with a progress bar."""
    images = np.empty((len(paths),) + tuple(shape), np.uint8)
    bar = ProgressBar(len(paths), "load images", unit="img")
    for i, path in enumerate(paths):
        images[i] = load_image(path, shape)
        bar.update_to(i + 1)
    bar.close()
    return images


def balanced_split(labels, n_train_per_class, n_val_per_class, rng, class_names):
    """(train indexes, val indexes) into `labels`: for each class, n_val_per_class for validation
    (None: a fifth of the class, at least one when it has two) and then up to n_train_per_class of
    the rest for training (None: all the rest), drawn with `rng`; both lists shuffled."""
    labels = np.asarray(labels)
    train, val = [], []
    for c, name in enumerate(class_names):
        members = rng.permutation(np.flatnonzero(labels == c))
        if not len(members):
            raise TinyBridgeError("class %r has no images" % name)
        n_val = n_val_per_class
        if n_val is None:
            n_val = max(1, len(members) // 5) if len(members) >= 2 else 0
        if len(members) <= n_val:
            raise TinyBridgeError("class %r has %d images: too few for %d validation images and some training"
                                  % (name, len(members), n_val))
        val.append(members[:n_val])
        train.append(members[n_val:][:n_train_per_class])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


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


def folder_split(folder, shape, n_train_per_class=None, n_val_per_class=None, seed=0):
    """An image folder (image_folder) split per class by balanced_split, resized to `shape`."""
    paths, labels, classes = image_folder(folder)
    if len(classes) < 2:
        raise TinyBridgeError("%s has one class subfolder (%s): a classifier needs two or more" % (folder, classes[0]))
    train, val = balanced_split(labels, n_train_per_class, n_val_per_class, np.random.default_rng(seed), classes)
    labels = np.asarray(labels, np.int64)
    return Split(load_images([paths[i] for i in train], shape), labels[train],
                 load_images([paths[i] for i in val], shape), labels[val], tuple(classes))


def lfw_faces(shape, n_val_per_class=30, seed=0, n_train_per_class=None):
    """Faces vs non-faces: scikit-image's LFW subset (100 real 25x25 faces, 100 non-faces; installed
    with scikit-image, no network), resized to `shape`. Label 1 = face ("person"), 0 = not. A fixed
    seeded split: n_val_per_class of each class for validation, the rest (or its first
    n_train_per_class of each class) for training, both shuffled."""
    from skimage import data

    if not 1 <= n_val_per_class < 100:
        raise TinyBridgeError("lfw has 100 images per class: val_per_class must be in [1, 99], got %d"
                              % n_val_per_class)
    raw = data.lfw_subset()
    images = np.stack([preprocess.resize(im, shape) for im in raw])
    labels = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    rng = np.random.default_rng(seed)
    val = rng.permutation(np.r_[rng.permutation(100)[:n_val_per_class], 100 + rng.permutation(100)[:n_val_per_class]])
    train = rng.permutation(np.setdiff1d(np.arange(200), val))
    if n_train_per_class is not None:   # the first n of each class, in the shuffled order
        rank = np.empty(len(train), np.int64)
        for c in (0, 1):
            rank[labels[train] == c] = np.arange(np.count_nonzero(labels[train] == c))
        train = train[rank < n_train_per_class]
    return Split(images[train], labels[train], images[val], labels[val], ("not face", "face"))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")


def _check_fashion_classes(classes):
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c < 10 for c in classes):
        raise ValueError("classes must be two or more distinct indexes 0..9 of Fashion-MNIST's classes, got %r"
                         % (classes,))
    return classes


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
    keep = tuple(range(10)) if classes is None else _check_fashion_classes(tuple(classes))
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


# ---------------- COCO: Visual Wake Words and plain person labels ----------------

@dataclass
class CocoPersons:
    """The person facts of a COCO instances file (read_coco_persons): per image its file name and
    the largest person annotation's area as a fraction of the image's (NaN: no person annotation).

    The area is COCO's `area` field, the segmentation mask's area (for crowd annotations the RLE
    mask's). That is what the reference VWW generators compare (tensorflow/models
    research/slim/datasets/build_visualwakewords_data_lib.py and Mxbonn/visualwakewords
    scripts/create_visualwakewords_annotations.py: annotation['area'] / (height * width)), so these
    labels are the published VWW labels, although the VWW paper describes the box's area (a box
    covers at least its mask, so box areas would call a few more images "person")."""
    path: str
    file_names: list
    person_fraction: np.ndarray

    def labels(self, threshold=None):
        """int labels, 1 = person: threshold None (plain COCO labels) if the image has any person
        annotation; else if one covers more than `threshold` of the image (VWW: 0.005)."""
        if threshold is None:
            return (~np.isnan(self.person_fraction)).astype(np.int64)
        if not 0.0 <= threshold < 1.0:
            raise ValueError("threshold must be a fraction of the image area in [0, 1), got %r" % (threshold,))
        with np.errstate(invalid="ignore"):
            return (self.person_fraction > threshold).astype(np.int64)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_coco_persons(path):
    """CocoPersons of a COCO instances JSON file (images, annotations, categories). Anything
    malformed is a TinyBridgeError naming the file and the first bad entry. The last files read
    are kept (COCO's training annotations take seconds to parse) while they stay unchanged."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TinyBridgeError("%s: no such annotation file" % path)
    return _read_coco_persons(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _read_coco_persons(path, mtime_ns, size):
    def bad(message):
        return TinyBridgeError("%s: %s" % (path, message))

    try:
        with open(path, "rb") as f:
            coco = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad("not a JSON file (%s)" % e)
    if not isinstance(coco, dict):
        raise bad("not a COCO instances file (a JSON object with images, annotations, categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise bad("no %r list: a COCO instances file has images, annotations and categories" % key)
    person_ids = {c.get("id") for c in coco["categories"] if isinstance(c, dict) and c.get("name") == "person"}
    if not person_ids:
        names = sorted(str(c.get("name")) for c in coco["categories"] if isinstance(c, dict))
        raise bad("no 'person' category (categories: %s)" % (", ".join(names[:10]) or "none"))
    index, file_names, areas = {}, [], []
    for i, image in enumerate(coco["images"]):
        if not isinstance(image, dict):
            raise bad("images[%d] is not an object" % i)
        for key in ("id", "file_name", "width", "height"):
            if key not in image:
                raise bad("images[%d] has no %r" % (i, key))
        if not (_is_number(image["width"]) and _is_number(image["height"])
                and image["width"] > 0 and image["height"] > 0):
            raise bad("images[%d] has width %r, height %r: not positive numbers" % (i, image["width"], image["height"]))
        if image["id"] in index:
            raise bad("images[%d] repeats image id %r" % (i, image["id"]))
        index[image["id"]] = len(file_names)
        file_names.append(str(image["file_name"]))
        areas.append(float(image["width"]) * float(image["height"]))
    fraction = np.full(len(file_names), np.nan)
    for i, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            raise bad("annotations[%d] is not an object" % i)
        for key in ("image_id", "category_id"):
            if key not in ann:
                raise bad("annotations[%d] has no %r" % (i, key))
        if ann["category_id"] not in person_ids:
            continue
        if ann["image_id"] not in index:
            raise bad("annotations[%d] is of image %r, which is not in images" % (i, ann["image_id"]))
        if not _is_number(ann.get("area")) or ann["area"] < 0:
            raise bad("annotations[%d] (a person) has area %r: not a number >= 0" % (i, ann.get("area")))
        k = index[ann["image_id"]]
        fraction[k] = np.fmax(fraction[k], ann["area"] / areas[k])
    if not file_names:
        raise bad("no images")
    return CocoPersons(path, file_names, fraction)


def coco_split(persons, images_dir, shape, threshold=VWW_THRESHOLD, n_train_per_class=200, n_val_per_class=100,
               seed=0):
    """person vs not (CocoPersons.labels(threshold); None: plain COCO labels) of the images in
    `images_dir`, split per class by balanced_split and resized to `shape`. Every chosen image file
    must exist; Split.train_ids / val_ids index them in `persons`."""
    if not os.path.isdir(images_dir):
        raise TinyBridgeError("%s is not a folder (the COCO images of %s)" % (images_dir, persons.path))
    labels = persons.labels(threshold)
    train, val = balanced_split(labels, n_train_per_class, n_val_per_class, np.random.default_rng(seed),
                                ("not person", "person"))
    chosen = np.concatenate([train, val])
    paths = [os.path.join(images_dir, persons.file_names[i]) for i in chosen]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise TinyBridgeError("%d of the %d chosen images of %s are not in %s (first: %s)"
                              % (len(missing), len(paths), persons.path, images_dir, os.path.basename(missing[0])))
    images = load_images(paths, shape)
    return Split(images[:len(train)], labels[train], images[len(train):], labels[val], ("not person", "person"),
                 train_ids=train, val_ids=val)
