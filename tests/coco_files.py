"""Small COCO instances files and their images, made by the tests with PIL: gray noise with a bright
rectangle per person annotation (of the annotated area) and a dark one per dog."""
import json

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 18, "name": "dog", "supercategory": "animal"}]


def write_coco(folder, images, size=(64, 48), seed=0):
    """images: per image a list of (category name, area fraction[, iscrowd]). Writes
    folder/instances.json and folder/images/NNN.png; returns (annotations path, images folder)."""
    rng = np.random.default_rng(seed)
    width, height = size
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    coco = {"info": {"description": "tinybridge test set"}, "images": [], "annotations": [],
            "categories": CATEGORIES}
    ids = {c["name"]: c["id"] for c in CATEGORIES}
    for n, objects in enumerate(images):
        image_id = 1000 + n
        name = "%03d.png" % n
        pixels = rng.integers(60, 120, (height, width), dtype=np.uint8)
        img = Image.fromarray(pixels).convert("RGB")
        draw = ImageDraw.Draw(img)
        for category, fraction, *crowd in objects:
            area = fraction * width * height
            w = max(1, min(width, round(np.sqrt(area * width / height))))
            h = max(1, min(height, round(area / w)))
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(250, 250, 250) if category == "person" else (10, 10, 10))
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": ids[category], "area": area, "bbox": [x, y, w, h],
                                        "iscrowd": crowd[0] if crowd else 0, "segmentation": []})
        img.save(image_dir / name)
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
    path = folder / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path), str(image_dir)


def person_set(n_per_kind, seed=0):
    """Images for write_coco: n_per_kind each of large persons (8-30 % of the image), small persons
    (0.1-0.4 %: plain COCO says person, VWW's 0.5 % says not), dogs only, and nothing."""
    rng = np.random.default_rng(seed)
    large = [[("person", float(rng.uniform(0.08, 0.3)))] for _ in range(n_per_kind)]
    small = [[("person", float(rng.uniform(0.001, 0.004)))] for _ in range(n_per_kind)]
    dogs = [[("dog", float(rng.uniform(0.05, 0.2)))] for _ in range(n_per_kind)]
    return large + small + dogs + [[] for _ in range(n_per_kind)]
