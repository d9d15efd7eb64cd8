"""The accuracy benchmark's parts (bench/accuracy/run.py, docs/benchmarks.md "Accuracy"): the host
simulation without QAS steps each int8 parameter by its own gradient while QAS stays the default
and the device's; the float twin is the int8 network in float and trains what the graph trains;
a reduced run of the benchmark learns."""
import importlib.util
import os

import numpy as np
import pytest
import torch

import model_harness as H
import tiny_model
from tinybridge import compiler, datasets, graph, kernels, simulate
from tinybridge.float_twin import FloatTwin
from tinybridge.model import Model

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "accuracy", "run.py")
SHAPE = (128, 128, 3)
REPLAY_ON_TARGET = False  # tests/test_target_qemu.py: whole training runs, their kernels are tested apart


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lfw():
    return datasets.lfw_faces(SHAPE)


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def dequantized(g, tensor, q):
    t = g.tensors[tensor]
    return (q.astype(np.float64) - t.zero_point) * t.scale


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


# ---------------- the float twin ----------------

def test_float_twin_computes_each_op_of_the_int8_network(lfw):
    """Fed the int8 network's dequantized inputs, every op of the twin gives the int8 output to
    within one quantization step (the int8 op rounds it: measured at most 0.56 steps)."""
    m = compiler.compile("mcunet-5fps", num_classes=None, update=None)
    g = m.graph
    twin = FloatTwin(g)
    for image in lfw.val_images[:2]:
        values = simulate.Simulator(m)._forward(m.input_tensor(image), False)[0]

        def nchw(t):
            return torch.from_numpy(dequantized(g, t, values[t]).astype(np.float32)).permute(2, 0, 1)[None]

        for op in g.ops:
            y = twin._op(op, [nchw(t) for t in op.inputs])
            relu = twin._ranges[op.name]
            y = (y if relu is None else y.clamp(*relu)).detach().permute(0, 2, 3, 1)[0].numpy()
            want = dequantized(g, op.output, values[op.output])
            assert np.abs(y - want).max() <= g.tensors[op.output].scale, op.name


@pytest.mark.parametrize("name", compiler.ZOO)
def test_float_twin_matches_the_int8_network_end_to_end(name, lfw):
    """On real images (faces, non-faces, Fashion-MNIST clothes) the 1000-class logits and pooled
    features of the twin follow the int8 network's: mean cosine >= 0.95 (measured 0.97-0.98: the
    int8 activations' rounding, half a step per op, accumulates over the 40-60 layers)."""
    m = compiler.compile(name, num_classes=None, update=None)
    g = m.graph
    fashion = datasets.fashion_mnist(SHAPE, n_train_per_class=1, n_val_per_class=1)
    images = np.concatenate([lfw.val_images[:6], fashion.train_images[:6]])
    tensors = np.stack([m.input_tensor(im) for im in images])
    twin = FloatTwin(g)
    pool = next(op.output for op in g.ops if op.kind == "avgpool")
    with torch.no_grad():
        logits = twin(twin.inputs(tensors)).numpy()
        features = twin(twin.inputs(tensors), output=pool).numpy().reshape(len(images), -1)
    sim = simulate.Simulator(m)
    cos_logits, cos_features = [], []
    for i, x in enumerate(tensors):
        values = sim._forward(x, False)[0]
        cos_logits.append(cosine(logits[i], dequantized(g, g.output, values[g.output])))
        cos_features.append(cosine(features[i], dequantized(g, pool, values[pool])))
    assert np.mean(cos_logits) >= 0.95 and np.mean(cos_features) >= 0.95
    assert min(cos_logits) >= 0.85 and min(cos_features) >= 0.85


