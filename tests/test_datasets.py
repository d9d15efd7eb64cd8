"""tinybridge.datasets: the bundled and Debian-packaged image sets."""
import gzip
import json

import numpy as np
import pytest
from PIL import Image

from coco_files import person_set, write_coco

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


# ---------------- dataset names ----------------

def test_parse_spec_names_every_dataset():
    assert datasets.parse_spec("lfw").kind == "lfw"
    assert datasets.parse_spec("fashion-mnist:9,0").classes == (9, 0)
    assert datasets.parse_spec("folder:/data/pets").path == "/data/pets"
    vww = datasets.parse_spec("vww:ann.json:imgs")
    assert (vww.path, vww.images, vww.threshold) == ("ann.json", "imgs", 0.005)
    assert datasets.parse_spec("vww:ann.json:imgs:0.02").threshold == 0.02
    coco = datasets.parse_spec("coco-person:ann.json:imgs")
    assert (coco.kind, coco.threshold) == ("coco-person", None)


@pytest.mark.parametrize("text, message", [
    ("imagenet", "unknown dataset 'imagenet'.*lfw \\| fashion-mnist"),
    ("fashion-mnist:0,0", "distinct comma-separated indexes"),
    ("fashion-mnist:shoes", "indexes 0..9"),
    ("vww:ann.json", "expected one of"),
    ("vww:ann.json:imgs:half", "THRESHOLD must be a fraction"),
    ("vww:ann.json:imgs:5", "THRESHOLD must be in \\[0, 1\\)"),
    ("coco-person:ann.json:imgs:0.1", "expected one of"),
    ("folder:", "unknown dataset"),
])
def test_parse_spec_rejects_bad_names(text, message):
    with pytest.raises(TinyBridgeError, match=message):
        datasets.parse_spec(text)


def test_a_bare_folder_gets_a_hint(tmp_path):
    with pytest.raises(TinyBridgeError, match="folder:%s" % tmp_path):
        datasets.parse_spec(str(tmp_path))


# ---------------- image folders ----------------

def write_folder(root, counts):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / name / ("%d.png" % i))
    return root


def test_folder_split_takes_a_fifth_of_each_class_for_validation(tmp_path):
    write_folder(tmp_path / "pets", {"cat": 10, "dog": 6, "owl": 1})
    split = datasets.parse_spec("folder:%s" % (tmp_path / "pets")).load((16, 16, 1), seed=3)
    assert split.classes == ("cat", "dog", "owl")
    assert split.train_images.shape == (8 + 5 + 1, 16, 16, 1) and split.val_images.shape == (2 + 1, 16, 16, 1)
    assert sorted(split.val_labels.tolist()) == [0, 0, 1]
    again = datasets.folder_split(str(tmp_path / "pets"), (16, 16, 1), seed=3)
    assert np.array_equal(again.train_images, split.train_images)
    with pytest.raises(TinyBridgeError, match="'owl' has 1 images"):   # one image: validation or training
        datasets.folder_split(str(tmp_path / "pets"), (16, 16, 1), n_val_per_class=1)
    write_folder(tmp_path / "two", {"cat": 10, "dog": 6})
    capped = datasets.folder_split(str(tmp_path / "two"), (16, 16, 1), n_train_per_class=2, n_val_per_class=3)
    assert np.bincount(capped.train_labels).tolist() == [2, 2]
    assert np.bincount(capped.val_labels).tolist() == [3, 3]


