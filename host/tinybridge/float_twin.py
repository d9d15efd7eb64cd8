"""The float twin of a compiled int8 graph: the same network in PyTorch float32, for the float
fine-tuning baseline of bench/accuracy (docs/benchmarks.md, "Accuracy").

    twin = FloatTwin(model.graph)
    loss = twin.sgd_step(twin.inputs([model.input_tensor(img)]), [label], lr)
    logits = twin(twin.inputs(tensors))          # (N, classes)

Every weighted op gets its dequantized parameters (weights w · s_W[c], biases b · s_x · s_W[c]),
so a new head starts as the int8 one does (zero weights and biases). The outputs are float: no
requantization, no rounding in the average pool. An output whose int8 range starts at the value 0
(zero point = act_min: ReLU / ReLU6 folded into the range, e.g. [0, 6] at scale 6/255) is clamped
to that range; the others (projections, residual sums, logits) are linear, as in the float network
the int8 one was quantized from (the zoo models are BN-free: batch norm is already folded).

It trains what the graph trains: the biases of ops with `train_bias`, the weights of ops with
`train_weights` on their trained input channels (`op.channels`; depthwise: channels) only; the rest
is frozen (no gradient is computed for it). `sgd_step` is plain SGD (no momentum, no weight decay)
on the gradients of PyTorch's autograd, softmax cross-entropy on the logits.
"""
import numpy as np
import torch
import torch.nn.functional as F

from . import graph as G
from . import quant


class FloatTwin(torch.nn.Module):
    """Float32 PyTorch network of `graph` (tinybridge.graph.Graph) with its current parameters."""

    def __init__(self, graph):
        super().__init__()
        graph.validate()
        self.graph = graph
        self.weights = torch.nn.ParameterDict()
        self.biases = torch.nn.ParameterDict()
        self._masks = {}       # op name -> 0/1 tensor of the weights' trained entries
        self._ranges = {}      # op name -> (0, hi) ReLU range of its output, or None (linear)
        self._pads = {}        # op name -> F.pad's (left, right, top, bottom)
        for op in graph.ops:
            self._ranges[op.name] = _relu_range(op, graph.tensors[op.output])
            if op.kind not in G.WEIGHTED:
                continue
            key = _key(op.name)
            x = graph.tensors[op.inputs[0]]
            s_w = op.weight_scales.astype(np.float64)
            self.weights[key] = torch.nn.Parameter(_torch_weights(op, s_w), requires_grad=op.train_weights)
            self.biases[key] = torch.nn.Parameter(torch.from_numpy(
                (op.bias * np.float64(x.scale) * s_w).astype(np.float32)), requires_grad=op.train_bias)
            if op.train_weights:
                self._masks[op.name] = _channel_mask(op, self.weights[key].shape)
            if op.kind in ("conv2d", "depthwise"):
                self._pads[op.name] = _pads(graph, op)

    def inputs(self, tensors):
        """The float NCHW input of int8 input tensors (N, H, W, C) (Model.input_tensor): the
        values they stand for, (q - zero_point) · scale."""
        x = self.graph.tensors[self.graph.input]
        q = torch.from_numpy(np.asarray(tensors, np.int8).astype(np.float32))
        return ((q - x.zero_point) * np.float32(x.scale)).permute(0, 3, 1, 2).contiguous()

    def forward(self, x, output=None):
        """Logits (N, classes) of the float input x (N, C, H, W), or the value of tensor `output`
        (NCHW, e.g. the pooled features)."""
        values = {self.graph.input: x}
        for op in self.graph.ops:
            y = self._op(op, [values[t] for t in op.inputs])
            relu = self._ranges[op.name]
            values[op.output] = y if relu is None else y.clamp(*relu)
            if op.output == output:
                return values[output]
        return values[self.graph.output].flatten(1)

    def _op(self, op, xs):
        if op.kind == "add":
            return xs[0] + xs[1]
        if op.kind == "avgpool":
            return xs[0].mean(dim=(2, 3), keepdim=True)
        key = _key(op.name)
        w, b = self.weights[key], self.biases[key]
        if op.kind == "pointwise":
            return F.conv2d(xs[0], w[:, :, None, None], b)
        if op.kind == "fully_connected":
            flat = xs[0].permute(0, 2, 3, 1).flatten(1)      # the device's HWC order
            return F.linear(flat, w, b)[:, :, None, None]
        groups = w.shape[0] if op.kind == "depthwise" else 1
        return F.conv2d(F.pad(xs[0], self._pads[op.name]), w, b, stride=op.stride, groups=groups)

    def sgd_step(self, x, labels, lr):
        """One step of plain SGD on the trained parameters: the mean softmax cross-entropy of the
        batch x (N, C, H, W) against labels (N,). Returns the loss (float)."""
        params = [p for p in self.parameters() if p.requires_grad]
        for p in params:
            p.grad = None
        loss = F.cross_entropy(self(x), torch.as_tensor(np.asarray(labels), dtype=torch.int64))
        loss.backward()
        with torch.no_grad():
            for p, mask in self._trained():
                p -= lr * (p.grad if mask is None else p.grad * mask)
        return loss.item()

    def _trained(self):
        """(parameter, mask of its trained entries or None for all) of what the graph trains."""
        for op in self.graph.ops:
            if op.kind in G.WEIGHTED:
                key = _key(op.name)
                if op.train_weights:
                    yield self.weights[key], self._masks[op.name]
                if op.train_bias:
                    yield self.biases[key], None


def _key(name):
    return name.replace(".", "_")      # ParameterDict keys cannot contain dots


def _relu_range(op, y):
    """(0, hi) when op's int8 output range starts at the value 0 (a folded ReLU / ReLU6), else None."""
    if op.act_min != y.zero_point:
        return None
    return 0.0, float((op.act_max - y.zero_point) * np.float64(y.scale))


def _torch_weights(op, s_w):
    """Dequantized float32 weights in PyTorch's layout: OIHW (depthwise (C, 1, kh, kw)); (out, in)
    for pointwise and fully connected."""
    w = op.weights.astype(np.float64)
    if op.kind == "conv2d":
        w = (w * s_w[:, None, None, None]).transpose(0, 3, 1, 2)
    elif op.kind == "depthwise":
        w = (w * s_w).transpose(2, 0, 1)[:, None]
    else:
        w = w * s_w[:, None]
    return torch.from_numpy(np.ascontiguousarray(w, np.float32))


def _channel_mask(op, shape):
    """1 where the weights train: the trained input channels (axis 1), depthwise channels (axis 0)."""
    mask = torch.zeros(shape)
    if op.kind == "depthwise":
        mask[op.channels] = 1
    else:
        mask[:, op.channels] = 1
    return mask


def _pads(graph, op):
    """F.pad's (left, right, top, bottom) for op's geometry (quant.conv_padding); a negative right
    or bottom pad drops the rows a VALID convolution never reads."""
    h, w, _ = graph.tensors[op.inputs[0]].shape
    (kh, kw), s = op.kernel, op.stride
    (oh, top), (ow, left) = (quant.conv_padding(n, k, s, op.padding) for n, k in ((h, kh), (w, kw)))
    return left, (ow - 1) * s + kw - w - left, top, (oh - 1) * s + kh - h - top
