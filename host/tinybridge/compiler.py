"""`tinybridge.compile`: a pretrained int8 network and a training scheme -> a Model (graph, arena
plan) that a device loads and trains (docs/compiler.md).

    model = tinybridge.compile("mcunet-5fps", num_classes=2, update="49kb")

Sources: a zoo name (the paper's three ImageNet models, shipped in tinybridge/zoo), a path to an
int8 `.tflite` file (tinybridge.frontends.tflite) or a float `torch.nn.Module` quantized on
`calibration` images (tinybridge.frontends.torch). Every source gives a Graph with its original
classifier; compile then puts a new head on it, marks what trains and plans the arena.
"""
import json
import numbers
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from . import graph as G
from . import plan as P
from . import quant
from .kernels import _checks
from .model import Model

ZOO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")
ZOO = ("mbv2-w0.35", "mcunet-5fps", "proxyless-w0.3")
DEFAULT_INPUT_SHAPE = (128, 128, 3)
# The compiled model's default learning rate: on LFW faces vs non-faces every zoo model learns at
# 0.003 to 0.01 and diverges at 0.03 (docs/compiler.md, "New head").
DEFAULT_LR = 0.005
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
TRAINED_BIAS_LIMIT = _checks.lib.TB_TRAINED_BIAS_LIMIT    # where the bias update saturates


@dataclass(frozen=True)
class SparseUpdate:
    """What trains, as the paper's sparse update. A layer is a weighted op other than the classifier,
    named by its index in network order (the paper's convolution index: 0 is the first conv;
    negative counts from the end) or by its op name.

    bias: the biases of the last `bias` layers (an int), or of the layers listed.
    weights: {layer: ratio or channels}: the layer's weights train on the fraction `ratio` in
    (0, 1] of its input channels with the largest weight magnitude (depthwise: of its channels),
    or on the listed channel indices. A layer whose weights train also trains its bias.
    The classifier always trains its weights and bias."""
    bias: object = 0
    weights: dict = field(default_factory=dict)


def compile(source, *, num_classes, update, calibration=None, input_shape=None,
            arena_budget=P.DEVICE_ARENA_BYTES):
    """A Model of `source` with a new `num_classes`-way classifier, training as `update` says.

    source: "mbv2-w0.35", "mcunet-5fps", "proxyless-w0.3", a path to an int8 .tflite file, or a
    float torch.nn.Module (quantized with `calibration`, uint8 images (N, H, W, C)).
    num_classes: int >= 2 for a new head (docs/compiler.md, "New head"); None keeps the source's
    own classifier (e.g. the 1000 ImageNet classes of the zoo models).
    update: a scheme name of the zoo model ("49kb", ...: sparse_schemes.json), "bias" (every
    bias), "last:N" (the last N weighted ops, classifier included, fully), "full", a SparseUpdate,
    or None (nothing trains: an inference model).
    input_shape: (H, W, C) of the zoo models (default 128x128x3) and of torch modules.
    arena_budget: the arena the plan may take to save instructions (tinybridge.plan.plan); the
    default, the device's whole arena, gives the fastest plan that fits it; None the smallest
    arena (what docs/benchmarks.md "Memory" compares with the paper)."""
    g = _load(source, calibration, input_shape)
    if num_classes is not None:
        _replace_head(g, num_classes)
    schema = _schema(update, source, g)
    if schema is not None:
        _train(g, schema)
    _fit_accumulators(g)
    g.lr = DEFAULT_LR
    g.validate()
    return Model(g, P.plan(g, arena_budget=arena_budget))


# ---------------- sources ----------------

