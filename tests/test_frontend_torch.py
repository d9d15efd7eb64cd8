"""tinybridge.frontends.torch: a small MobileNet-like float PyTorch network (conv-BN-ReLU6,
inverted residuals with adds, average pool, linear), trained briefly on real images, quantized
with its BatchNorms folded; the int8 graph's logits agree with the float model's, and the sim
computes exactly what tinybridge.simulate does."""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

import tinybridge
from tinybridge import preprocess, simulate
from tinybridge.frontends import torch as torch_frontend
from tinybridge.model import Model

SHAPE = (32, 32, 3)


@functools.lru_cache(maxsize=None)
def faces():
    """LFW subset (100 faces, 100 non-faces), resized to 32x32 RGB, shuffled once."""
    raw = data.lfw_subset()
    images = np.stack([preprocess.resize(im, SHAPE) for im in raw])
    labels = np.r_[np.ones(100, np.int64), np.zeros(100, np.int64)]
    order = np.random.default_rng(0).permutation(200)
    return images[order], labels[order]


def as_torch(images):
    """What the device's input transfer gives the model: (pixel - 128) / 127.5, NCHW."""
    x = (np.asarray(images, np.float32) - 128) / 127.5
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


class InvertedResidual(nn.Module):
    def __init__(self, c, expand, stride=1, out=None):
        super().__init__()
        hidden, out = c * expand, out or c
        self.residual = stride == 1 and out == c
        self.conv = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(8, 3), InvertedResidual(8, 3, stride=2, out=16),
                                    InvertedResidual(16, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(x, 1)))


def train(net, images, labels, steps=40, seed=0):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic (and for a network this small, faster)
    try:
        return _train(net, images, labels, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(net, images, labels, steps, seed):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = as_torch(images), torch.from_numpy(labels)
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), 32, replace=False))
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    return net.eval()


@functools.lru_cache(maxsize=None)
def trained():
    images, labels = faces()
    torch.manual_seed(0)
    net = train(TinyMobileNet(), images[:150], labels[:150])
    graph = torch_frontend.load(net, calibration=images[:64], input_shape=SHAPE)
    return net, graph


def int8_logits(graph, images):
    """Dequantized logits of the int8 graph (tinybridge.simulate)."""
    model = Model(graph)
    sim = simulate.Simulator(model)
    out = []
    for im in images:
        r = sim.infer(model.input_tensor(im))
        out.append(np.float32(r.scale) * (r.logits.astype(np.float32) - np.float32(r.zero_point)))
    return np.array(out)


def float_logits(net, images):
    with torch.no_grad():
        return net(as_torch(images)).double().numpy()


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_mobilenet_block_network_quantizes_faithfully():
    net, g = trained()
    assert [op.kind for op in g.ops] == (
        ["conv2d"] + ["pointwise", "depthwise", "pointwise", "add"] + ["pointwise", "depthwise", "pointwise"]
        + ["pointwise", "depthwise", "pointwise", "add"] + ["avgpool", "fully_connected"])
    assert g.op("stem.0").padding == 1                   # PyTorch's 3x3/2 pad 1 on an even input
    assert g.op("blocks.0.conv.3").padding == "same"     # stride 1: TFLite's SAME is the same geometry
    assert g.tensors["stem.0"].zero_point == -128        # ReLU6 folded: the output range starts at 0
    assert g.tensors["blocks.0.conv.6"].zero_point == 0  # no activation: symmetric
    images, labels = faces()
    test = images[150:]
    want, got = float_logits(net, test), int8_logits(g, test)
    assert cosine(got - got.mean(), want - want.mean()) >= 0.99
    per_image = [cosine(a, b) for a, b in zip(got, want)]
    assert np.median(per_image) >= 0.99
    agree = np.mean(np.argmax(got, 1) == np.argmax(want, 1))
    assert agree >= 0.9, agree
    accuracy = np.mean(np.argmax(want, 1) == labels[150:])
    assert accuracy >= 0.7, "the float network learned nothing: %.2f" % accuracy


def test_batchnorm_is_folded_exactly():
    """Each conv's int8 weights are the float weights with the BatchNorm after it folded in,
    quantized per output channel; the BatchNorms leave no op of their own."""
    net, g = trained()
    assert len([op for op in g.ops if op.kind in ("conv2d", "depthwise", "pointwise")]) == \
        len([m for m in net.modules() if isinstance(m, nn.Conv2d)])
    for name, conv, bn in (("stem.0", net.stem[0], net.stem[1]),
                           ("blocks.1.conv.3", net.blocks[1].conv[3], net.blocks[1].conv[4])):
        k = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        w = conv.weight.detach().double().numpy() * k[:, None, None, None]
        b = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        op = g.op(name)
        real = op.weights * op.weight_scales.reshape((-1,) + (1,) * (op.weights.ndim - 1)) \
            if op.kind == "conv2d" else op.weights * op.weight_scales
        want = w.transpose(0, 2, 3, 1) if op.kind == "conv2d" else w[:, 0].transpose(1, 2, 0)
        np.testing.assert_allclose(real, want, atol=float(op.weight_scales.max()) / 2 + 1e-12)
        np.testing.assert_allclose(op.weight_scales, np.abs(w).reshape(len(w), -1).max(1) / 127, rtol=1e-6)
        np.testing.assert_allclose(op.bias * g.bias_scales(op), b, atol=float(g.bias_scales(op).max()))


