"""A small graph IR for int8 networks: tensors, ops, TFLite quantization and the training schema.

The compiler produces a Graph from the paper's models, TFLite files or PyTorch; `plan.py` plans its
arena, `blob.py` writes it for the device (docs/blob-format.md) and `simulate.py` runs it on the
host. Layouts are those of docs/kernels.md: activations HWC, conv weights OHWI, depthwise weights
(kh, kw, C), pointwise and fully connected weights (out, in), int32 biases.

`Builder` quantizes a float network (per-channel weights, activation ranges calibrated on real
images) into a Graph; `tiny_cnn` builds a small test network with every op kind from random weights.
"""
from dataclasses import dataclass

import numpy as np

from . import kernels, quant

KINDS = ("conv2d", "depthwise", "pointwise", "fully_connected", "avgpool", "add")
WEIGHTED = ("conv2d", "depthwise", "pointwise", "fully_connected")
# The image -> input tensor rule of the input transfer (docs/blob-format.md): int8 = pixel - 128.
INPUT_SCALE, INPUT_ZERO_POINT = 1 / 127.5, 0
# How the forward kernels round (tb_rounding, docs/kernels.md "Rounding"): TFLite Micro's arithmetic,
# or every output rounded once from its exact value (the paper's models are defined so).
ROUNDINGS = ("tflite", "single")


@dataclass
class Tensor:
    shape: tuple          # (h, w, c)
    scale: float          # float32 value
    zero_point: int

    @property
    def size(self):
        return int(np.prod(self.shape))


@dataclass(eq=False)
class Op:
    """One kernel call. `weights`, `bias` and `weight_scales` belong to weighted ops; `channels`
    lists the trained input channels (depthwise: trained channels) when `train_weights`."""
    kind: str
    inputs: list
    output: str
    name: str
    weights: np.ndarray = None
    bias: np.ndarray = None
    weight_scales: np.ndarray = None
    stride: int = 1
    padding: object = "same"    # "same", "valid" (TFLite) or an int pad (PyTorch): quant.conv_padding
    act_min: int = -128
    act_max: int = 127
    train_bias: bool = False
    train_weights: bool = False
    channels: np.ndarray = None
    multipliers: tuple = None   # (mult, shift) as the source fixed them, else derived (Graph.requant)

    @property
    def kernel(self):
        if self.kind == "conv2d":
            return tuple(self.weights.shape[1:3])
        if self.kind == "depthwise":
            return tuple(self.weights.shape[:2])
        return (1, 1)

    @property
    def trains(self):
        return self.train_bias or self.train_weights