def _load(source, calibration, input_shape):
    if isinstance(source, str) and source in ZOO:
        _no_calibration(calibration, source)
        return zoo_graph(source, DEFAULT_INPUT_SHAPE if input_shape is None else input_shape)
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(".tflite"):
        _no_calibration(calibration, source)
        from .frontends import tflite
        g = tflite.load(source)
        have = g.tensors[g.input].shape
        if input_shape is not None and tuple(input_shape) != have:
            raise ValueError("%s takes %s inputs; a .tflite file fixes its input shape" % (source, have))
        return g
    torch = sys.modules.get("torch")  # a torch module exists only once torch is imported
    if torch is not None and isinstance(source, torch.nn.Module):
        from .frontends import torch as torch_frontend
        return torch_frontend.load(source, calibration=calibration, input_shape=input_shape)
    raise ValueError("unknown model %r: expected one of %s, a path to a .tflite file or a torch.nn.Module"
                     % (source, ", ".join(ZOO)))


def _no_calibration(calibration, source):
    if calibration is not None:
        raise ValueError("calibration quantizes torch modules; %s is already int8" % (source,))


def _zoo_arrays(name):
    arrays = np.load(os.path.join(ZOO_DIR, name + ".npz"), allow_pickle=False)

    def resolve(node):
        if isinstance(node, dict):
            if set(node) == {"array", "dtype", "shape"}:
                a = arrays[node["array"]]
                if str(a.dtype) != node["dtype"] or list(a.shape) != node["shape"]:
                    raise ValueError("%s: array %s does not match its description" % (name, node["array"]))
                return a
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    with open(os.path.join(ZOO_DIR, name + ".json")) as f:
        return resolve(json.load(f))


def zoo_graph(name, input_shape=DEFAULT_INPUT_SHAPE):
    """The zoo model `name` as a Graph with its 1000-class ImageNet classifier, at `input_shape`
    (H, W, 3). Op names follow the source: first_conv, blocks.<i>.{pointwise1, depthwise,
    pointwise2, add}, pool, classifier."""
    if name not in ZOO:
        raise ValueError("unknown zoo model %r: expected one of %s" % (name, ", ".join(ZOO)))
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ValueError("input_shape must be (H, W, 3) for the zoo models, got %s" % (tuple(input_shape),))
    m = _zoo_arrays(name)
    b = _ZooBuilder(m["first_conv"]["params"], shape)
    x = b.conv("first_conv", m["first_conv"], b.input)
    for i, block in enumerate(m["blocks"]):
        y = x
        for part in ("pointwise1", "depthwise", "pointwise2"):
            if block[part] is not None:
                y = b.conv("blocks.%d.%s" % (i, part), block[part], y)
        if block["residual"] is not None:
            y = b.add("blocks.%d.add" % i, block["residual"]["params"], y, x)
        x = y
    x = b.pool("pool", x)
    x = b.classifier("classifier", m["classifier"], x)
    return b.build(x)


