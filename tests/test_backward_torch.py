"""Backward kernels against PyTorch autograd on the dequantized graph (float64).

The float graph computes each layer from the dequantized int8 input and weights, then takes the
dequantized int8 output as its value (straight-through rounding) and applies torch's hardtanh with
the real bounds of [act_min, act_max]: the gradient passes iff act_min < y < act_max, as the clamp
masks of the int pipeline say. Values are therefore identical in both graphs and the gradients differ
only by the int8 quantization of the gradient tensors. Every gradient is compared by cosine
similarity (>= 0.99) and by relative error ||ours - ref|| / ||ref||, bounded by what was measured
(docs/kernels.md) with a margin."""
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinybridge import kernels as K
from tinybridge import quant

F64 = torch.float64
ACTS = [None, "relu", "relu6"]
# Relative-error bounds: the maximum measured over many more random cases than run here, times
# about 1.5 (docs/kernels.md, "Gradients: accuracy").
REL_INPUT = 0.055      # one layer's input gradient, two int8 roundings (h, gx): measured <= 0.036
REL_CHAIN = 0.10       # first layer of a 7-op chain, int8 gradients all the way: measured <= 0.068
REL_LOSS_GRAD = 0.05   # d loss / d logit as int8, 2..39 classes: measured <= 0.035
REL_EXACT = 1e-9       # int32 parameter gradients from an exact upstream gradient: float64 noise


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def rel_err(ours, ref):
    ours, ref = np.ravel(ours).astype(np.float64), np.ravel(ref).astype(np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def check(name, ours, ref, rel_bound, measured):
    """cosine >= 0.99 and relative error <= rel_bound; records the figures in `measured`."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    assert np.linalg.norm(ref) > 0, "%s: the reference gradient is zero; the case tests nothing" % name
    cos, rel = cosine(ours, ref), rel_err(ours, ref)
    measured.setdefault(name, []).append((cos, rel))
    assert cos >= 0.99, "%s: cosine %.5f" % (name, cos)
    assert rel <= rel_bound, "%s: relative error %.5f > %.5f" % (name, rel, rel_bound)


def deq(q, qp):
    scale, zero = qp
    return torch.tensor((q.astype(np.float64) - zero) * scale, dtype=F64)


def rand_grad(rng, shape):
    """An upstream int8 gradient (Laplace-like, as real gradients are peaked) and its exponent."""
    g = np.clip(np.round(rng.laplace(0, 25, shape)), -127, 127).astype(np.int8)
    return g, int(rng.integers(-14, -4))


def ste_clamp(y_f, y, y_q, act_range):
    """Straight-through rounding then torch's hardtanh: the value is the dequantized int8 output y,
    the gradient that of y_f where act_min < y < act_max."""
    scale, zero = y_q
    y_deq = deq(y, y_q)
    y_ste = y_f + (y_deq - y_f).detach()
    return F.hardtanh(y_ste, scale * (act_range[0] - zero), scale * (act_range[1] - zero))


class Layer:
    """One int8 layer (kind "conv", "depthwise", "pointwise" or "fc") with random weights and a
    calibrated quantization, run by the int kernels (forward and backward) and by torch."""

    def __init__(self, rng, kind, x, x_q, co=None, k=1, stride=1, padding="same", act=None, target=3.0):
        self.kind, self.k, self.stride, self.padding, self.act, self.x_q = kind, k, stride, padding, act, x_q
        ci = x.shape[-1]
        self.co = co = ci if kind == "depthwise" else co
        wshape = {"conv": (co, k, k, ci), "depthwise": (k, k, ci), "pointwise": (co, ci), "fc": (co, ci)}[kind]
        self.w = rng.integers(-127, 128, wshape, dtype=np.int8)
        if x.ndim == 3:
            h, wd = x.shape[:2]
            oh, pt = quant.same_padding(h, k, stride) if padding == "same" else quant.valid_padding(h, k, stride)
            ow, pl = quant.same_padding(wd, k, stride) if padding == "same" else quant.valid_padding(wd, k, stride)
            self.pads = (pt, max(0, (oh - 1) * stride + k - h - pt), pl, max(0, (ow - 1) * stride + k - wd - pl))
        # weight scales: pre-activations spread ~ target, per-channel scales within a factor 4 of
        # each other (as a calibrated model's); bias ~ N(0, 0.5) in real terms
        acc = self.conv(torch.tensor(x.astype(np.float64) - x_q[1]), torch.tensor(self.w, dtype=F64)).numpy()
        std = np.sqrt(np.mean(acc.astype(np.float64) ** 2)) + 1.0
        self.w_scales = (target * rng.uniform(0.5, 2.0, co) / (x_q[0] * std)).astype(np.float32)
        bias_scale = np.float32(x_q[0]) * self.w_scales.astype(np.float64)
        self.bias = np.round(rng.normal(0, 0.5, co) / bias_scale).astype(np.int32)
        pre = (acc + self.bias) * bias_scale
        u = rng.uniform(0.75, 0.95)  # a few outputs saturate at the int8 range
        if act == "relu6":
            y_q = (6.0 / 255, -128)
        elif act == "relu":
            y_q = (max(pre.max(), 1e-3) * u / 255, -128)
        else:
            lo, hi = min(pre.min(), -1e-3), max(pre.max(), 1e-3)
            s = (hi - lo) * u / 255
            y_q = (s, int(np.clip(np.round(-128 - lo * u / s), -128, 127)))
        self.y_q = (float(np.float32(y_q[0])), y_q[1])
        self.mult, self.shift = quant.conv_multipliers(x_q[0], self.w_scales, self.y_q[0])
        self.act_range = quant.activation_range(act, *self.y_q)
        self.ws_mult, self.ws_shift = quant.scale_multipliers(self.w_scales)

    # ---- torch (float64) ----
    def conv(self, x, w):
        """Our layouts in and out: x (H, W, Ci) or (Ci,), w as stored."""
        if self.kind == "fc":
            return w @ x
        xt = F.pad(x.permute(2, 0, 1)[None], (self.pads[2], self.pads[3], self.pads[0], self.pads[1]))
        if self.kind == "depthwise":
            y = F.conv2d(xt, w.permute(2, 0, 1)[:, None], stride=self.stride, groups=w.shape[2])
        elif self.kind == "conv":
            y = F.conv2d(xt, w.permute(0, 3, 1, 2), stride=self.stride)
        else:
            y = F.conv2d(xt, w[:, :, None, None])
        return y[0].permute(1, 2, 0)

    def params_torch(self):
        """Leaves: the dequantized weight and bias."""
        ws = torch.tensor(self.w_scales.astype(np.float64))
        per_out = ws if self.kind == "depthwise" else ws.reshape((-1,) + (1,) * (self.w.ndim - 1))
        w = torch.tensor(self.w, dtype=F64) * per_out
        b = torch.tensor(self.bias, dtype=F64) * float(np.float32(self.x_q[0])) * ws
        return w.detach().requires_grad_(), b.detach().requires_grad_()

    def forward_torch(self, x_real, y, w, b):
        return ste_clamp(self.conv(x_real, w) + b, y, self.y_q, self.act_range)

    # ---- int kernels ----
    def forward(self, x):
        a = dict(input_offset=-self.x_q[1], output_offset=self.y_q[1], act_min=self.act_range[0],
                 act_max=self.act_range[1])
        if self.kind == "conv":
            return K.conv2d(x, self.w, self.bias, self.mult, self.shift, stride=self.stride, padding=self.padding, **a)
        if self.kind == "depthwise":
            return K.depthwise_conv2d(x, self.w, self.bias, self.mult, self.shift, stride=self.stride,
                                      padding=self.padding, **a)
        if self.kind == "pointwise":
            return K.pointwise_conv(x, self.w, self.bias, self.mult, self.shift, **a)
        return K.fully_connected(x, self.w, self.bias, self.mult, self.shift, **a)

    def backward(self, x, y, g, g_exp, sel=None, c_range=None, in_range=None):
        """Mask, parameter gradients (sel, c_range) and the input gradient: dict(x=(gx, exp),
        gw=real array, gb=real array, acc=int32 input sums, h=(h, exp)). in_range: the clamp range
        of the layer that produced x; its mask goes on the int32 sums, before requantization."""
        g = K.apply_mask(g, K.clamp_mask(y, *self.act_range))
        out = {"gb": K.bias_grad(g) * 2.0 ** g_exp}
        off = -self.x_q[1]
        if self.kind == "conv":
            gw = K.conv2d_weight_grad(x, g, kernel=self.k, stride=self.stride, padding=self.padding,
                                      input_offset=off, sel=sel, c_range=c_range)
        elif self.kind == "depthwise":
            gw = K.depthwise_weight_grad(x, g, kernel=self.k, stride=self.stride, padding=self.padding,
                                         input_offset=off, sel=sel)
        else:
            gw = K.pointwise_weight_grad(x, g, input_offset=off, sel=sel, c_range=c_range)
        out["gw"] = gw * 2.0 ** g_exp * float(np.float32(self.x_q[0]))
        h, h_exp = K.grad_scale_channels(g, g_exp, self.ws_mult, self.ws_shift)
        if self.kind == "conv":
            acc = K.conv2d_input_grad(h, self.w, in_hw=x.shape[:2], stride=self.stride, padding=self.padding)
        elif self.kind == "depthwise":
            acc = K.depthwise_input_grad(h, self.w, in_hw=x.shape[:2], stride=self.stride, padding=self.padding)
        else:
            acc = K.pointwise_input_grad(h, self.w)
        out.update(acc=acc, h=(h, h_exp))
        if in_range is not None:
            acc = K.apply_mask(acc, K.clamp_mask(x, *in_range))
        out["x"] = K.grad_requantize(acc, h_exp)
        return out

    def ref_weight_grad(self, w_grad, sel, c_range):
        """torch's weight gradient restricted like ours: sel input channels, c_range outputs."""
        wg = w_grad.detach().numpy()
        if self.kind == "depthwise":
            return wg[:, :, sel]
        return wg[c_range[0]:c_range[1]][..., sel]


def rand_sel(rng, n):
    return np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False)).astype(np.int32)


