"""Float PyTorch modules as int8 tinybridge graphs.

    graph = tinybridge.frontends.torch.load(net, calibration=images, input_shape=(32, 32, 3))

The module is traced with torch.fx (symbolic_trace), so residual adds written in forward() are
seen; its layers are then quantized one by one with tinybridge.graph.Builder (per-output-channel
int8 weights, int32 biases, activation ranges calibrated on the images through the int8 kernels).
Supported (docs/compiler.md, "PyTorch models"):

    Conv2d (groups 1 or depthwise)          -> conv2d / pointwise / depthwise
    BatchNorm2d after a Conv2d              -> folded into the conv's weights and bias
    ReLU, ReLU6 (Hardtanh(0, 6), F.relu...) -> folded into the output range of the op before
    Linear                                  -> fully_connected
    x + y (operator.add, torch.add, Tensor.add)
                                            -> add
    AdaptiveAvgPool2d(1), mean over (2, 3)  -> avgpool
    Flatten, torch.flatten, view/reshape(N, -1), Dropout, Identity -> nothing

The module sees what the device's input transfer gives: the image as (pixel - 128) / 127.5 (in
[-1, 1)), NCHW. PyTorch is needed only here and imported when load() runs.
"""
import operator

import numpy as np

from .. import graph as G
from .. import quant


def _torch():
    try:
        import torch
        import torch.fx
    except ImportError as e:  # pragma: no cover - torch is installed where the tests run
        raise ImportError("quantizing a torch.nn.Module needs PyTorch (pip install torch)") from e
    return torch


def load(module, *, calibration, input_shape=None):
    """The int8 Graph of the float torch.nn.Module `module` (its own classifier; nothing trains).

    calibration: uint8 images (N, H, W, C) (or (N, H, W) for C = 1, or a list of images) that set
    the activation ranges; input_shape: (H, W, C) of the model's input (default: the images').
    The module is read as in eval mode (BatchNorm's running statistics, no dropout); its
    parameters are not changed."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError("load() takes a torch.nn.Module, not %s" % type(module).__name__)
    images = _calibration(calibration, input_shape)
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as e:
        raise ValueError("torch.fx could not trace %s (data-dependent control flow?): %s"
                         % (type(module).__name__, e)) from e
    return _Converter(torch, traced, images).convert()


def _calibration(calibration, input_shape):
    if calibration is None:
        raise ValueError("a torch.nn.Module needs calibration images (uint8 (N, H, W, C)) to set its "
                         "activation ranges")
    if isinstance(calibration, (list, tuple)):
        if not calibration:
            raise ValueError("calibration: no images")
        calibration = np.stack([np.asarray(im) for im in calibration])
    images = np.asarray(calibration)
    if images.dtype != np.uint8:
        raise ValueError("calibration images must be numpy.uint8, got dtype %s" % images.dtype)
    if input_shape is not None:
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError("input_shape must be (H, W, C), got %s" % (tuple(input_shape),))
        if images.ndim == 3 and shape[2] == 1:
            images = images[..., None]
        if images.ndim != 4 or images.shape[1:] != shape:
            raise ValueError("calibration images of shape %s; the model's input is %s (tinybridge.preprocess."
                             "resize converts)" % (tuple(images.shape[1:]), shape))
    if images.ndim != 4 or len(images) == 0:
        raise ValueError("calibration must be uint8 images (N, H, W, C), got shape %s" % (images.shape,))
    return images


class _Value:
    """What an fx node computes: a graph tensor, either 4-D (N, C, H, W) in torch (the tensor's
    (h, w, c) HWC on the device) or flattened to (N, C*H*W) in torch's CHW order."""

    def __init__(self, name, flat=False):
        self.name, self.flat = name, flat