@dataclass(eq=False)
class Graph:
    """Ops in execution order (each op's inputs are the graph input or earlier outputs); the output
    is the last op's 1x1xN logit vector. rounding: how the forward kernels round ("tflite", TFLite
    Micro's arithmetic, or "single": ROUNDINGS). lr, momentum, seed (xorshift32 state of stochastic
    rounding) and step are the training schema's globals."""
    tensors: dict
    ops: list
    input: str
    output: str
    rounding: str = "tflite"
    lr: float = 0.01
    momentum: float = 0.0
    seed: int = 1
    step: int = 0

    # ---- structure ----

    def op(self, name):
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError("no op named %r" % (name,))

    def index(self, name):
        return self.ops.index(self.op(name))

    def producer(self, tensor):
        """Index of the op producing `tensor`, None for the graph input."""
        for i, op in enumerate(self.ops):
            if op.output == tensor:
                return i
        return None

    def out_geometry(self, op):
        """(out_h, out_w, pad_top, pad_left) of a conv2d / depthwise op."""
        h, w, _ = self.tensors[op.inputs[0]].shape
        return _geometry(h, w, op.kernel, op.stride, op.padding)

    # ---- training schema (docs/blob-format.md, Training schema) ----

    def needs_output_grad(self):
        """Per op: does it need its output's gradient (it trains, or feeds one that does)."""
        needs = []
        for op in self.ops:
            needs.append(op.trains or any(self.grad_to_input(op, k, needs) for k in range(len(op.inputs))))
        return needs

    def has_gradient(self, tensor, needs=None):
        """Does the backward pass compute `tensor`'s gradient (its producer needs it). `needs`:
        needs_output_grad(), when the caller has it."""
        needs = self.needs_output_grad() if needs is None else needs
        p = self.producer(tensor)
        return p is not None and needs[p]

    def grad_to_input(self, op, k, needs=None):
        """Does `op` send a gradient to its input k."""
        return self.has_gradient(op.inputs[k], needs)

    def backward_stop(self):
        """Index of the earliest op that trains (len(ops) when none does)."""
        return next((i for i, op in enumerate(self.ops) if op.trains), len(self.ops))

    def grad_is_first(self, i, k, needs=None):
        """Is op i's gradient for its input k the first to reach that tensor in the backward pass
        (no later op, nor input 0 of the same add, sends it one)."""
        needs = self.needs_output_grad() if needs is None else needs
        op, t = self.ops[i], self.ops[i].inputs[k]
        if k == 1 and op.inputs[0] == t and self.grad_to_input(op, 0, needs):
            return False
        return not any(later.inputs[j] == t and self.grad_to_input(later, j, needs)
                       for later in self.ops[i + 1:] for j in range(len(later.inputs)))

    def train(self, op_name, *, bias=True, weights=False, channels=None):
        """Set what op `op_name` trains. channels (with weights=True): None for all input channels
        (depthwise: all channels), a ratio in (0, 1] for the fraction with the largest weight
        magnitude (the paper's "magnitude+": the L2 norm of each input channel's int8 weights over
        every output channel and tap; int(ratio · channels), at least one; ties to the lower
        index), or explicit indices."""
        op = self.op(op_name)
        if op.kind not in WEIGHTED:
            raise ValueError("op %r (%s) has no parameters to train" % (op_name, op.kind))
        op.train_bias, op.train_weights, op.channels = bool(bias), bool(weights), None
        if weights:
            op.channels = self._trained_channels(op, channels)

    def _trained_channels(self, op, channels):
        n = op.weights.shape[-1]
        if channels is None:
            return np.arange(n, dtype=np.int32)
        if isinstance(channels, float):
            if not 0 < channels <= 1:
                raise ValueError("a channel ratio must be in (0, 1], got %r" % channels)
            axes = tuple(range(op.weights.ndim - 1))
            magnitude = (op.weights.astype(np.int64) ** 2).sum(axis=axes)
            keep = max(1, int(channels * n))
            return np.sort(np.argsort(-magnitude, kind="stable")[:keep]).astype(np.int32)
        channels = np.asarray(channels, dtype=np.int32)
        if channels.ndim != 1 or channels.size == 0 or (np.diff(channels) <= 0).any() or \
                channels[0] < 0 or channels[-1] >= n:
            raise ValueError("channels must be sorted, distinct indices in [0, %d)" % n)
        return channels

    # ---- derived quantization ----

    def requant(self, op):
        """(mult, shift) int32 arrays: per output channel for weighted ops, [a, b, out] for add;
        the op's own `multipliers` if the source fixed them, else from the tensor scales."""
        if op.multipliers is not None:
            return op.multipliers
        x, y = self.tensors[op.inputs[0]], self.tensors[op.output]
        if op.kind == "add":
            pairs = quant.add_multipliers(x.scale, self.tensors[op.inputs[1]].scale, y.scale)
            return (np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32))
        return quant.conv_multipliers(x.scale, op.weight_scales, y.scale)

    def bias_scales(self, op):
        """float32 scale of each int32 bias: s_x * s_w[c]."""
        return np.float32(self.tensors[op.inputs[0]].scale) * op.weight_scales.astype(np.float32)

    # ---- checks ----

    def validate(self):
        """Raise ValueError naming the first op or tensor the device would reject."""
        if self.input not in self.tensors or self.output not in self.tensors:
            raise ValueError("input or output is not a tensor of the graph")
        if not self.ops or self.ops[-1].output != self.output:
            raise ValueError("the output must be the last op's output")
        y = self.tensors[self.output]
        if y.shape[:2] != (1, 1) or y.shape[2] < 2:
            raise ValueError("the output must be 1x1xN logits with N >= 2, got %s" % (y.shape,))
        seen = {self.input}
        for op in self.ops:
            self._validate_op(op, seen)
            seen.add(op.output)
        used = {t for op in self.ops for t in op.inputs}
        unused = [t for t in self.tensors if t not in used and t != self.output]
        if unused or set(self.tensors) != seen:
            raise ValueError("tensors unused or not produced: %s" % sorted(set(unused) | (set(self.tensors) - seen)))
        if len(self.tensors) > 256:
            raise ValueError("%d tensors; the device holds at most 256" % len(self.tensors))
        if not np.isfinite(np.float32(self.lr)) or self.lr < 0 or not 0 <= self.momentum < 1:
            raise ValueError("lr must be finite and >= 0, momentum in [0, 1)")
        if not 0 < self.seed < 1 << 32:
            raise ValueError("seed must be a nonzero uint32")
        if self.rounding not in ROUNDINGS:
            raise ValueError("rounding must be one of %s, got %r" % (ROUNDINGS, self.rounding))

    def _validate_op(self, op, seen):
        where = "op %r (%s)" % (op.name, op.kind)
        if op.kind not in KINDS:
            raise ValueError("%s: unknown kind" % where)
        if len(op.inputs) != (2 if op.kind == "add" else 1) or any(t not in seen for t in op.inputs):
            raise ValueError("%s: inputs must be the graph input or earlier outputs" % where)
        if op.output in seen:
            raise ValueError("%s: output %r already produced" % (where, op.output))
        x, y = self.tensors[op.inputs[0]], self.tensors[op.output]
        if not -128 <= op.act_min <= op.act_max <= 127:
            raise ValueError("%s: bad output range" % where)
        try:
            want = self._output_shape(op, x)
        except ValueError as e:  # the padding
            raise ValueError("%s: %s" % (where, e)) from None
        if y.shape != want:
            raise ValueError("%s: output shape %s, expected %s" % (where, y.shape, want))
        if op.kind == "avgpool" and (np.float32(x.scale) != np.float32(y.scale) or x.zero_point != y.zero_point):
            raise ValueError("%s: input and output quantization must be equal" % where)
        if op.kind == "add" and self.tensors[op.inputs[1]].shape != x.shape:
            raise ValueError("%s: both inputs must have one shape" % where)
        if op.kind in WEIGHTED:
            self._validate_weights(op, x, y, where)
        elif op.trains:
            raise ValueError("%s: has no parameters to train" % where)

    def _output_shape(self, op, x):
        if op.kind in ("conv2d", "depthwise"):
            oh, ow, _, _ = self.out_geometry(op)
            return (oh, ow, op.weights.shape[0] if op.kind == "conv2d" else x.shape[2])
        if op.kind == "pointwise":
            return x.shape[:2] + (op.weights.shape[0],)
        if op.kind == "fully_connected":
            return (1, 1, op.weights.shape[0])
        if op.kind == "avgpool":
            return (1, 1, x.shape[2])
        return x.shape

    def _validate_weights(self, op, x, y, where):
        cin = x.size if op.kind == "fully_connected" else x.shape[2]
        shape = {"conv2d": (y.shape[2],) + op.kernel + (cin,), "depthwise": op.kernel + (cin,),
                 "pointwise": (y.shape[2], cin), "fully_connected": (y.shape[2], cin)}[op.kind]
        if op.weights is None or op.weights.dtype != np.int8 or op.weights.shape != shape:
            raise ValueError("%s: weights must be int8 %s" % (where, shape))
        c = y.shape[2]
        if op.bias is None or op.bias.dtype != np.int32 or op.bias.shape != (c,):
            raise ValueError("%s: bias must be int32 (%d,)" % (where, c))
        s = op.weight_scales
        if s is None or s.dtype != np.float32 or s.shape != (c,) or not (np.isfinite(s) & (s >= 0)).all():
            raise ValueError("%s: weight_scales must be finite float32 >= 0, shape (%d,)" % (where, c))
        if op.trains and not (s > 0).all():
            raise ValueError("%s: a trained op needs weight scales > 0" % where)
        if op.train_weights:
            ch = op.channels
            n = op.weights.shape[-1]
            if ch is None or ch.dtype != np.int32 or ch.ndim != 1 or ch.size == 0 or \
                    (np.diff(ch) <= 0).any() or ch[0] < 0 or ch[-1] >= n:
                raise ValueError("%s: channels must be sorted, distinct int32 in [0, %d)" % (where, n))
        elif op.channels is not None:
            raise ValueError("%s: channels given but weights do not train" % where)