def rand_x(rng, shape):
    x_q = (float(np.float32(rng.uniform(0.01, 0.1))), int(rng.integers(-40, 40)))
    return rng.integers(-128, 128, shape, dtype=np.int8), x_q


def run_layer_case(rng, kind, measured, **kw):
    """One layer, a random upstream gradient, every gradient compared with autograd."""
    if kind == "fc":
        x, x_q = rand_x(rng, (int(rng.integers(8, 120)),))
    else:
        h = int(rng.integers(kw.get("k", 1), 12))
        x, x_q = rand_x(rng, (h, int(rng.integers(kw.get("k", 1), 12)), int(rng.integers(3, 24))))
    co = int(rng.integers(4, 40))
    layer = Layer(rng, kind, x, x_q, co=co, act=ACTS[int(rng.integers(0, 3))], **kw)
    y = layer.forward(x)
    g, g_exp = rand_grad(rng, y.shape)
    ci = x.shape[-1]
    sel = rand_sel(rng, ci)
    # a chunk of output channels starting at one the clamp lets through (else it tests nothing)
    passing = ((y > layer.act_range[0]) & (y < layer.act_range[1])).reshape(-1, layer.co).any(0)
    c0 = int(rng.choice(np.flatnonzero(passing)))
    c_range = None if kind == "depthwise" else (c0, int(rng.integers(c0 + 1, layer.co + 1)))
    ours = layer.backward(x, y, g, g_exp, sel=sel, c_range=c_range)

    x_real = deq(x, x_q).requires_grad_()
    w, b = layer.params_torch()
    loss = (layer.forward_torch(x_real, y, w, b) * torch.tensor(g * 2.0 ** g_exp)).sum()
    loss.backward()
    gx, gx_exp = ours["x"]
    check(kind + " input", gx * 2.0 ** gx_exp, x_real.grad, REL_INPUT, measured)
    cr = c_range or (0, layer.co)
    check(kind + " weight", ours["gw"], layer.ref_weight_grad(w.grad, sel, cr), REL_EXACT, measured)
    check(kind + " bias", ours["gb"], b.grad, REL_EXACT, measured)

    # the int32 input sums are exactly autograd's on the integer graph sum(h * conv(x, w))
    x_int = torch.zeros(x.shape, dtype=F64, requires_grad=True)
    h, _ = ours["h"]
    (layer.conv(x_int, torch.tensor(layer.w, dtype=F64)) * torch.tensor(h, dtype=F64)).sum().backward()
    np.testing.assert_array_equal(ours["acc"], x_int.grad.numpy())