class FlatHead(nn.Module):
    """A classifier on a flattened spatial map (torch flattens C, H, W; the device H, W, C), with
    functional ReLU, x.view(x.size(0), -1), an odd input size and a padding the device takes as
    TFLite's SAME."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 5, padding=2)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = F.relu6(self.conv2(x))
        return self.fc(x.view(x.size(0), -1))


class MeanHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1, stride=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("net, shape", [(FlatHead, (15, 15, 3)), (MeanHead, (32, 32, 3))])
def test_flatten_order_and_functional_forms(net, shape):
    torch.manual_seed(1)
    m = net().eval()
    images = np.stack([preprocess.resize(im, shape) for im in data.lfw_subset()[:60]])
    g = torch_frontend.load(m, calibration=images[:40], input_shape=shape)
    want, got = float_logits(m, images[40:]), int8_logits(g, images[40:])
    assert cosine(got - got.mean(0), want - want.mean(0)) >= 0.98
    assert cosine(got, want) >= 0.99


def test_sim_runs_what_simulate_computes():
    net, g = trained()
    model = Model(g)
    images = faces()[0][150:156]
    want = int8_logits(g, images)
    with tinybridge.connect("sim") as dev:
        dev.load_model(model, progress=False)
        for im, w in zip(images, want):
            p = dev.infer(im)
            np.testing.assert_array_equal(p.scores, w)
            assert p.label == int(np.argmax(w))


# ---------------------------------------------------------------- errors

def _calib(n=4, shape=(8, 8, 3)):
    return np.random.default_rng(0).integers(0, 256, (n,) + shape, dtype=np.uint8)


def _net(forward, *layers):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            for i, layer in enumerate(layers):
                setattr(self, "l%d" % i, layer)

        def forward(self, x):
            return forward(self, x)
    return Net().eval()


@pytest.mark.parametrize("net, message", [
    (_net(lambda s, x: s.l2(torch.flatten(s.l1(s.l0(x)), 1)), nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2),
          nn.Linear(64, 2)), r"module 'l1' \(MaxPool2d\) is not supported"),
    (_net(lambda s, x: s.l1(torch.flatten(torch.sigmoid(s.l0(x)), 1)), nn.Conv2d(3, 2, 8),
          nn.Linear(2, 2)), r"function torch.sigmoid is not supported"),
    (_net(lambda s, x: s.l1(torch.flatten(torch.cat([s.l0(x), s.l0(x)], 1), 1)), nn.Conv2d(3, 1, 8),
          nn.Linear(2, 2)), r"function torch.cat is not supported"),
    (_net(lambda s, x: s.l1(torch.flatten(s.l0(x) * 2, 1)), nn.Conv2d(3, 2, 8),
          nn.Linear(2, 2)), r"function operator.mul is not supported"),
    (_net(lambda s, x: s.l1(torch.flatten(s.l0(x).sigmoid(), 1)), nn.Conv2d(3, 2, 8),
          nn.Linear(2, 2)), r"method Tensor.sigmoid is not supported"),
    (_net(lambda s, x: s.l1(torch.flatten(s.l0(x), 1)), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
          nn.Linear(256, 2)), r"only zero padding"),
    (_net(lambda s, x: s.l2(torch.flatten(s.l1(s.l0(x)), 1)), nn.Conv2d(3, 4, 8), nn.Conv2d(4, 4, 1, groups=2),
          nn.Linear(4, 2)), r"groups=2"),
    (_net(lambda s, x: s.l2(torch.flatten(s.l1(s.l0(x) + s.l0(x)), 1)), nn.Conv2d(3, 4, 8), nn.BatchNorm2d(4),
          nn.Linear(4, 2)), r"module 'l1' \(BatchNorm2d\): BatchNorm2d is supported only right after a Conv2d"),
    (_net(lambda s, x: s.l1(torch.flatten(s.l0(x), 1) + 1), nn.Conv2d(3, 4, 8), nn.Linear(4, 2)),
     r"function operator.add is not supported"),
    (_net(lambda s, x: s.l1(s.l0(x)), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)),
     r"module 'l1' \(Linear\): applied to a 4x8x8 feature map"),
])
def test_unsupported_is_named(net, message):
    with pytest.raises(ValueError, match=message):
        torch_frontend.load(net, calibration=_calib(), input_shape=(8, 8, 3))


def test_standalone_relu_is_refused():
    net = _net(lambda s, x: s.l1(torch.flatten(F.relu(s.l0(x).mean((2, 3), keepdim=True)), 1)),
               nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"function torch.*relu: ReLU/ReLU6 is supported only right after"):
        torch_frontend.load(net, calibration=_calib(), input_shape=(8, 8, 3))


def test_calibration_is_required_and_checked():
    net = _net(lambda s, x: s.l1(torch.flatten(s.l0(x), 1)), nn.Conv2d(3, 4, 8), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="calibration images"):
        torch_frontend.load(net, calibration=None, input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match=r"\(16, 16, 3\); the model's input is \(8, 8, 3\)"):
        torch_frontend.load(net, calibration=_calib(shape=(16, 16, 3)), input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="uint8"):
        torch_frontend.load(net, calibration=_calib().astype(np.float32), input_shape=(8, 8, 3))
    with pytest.raises(TypeError):
        torch_frontend.load(lambda x: x, calibration=_calib())
    g = torch_frontend.load(net, calibration=list(_calib()))
    assert g.tensors[g.input].shape == (8, 8, 3)
