"""QAS-scaled SGD with stochastic rounding (tb_sgd_update_*): bit-exact with a float32 numpy model
of the contract, moves dequantized parameters as float SGD does (autograd on the dequantized graph),
saturates instead of wrapping, keeps sub-LSB updates in expectation, and momentum.

    python3 tests/test_update.py    prints the stochastic-vs-nearest rounding measurement
                                     quoted in docs/kernels.md."""
import numpy as np
import pytest
import torch

from tinybridge import kernels as K

F32 = np.float32
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def xorshift32_draws(state, n):
    """The n xorshift32 outputs after state (Marsaglia's 13, 17, 5), and the final state."""
    out = np.empty(n, np.uint64)
    x = state
    for i in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x
    return out, x


def ref_steps(grad, grad_scale, scale, lr, momentum, velocity, rng, limit, rounding="stochastic"):
    """The integer steps the contract prescribes, element by element in grad's memory order:
    v = momentum * v + grad_scale * grad; step = v * (lr / scale); stochastic (or nearest) rounding.
    float32 throughout. Returns (steps int64, new velocity, new rng state)."""
    d = F32(grad_scale) * grad.astype(F32).ravel()
    if velocity is not None:
        velocity = F32(momentum) * velocity.ravel().astype(F32) + d
        d = velocity
    s = d * (F32(lr) / scale.astype(F32).ravel())
    draws, rng = xorshift32_draws(rng, s.size)
    s = np.clip(s, -limit, limit)
    if rounding == "nearest":
        steps = np.sign(s) * np.floor(np.abs(s) + F32(0.5))
    else:
        u = (draws >> 8).astype(F32) * F32(2.0 ** -24)
        fl = np.floor(s)
        steps = fl + (u < s - fl)
    return steps.astype(np.int64), (None if velocity is None else velocity.reshape(grad.shape)), rng


def ref_update_ohwi(w, grad_w, sel, c_range, grad_scale, param_scale, lr, momentum, velocity, rng,
                    rounding="stochastic"):
    """Numpy model of tb_sgd_update_ohwi_s8 (nearest rounding: what the kernel avoids)."""
    c0, c1 = c_range
    scale = np.broadcast_to(param_scale[c0:c1].reshape((-1,) + (1,) * (grad_w.ndim - 1)), grad_w.shape)
    steps, velocity, rng = ref_steps(grad_w, grad_scale, scale, lr, momentum, velocity, rng, 256, rounding)
    w = w.copy()
    chunk = w[c0:c1][..., sel].astype(np.int64) - steps.reshape(grad_w.shape)
    w[c0:c1, ..., sel] = np.clip(chunk, -127, 127)
    return w, velocity, rng


# ---------------- bit-exact with the float32 model ----------------

@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("seed", range(4))
def test_ohwi_update_matches_float32_model(seed, momentum):
    rng = np.random.default_rng(seed)
    co, ci = int(rng.integers(2, 12)), int(rng.integers(2, 12))
    taps = [(), (3, 3)][seed % 2]
    w = rng.integers(-127, 128, (co,) + taps + (ci,), dtype=np.int8)
    sel = np.sort(rng.choice(ci, int(rng.integers(1, ci + 1)), replace=False)).astype(np.int32)
    c0 = int(rng.integers(0, co))
    c_range = (c0, int(rng.integers(c0 + 1, co + 1)))
    param_scale = rng.uniform(0.001, 0.02, co).astype(F32)
    velocity = rng.normal(0, 1e-3, (c_range[1] - c0,) + taps + (len(sel),)).astype(F32) if momentum else None
    state = int(rng.integers(1, 1 << 32))
    for _ in range(3):
        grad_w = rng.integers(-30000, 30000, (c_range[1] - c0,) + taps + (len(sel),), dtype=np.int32)
        args = dict(grad_scale=2.0 ** -20 * 0.05, param_scale=param_scale, lr=0.3, momentum=momentum)
        got_w, got_v, got_state = K.sgd_update_ohwi(w, grad_w, rng=state, velocity=velocity, sel=sel,
                                                    c_range=c_range, **args)
        want_w, want_v, want_state = ref_update_ohwi(w, grad_w, sel, c_range, F32(args["grad_scale"]),
                                                     param_scale, F32(0.3), momentum, velocity, state)
        np.testing.assert_array_equal(got_w, want_w)
        assert got_state == want_state
        if momentum:
            np.testing.assert_array_equal(got_v, want_v)  # bit for bit: same float32 operations
        w, velocity, state = got_w, got_v, got_state