MEASURED = {}


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_conv2d_backward(seed, stride, padding):
    rng = np.random.default_rng(10_000 + 10 * seed + stride + (5 if padding == "same" else 0))
    run_layer_case(rng, "conv", MEASURED, k=3, stride=stride, padding=padding)


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("seed", range(2))
def test_depthwise_backward(seed, stride, kernel):
    rng = np.random.default_rng(20_000 + 100 * kernel + 10 * stride + seed)
    run_layer_case(rng, "depthwise", MEASURED, k=kernel, stride=stride, padding=["same", "valid"][seed % 2])


@pytest.mark.parametrize("seed", range(6))
def test_pointwise_backward(seed):
    run_layer_case(np.random.default_rng(30_000 + seed), "pointwise", MEASURED)


@pytest.mark.parametrize("seed", range(6))
def test_fully_connected_backward(seed):
    run_layer_case(np.random.default_rng(40_000 + seed), "fc", MEASURED)


@pytest.mark.parametrize("seed", range(6))
def test_avgpool_global_backward(seed):
    rng = np.random.default_rng(50_000 + seed)
    h, w, c = int(rng.integers(1, 13)), int(rng.integers(1, 13)), int(rng.integers(3, 17))
    x_q = (float(np.float32(rng.uniform(0.01, 0.1))), int(rng.integers(-40, 40)))
    # channels centred around the zero point: some pooled values clamp at a ReLU, most pass
    centre = x_q[1] + rng.uniform(-10, 50, c)
    x = np.clip(np.round(centre + rng.normal(0, 30, (h, w, c))), -128, 127).astype(np.int8)
    act_range = quant.activation_range(ACTS[seed % 3], *x_q)
    y = K.avgpool_global(x, act_min=act_range[0], act_max=act_range[1])
    g, g_exp = rand_grad(rng, y.shape)
    gm = K.apply_mask(g, K.clamp_mask(y, *act_range))
    gx, gx_exp = K.avgpool_global_input_grad(gm, g_exp, x.shape[:2])

    x_real = deq(x, x_q).requires_grad_()
    y_t = ste_clamp(x_real.mean(dim=(0, 1)), y, x_q, act_range)
    (y_t * torch.tensor(g * 2.0 ** g_exp)).sum().backward()
    check("avgpool input", gx * 2.0 ** gx_exp, x_real.grad, REL_INPUT, MEASURED)


@pytest.mark.parametrize("seed", range(6))
def test_residual_add_backward(seed):
    """y = add(x, pointwise(x)): the gradient reaches x twice and is summed by grad_add."""
    rng = np.random.default_rng(60_000 + seed)
    x, x_q = rand_x(rng, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), int(rng.integers(4, 24))))
    branch = Layer(rng, "pointwise", x, x_q, co=x.shape[2], act=[None, "relu6"][seed % 2], target=1.0)
    b = branch.forward(x)
    y_q = (float(np.float32(rng.uniform(0.02, 0.12))), int(rng.integers(-30, 30)))
    act_range = quant.activation_range(ACTS[seed % 3], *y_q)
    (ma, sa), (mb, sb), (my, sy) = quant.add_multipliers(x_q[0], branch.y_q[0], y_q[0])
    params = K.add_params(-x_q[1], ma, sa, -branch.y_q[1], mb, sb, 20, y_q[1], my, sy, *act_range)
    y = K.add(x, b, params)
    g, g_exp = rand_grad(rng, y.shape)
    gm = K.apply_mask(g, K.clamp_mask(y, *act_range))
    gxb, gxb_exp = branch.backward(x, b, gm, g_exp)["x"]
    gx, gx_exp = K.grad_add(gm, g_exp, gxb, gxb_exp)

    x_real = deq(x, x_q).requires_grad_()
    w, bias = branch.params_torch()
    y_t = ste_clamp(x_real + branch.forward_torch(x_real, b, w, bias), y, y_q, act_range)
    (y_t * torch.tensor(g * 2.0 ** g_exp)).sum().backward()
    check("residual input", gx * 2.0 ** gx_exp, x_real.grad, REL_INPUT, MEASURED)


@pytest.mark.parametrize("seed", range(8))
def test_softmax_cross_entropy(seed):
    rng = np.random.default_rng(70_000 + seed)
    n = int(rng.integers(2, 40))
    logits = rng.integers(-128, 128, n, dtype=np.int8)
    scale, zero = float(np.float32(rng.uniform(0.01, 0.3))), int(rng.integers(-50, 50))
    label = int(rng.integers(0, n))
    loss, (grad, grad_exp) = K.softmax_cross_entropy(logits, label, scale=scale, zero_point=zero)

    z = deq(logits, (scale, zero)).requires_grad_()
    ref = F.cross_entropy(z[None], torch.tensor([label]))
    ref.backward()
    assert abs(loss - ref.item()) <= 2e-6 * max(1.0, ref.item())
    check("softmax-CE logits", grad * 2.0 ** grad_exp, z.grad, REL_LOSS_GRAD, MEASURED)