class _Converter:
    def __init__(self, torch, traced, images):
        self.torch, self.nn, self.F = torch, torch.nn, torch.nn.functional
        self.traced = traced
        self.modules = dict(traced.named_modules())
        self.b = G.Builder(images)
        self.values = {}
        self.absorbed = set()
        self.names = set()

    # ---- what a node is ----

    def _describe(self, node):
        if node.op == "call_module":
            return "module %r (%s)" % (node.target, type(self.modules[node.target]).__name__)
        if node.op == "call_function":
            return "function %s" % _qualname(node.target)
        if node.op == "call_method":
            return "method Tensor.%s" % node.target
        return "%s %r" % (node.op, node.target)

    def _kind(self, node):
        """One of conv, bn, relu, relu6, linear, add, pool, flatten, identity, size; None when
        unsupported."""
        nn, F, torch = self.nn, self.F, self.torch
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Conv2d):
                return "conv"
            if isinstance(m, nn.BatchNorm2d):
                return "bn"
            if isinstance(m, nn.ReLU6):
                return "relu6"
            if isinstance(m, nn.ReLU):
                return "relu"
            if isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
                return "relu6"
            if isinstance(m, nn.Linear):
                return "linear"
            if isinstance(m, nn.AdaptiveAvgPool2d) and _is_one(m.output_size):
                return "pool"
            if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
                return "flatten"
            if isinstance(m, (nn.Dropout, nn.Identity)):
                return "identity"
            return None
        args, kwargs = node.args, node.kwargs
        if node.op == "call_function":
            t = node.target
            if t in (operator.add, operator.iadd, torch.add):
                return "add" if self._two_tensors(node) else None
            if t in (F.relu, torch.relu, torch.relu_):
                return "relu"
            if t is F.relu6:
                return "relu6"
            bounds = (_arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0))
            if t is F.hardtanh and bounds == (0, 6):
                return "relu6"
            if t is torch.flatten and _flattens(args, kwargs):
                return "flatten"
            if t is F.adaptive_avg_pool2d and _is_one(_arg(args, kwargs, 1, "output_size", None)):
                return "pool"
            if t is torch.mean and _spatial(_arg(args, kwargs, 1, "dim", None)):
                return "pool"
            if t is F.dropout:
                return "identity"
            if (t is getattr and args[1:] == ("shape",)) or (t is operator.getitem and self._is_size(args[0])):
                return "size"  # x.shape, x.shape[0]: view()'s batch size
            return None
        if node.op == "call_method":
            t = node.target
            if t in ("relu", "relu_"):
                return "relu"
            if t in ("add", "add_", "__add__", "__iadd__"):
                return "add" if self._two_tensors(node) else None
            if t == "mean" and _spatial(_arg(args, kwargs, 1, "dim", None)):
                return "pool"
            if t == "flatten" and _flattens(args, kwargs):
                return "flatten"
            if t in ("view", "reshape") and self._is_flatten_shape(node):
                return "flatten"
            if t == "size":
                return "size"
            return None
        return None

    def _two_tensors(self, node):
        fx = self.torch.fx
        ok = len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args)
        return ok and set(node.kwargs) <= {"alpha"} and node.kwargs.get("alpha", 1) == 1

    def _is_size(self, node):
        return isinstance(node, self.torch.fx.Node) and self._kind(node) == "size"

    def _is_flatten_shape(self, node):
        """view / reshape to (batch, -1), the batch given as 1, -1, x.size(0) or x.shape[0]."""
        shape = list(node.args[1:])
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = list(shape[0])
        if len(shape) != 2 or shape[1] != -1:
            return False
        n = shape[0]
        return self._is_size(n) if isinstance(n, self.torch.fx.Node) else n in (1, -1)

    def _sole_user(self, node, kinds):
        """The node's only user, when it is of one of `kinds` and takes node as its input."""
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if user.args and user.args[0] is node and self._kind(user) in kinds:
            return user
        return None

    # ---- conversion ----

    def convert(self):
        output = None
        placeholders = 0
        for node in self.traced.graph.nodes:
            if node in self.absorbed:
                continue
            if node.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    raise ValueError("the module takes more than one input; tinybridge feeds it one image")
                self.values[node] = _Value(self.b.input)
            elif node.op == "output":
                output = node.args[0]
            else:
                self._node(node)
        fx = self.torch.fx
        if not isinstance(output, fx.Node) or output not in self.values:
            raise ValueError("the module must return one tensor (its logits), not %r" % (output,))
        return self.b.build(self.values[output].name)

    def _input(self, node, k=0):
        a = node.args[k] if k < len(node.args) else None
        if a not in self.values:
            raise ValueError("%s: its input %r is not a tensor tinybridge computed" % (self._describe(node), a))
        return self.values[a]

    def _unique(self, name):
        name = str(name)
        base, i = name, 1
        while name in self.names or name == self.b.input:
            i += 1
            name = "%s_%d" % (base, i)
        self.names.add(name)
        return name

    def _activation(self, node):
        """Fold the node's sole ReLU/ReLU6 user: (activation, the node that gives the value)."""
        user = self._sole_user(node, ("relu", "relu6"))
        if user is None:
            return None, node
        self.absorbed.add(user)
        return self._kind(user), user

    def _node(self, node):
        kind = self._kind(node)
        where = self._describe(node)
        if kind is None:
            raise ValueError("%s is not supported by tinybridge (supported: Conv2d (groups 1 or depthwise), "
                             "BatchNorm2d after a Conv2d, ReLU/ReLU6 after a conv, linear or add, Linear, "
                             "residual add, AdaptiveAvgPool2d(1) / mean over H and W, Flatten, Dropout)" % where)
        if kind == "conv":
            return self._conv(node)
        if kind == "linear":
            return self._linear(node)
        if kind == "add":
            return self._add(node)
        if kind == "pool":
            return self._pool(node)
        if kind in ("flatten", "identity"):
            v = self._input(node)
            self.values[node] = _Value(v.name, flat=v.flat or kind == "flatten")
            return None
        if kind == "size":
            return None  # used only as view()'s batch size
        if kind == "bn":
            raise ValueError("%s: BatchNorm2d is supported only right after a Conv2d whose output it alone "
                             "uses (it is folded into the conv)" % where)
        raise ValueError("%s: ReLU/ReLU6 is supported only right after a Conv2d (+ BatchNorm2d), a Linear or "
                         "an add whose output it alone uses (it is folded into that op's output range)" % where)

    def _conv(self, node):
        torch = self.torch
        m = self.modules[node.target]
        where = self._describe(node)
        x = self._input(node)
        if x.flat:
            raise ValueError("%s: applied to a flattened tensor" % where)
        h, w, c = self.b.tensors[x.name].shape
        if m.in_channels != c:
            raise ValueError("%s: %d input channels, the tensor has %d" % (where, m.in_channels, c))
        if m.padding_mode != "zeros" or tuple(m.dilation) != (1, 1):
            raise ValueError("%s: only zero padding and dilation 1 are supported" % where)
        if m.stride[0] != m.stride[1]:
            raise ValueError("%s: strides %s; tinybridge takes one stride for both axes" % (where, tuple(m.stride)))
        stride = int(m.stride[0])
        depthwise = m.groups != 1
        if depthwise and not (m.groups == m.in_channels == m.out_channels):
            raise ValueError("%s: groups=%d; tinybridge supports groups=1 and depthwise (groups = in = out "
                             "channels)" % (where, m.groups))
        with torch.no_grad():
            weight = m.weight.detach().to("cpu", torch.float64).numpy().copy()       # OIHW
            bias = np.zeros(m.out_channels) if m.bias is None else m.bias.detach().to("cpu", torch.float64).numpy()
        out = node
        bn = self._sole_user(node, ("bn",))
        if bn is not None:
            weight, bias = self._fold(bn, weight, bias)
            self.absorbed.add(bn)
            out = bn
        act, out = self._activation(out)
        kh, kw = weight.shape[2:]
        padding = _padding(m.padding, (h, w), (kh, kw), stride, where)
        name = self._unique(node.target)
        if not depthwise and (kh, kw) == (1, 1) and stride == 1 and padding in ("same", "valid"):
            y = self.b.pointwise(x.name, weight[:, :, 0, 0], bias, activation=act, name=name)
        elif depthwise:
            y = self.b.depthwise(x.name, weight[:, 0].transpose(1, 2, 0), bias, stride=stride, padding=padding,
                                 activation=act, name=name)
        else:
            y = self.b.conv2d(x.name, weight.transpose(0, 2, 3, 1), bias, stride=stride, padding=padding,
                              activation=act, name=name)
        self.values[out] = _Value(y)

    def _fold(self, bn_node, weight, bias):
        torch = self.torch
        bn = self.modules[bn_node.target]
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("%s: has no running statistics to fold (track_running_stats=False)"
                             % self._describe(bn_node))
        with torch.no_grad():
            mean = bn.running_mean.detach().to("cpu", torch.float64).numpy()
            var = bn.running_var.detach().to("cpu", torch.float64).numpy()
            gamma = np.ones_like(mean) if bn.weight is None else bn.weight.detach().to("cpu", torch.float64).numpy()
            beta = np.zeros_like(mean) if bn.bias is None else bn.bias.detach().to("cpu", torch.float64).numpy()
        k = gamma / np.sqrt(var + bn.eps)
        return weight * k[:, None, None, None], (bias - mean) * k + beta

    def _linear(self, node):
        torch = self.torch
        m = self.modules[node.target]
        where = self._describe(node)
        x = self._input(node)
        h, w, c = self.b.tensors[x.name].shape
        if not x.flat and (h, w) != (1, 1):
            raise ValueError("%s: applied to a %dx%dx%d feature map; flatten it first" % (where, c, h, w))
        if m.in_features != h * w * c:
            raise ValueError("%s: %d input features, the tensor has %d" % (where, m.in_features, h * w * c))
        with torch.no_grad():
            weight = m.weight.detach().to("cpu", torch.float64).numpy()
            bias = None if m.bias is None else m.bias.detach().to("cpu", torch.float64).numpy()
        # torch flattens C, H, W; the device flattens H, W, C
        weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        act, out = self._activation(node)
        y = self.b.fully_connected(x.name, weight, bias, activation=act, name=self._unique(node.target))
        self.values[out] = _Value(y, flat=True)

    def _add(self, node):
        a, b = self._input(node, 0), self._input(node, 1)
        sa, sb = self.b.tensors[a.name].shape, self.b.tensors[b.name].shape
        if sa != sb or a.flat != b.flat:
            raise ValueError("%s: adds tensors of shapes %s and %s; tinybridge adds tensors of one shape "
                             "(no broadcasting)" % (self._describe(node), sa, sb))
        act, out = self._activation(node)
        y = self.b.add(a.name, b.name, activation=act, name=self._unique(node.name))
        self.values[out] = _Value(y, flat=a.flat)

    def _pool(self, node):
        x = self._input(node)
        if x.flat:
            raise ValueError("%s: applied to a flattened tensor" % self._describe(node))
        keepdim = True
        if (node.op == "call_function" and node.target is self.torch.mean) or \
                (node.op == "call_method" and node.target == "mean"):
            keepdim = bool(_arg(node.args, node.kwargs, 2, "keepdim", False))
        y = self.b.avgpool(x.name, name=self._unique(node.name if node.op != "call_module" else node.target))
        self.values[node] = _Value(y, flat=not keepdim)