@pytest.mark.parametrize("seed", range(3))
def test_depthwise_and_bias_updates_match_float32_model(seed):
    rng = np.random.default_rng(100 + seed)
    k, ch = 3, int(rng.integers(2, 20))
    w = rng.integers(-127, 128, (k, k, ch), dtype=np.int8)
    sel = np.sort(rng.choice(ch, int(rng.integers(1, ch + 1)), replace=False)).astype(np.int32)
    param_scale = rng.uniform(0.001, 0.05, ch).astype(F32)
    grad_w = rng.integers(-5000, 5000, (k, k, len(sel)), dtype=np.int32)
    velocity = rng.normal(0, 1e-2, grad_w.shape).astype(F32)
    got_w, got_v, got_state = K.sgd_update_depthwise(w, grad_w, grad_scale=2.0 ** -12, param_scale=param_scale,
                                                     lr=0.05, momentum=0.9, velocity=velocity, sel=sel, rng=7)
    scale = np.broadcast_to(param_scale[sel], grad_w.shape)
    steps, want_v, want_state = ref_steps(grad_w, F32(2.0 ** -12), scale, F32(0.05), F32(0.9), velocity, 7, 256)
    want_w = w.copy()
    want_w[..., sel] = np.clip(w[..., sel].astype(np.int64) - steps.reshape(grad_w.shape), -127, 127)
    np.testing.assert_array_equal(got_w, want_w)
    np.testing.assert_array_equal(got_v, want_v)
    assert got_state == want_state

    b = rng.integers(-50000, 50000, ch, dtype=np.int32)
    grad_b = rng.integers(-3000, 3000, ch, dtype=np.int32)
    b_scale = (param_scale * F32(0.02)).astype(F32)
    got_b, _, got_state = K.sgd_update_bias(b, grad_b, grad_scale=2.0 ** -9, param_scale=b_scale, lr=0.01, rng=99)
    steps, _, want_state = ref_steps(grad_b, F32(2.0 ** -9), b_scale, F32(0.01), 0, None, 99, 2.0 ** 33)
    np.testing.assert_array_equal(got_b, np.clip(b - steps, INT32_MIN, INT32_MAX))
    assert got_state == want_state


# ---------------- QAS moves dequantized parameters as float SGD does ----------------