def chain_case(seed, dw_stride):
    """conv 3x3 s2 (ReLU6) -> pointwise expand (ReLU6) -> depthwise 3x3 (ReLU6) -> pointwise project
    [-> residual add when stride 1] -> global average pool -> fully connected -> softmax CE."""
    rng = np.random.default_rng(80_000 + 10 * seed + dw_stride)
    x, x_q = rand_x(rng, (16, 16, 3))
    c1, ce = int(rng.integers(6, 12)), int(rng.integers(16, 32))
    conv = Layer(rng, "conv", x, x_q, co=c1, k=3, stride=2, act="relu6")
    a1 = conv.forward(x)
    expand = Layer(rng, "pointwise", a1, conv.y_q, co=ce, act="relu6")
    a2 = expand.forward(a1)
    dw = Layer(rng, "depthwise", a2, expand.y_q, k=3, stride=dw_stride, act="relu6")
    a3 = dw.forward(a2)
    project = Layer(rng, "pointwise", a3, dw.y_q, co=c1, target=1.5)
    a4 = project.forward(a3)
    if dw_stride == 1:
        s_q = (float(np.float32(rng.uniform(0.03, 0.08))), int(rng.integers(-20, 20)))
        (ma, sa), (mb, sb), (my, sy) = quant.add_multipliers(conv.y_q[0], project.y_q[0], s_q[0])
        params = K.add_params(-conv.y_q[1], ma, sa, -project.y_q[1], mb, sb, 20, s_q[1], my, sy)
        a5 = K.add(a1, a4, params)
    else:
        s_q, a5 = project.y_q, a4
    pooled = K.avgpool_global(a5)
    fc = Layer(rng, "fc", pooled, s_q, co=int(rng.integers(2, 11)), target=2.0)
    logits = fc.forward(pooled)
    label = int(rng.integers(0, fc.co))
    sel = rand_sel(rng, 3)

    # int backward: each clamp mask is applied where the gradient is still int32 (or, for the
    # loss, inside the kernel), so that every requantization sees only surviving values
    _, (g, e) = K.softmax_cross_entropy(logits, label, scale=fc.y_q[0], zero_point=fc.y_q[1],
                                        mask=K.clamp_mask(logits, *fc.act_range))
    g, e = fc.backward(pooled, logits, g, e, in_range=(-128, 127))["x"]
    g, e = K.avgpool_global_input_grad(g, e, a5.shape[:2])
    if dw_stride == 1:
        g = K.apply_mask(g, K.clamp_mask(a5, -128, 127))
        g_skip, e_skip = g, e
    g, e = project.backward(a3, a4, g, e, in_range=dw.act_range)["x"]
    g, e = dw.backward(a2, a3, g, e, in_range=expand.act_range)["x"]
    g, e = expand.backward(a1, a2, g, e, in_range=conv.act_range)["x"]
    if dw_stride == 1:
        g, e = K.grad_add(g, e, g_skip, e_skip)
    ours = conv.backward(x, a1, g, e, sel=sel)

    # torch
    x_real = deq(x, x_q).requires_grad_()
    w1, b1 = conv.params_torch()
    t = conv.forward_torch(x_real, a1, w1, b1)
    t1 = t
    for layer, y in ((expand, a2), (dw, a3), (project, a4)):
        t = layer.forward_torch(t, y, *layer.params_torch())
    if dw_stride == 1:
        t = ste_clamp(t1 + t, a5, s_q, (-128, 127))
    t = ste_clamp(t.mean(dim=(0, 1)), pooled, s_q, (-128, 127))
    t = fc.forward_torch(t, logits, *fc.params_torch())
    F.cross_entropy(t[None], torch.tensor([label])).backward()
    return ours, conv, x_real, w1, b1, sel