# ---------------------------------------------------------------- helpers

def _qualname(f):
    mod = getattr(f, "__module__", None) or ""
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    if mod.startswith("torch._C") or mod in ("torch", "torch.functional"):
        mod, name = "torch", getattr(f, "__name__", name)
    elif mod == "_operator":
        mod = "operator"
    return "%s.%s" % (mod, name) if mod else name


def _arg(args, kwargs, i, key, default):
    if len(args) > i:
        return args[i]
    return kwargs.get(key, default)


def _flattens(args, kwargs):
    """torch.flatten / Tensor.flatten arguments of a flatten to (N, -1)."""
    return (_arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1)) == (1, -1)


def _is_one(size):
    return size == 1 or (isinstance(size, (tuple, list)) and list(size) == [1, 1])


def _spatial(dim):
    if isinstance(dim, int):
        return False
    return isinstance(dim, (tuple, list)) and sorted(d % 4 for d in dim) == [2, 3]


def _padding(padding, hw, kernel, stride, where):
    """The Graph padding ("same", "valid" or an int p) giving PyTorch's geometry for `padding`
    (an int pair, or "same" / "valid")."""
    if isinstance(padding, str):
        if padding == "valid":
            return "valid"
        # PyTorch's "same" (stride 1): (k - 1) // 2 before, the rest after, as TFLite's SAME
        return "same"
    pads = tuple(int(p) for p in padding)
    torch_geometry = [((n + 2 * p - k) // stride + 1, p) for n, k, p in zip(hw, kernel, pads)]
    if min(out for out, _ in torch_geometry) < 1:
        raise ValueError("%s: the kernel does not fit the %dx%d input" % (where, hw[0], hw[1]))
    candidates = ["same", "valid"] + ([pads[0]] if pads[0] == pads[1] else [])
    for candidate in candidates:
        try:
            if [quant.conv_padding(n, k, stride, candidate) for n, k in zip(hw, kernel)] == torch_geometry:
                return candidate
        except ValueError:
            pass
    raise ValueError("%s: padding %s on a %dx%d input has no equivalent on the device (one pad for both axes, "
                     "smaller than the kernel)" % (where, pads, hw[0], hw[1]))