def pointwise_case(seed):
    """A pointwise layer and a quadratic loss on its dequantized output; returns the int pieces,
    the int32 gradients from our kernels and autograd's gradients of the dequantized parameters."""
    rng = np.random.default_rng(200 + seed)
    hw, ci, co = (4, 5), int(rng.integers(4, 16)), int(rng.integers(2, 10))
    x = rng.integers(-128, 128, hw + (ci,), dtype=np.int8)
    x_q = (float(F32(rng.uniform(0.01, 0.05))), int(rng.integers(-20, 20)))
    w = rng.integers(-20, 21, (co, ci), dtype=np.int8)  # room for steps of up to 100 without saturating
    w_scales = rng.uniform(0.002, 0.01, co).astype(F32)
    b = rng.integers(-2000, 2000, co, dtype=np.int32)
    target = rng.normal(0, 1, hw + (co,))

    x_real = torch.tensor((x.astype(np.float64) - x_q[1]) * x_q[0])
    w_real = torch.tensor(w * w_scales[:, None].astype(np.float64), requires_grad=True)
    b_real = torch.tensor(b * np.float64(F32(x_q[0])) * w_scales.astype(np.float64), requires_grad=True)
    y = x_real @ w_real.T + b_real
    (0.5 * ((y - torch.tensor(target)) ** 2).sum()).backward()

    # the same upstream gradient (y - target) as an int8 gradient, then our kernels
    upstream = (y - torch.tensor(target)).detach().numpy()
    g, g_exp = K.grad_requantize(np.round(upstream * 2.0 ** 20).astype(np.int32), -20)
    ref_w = (torch.tensor(g * 2.0 ** g_exp).reshape(-1, co).T @ x_real.reshape(-1, ci)).numpy()
    ref_b = (g * 2.0 ** g_exp).reshape(-1, co).sum(0)
    grad_w = K.pointwise_weight_grad(x, g, input_offset=-x_q[1])
    grad_b = K.bias_grad(g)
    return dict(x_q=x_q, w=w, w_scales=w_scales, b=b, g_exp=g_exp, grad_w=grad_w, grad_b=grad_b,
                torch_w=w_real.grad.numpy(), torch_b=b_real.grad.numpy(), ref_w=ref_w, ref_b=ref_b)


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("seed", range(4))
def test_qas_step_follows_float_sgd(seed):
    c = pointwise_case(seed)
    # our int32 gradients are the dequantized graph's gradients (int8 upstream gradient aside)
    assert cosine(c["grad_w"] * 2.0 ** c["g_exp"] * c["x_q"][0], c["torch_w"]) > 0.999
    np.testing.assert_allclose(c["grad_w"] * 2.0 ** c["g_exp"] * F32(c["x_q"][0]), c["ref_w"], rtol=1e-6)
    np.testing.assert_allclose(c["grad_b"] * 2.0 ** c["g_exp"], c["ref_b"], rtol=1e-9)

    # a step large enough to move most weights by several int steps: dequantized change = -lr * G
    g_w = c["grad_w"] * 2.0 ** c["g_exp"] * c["x_q"][0]
    lr = float(100 * c["w_scales"].min() / np.abs(g_w).max())  # steps of up to 100 int steps
    w2, _, _ = K.sgd_update_ohwi(c["w"], c["grad_w"], grad_scale=2.0 ** c["g_exp"] * c["x_q"][0],
                                 param_scale=c["w_scales"], lr=lr, rng=1 + seed)
    dw = (w2.astype(np.float64) - c["w"]) * c["w_scales"][:, None]
    assert cosine(dw, -lr * c["torch_w"]) > 0.99
    assert np.linalg.norm(dw + lr * g_w) / np.linalg.norm(lr * g_w) < 0.065  # measured <= 0.043

    b_scale = (F32(c["x_q"][0]) * c["w_scales"]).astype(F32)
    lr_b = float(50 * b_scale.mean() / np.abs(c["ref_b"]).max())
    b2, _, _ = K.sgd_update_bias(c["b"], c["grad_b"], grad_scale=2.0 ** c["g_exp"], param_scale=b_scale,
                                 lr=lr_b, rng=5 + seed)
    db = (b2.astype(np.float64) - c["b"]) * b_scale
    assert cosine(db, -lr_b * c["torch_b"]) > 0.99


@pytest.mark.parametrize("seed", range(2))
def test_qas_step_is_float_sgd_in_expectation(seed):
    """With a sub-LSB learning rate, the mean dequantized change over many independent draws is
    -lr * G (stochastic rounding is unbiased) within its standard error. The draws are copies of
    the layer stacked as extra output channels, 4 calls x 400 copies."""
    c = pointwise_case(10 + seed)
    g_w = c["grad_w"] * 2.0 ** c["g_exp"] * F32(c["x_q"][0])
    lr = float(0.95 * c["w_scales"].min() / np.abs(g_w).max())  # every step below one int step
    copies, calls = 400, 4
    w, grad_w, scale = (np.tile(a, (copies, 1)) for a in (c["w"], c["grad_w"], c["w_scales"][:, None]))
    total, state = np.zeros(c["w"].shape), 12345 + seed
    for _ in range(calls):
        w2, _, state = K.sgd_update_ohwi(w, grad_w, grad_scale=2.0 ** c["g_exp"] * F32(c["x_q"][0]),
                                         param_scale=scale[:, 0].copy(), lr=lr, rng=state)
        total += (w2.astype(np.float64) - w).reshape((copies,) + c["w"].shape).sum(0)
    draws = copies * calls
    mean_steps = total / draws
    want_steps = -lr * g_w / c["w_scales"][:, None]
    assert np.abs(want_steps).max() < 1
    # a Bernoulli(f) step has variance f (1 - f) <= 1/4: 5 standard errors at most
    assert np.abs(mean_steps - want_steps).max() < 5 * 0.5 / np.sqrt(draws)
    assert cosine(mean_steps * c["w_scales"][:, None], -lr * c["torch_w"]) > 0.99