@pytest.mark.parametrize("dw_stride", [1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_chain_inverted_residual(seed, dw_stride):
    ours, conv, x_real, w1, b1, sel = chain_case(seed, dw_stride)
    gx, gx_exp = ours["x"]
    check("chain first-layer input", gx * 2.0 ** gx_exp, x_real.grad, REL_CHAIN, MEASURED)
    check("chain first-layer weight", ours["gw"], conv.ref_weight_grad(w1.grad, sel, (0, conv.co)),
          REL_CHAIN, MEASURED)
    check("chain first-layer bias", ours["gb"], b1.grad, REL_CHAIN, MEASURED)


def test_report_measured_figures(capsys):
    """Prints min cosine and max relative error per gradient (pytest -s); docs/kernels.md quotes them."""
    with capsys.disabled():
        for name, figures in sorted(MEASURED.items()):
            cos, rel = zip(*figures)
            print("\n%-28s n=%2d  min cosine %.5f  max rel err %.5f" % (name, len(cos), min(cos), max(rel)),
                  end="")
        print()


# ---------------- the gradient representation, against exact integer references ----------------

def ref_round_s8(v, shift):
    """v * 2^-shift rounded half away from zero, saturated to +-127 (exact, Python ints)."""
    if shift <= 0:
        m = abs(v) << -shift
    else:
        m = (abs(v) + (1 << (shift - 1))) >> shift
    return int(np.sign(v)) * min(m, 127)


def ref_requantize(acc, acc_exp):
    m = max(abs(int(v)) for v in acc.ravel())
    shift = m.bit_length() - 7 if m else 0
    return np.array([ref_round_s8(int(v), shift) for v in acc.ravel()]).reshape(acc.shape), acc_exp + shift


@pytest.mark.parametrize("seed", range(8))
def test_requantize_rule(seed):
    rng = np.random.default_rng(90_000 + seed)
    bits = int(rng.integers(0, 32))
    acc = rng.integers(-(1 << bits), (1 << bits), int(rng.integers(1, 300)), dtype=np.int64)
    acc = np.clip(acc, -(1 << 31), (1 << 31) - 1).astype(np.int32)
    if seed == 0:
        acc[:4] = [-(1 << 31), (1 << 31) - 1, 0, 1]
    if seed == 1:
        acc[:] = 0
    if seed == 2:  # ties at the rounding step: +-(k + 1/2) after a shift of 4
        acc = np.array([127 * 16 + 15, 8, -8, 24, -24, 40], np.int32)
    out, e = K.grad_requantize(acc, -11)
    want, want_e = ref_requantize(acc, -11)
    np.testing.assert_array_equal(out, want)
    assert e == want_e
    assert np.abs(out).max(initial=0) <= 127


@pytest.mark.parametrize("bits", [7, 8, 9, 10, 20, 31, 32])
def test_requantize_rule_at_every_size(bits):
    """Largest magnitudes of every bit length around the DSP path's limits (shift 0-2, 24, and
    INT32_MIN), ties, values that round to +-128, sizes around its blocks of eight and four; in
    place and into a buffer at every alignment."""
    from tinybridge.kernels import _checks as C
    rng = np.random.default_rng(97_000 + bits)
    for n in [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 1001]:
        top = 1 << (bits - 1)
        acc = rng.integers(-top, top, n, dtype=np.int64)
        s = max(bits - 7, 1)
        extremes = [-top, top - 1, (127 << s) + (1 << (s - 1)), -(127 << s) - (1 << (s - 1)),
                    (3 << (s - 1)), -(3 << (s - 1)), (5 << (s - 1)) - 1, 0]
        acc[:min(n, 8)] = np.array(extremes)[:min(n, 8)].clip(-top, top - 1)
        rng.shuffle(acc)
        acc = acc.astype(np.int32)
        want, want_e = ref_requantize(acc, -4)
        buf = acc.copy()
        e = C.lib.tb_grad_requantize_s32_s8(C.ptr("int32_t", buf), n, -4, C.ptr("int8_t", buf.view(np.int8)))
        assert e == want_e
        np.testing.assert_array_equal(buf.view(np.int8)[:n], want)
        for offset in range(4):
            out = unaligned(np.zeros(n, np.int8), offset)
            assert C.lib.tb_grad_requantize_s32_s8(C.ptr("int32_t", acc), n, -4, C.ptr("int8_t", out)) == want_e
            np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("seed", range(8))
def test_grad_add_exact(seed):
    rng = np.random.default_rng(91_000 + seed)
    n = int(rng.integers(1, 200))
    a = rng.integers(-127, 128, n, dtype=np.int8)
    b = rng.integers(-127, 128, n, dtype=np.int8)
    ea, eb = int(rng.integers(-30, 0)), int(rng.integers(-30, 0))
    if seed == 0:
        a[:] = 0  # an all-zero branch: its exponent must not matter
    if seed >= 6:
        ea, eb = -2, -2 - 20 - 4 * seed  # far apart: the smaller addend is pre-rounded
    out, e = K.grad_add(a, ea, b, eb)
    lo = min(ea, eb)
    exact = [(int(u) << (ea - lo)) + (int(v) << (eb - lo)) for u, v in zip(a, b)]
    if seed == 0:
        exact, lo = [int(v) for v in b], eb
    want, want_e = ref_requantize(np.array(exact, dtype=object), lo)
    if abs(ea - eb) <= 23:
        np.testing.assert_array_equal(out, want)
        assert e == want_e
    else:  # within one output step of the exact sum
        ours = [Fraction(int(v)) * Fraction(2) ** e for v in out]
        ref = [Fraction(v) * Fraction(2) ** lo for v in exact]
        assert max(abs(u - v) for u, v in zip(ours, ref)) <= Fraction(2) ** max(e, want_e)


@pytest.mark.parametrize("diff", [0, 1, 14, 15, 23])
def test_grad_add_at_every_size(diff):
    """Exponents 0-23 apart (the DSP path takes up to 14), sums whose largest magnitude calls for
    shifts 0, 1 and more, ties, a zero addend, sizes around its four a loop; into either addend
    and into a buffer at every alignment."""
    from tinybridge.kernels import _checks as C
    rng = np.random.default_rng(99_000 + diff)
    for n in [1, 3, 4, 5, 8, 9, 1001]:
        for top in [3, 60, 127]:
            a = rng.integers(-top, top + 1, n, dtype=np.int8)
            b = rng.integers(-top, top + 1, n, dtype=np.int8)
            a[:min(n, 4)] = np.array([top, -top, -128 if top == 127 else top, 1])[:min(n, 4)]
            ea, eb = -9, -9 - diff
            if top == 3 and n in (5, 9):
                b[:] = 0
            if top == 3 and n == 5:
                a[:] = 0   # both zero: the exponent of the kernel's second addend (a below)
            exact = [(int(u) << (ea - eb)) + int(v) for u, v in zip(a, b)]
            if not b.any():
                exact, eb = [int(u) for u in a], ea
            want, want_e = ref_requantize(np.array(exact, dtype=object), min(ea, eb))
            for k, dst in enumerate([a, b] + [unaligned(np.zeros(n, np.int8), o) for o in range(4)]):
                x, y = a.copy(), b.copy()
                out = (x, y)[k] if k < 2 else dst
                e = C.lib.tb_grad_add_s8(C.ptr("int8_t", y), eb, C.ptr("int8_t", x), ea, n, C.ptr("int8_t", out))
                assert e == want_e
                np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("seed", range(6))
def test_grad_scale_channels_exact(seed):
    """Exactly the bitlen rule applied to g * m16 * 2^shift (m16: the multiplier to 16 bits)."""
    rng = np.random.default_rng(92_000 + seed)
    n_pos, c = int(rng.integers(1, 30)), int(rng.integers(1, 20))
    g = rng.integers(-127, 128, (n_pos, c), dtype=np.int8)
    scales = rng.uniform(0.0005, 0.05, c).astype(np.float32)
    if seed == 0:
        g[:, 0] = 0
    mult, shift = quant.scale_multipliers(scales)
    h, e = K.grad_scale_channels(g, -9, mult, shift)
    m16 = (mult.astype(np.int64) + (1 << 15)) >> 16
    s_min = int(shift.min())
    exact = np.array([[int(g[p, k]) * int(m16[k]) << (int(shift[k]) - s_min) for k in range(c)]
                      for p in range(n_pos)])
    want, want_e = ref_requantize(exact, -9 + s_min - 15)
    np.testing.assert_array_equal(h, want)
    assert e == want_e
    real = g * 2.0 ** -9 * scales
    assert cosine(h * 2.0 ** e, real) > 0.999


def ref_scale_channels(g, g_exp, mult, shift):
    """tb_grad_scale_channels_s8's rule written out for any multiplier: each channel rounded at
    2^r, r = clamp(top - 7 - shift, 0, 31), top the largest bitlen(max |g| * m16) + shift."""
    m16 = [(int(m) % (1 << 32) + (1 << 15)) >> 16 for m in mult]
    tops = [(int(np.abs(g[:, k].astype(np.int64)).max()) * m16[k]).bit_length() + int(shift[k])
            for k in range(g.shape[1]) if np.abs(g[:, k].astype(np.int64)).max() * m16[k]]
    if not tops:
        return np.zeros_like(g), g_exp
    top = max(tops)
    h = [[ref_round_s8(int(g[p, k]) * m16[k], min(max(top - 7 - int(shift[k]), 0), 31))
          for k in range(g.shape[1])] for p in range(g.shape[0])]
    return np.array(h, np.int8), g_exp + top - 22


# (n_pos, c, multipliers): channel counts around the DSP path's groups of four, odd position
# counts, m16 = 2^15, zero and unnormalized multipliers (a group rounding at r < 2 takes the plain
# path), scales 2^20 apart (r = 31 beside r = 8)
SCALE_CASES = [
    (1, 1, [1 << 30]), (3, 4, [(1 << 31) - 1] * 4), (16, 5, [1 << 30, 0, 1 << 30, 1 << 30, 1 << 30]),
    (17, 8, [1 << 20] + [1 << 30] * 7), (64, 9, [(1 << 31) - (1 << 14)] * 9), (2, 12, [1 << 30] * 12),
    (5, 4, [1 << 17] * 4), (5, 4, [1 << 16] * 4),   # one shift, |g| 128: m16 = 2 gives r = 2, m16 = 1 r = 1
]


@pytest.mark.parametrize("case", range(len(SCALE_CASES)))
def test_grad_scale_channels_edges(case):
    from tinybridge.kernels import _checks as C
    n_pos, c, mult = SCALE_CASES[case]
    rng = np.random.default_rng(98_000 + case)
    mult = np.array(mult, np.int32)
    small = mult.max() < 1 << 30
    shift = np.full(c, -5, np.int32) if small else rng.integers(-12, -3, c).astype(np.int32)
    if c >= 8:
        shift[1] = -25   # its products round at 2^31: to 0 or +-1 beside the others
    for offset in range(4):
        g = rng.integers(-128, 128, (n_pos, c), dtype=np.int8)
        g[0, :] = [-128 if small or k % 2 == 0 else 127 for k in range(c)]
        want, want_e = ref_scale_channels(g, -9, mult, shift)
        g = unaligned(g, offset)   # and in place (h = g)
        e = C.lib.tb_grad_scale_channels_s8(C.ptr("int8_t", g), -9, n_pos, c, C.ptr("int32_t", mult),
                                            C.ptr("int32_t", shift), C.ptr("int8_t", g))
        assert e == want_e
        np.testing.assert_array_equal(g, want)


def test_in_place_requantize_and_add():
    """The device compacts int32 sums into int8 in place and sums a fork into one of its inputs."""
    from tinybridge.kernels import _checks as C
    rng = np.random.default_rng(93_000)
    acc = rng.integers(-(1 << 20), 1 << 20, 257).astype(np.int32)
    want, want_e = K.grad_requantize(acc, -3)
    buf = acc.copy()
    e = C.lib.tb_grad_requantize_s32_s8(C.ptr("int32_t", buf), buf.size, -3, C.ptr("int8_t", buf.view(np.int8)))
    assert e == want_e
    np.testing.assert_array_equal(buf.view(np.int8)[:acc.size], want)
    a = rng.integers(-127, 128, 100).astype(np.int8)
    b = rng.integers(-127, 128, 100).astype(np.int8)
    want, want_e = K.grad_add(a, -9, b, -5)
    e = C.lib.tb_grad_add_s8(C.ptr("int8_t", a), -9, C.ptr("int8_t", b), -5, a.size, C.ptr("int8_t", a))
    assert e == want_e
    np.testing.assert_array_equal(a, want)


def test_masks():
    y = np.array([-128, -127, 0, 5, 6, 127, 126, -128, 3], np.int8)
    mask = K.clamp_mask(y, -128, 6)
    assert mask.tolist() == [0b00001110, 0b1]
    g = np.arange(1, 10, dtype=np.int8)
    assert K.apply_mask(g, mask).tolist() == [0, 2, 3, 4, 0, 0, 0, 0, 9]


def unaligned(values, offset):
    """values copied to `offset` bytes past an 8-byte aligned address (the DSP paths load words)."""
    raw = np.zeros(values.nbytes + 16, np.uint8)
    start = (-raw.ctypes.data) % 8 + offset
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


# (act_min, act_max): full int8, ReLU6 and ReLU like, the narrowest ranges that pass anything
# (act_max - act_min = 2) at both ends, and ranges that pass nothing
MASK_RANGES = [(-128, 127), (-128, 6), (0, 127), (-100, 100), (-128, -126), (125, 127), (-5, -3),
               (10, 11), (7, 7)]


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 1003])
def test_clamp_mask_matches_definition(n):
    rng = np.random.default_rng(94_000 + n)
    for i, (lo, hi) in enumerate(MASK_RANGES):
        y = unaligned(rng.integers(-128, 128, n, dtype=np.int8), i % 4)
        y[:min(n, 8)] = np.array([lo, hi, lo + 1, hi - 1, -128, 127, 0, lo], np.int8)[:min(n, 8)]
        want = np.packbits((y > lo) & (y < hi), bitorder="little")
        np.testing.assert_array_equal(K.clamp_mask(y, lo, hi), want, err_msg=str((lo, hi)))


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 1003])
def test_apply_mask_matches_definition(n):
    from tinybridge.kernels import _checks as C
    rng = np.random.default_rng(95_000 + n)
    mask = rng.integers(0, 256, (n + 7) // 8, dtype=np.uint8)
    mask[0] = 0b10110001
    keep = np.unpackbits(mask, bitorder="little")[:n].astype(bool)
    for offset in range(4):   # in place at every alignment (the binding would copy g)
        g = unaligned(rng.integers(-127, 128, n, dtype=np.int8), offset)
        want = np.where(keep, g, 0)
        C.lib.tb_grad_apply_mask_s8(C.ptr("int8_t", g), C.ptr("uint8_t", mask), n)
        np.testing.assert_array_equal(g, want)
    acc = rng.integers(-(1 << 31), (1 << 31) - 1, n, dtype=np.int64).astype(np.int32)
    np.testing.assert_array_equal(K.apply_mask(acc, mask), np.where(keep, acc, 0))


@pytest.mark.parametrize("n_pos,c", [(1, 1), (1, 8), (2, 3), (127, 4), (128, 5), (129, 8), (300, 7),
                                     (257, 12), (64, 96)])
def test_bias_grad_sums_exactly(n_pos, c):
    """Sizes around the DSP path's groups of four channels and 128-position blocks, extreme values
    and every alignment."""
    from tinybridge.kernels import _checks as C
    rng = np.random.default_rng(96_000 + n_pos * c)
    for offset in range(4):
        g = rng.integers(-128, 128, (n_pos, c), dtype=np.int8)
        g[:, 0] = -128 if offset % 2 else 127
        g = unaligned(g, offset)
        grad_b = np.empty(c, np.int32)
        C.lib.tb_bias_grad_s8(C.ptr("int8_t", g), n_pos, c, C.ptr("int32_t", grad_b))
        np.testing.assert_array_equal(grad_b, g.astype(np.int64).sum(axis=0))


def test_avgpool_rounding_exact():
    """gx = g / count at the exponent putting max |gx| in [64, 128), rounded half away from zero."""
    for count_hw in [(1, 1), (3, 5), (7, 7), (128, 128)]:
        g = np.array([127, -127, 1, -3, 0, 64], np.int8)
        gx, e = K.avgpool_global_input_grad(g, -6, count_hw)
        count = count_hw[0] * count_hw[1]
        vals = [Fraction(int(v), count) * Fraction(2) ** (-6 - e) for v in g]
        assert 64 <= max(abs(v) for v in vals) < 128
        want = [int(np.sign(v)) * min(127, int(abs(v) + Fraction(1, 2))) for v in vals]
        assert gx[0, 0].tolist() == want and (gx == gx[0, 0]).all()


def test_backward_bad_arguments_are_value_errors():
    x = np.zeros((4, 4, 3), np.int8)
    g = np.zeros((4, 4, 2), np.int8)
    with pytest.raises(ValueError, match="sel"):
        K.pointwise_weight_grad(x, g, input_offset=0, sel=np.array([2, 1], np.int32))
    with pytest.raises(ValueError, match="sel"):
        K.pointwise_weight_grad(x, g, input_offset=0, sel=np.array([3], np.int32))
    with pytest.raises(ValueError, match="shape"):
        K.pointwise_weight_grad(x, np.zeros((4, 3, 2), np.int8), input_offset=0)
    with pytest.raises(ValueError, match="c_end"):
        K.pointwise_weight_grad(x, g, input_offset=0, c_range=(1, 1))
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        K.bias_grad(np.full((2, 2), -128, np.int8))
    with pytest.raises(ValueError, match="dtype int32"):
        K.grad_requantize(np.zeros(4, np.int64), 0)
    with pytest.raises(ValueError, match="shape"):
        K.conv2d_input_grad(np.zeros((2, 2, 2), np.int8), np.zeros((2, 3, 3, 3), np.int8), in_hw=(4, 4), stride=1)
    with pytest.raises(ValueError, match="positions"):
        K.bias_grad(np.zeros((300, 300, 1), np.int8))
    with pytest.raises(ValueError, match="label"):
        K.softmax_cross_entropy(np.zeros(4, np.int8), 4, scale=0.1, zero_point=0)
    with pytest.raises(ValueError, match="scale"):
        K.softmax_cross_entropy(np.zeros(4, np.int8), 0, scale=0.0, zero_point=0)
    with pytest.raises(ValueError, match="mult"):
        K.grad_scale_channels(g, 0, np.full(2, 5, np.int32), np.zeros(2, np.int32))


# ---------------- the kernels' DSP paths: shapes that reach every block of them ----------------
# The int32 sums against numpy on the host; tests/test_target_qemu.py replays these calls on the
# Cortex-M7, where the DSP paths run (reduction blocks over 48 terms, column blocks over 32, one
# position, bands of depthwise rows, channels past the last group of four, trained channels in and
# out of runs of four).

def np_geometry(hw, k, stride, padding):
    if padding == "same":
        out = [-(-n // stride) for n in hw]
        pads = [max(0, (o - 1) * stride + k - n) // 2 for o, n in zip(out, hw)]
    else:
        out = [(n - k) // stride + 1 for n in hw]
        pads = [0, 0]
    return out, pads


def np_windows(x, k, stride, padding, offset=0):
    """(out_h, out_w, k, k, C) int64 windows of x + offset, padding 0."""
    h, w, c = x.shape
    (oh, ow), (pt, pl) = np_geometry((h, w), k, stride, padding)
    xp = np.zeros((h + 2 * k, w + 2 * k, c), np.int64)
    xp[pt:pt + h, pl:pl + w] = x.astype(np.int64) + offset
    win = np.zeros((oh, ow, k, k, c), np.int64)
    for ky in range(k):
        for kx in range(k):
            win[:, :, ky, kx] = xp[ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride]
    return win


def np_input_grad(h, w, in_hw, k, stride, padding, depthwise):
    (oh, ow), (pt, pl) = np_geometry(in_hw, k, stride, padding)
    c = w.shape[-1]
    acc = np.zeros((in_hw[0] + 2 * k, in_hw[1] + 2 * k, c), np.int64)
    for ky in range(k):
        for kx in range(k):
            if depthwise:
                contrib = h.astype(np.int64) * w[ky, kx].astype(np.int64)
            else:
                contrib = h.astype(np.int64) @ w[:, ky, kx, :].astype(np.int64)
            acc[ky:ky + (oh - 1) * stride + 1:stride, kx:kx + (ow - 1) * stride + 1:stride] += contrib
    return acc[pt:pt + in_hw[0], pl:pl + in_hw[1]]


def sel_runs(rng, n):
    """Trained channels: runs of four adjacent ones and strays."""
    keep = rng.random(n) < 0.6
    for i in range(0, n - 3, 7):
        keep[i:i + 4] = True
    return np.flatnonzero(keep).astype(np.int32)


@pytest.mark.parametrize("n_pos,ci,co", [(1, 7, 3), (1, 40, 13), (1, 33, 1700), (2, 37, 50), (3, 70, 100),
                                         (7, 5, 49), (16, 96, 64), (50, 33, 8)])
def test_pointwise_kernels_dsp_shapes(n_pos, ci, co):
    rng = np.random.default_rng(n_pos * 1000 + ci * 10 + co)
    x = rng.integers(-128, 128, (n_pos, 1, ci), dtype=np.int8)
    g = rng.integers(-127, 128, (n_pos, 1, co), dtype=np.int8)
    w = rng.integers(-127, 128, (co, ci), dtype=np.int8)
    for sel, c_range in ((None, None), (sel_runs(rng, ci), (co // 3, co))):
        gw = K.pointwise_weight_grad(x, g, input_offset=-27, sel=sel, c_range=c_range)
        s = np.arange(ci) if sel is None else sel
        cb, ce = c_range or (0, co)
        want = g.reshape(n_pos, co)[:, cb:ce].astype(np.int64).T @ (x.reshape(n_pos, ci)[:, s].astype(np.int64) - 27)
        np.testing.assert_array_equal(gw, want)
    acc = K.pointwise_input_grad(g, w)
    np.testing.assert_array_equal(acc.reshape(n_pos, ci), g.reshape(n_pos, co).astype(np.int64) @ w.astype(np.int64))


@pytest.mark.parametrize("shape,co,stride,padding", [((9, 11, 20), 50, 1, "same"), ((12, 9, 3), 16, 2, "same"),
                                                     ((10, 13, 6), 7, 2, "valid"), ((7, 8, 5), 97, 1, "valid")])
def test_conv2d_kernels_dsp_shapes(shape, co, stride, padding):
    rng = np.random.default_rng(sum(shape) + co)
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    w = rng.integers(-127, 128, (co, 3, 3, shape[2]), dtype=np.int8)
    win = np_windows(x, 3, stride, padding, offset=11)
    g = rng.integers(-127, 128, win.shape[:2] + (co,), dtype=np.int8)
    for sel, c_range in ((None, None), (sel_runs(rng, shape[2]), (1, co - 1))):
        gw = K.conv2d_weight_grad(x, g, kernel=3, stride=stride, padding=padding, input_offset=11, sel=sel,
                                  c_range=c_range)
        s = np.arange(shape[2]) if sel is None else sel
        cb, ce = c_range or (0, co)
        want = np.einsum("yxc,yxabj->cabj", g[..., cb:ce].astype(np.int64), win[..., s])
        np.testing.assert_array_equal(gw, want)
    acc = K.conv2d_input_grad(g, w, in_hw=shape[:2], stride=stride, padding=padding)
    np.testing.assert_array_equal(acc, np_input_grad(g, w, shape[:2], 3, stride, padding, False))


@pytest.mark.parametrize("shape,k,stride,padding", [((40, 30, 6), 3, 1, "same"), ((33, 41, 9), 3, 2, "same"),
                                                    ((24, 20, 8), 5, 1, "valid"), ((30, 26, 5), 7, 2, "same"),
                                                    ((5, 3, 4), 3, 1, "same"), ((9, 9, 12), 7, 1, "same")])
def test_depthwise_kernels_dsp_shapes(shape, k, stride, padding):
    rng = np.random.default_rng(sum(shape) + k)
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    w = rng.integers(-127, 128, (k, k, shape[2]), dtype=np.int8)
    win = np_windows(x, k, stride, padding, offset=-5)
    g = rng.integers(-127, 128, win.shape[:2] + (shape[2],), dtype=np.int8)
    for sel in (None, sel_runs(rng, shape[2])):
        gw = K.depthwise_weight_grad(x, g, kernel=k, stride=stride, padding=padding, input_offset=-5, sel=sel)
        s = np.arange(shape[2]) if sel is None else sel
        want = np.einsum("yxc,yxabc->abc", g[..., s].astype(np.int64), win[..., s])
        np.testing.assert_array_equal(gw, want)
    acc = K.depthwise_input_grad(g, w, in_hw=shape[:2], stride=stride, padding=padding)
    np.testing.assert_array_equal(acc, np_input_grad(g, w, shape[:2], k, stride, padding, True))
