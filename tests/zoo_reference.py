"""A numpy re-implementation of the paper's int8 models exactly as their source repository describes
them (../shared/models/README.md: "Semantics of one int8 conv"): float rescaling with round-half-even,
"same" padding k//2, ReLU6 folded into the int8 range. Written from that text, independently of
tinybridge's kernels, as the oracle for the compiled zoo models (which use TFLite's fixed-point
requantization and so may differ by one unit)."""
import json
import os

import numpy as np

MODELS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models")


def load(name, models_dir=MODELS):
    """The model's JSON structure with every array reference replaced by its numpy array."""
    arrays = np.load(os.path.join(models_dir, name + ".npz"))

    def resolve(node):
        if isinstance(node, dict):
            if set(node) == {"array", "dtype", "shape"}:
                return arrays[node["array"]]
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    with open(os.path.join(models_dir, name + ".json")) as f:
        return resolve(json.load(f))


def conv(x, layer):
    """x int8 (H, W, Cin) -> int8 (H', W', Cout): acc = conv(x - x_zero, w) + bias, rescaled."""
    p = layer["params"]
    w = p["weight"].astype(np.int64)                     # OIHW
    k = w.shape[2]
    s = layer["stride"]
    pad = k // 2
    xi = np.pad(x.astype(np.int64) - p["x_zero"], ((pad, pad), (pad, pad), (0, 0)))
    h_out = (x.shape[0] + 2 * pad - k) // s + 1
    w_out = (x.shape[1] + 2 * pad - k) // s + 1
    cout = w.shape[0]
    acc = np.zeros((h_out, w_out, cout), np.int64)
    for ky in range(k):
        for kx in range(k):
            patch = xi[ky:ky + s * h_out:s, kx:kx + s * w_out:s, :]
            if layer["groups"] == 1:
                acc += patch @ w[:, :, ky, kx].T
            else:
                acc += patch * w[:, 0, ky, kx]
    acc += p["bias"].astype(np.int64)
    real = acc * (p["x_scale"] * p["w_scales"].astype(np.float64) / p["y_scale"])
    return np.clip(np.round(real) + p["y_zero"], -128, 127).astype(np.int8)


def residual_add(skip, branch, block):
    r = block["residual"]["params"]
    b = block["pointwise2"]["params"]
    real = (skip.astype(np.float64) - r["x_zero"]) * r["x_scale"] + (branch.astype(np.float64) - b["y_zero"]) * b["y_scale"]
    return np.clip(np.round(real / r["y_scale"]) + r["y_zero"], -128, 127).astype(np.int8)


def features(model, x):
    """The int8 activation before the global pool."""
    x = conv(x, model["first_conv"])
    for block in model["blocks"]:
        y = x
        for part in ("pointwise1", "depthwise", "pointwise2"):
            if block[part] is not None:
                y = conv(y, block[part])
        x = residual_add(x, y, block) if block["residual"] is not None else y
    return x


def logits(model, image_int8):
    """int8 logits of the ImageNet classifier for an int8 (H, W, 3) image (pixel - 128)."""
    x = features(model, image_int8)
    pooled = np.clip(np.round(x.astype(np.float64).mean(axis=(0, 1))), -128, 127).astype(np.int8)
    return conv(pooled[None, None, :], model["classifier"])[0, 0]