def test_folder_split_needs_two_classes_and_images(tmp_path):
    write_folder(tmp_path / "one", {"cat": 3})
    with pytest.raises(TinyBridgeError, match="one class subfolder"):
        datasets.folder_split(str(tmp_path / "one"), (8, 8, 3))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(TinyBridgeError, match="no images"):
        datasets.folder_split(str(tmp_path / "empty"), (8, 8, 3))
    write_folder(tmp_path / "broken", {"a": 2, "b": 2})
    (tmp_path / "broken" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(TinyBridgeError, match="0.png is not an image"):
        datasets.folder_split(str(tmp_path / "broken"), (8, 8, 3))


# ---------------- COCO: Visual Wake Words and plain person labels ----------------

def test_vww_threshold_is_strictly_more_than_the_area_fraction(tmp_path):
    # 64x48 = 3072 pixels: 0.005 of it is 15.36
    ann, _ = write_coco(tmp_path, [
        [("person", 0.005)],                     # exactly 0.5 %: not a VWW person
        [("person", 0.00501)],                   # just over
        [("person", 0.001), ("person", 0.2)],    # the largest person counts
        [("dog", 0.5)],
        [],
        [("person", 0.3, 1)],                    # a crowd annotation counts like any other
        [("person", 0.0)],                       # a zero-area person: a plain COCO person only
    ])
    persons = datasets.read_coco_persons(ann)
    assert persons.labels(0.005).tolist() == [0, 1, 1, 0, 0, 1, 0]
    assert persons.labels().tolist() == [1, 1, 1, 0, 0, 1, 1]
    assert persons.labels(0.0).tolist() == [1, 1, 1, 0, 0, 1, 0]
    assert persons.labels(0.25).tolist() == [0, 0, 0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        persons.labels(1.5)


def test_vww_and_coco_person_splits(tmp_path):
    ann, images = write_coco(tmp_path, person_set(8))
    vww = datasets.parse_spec("vww:%s:%s" % (ann, images)).load((24, 24, 3), train_per_class=4, val_per_class=3)
    assert vww.classes == ("not person", "person")
    assert vww.train_images.shape == (8, 24, 24, 3) and vww.val_images.shape == (6, 24, 24, 3)
    assert np.bincount(vww.train_labels).tolist() == [4, 4] and np.bincount(vww.val_labels).tolist() == [3, 3]
    persons = datasets.read_coco_persons(ann)
    assert np.array_equal(persons.labels(0.005)[vww.train_ids], vww.train_labels)
    assert not set(vww.train_ids) & set(vww.val_ids)
    # VWW's persons are the 8 large ones; the 8 small ones are persons for plain COCO labels
    assert set(vww.train_ids[vww.train_labels == 1]) | set(vww.val_ids[vww.val_labels == 1]) <= set(range(8))
    coco_person = datasets.parse_spec("coco-person:%s:%s" % (ann, images))
    coco = coco_person.load((24, 24, 3), train_per_class=12, val_per_class=4)
    positives = set(coco.train_ids[coco.train_labels == 1]) | set(coco.val_ids[coco.val_labels == 1])
    assert positives == set(range(16))
    # a person is the bright rectangle: the images are the ones drawn for these annotations
    assert vww.train_images[vww.train_labels == 1].max(axis=(1, 2, 3)).min() > 200
    again = datasets.parse_spec("vww:%s:%s" % (ann, images)).load((24, 24, 3), train_per_class=4, val_per_class=3)
    assert np.array_equal(again.train_images, vww.train_images)


@pytest.mark.parametrize("change, message", [
    (lambda c: "{ not json", "not a JSON file"),
    (lambda c: [c], "not a COCO instances file"),
    (lambda c: {k: v for k, v in c.items() if k != "annotations"}, "no 'annotations' list"),
    (lambda c: dict(c, categories=[{"id": 18, "name": "dog"}]), "no 'person' category \\(categories: dog\\)"),
    (lambda c: dict(c, images=[{k: v for k, v in c["images"][0].items() if k != "width"}]),
     "images\\[0\\] has no 'width'"),
    (lambda c: dict(c, images=[dict(c["images"][0], height=0)]), "images\\[0\\] has width 64, height 0"),
    (lambda c: dict(c, images=c["images"] + c["images"][:1]), "images\\[2\\] repeats image id 1000"),
    (lambda c: dict(c, annotations=[dict(c["annotations"][0], image_id=7)]), "annotations\\[0\\] is of image 7"),
    (lambda c: dict(c, annotations=[{k: v for k, v in c["annotations"][0].items() if k != "area"}]),
     "annotations\\[0\\] \\(a person\\) has area None"),
    (lambda c: dict(c, annotations=[{"image_id": 1000}]), "annotations\\[0\\] has no 'category_id'"),
    (lambda c: dict(c, images=[], annotations=[]), "no images"),
])
def test_malformed_annotation_files_are_named_errors(tmp_path, change, message):
    ann, _ = write_coco(tmp_path, [[("person", 0.1)], []])
    with open(ann) as f:
        changed = change(json.load(f))
    with open(ann, "w") as f:
        f.write(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(TinyBridgeError, match=message):
        datasets.read_coco_persons(ann)


def test_missing_annotation_file_images_and_folder(tmp_path):
    with pytest.raises(TinyBridgeError, match="no such annotation file"):
        datasets.read_coco_persons(str(tmp_path / "nothing.json"))
    ann, images = write_coco(tmp_path, person_set(4))
    spec = datasets.parse_spec("vww:%s:%s" % (ann, tmp_path / "elsewhere"))
    with pytest.raises(TinyBridgeError, match="elsewhere is not a folder"):
        spec.load((8, 8, 3), train_per_class=1, val_per_class=1)
    spec = datasets.parse_spec("vww:%s:%s" % (ann, images))
    with pytest.raises(TinyBridgeError, match="class 'person' has 4 images: too few for 4 validation"):
        spec.load((8, 8, 3), val_per_class=4)
    (tmp_path / "images" / "000.png").unlink()   # two of the four VWW persons, chosen whatever the seed
    (tmp_path / "images" / "001.png").unlink()
    with pytest.raises(TinyBridgeError, match="2 of the 8 chosen images .* not in .*images \\(first: 00[01].png\\)"):
        spec.load((8, 8, 3), train_per_class=3, val_per_class=1)