class _ZooBuilder:
    """The paper's layers as Graph ops: OIHW weights in the kernels' layouts, explicit padding k//2
    (PyTorch's; "same" where that is TFLite's SAME too), ReLU6 already folded into each output's
    int8 range (so every op clamps to [-128, 127] only)."""

    def __init__(self, first, shape):
        if np.float32(first["x_scale"]) != np.float32(G.INPUT_SCALE) or first["x_zero"] != G.INPUT_ZERO_POINT:
            raise ValueError("the zoo model's input quantization differs from the input transfer's")
        self.input = "input"
        self.tensors = {self.input: G.Tensor(shape, float(np.float32(G.INPUT_SCALE)), G.INPUT_ZERO_POINT)}
        self.ops = []

    def _tensor(self, name, shape, scale, zero_point):
        self.tensors[name] = G.Tensor(tuple(shape), float(np.float32(scale)), int(zero_point))
        return name

    def _check_input(self, name, x, p):
        t = self.tensors[x]
        if t.scale != float(np.float32(p["x_scale"])) or t.zero_point != p["x_zero"]:
            raise ValueError("%s: input quantization differs from its producer's output" % name)

    def conv(self, name, layer, x):
        p = layer["params"]
        self._check_input(name, x, p)
        w = p["weight"]                                   # OIHW
        o, _, kh, kw = w.shape
        stride = int(layer["stride"])
        h, wd, c = self.tensors[x].shape
        depthwise = layer["groups"] != 1
        if depthwise and not (layer["groups"] == c == o and w.shape[1] == 1):
            raise ValueError("%s: only depthwise grouped convolutions are supported" % name)
        common = dict(bias=p["bias"].astype(np.int32), weight_scales=p["w_scales"].astype(np.float32),
                      multipliers=_exact_multipliers(p))
        if (kh, kw) == (1, 1) and stride == 1 and not depthwise:
            op = G.Op("pointwise", [x], name, name, weights=w[:, :, 0, 0].astype(np.int8), **common)
            out = (h, wd, o)
        else:
            padding = _torch_padding(h, wd, (kh, kw), stride)
            oh, pt = quant.conv_padding(h, kh, stride, padding)
            ow, _ = quant.conv_padding(wd, kw, stride, padding)
            weights = w[:, 0].transpose(1, 2, 0) if depthwise else w.transpose(0, 2, 3, 1)
            op = G.Op("depthwise" if depthwise else "conv2d", [x], name, name, stride=stride, padding=padding,
                      weights=np.ascontiguousarray(weights, np.int8), **common)
            out = (oh, ow, o)
        self.ops.append(op)
        return self._tensor(name, out, p["y_scale"], p["y_zero"])

    def add(self, name, p, branch, skip):
        self._check_input(name, skip, p)
        self.ops.append(G.Op("add", [branch, skip], name, name))
        return self._tensor(name, self.tensors[skip].shape, p["y_scale"], p["y_zero"])

    def pool(self, name, x):
        t = self.tensors[x]
        self.ops.append(G.Op("avgpool", [x], name, name))
        return self._tensor(name, (1, 1, t.shape[2]), t.scale, t.zero_point)

    def classifier(self, name, layer, x):
        p = layer["params"]
        self._check_input(name, x, p)
        w = p["weight"]
        self.ops.append(G.Op("fully_connected", [x], name, name, weights=w[:, :, 0, 0].astype(np.int8),
                             bias=p["bias"].astype(np.int32), weight_scales=p["w_scales"].astype(np.float32),
                             multipliers=_exact_multipliers(p)))
        return self._tensor(name, (1, 1, w.shape[0]), p["y_scale"], p["y_zero"])

    def build(self, output):
        g = G.Graph(self.tensors, self.ops, self.input, output, rounding="single")
        g.validate()
        return g


def _exact_multipliers(p):
    """A zoo layer's requantization as its source defines it: round(acc * x_scale * w_scale / y_scale)
    with the scales as given (double; the tensors keep their float32 roundings), rounded once."""
    return quant.conv_multipliers(p["x_scale"], p["w_scales"], p["y_scale"], float32=False)


def _torch_padding(h, w, kernel, stride):
    """PyTorch's padding k//2 (the paper's models), spelled "same" where TFLite's SAME is the same
    geometry (stride 1, or an odd input size)."""
    pad = kernel[0] // 2
    if kernel[1] // 2 != pad:
        raise ValueError("non-square kernels are not supported")
    explicit = [quant.conv_padding(n, k, stride, pad) for n, k in ((h, kernel[0]), (w, kernel[1]))]
    same = [quant.same_padding(n, k, stride) for n, k in ((h, kernel[0]), (w, kernel[1]))]
    return "same" if same == explicit else pad


# ---------------- the new head ----------------