def test_float_twin_trains_what_the_graph_trains(lfw):
    """The twin of a sparse scheme starts at the zero head; its first step moves only the
    classifier (the zero head sends no gradient back), as the int8 QAS step does (same network,
    same image, QAS = float SGD of the dequantized parameters); its second step moves exactly the
    trained parameters: biases, and weights of the trained input channels (depthwise: channels)."""
    m = compiler.compile("mcunet-5fps", num_classes=2, update="49kb")
    g = m.graph
    fc = g.ops[-1]
    twin = FloatTwin(g)
    before = {k: p.detach().clone() for k, p in twin.named_parameters()}
    assert not before["weights.classifier"].any() and not before["biases.classifier"].any()
    lr = 0.05
    (x0, x1), (y0, y1) = [m.input_tensor(im) for im in lfw.train_images[:2]], lfw.train_labels[:2]
    assert y0 != y1
    twin.sgd_step(twin.inputs([x0]), [int(y0)], lr)
    sim = simulate.Simulator(m)
    sim.train_step(x0, int(y0), lr)
    int8_head = sim.weights[fc.name] * fc.weight_scales[:, None].astype(np.float64)
    assert cosine(int8_head, twin.weights["classifier"].detach().numpy()) >= 0.95
    for key, p in twin.named_parameters():
        assert key.endswith("classifier") or torch.equal(p.detach(), before[key]), key

    twin.sgd_step(twin.inputs([x1]), [int(y1)], lr)
    assert_moved_what_trains(twin, before)


def assert_moved_what_trains(twin, before):
    """Since `before`, the twin's biases moved exactly where their op trains its bias, its weights
    on some and only the trained channels of the ops training weights."""
    for op in twin.graph.ops:
        if op.kind not in graph.WEIGHTED:
            continue
        key = op.name.replace(".", "_")
        w_moved = (twin.weights[key].detach() != before["weights." + key]).numpy()
        b_moved = (twin.biases[key].detach() != before["biases." + key]).numpy()
        assert b_moved.any() == op.train_bias, op.name
        trained = np.zeros(w_moved.shape, bool)
        if op.train_weights and op.kind == "depthwise":
            trained[op.channels] = True
        elif op.train_weights:
            trained[:, op.channels] = True
        assert not w_moved[~trained].any() and w_moved[trained].any() == op.train_weights, op.name


def test_float_twin_trains_weights_and_biases_apart():
    """A graph training some weights without their bias, some biases without weights, channels of
    a conv and of a depthwise: the twin moves exactly those."""
    images, labels = tiny_model.faces()
    g = graph.tiny_cnn(images[:32], 2, seed=0)
    g.train("fc", bias=True, weights=True)
    g.train("pw", bias=False, weights=True, channels=0.5)
    g.train("dw", bias=True, weights=True, channels=[1, 4, 5])
    g.train("conv2", bias=False, weights=True, channels=[0, 3])
    g.train("conv1", bias=True)
    twin = FloatTwin(g)
    before = {k: p.detach().clone() for k, p in twin.named_parameters()}
    for x, y in zip(images[:4], labels[:4]):
        twin.sgd_step(twin.inputs([Model(g).input_tensor(x)]), [int(y)], 0.05)
    assert_moved_what_trains(twin, before)


# ---------------- the benchmark ----------------

def test_reduced_benchmark_run_learns(capsys):
    """bench/accuracy/run.py on a few LFW images, QAS and float, one learning rate: both print a
    row, and QAS training lifts test accuracy above the untrained head's (which says "not face"
    to every image: 50 %)."""
    bench = load_bench()
    split = bench.load_task("lfw", 15, 10)
    assert len(split.train_labels) == 30 and len(split.val_labels) == 20
    untrained = bench.Int8Trainer(compiler.compile("mcunet-5fps", num_classes=2, update="49kb"), True, 0)
    assert bench.evaluate(untrained, split.val_images, split.val_labels) == 0.5
    results = bench.main(["--tasks", "lfw", "--methods", "int8 + QAS,float", "--seeds", "1", "--epochs", "1",
                          "--lrs", "0.01", "--train-per-class", "15", "--test-per-class", "10"])
    table = capsys.readouterr().out
    assert "| lfw | mcunet-5fps | 49kb |" in table
    qas = results["lfw", "mcunet-5fps", "49kb", "int8 + QAS"]
    assert qas["lr"] == (0.01, 0.01) and len(qas["accuracy"]) == 1
    assert qas["accuracy"][0] >= 0.75