# ---------------- saturation, not wrap-around ----------------

def test_weights_saturate_not_wrap():
    w = np.array([[126, -126, 120, -127, 0, 127]], np.int8)
    scale = np.ones(1, F32)
    # steps of -5, +5, -1e30 (clamped), +huge, float overflow to inf, and 0
    grad_w = np.array([[-5, 5, -(1 << 30), (1 << 30), INT32_MIN, 0]], np.int32)
    for grad_scale, lr in [(1.0, 1.0), (1e30, 1e8)]:
        w2, _, _ = K.sgd_update_ohwi(w, grad_w, grad_scale=grad_scale, param_scale=scale, lr=lr, rng=3)
        assert w2[0, 0] == 127 and w2[0, 1] == -127 and w2[0, 2] == 127 and w2[0, 3] == -127
        assert w2[0, 4] == 127 and w2[0, 5] == 127
    w2, _, _ = K.sgd_update_depthwise(np.array([[[100, -100]]], np.int8), np.array([[[-(1 << 20), 1 << 20]]], np.int32),
                                      grad_scale=1.0, param_scale=np.ones(2, F32), lr=1.0, rng=3)
    assert w2.tolist() == [[[127, -127]]]


def test_bias_saturates_at_the_trained_limit():
    """A trained bias saturates at +-2^30 (TB_TRAINED_BIAS_LIMIT), never wraps, so the forward
    kernels' int32 sums stay safe after any number of steps."""
    lim = K.TRAINED_BIAS_LIMIT
    assert lim == 1 << 30
    b = np.array([lim - 10, -lim + 10, INT32_MAX, INT32_MIN, 0, 5], np.int32)
    grad_b = np.array([-100, 100, -(1 << 30), 1 << 30, -(1 << 30), 0], np.int32)
    scale = np.ones(6, F32)
    b2, _, _ = K.sgd_update_bias(b, grad_b, grad_scale=1.0, param_scale=scale, lr=1.0, rng=11)
    assert b2.tolist() == [lim, -lim, lim, -lim, lim, 5]
    # one step far beyond the int32 range (and beyond float's int64-safe range) saturates
    b3, _, _ = K.sgd_update_bias(b, grad_b, grad_scale=1e20, param_scale=scale, lr=1e10, rng=11)
    assert b3.tolist() == [lim, -lim, lim, -lim, lim, 5]


