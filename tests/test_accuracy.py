"""The accuracy benchmark's parts (docs/benchmarks.md "Accuracy"): the host simulation without QAS
steps each int8 parameter by its own gradient while QAS stays the default and the device's."""
import numpy as np
import pytest

import model_harness as H
import tiny_model
from tinybridge import graph, kernels, simulate
from tinybridge.model import Model


# ---------------- int8 without QAS ----------------

def test_qas_is_the_default_and_the_devices():
    """Simulator(model) is QAS (qas=True) and trains byte for byte as the device's executor does;
    qas=False trains differently."""
    m = tiny_model.sparse_model(momentum=0.0)
    images, labels = tiny_model.faces()
    recs = [H.Record("train", m.input_tensor(x), int(y)) for x, y in zip(images[:20], labels[:20])]
    _, _, device_params, _, _ = H.run([m.to_bytes()], recs, 64 * 1024)
    params = {}
    for name, sim in (("default", simulate.Simulator(m)), ("qas", simulate.Simulator(m, qas=True)),
                      ("no qas", simulate.Simulator(m, qas=False))):
        for r in recs:
            sim.train_step(r.x, r.label)
        params[name] = sim.params()
    assert params["default"] == params["qas"] == device_params
    assert params["no qas"] != device_params


def classifier_gradients(m, x, label):
    """The gradients of the dequantized classifier weights and bias in the first training step,
    from the kernels the simulator runs (forward, loss, masks, parameter gradients)."""
    g = m.graph
    fc = g.ops[-1]
    values, masks = simulate.Simulator(m)._forward(x, True)
    y, features = g.tensors[g.output], g.tensors[fc.inputs[0]]
    _, (dl, e) = kernels.softmax_cross_entropy(values[g.output].reshape(-1), label, scale=y.scale,
                                               zero_point=y.zero_point, mask=masks[g.output])
    grad_w = kernels.pointwise_weight_grad(values[fc.inputs[0]].reshape(-1), dl, input_offset=-features.zero_point)
    return grad_w * 2.0 ** e * features.scale, kernels.bias_grad(dl) * 2.0 ** e


def test_without_qas_each_parameter_steps_by_its_own_gradient():
    """qas=False: W̄ -= lr · G_W · s_W and b̄ -= lr · G_b · s_x · s_W (G: the gradient of the
    dequantized parameter), stochastically rounded: each int8 weight and int32 bias moves to within
    one unit of that, at learning rates making the steps several units."""
    images, labels = tiny_model.faces()
    g = graph.tiny_cnn(images[:32], 2, seed=0)
    g.train("fc", bias=True, weights=True)
    m = Model(g)
    fc = g.ops[-1]
    x, label = m.input_tensor(images[40]), int(labels[40])
    grad_w, grad_b = classifier_gradients(m, x, label)
    s_w = fc.weight_scales.astype(np.float64)[:, None]
    s_b = g.bias_scales(fc).astype(np.float64)
    for unit_step, param in ((grad_w * s_w, "weights"), (grad_b * s_b, "bias")):
        lr = 5.0 / np.abs(unit_step).max()             # the largest step: 5 units
        sim = simulate.Simulator(m, qas=False)
        sim.train_step(x, label, lr)
        if param == "weights":
            moved = fc.weights.astype(np.float64) - sim.weights[fc.name]
            free = np.abs(sim.weights[fc.name]) < 127            # not saturated
        else:
            moved = fc.bias.astype(np.float64) - sim.bias[fc.name]
            free = np.ones(moved.shape, bool)
        want = lr * unit_step
        assert free.mean() > 0.9
        assert np.all(np.abs(moved - want)[free] < 1), param