def _replace_head(g, num_classes):
    """A num_classes-way fully connected classifier in place of the source's last op: zero
    weights and biases, every weight scale the old classifier's median, logits at the old
    classifier's output scale around zero point 0 (docs/compiler.md, "New head"). Zero weights
    start every class equal (loss ln N) and send the pretrained layers no gradient until the head
    has learned something, so a random head cannot pull their features around."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes <= 1:
        raise ValueError("num_classes must be an int >= 2 (None keeps the source's classifier), got %r"
                         % (num_classes,))
    if num_classes > 0xFFFF:
        raise ValueError("num_classes %d: the device takes at most 65535" % num_classes)
    old = g.ops[-1]
    x = g.tensors[old.inputs[0]]
    if old.kind != "fully_connected" and not (old.kind == "pointwise" and x.shape[:2] == (1, 1)):
        raise ValueError("the source's last op (%s) is not a classifier to replace" % old.kind)
    y = g.tensors[old.output]
    n_in = x.size
    scale = np.float32(np.median(old.weight_scales[old.weight_scales > 0])) if (old.weight_scales > 0).any() \
        else np.float32(1 / 127)
    head = G.Op("fully_connected", list(old.inputs), old.output, old.name,
                weights=np.zeros((int(num_classes), n_in), np.int8), bias=np.zeros(int(num_classes), np.int32),
                weight_scales=np.full(int(num_classes), scale, np.float32))
    g.ops[-1] = head
    g.tensors[old.output] = G.Tensor((1, 1, int(num_classes)), y.scale, 0)


# ---------------- the training schema ----------------

def _layers(g):
    """The layers a SparseUpdate names: weighted ops but the classifier, in network order."""
    return [op for op in g.ops[:-1] if op.kind in G.WEIGHTED]


def _schema(update, source, g):
    """The SparseUpdate of `update` for graph g (None: nothing trains)."""
    n = len(_layers(g))
    if update is None or isinstance(update, SparseUpdate):
        return update
    if not isinstance(update, str):
        raise ValueError("update must be a scheme name, 'bias', 'last:N', 'full', a SparseUpdate or None, got %r"
                         % (update,))
    if update == "full":
        return SparseUpdate(bias=n, weights={i: 1.0 for i in range(n)})
    if update == "bias":
        return SparseUpdate(bias=n)
    if update.startswith("last:"):
        count = update[5:]
        if not count.isdigit() or not 1 <= int(count) <= n + 1:
            raise ValueError("update %r: N must be an int in [1, %d] (weighted ops, classifier included)"
                             % (update, n + 1))
        last = int(count) - 1   # the classifier is the last of them
        return SparseUpdate(bias=last, weights={i: 1.0 for i in range(n - last, n)})
    schemes = zoo_schemes(source) if isinstance(source, str) and source in ZOO else {}
    if update not in schemes:
        known = ", ".join(sorted(schemes, key=lambda k: int(k[:-2]))) if schemes else "none for this source"
        raise ValueError("unknown update %r: expected 'bias', 'last:N', 'full', a SparseUpdate or a scheme "
                         "name (%s)" % (update, known))
    s = schemes[update]
    if len(s["manual_weight_idx"]) != len(s["weight_update_ratio"]) or s["weight_select_criteria"] != "magnitude+":
        raise ValueError("scheme %r of %s is malformed" % (update, source))
    # ratio 0 keeps the layer's weights frozen: the paper masks its whole weight gradient
    ratios = zip(s["manual_weight_idx"], s["weight_update_ratio"])
    return SparseUpdate(bias=s["n_bias_update"], weights={i: float(r) for i, r in ratios if r > 0})


def zoo_schemes(name):
    """{scheme name: the paper's sparse-update parameters} of zoo model `name`."""
    with open(os.path.join(ZOO_DIR, "sparse_schemes.json")) as f:
        return json.load(f)[name]


def _layer(layers, ref):
    if isinstance(ref, str):
        for op in layers:
            if op.name == ref:
                return op
        raise ValueError("no layer named %r (the classifier always trains)" % (ref,))
    if isinstance(ref, bool) or not isinstance(ref, numbers.Integral) or not -len(layers) <= ref < len(layers):
        raise ValueError("layer %r: expected an op name or an index in [-%d, %d)" % (ref, len(layers), len(layers)))
    return layers[ref]


def _train(g, schema):
    layers = _layers(g)
    if isinstance(schema.bias, numbers.Integral) and not isinstance(schema.bias, bool):
        if not 0 <= schema.bias <= len(layers):
            raise ValueError("SparseUpdate.bias: %d layers, the graph has %d" % (schema.bias, len(layers)))
        bias = layers[len(layers) - schema.bias:]
    else:
        bias = [_layer(layers, ref) for ref in schema.bias]
    for op in bias:
        g.train(op.name, bias=True)
    for ref, channels in dict(schema.weights).items():
        op = _layer(layers, ref)
        if isinstance(channels, numbers.Real) and not isinstance(channels, bool):
            channels = float(channels)
        g.train(op.name, bias=True, weights=True, channels=channels)
    g.train(g.ops[-1].name, bias=True, weights=True)


# ---------------- int32 safety of the forward sums ----------------

def _requantized_bound(max_abs, mult, shift):
    """device/model.c: the largest |requantized x| for |x| <= max_abs (None: could leave int32)."""
    shifted = max_abs << max(shift, 0)
    if max_abs > 1 << 31 or shifted > 1 << 31:
        return None
    return (shifted * mult + (1 << 30)) >> 31


def _fits(lo, hi, mult, shift):
    bound = _requantized_bound(max(hi, -lo), mult, shift)
    return lo >= INT32_MIN and hi <= INT32_MAX and bound is not None and bound <= INT32_MAX - 128


def _fit_accumulators(g):
    """Make every weighted op pass the device's int32 check (docs/blob-format.md, "What the device
    rejects"): a trained bias is clamped to +-2^30, where its update saturates anyway (the paper's
    dead channels then leave their clamp, but they feed zero weights: the logits do not change); a
    frozen channel whose bias sits at the int32 edge (a dead channel, bias -2^31 next to nonzero
    weights) gets the nearest bias that leaves room for its products: its outputs stay clamped."""
    for op in g.ops:
        if op.kind not in G.WEIGHTED:
            continue
        mult, shift = g.requant(op)
        w = np.abs(op.weights.astype(np.int64))
        if op.kind == "depthwise":
            sums = w.reshape(-1, w.shape[-1]).sum(axis=0)
        else:
            sums = w.reshape(w.shape[0], -1).sum(axis=1)
        fan_in = w.size // len(op.bias) if op.kind != "depthwise" else op.kernel[0] * op.kernel[1]
        bias = op.bias.astype(np.int64)
        if op.train_bias:
            bias = np.clip(bias, -TRAINED_BIAS_LIMIT, TRAINED_BIAS_LIMIT)
        for c in range(len(bias)):
            s = 255 * (fan_in * 128 if op.train_weights else int(sums[c]))
            m, sh = int(mult[c]), int(shift[c])
            if op.train_bias:
                ok = _fits(-TRAINED_BIAS_LIMIT - s, TRAINED_BIAS_LIMIT + s, m, sh)
            else:
                b = int(bias[c])
                ok = _fits(b - s, b + s, m, sh)
                if not ok and abs(b) > INT32_MAX // 2:
                    bias[c] = b = _nearest_fitting_bias(b, s, m, sh)
                    ok = b is not None
            if not ok:
                raise ValueError("op %r channel %d: its forward sums could overflow int32 on the device"
                                 % (op.name, c))
        op.bias = bias.astype(np.int32)


def _nearest_fitting_bias(b, s, mult, shift):
    """The bias nearest to b, on b's side of zero, whose sums b +- s fit (None if none does)."""
    sign = 1 if b > 0 else -1
    lo, hi = 0, abs(b)       # magnitudes: lo fits (if anything does), hi does not
    if not _fits(-s, s, mult, shift):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(sign * mid - s, sign * mid + s, mult, shift):
            lo = mid
        else:
            hi = mid
    return sign * lo