def test_bias_steps_beyond_int32_are_exact():
    """Integral steps between 2^31 and 2^33 (multiples of 2^8 in float32) subtract exactly: from
    INT32_MAX a step of 2^31 + 2^9 lands at -513, inside the trained range."""
    lim = K.TRAINED_BIAS_LIMIT
    b = np.array([INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN, 0, INT32_MAX], np.int32)
    # grad_scale 4: every step exact in float32 (INT32_MAX is 2^31 in float32: a step of 2^33)
    steps = [2 ** 31 + 2 ** 9, -(2 ** 31) - 2 ** 9, 2 ** 32 - 2 ** 8, -(2 ** 32) + 2 ** 8, 2 ** 31, 2 ** 33]
    grad_b = np.array([s // 4 for s in steps[:5]] + [INT32_MAX], np.int32)
    b2, _, _ = K.sgd_update_bias(b, grad_b, grad_scale=4.0, param_scale=np.ones(6, F32), lr=1.0, rng=5)
    want = np.clip(b.astype(np.int64) - np.array(steps), -lim, lim)
    assert want.tolist() == [-513, 512, -lim, lim, -lim, -lim]
    np.testing.assert_array_equal(b2, want)


# ---------------- sub-LSB updates accumulate ----------------

def test_sub_lsb_updates_accumulate():
    """A constant step of 0.1 int step per update: after 400 updates the weights moved 40 on
    average (nearest rounding would not move them at all)."""
    w = np.full((16, 16), -60, np.int8)
    grad_w = np.full(w.shape, -1000, np.int32)        # step = 1000 * 1e-4 * (1e-3 / 1e-3) = 0.1
    scale = np.full(16, 1e-3, F32)
    state = 2024
    for _ in range(400):
        w, _, state = K.sgd_update_ohwi(w, grad_w, grad_scale=1e-4, param_scale=scale, lr=1e-3, rng=state)
    moved = w.astype(np.float64) + 60
    # each weight: a sum of 400 Bernoulli(0.1) -> mean 40, sd 6; the mean of 256 has sd 0.375
    assert abs(moved.mean() - 40) < 2.0
    assert moved.std() < 10 and moved.min() > 15
    steps, _, _ = ref_steps(grad_w, F32(1e-4), np.full(w.shape, F32(1e-3)), F32(1e-3), 0, None, 1, 256, "nearest")
    assert not steps.any()


# ---------------- momentum ----------------

def test_momentum_velocity_and_mean_step():
    """Constant gradient d: v_n = d (1 - m^n) / (1 - m); the weights follow sum_n v_n * lr / scale
    in expectation."""
    m, n_steps = 0.9, 30
    w0 = np.zeros((8, 32), np.int8)
    grad_w = np.full(w0.shape, 100, np.int32)
    scale = np.full(8, 0.01, F32)
    w, v, state = w0, np.zeros(w0.shape, F32), 77
    for _ in range(n_steps):
        w, v, state = K.sgd_update_ohwi(w, grad_w, grad_scale=1e-4, param_scale=scale, lr=0.05, momentum=m,
                                        velocity=v, rng=state)
    d = 100 * 1e-4
    np.testing.assert_allclose(v, d * (1 - m ** n_steps) / (1 - m), rtol=1e-5)
    want = -sum(d * (1 - m ** k) / (1 - m) for k in range(1, n_steps + 1)) * 0.05 / 0.01
    assert abs(w.astype(np.float64).mean() - want) < 0.5
    # without a velocity buffer the momentum has nothing to act on: plain SGD
    w1, v1, _ = K.sgd_update_ohwi(w0, grad_w, grad_scale=1e-4, param_scale=scale, lr=0.5, momentum=m, rng=5)
    w2, _, _ = K.sgd_update_ohwi(w0, grad_w, grad_scale=1e-4, param_scale=scale, lr=0.5, rng=5)
    assert v1 is None and (w1 == w2).all()


# ---------------- stochastic vs nearest rounding on a toy regression ----------------

def toy_regression(rounding, steps=300, lr=0.02, seed=0):
    """Fit int8 weights W (8 x 16, per-channel scales) of y = W x to a teacher 5 int steps away,
    with full-batch SGD whose per-update move is about 0.1 int step. Returns the loss curve
    (relative to the initial loss) at a few steps. rounding: "stochastic" (the kernel), "nearest"
    (the float32 model with round-to-nearest) or "float" (unquantized float SGD)."""
    rng = np.random.default_rng(seed)
    co, ci, n = 8, 16, 64
    scale = rng.uniform(0.005, 0.02, co).astype(F32)
    w_true = rng.integers(-100, 101, (co, ci))
    w = (w_true + rng.choice([-5, 5], (co, ci))).astype(np.int8)
    x = rng.normal(0, 1, (n, ci))
    y = x @ (w_true * scale[:, None]).T
    w_f = w * scale[:, None].astype(np.float64)
    state, curve = 1 + seed, {}

    def loss(wf):
        return 0.5 * np.mean(np.sum((x @ wf.T - y) ** 2, axis=1))
    l0 = loss(w_f)
    for t in range(steps + 1):
        wf = w_f if rounding == "float" else w * scale[:, None].astype(np.float64)
        if t in (0, 50, 100, 200, 300):
            curve[t] = loss(wf) / l0
        g = (x @ wf.T - y).T @ x / n                 # dL/dW (dequantized)
        if rounding == "float":
            w_f = w_f - lr * g
            continue
        g_exp = int(np.ceil(np.log2(np.abs(g).max()))) - 24
        grad_w = np.round(g / 2.0 ** g_exp).astype(np.int32)  # the gradient as an int32 sum
        if rounding == "stochastic":
            w, _, state = K.sgd_update_ohwi(w, grad_w, grad_scale=2.0 ** g_exp, param_scale=scale, lr=lr, rng=state)
        else:
            w, _, state = ref_update_ohwi(w, grad_w, np.arange(ci), (0, co), F32(2.0 ** g_exp), scale, F32(lr),
                                          0, None, state, rounding="nearest")
    return curve


def test_stochastic_rounding_learns_where_nearest_stalls():
    sr, nearest, fl = (toy_regression(r) for r in ("stochastic", "nearest", "float"))
    assert nearest[300] > 0.99            # every update rounds to zero: nothing is learned
    assert sr[300] < 0.1 and fl[300] < 0.01
    assert sr[100] < 0.5 * nearest[100]


if __name__ == "__main__":
    print("toy regression, loss / initial loss (8x16 int8 weights, teacher 5 int steps away,"
          " lr 0.02: about 0.1 int step per update)")
    print("%-12s" % "step" + "".join("%9d" % t for t in (0, 50, 100, 200, 300)))
    for r in ("float", "stochastic", "nearest"):
        curves = [toy_regression(r, seed=s) for s in range(5)]
        print("%-12s" % r + "".join("%9.4f" % np.mean([c[t] for c in curves]) for t in (0, 50, 100, 200, 300)))


def test_update_bad_arguments_are_value_errors():
    w = np.zeros((2, 3), np.int8)
    g = np.zeros((2, 3), np.int32)
    s = np.ones(2, F32)
    with pytest.raises(ValueError, match="rng"):
        K.sgd_update_ohwi(w, g, grad_scale=1.0, param_scale=s, lr=0.1, rng=0)
    with pytest.raises(ValueError, match="param_scale"):
        K.sgd_update_ohwi(w, g, grad_scale=1.0, param_scale=np.array([1, 0], F32), lr=0.1, rng=1)
    with pytest.raises(ValueError, match="lr"):
        K.sgd_update_ohwi(w, g, grad_scale=1.0, param_scale=s, lr=-0.1, rng=1)
    with pytest.raises(ValueError, match="grad_scale"):
        K.sgd_update_ohwi(w, g, grad_scale=float("nan"), param_scale=s, lr=0.1, rng=1)
    with pytest.raises(ValueError, match="grad_w must have shape"):
        K.sgd_update_ohwi(w, g, grad_scale=1.0, param_scale=s, lr=0.1, rng=1, sel=np.array([0, 2], np.int32))
    with pytest.raises(ValueError, match="velocity"):
        K.sgd_update_ohwi(w, g, grad_scale=1.0, param_scale=s, lr=0.1, rng=1, velocity=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dtype int32"):
        K.sgd_update_bias(np.zeros(2, np.int64), np.zeros(2, np.int32), grad_scale=1.0, param_scale=s, lr=0.1, rng=1)


def test_kernel_rejects_bad_chunk_before_writing():
    """The C kernel checks its own arguments too (the device calls it without the binding)."""
    from tinybridge.kernels import _checks as C
    w = np.full((2, 3), 5, np.int8)
    g = np.ones((2, 3), np.int32)
    sel = np.arange(3, dtype=np.int32)
    scale = np.array([1.0, -1.0], F32)
    state = np.array([1], np.uint32)
    for c_begin, c_end, s in [(0, 3, np.ones(2, F32)), (1, 1, np.ones(2, F32)), (0, 2, scale)]:
        status = C.lib.tb_sgd_update_ohwi_s8(C.ptr("int8_t", w), 2, 1, 3, C.ptr("int32_t", sel), 3, c_begin,
                                             c_end, C.ptr("int32_t", g), 1.0, C.ptr("float", s), 1.0, 0.0,
                                             C.ptr("float", None), C.ptr("uint32_t", state))
        assert status == C.lib.TB_ERR_ARG
        assert (w == 5).all() and state[0] == 1