# ---------------- building a quantized network from float weights ----------------

def _quantize_weights(w, channel_axis):
    """Symmetric per-channel int8 and the float32 scales."""
    axes = tuple(a for a in range(w.ndim) if a != channel_axis % w.ndim)
    peak = np.abs(w).max(axis=axes)
    scales = (np.maximum(peak, 1e-8) / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[channel_axis] = -1
    q = np.clip(np.round(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales


def _output_quant(y, activation):
    """(scale, zero_point) covering the calibrated float outputs y after the activation."""
    hi = float(y.max()) if y.size else 0.0
    lo = float(y.min()) if y.size else 0.0
    if activation in ("relu", "relu6"):
        hi = min(hi, 6.0) if activation == "relu6" else hi
        scale = max(hi, 1e-6) / 255
        return float(np.float32(scale)), -128
    # symmetric around 0: the outputs may move either way once the network trains
    scale = float(np.float32(max(-lo, hi, 1e-6) / 127))
    return scale, 0


def _conv_float(x, w, stride, geometry, depthwise):
    """Reference float convolution for calibration: x (N, H, W, Ci), w OHWI or (kh, kw, C)."""
    oh, ow, pt, pl = geometry
    kh, kw = w.shape[:2] if depthwise else w.shape[1:3]
    n, h, wd, ci = x.shape
    hp, wp = max(pt + h, (oh - 1) * stride + kh), max(pl + wd, (ow - 1) * stride + kw)
    xp = np.zeros((n, hp, wp, ci), np.float64)
    xp[:, pt:pt + h, pl:pl + wd] = x
    y = 0.0
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride]
            y = y + (patch * w[ky, kx] if depthwise else patch @ w[:, ky, kx, :].T)
    return y


class Builder:
    """Quantizes a float network layer by layer into a Graph. Each layer's output range is
    calibrated on `calibration` images propagated through the int8 kernels built so far.

        b = Builder(images)                       # uint8 (N, H, W, C): the input tensor
        t = b.conv2d(b.input, w, bias, stride=2, activation="relu6")
        ...
        graph = b.build(logits)
    """

    def __init__(self, calibration):
        images = np.asarray(calibration)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError("calibration must be uint8 images (N, H, W, C)")
        self.tensors, self.ops = {}, []
        self._values = {}   # tensor -> int8 calibration values (N, h, w, c)
        self.input = "input"
        self._add(self.input, images.astype(np.int16) - 128, INPUT_SCALE, INPUT_ZERO_POINT)

    def _add(self, name, values, scale, zero_point):
        values = np.asarray(values, np.int8)
        self.tensors[name] = Tensor(tuple(values.shape[1:]), float(np.float32(scale)), int(zero_point))
        self._values[name] = values
        return name

    def _real(self, name):
        t = self.tensors[name]
        return (self._values[name].astype(np.float64) - t.zero_point) * t.scale

    def _name(self, kind, name):
        return name or "%s_%d" % (kind, len(self.ops))

    def _weighted(self, kind, x, w, bias, q_axis, float_out, activation, name, **geometry):
        name = self._name(kind, name)
        wq, w_scales = _quantize_weights(np.asarray(w, np.float64), q_axis)
        xt = self.tensors[x]
        b = np.zeros(wq.shape[0 if kind != "depthwise" else -1]) if bias is None else np.asarray(bias, np.float64)
        bias_scales = np.float32(xt.scale) * w_scales
        bq = np.round(b / bias_scales).astype(np.int32)
        # float outputs of the quantized layer (dequantized weights and bias) set the output range
        w_real = wq * w_scales.reshape([-1 if a == q_axis % wq.ndim else 1 for a in range(wq.ndim)])
        y_float = float_out(self._real(x), w_real) + bq * bias_scales
        scale, zero = _output_quant(y_float, activation)
        lo, hi = quant.activation_range(activation, scale, zero)
        op = Op(kind, [x], name, name, weights=wq, bias=bq, weight_scales=w_scales, act_min=lo,
                act_max=hi, **geometry)
        self.ops.append(op)
        self.tensors[name] = Tensor(tuple(y_float.shape[1:]), scale, zero)
        self._values[name] = np.stack([self._run(op, v) for v in self._values[x]])
        return name

    def _run(self, op, x):
        """The int8 kernel of op on one calibration input (the device's forward)."""
        xt, yt = self.tensors[op.inputs[0]], self.tensors[op.output]
        mult, shift = quant.conv_multipliers(xt.scale, op.weight_scales, yt.scale)
        q = dict(input_offset=-xt.zero_point, output_offset=yt.zero_point, act_min=op.act_min,
                 act_max=op.act_max)
        if op.kind == "conv2d":
            return kernels.conv2d(x, op.weights, op.bias, mult, shift, stride=op.stride, padding=op.padding, **q)
        if op.kind == "depthwise":
            return kernels.depthwise_conv2d(x, op.weights, op.bias, mult, shift, stride=op.stride,
                                            padding=op.padding, **q)
        if op.kind == "pointwise":
            return kernels.pointwise_conv(x, op.weights, op.bias, mult, shift, **q)
        return kernels.fully_connected(x.reshape(-1), op.weights, op.bias, mult, shift, **q).reshape(1, 1, -1)

    def conv2d(self, x, w, bias=None, *, stride=1, padding="same", activation=None, name=None):
        """w float (out, kh, kw, in) OHWI."""
        w = np.asarray(w, np.float64)
        h, wd, _ = self.tensors[x].shape
        g = _geometry(h, wd, w.shape[1:3], stride, padding)
        return self._weighted("conv2d", x, w, bias, 0,
                              lambda xr, wr: _conv_float(xr, wr, stride, g, False), activation, name,
                              stride=stride, padding=padding)

    def depthwise(self, x, w, bias=None, *, stride=1, padding="same", activation=None, name=None):
        """w float (kh, kw, C)."""
        w = np.asarray(w, np.float64)
        h, wd, _ = self.tensors[x].shape
        g = _geometry(h, wd, w.shape[:2], stride, padding)
        return self._weighted("depthwise", x, w, bias, -1,
                              lambda xr, wr: _conv_float(xr, wr, stride, g, True), activation, name,
                              stride=stride, padding=padding)

    def pointwise(self, x, w, bias=None, *, activation=None, name=None):
        """w float (out, in)."""
        return self._weighted("pointwise", x, w, bias, 0, lambda xr, wr: xr @ wr.T, activation, name)

    def fully_connected(self, x, w, bias=None, *, activation=None, name=None):
        """w float (out, h*w*c of x)."""
        return self._weighted("fully_connected", x, w, bias, 0,
                              lambda xr, wr: (xr.reshape(len(xr), -1) @ wr.T)[:, None, None, :],
                              activation, name)

    def avgpool(self, x, *, name=None):
        """Global average pool; output quantization = input's (TFLite)."""
        name = self._name("avgpool", name)
        xt = self.tensors[x]
        self.ops.append(Op("avgpool", [x], name, name))
        values = np.stack([kernels.avgpool_global(v) for v in self._values[x]])[:, None, None, :]
        return self._add(name, values, xt.scale, xt.zero_point)

    def add(self, a, b, *, activation=None, name=None):
        name = self._name("add", name)
        y_float = self._real(a) + self._real(b)
        scale, zero = _output_quant(y_float, activation)
        self.tensors[name] = Tensor(self.tensors[a].shape, scale, zero)
        lo, hi = quant.activation_range(activation, scale, zero)
        op = Op("add", [a, b], name, name, act_min=lo, act_max=hi)
        self.ops.append(op)
        at, bt = self.tensors[a], self.tensors[b]
        (ma, sa), (mb, sb), (my, sy) = quant.add_multipliers(at.scale, bt.scale, scale)
        p = kernels.add_params(-at.zero_point, ma, sa, -bt.zero_point, mb, sb, 20, zero, my, sy, lo, hi)
        self._values[name] = np.stack([kernels.add(u, v, p) for u, v in zip(self._values[a], self._values[b])])
        return name

    def build(self, output, *, lr=0.01, momentum=0.0, seed=1):
        g = Graph(dict(self.tensors), list(self.ops), self.input, output, lr=lr, momentum=momentum, seed=seed)
        g.validate()
        return g


def _geometry(h, w, kernel, stride, padding):
    (kh, kw) = kernel
    (oh, pt), (ow, pl) = (quant.conv_padding(n, k, stride, padding) for n, k in ((h, kh), (w, kw)))
    return oh, ow, pt, pl


def tiny_cnn(calibration, num_classes=2, *, width=8, seed=0, lr=0.05, momentum=0.0):
    """A small int8 network with every op kind, from He-initialised random float weights,
    quantized on `calibration` (uint8 (N, H, W, C)):

        conv 3x3/2 (relu6) -> conv 3x3/2 (relu6) -> depthwise 3x3 (relu6) -> pointwise
        -> add (the second conv's output) -> global average pool -> fully connected (logits)

    Op names: conv1, conv2, dw, pw, add, pool, fc. Nothing trains yet (Graph.train)."""
    rng = np.random.default_rng(seed)
    cin = np.asarray(calibration).shape[3]

    def he(shape, fan_in):
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)

    b = Builder(calibration)
    c1 = b.conv2d(b.input, he((width, 3, 3, cin), 9 * cin), rng.normal(0, 0.1, width), stride=2,
                  activation="relu6", name="conv1")
    c2 = b.conv2d(c1, he((2 * width, 3, 3, width), 9 * width), rng.normal(0, 0.1, 2 * width), stride=2,
                  activation="relu6", name="conv2")
    dw = b.depthwise(c2, he((3, 3, 2 * width), 9), rng.normal(0, 0.1, 2 * width), activation="relu6", name="dw")
    pw = b.pointwise(dw, he((2 * width, 2 * width), 2 * width), None, name="pw")
    s = b.add(pw, c2, name="add")
    p = b.avgpool(s, name="pool")
    fc = b.fully_connected(p, he((num_classes, 2 * width), 2 * width), None, name="fc")
    return b.build(fc, lr=lr, momentum=momentum)
