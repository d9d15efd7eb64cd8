"""tinybridge.compile: the paper's three models from the package's zoo, their sparse-update schemes
and the memory planner; the compiled models on the `sim` device against the numpy oracle of the
paper's arithmetic (tests/zoo_reference.py) and against tinybridge.simulate."""
import os
import subprocess
import sys

import numpy as np
import pytest
from skimage import data

import model_harness as H
import tiny_model
import tinybridge
import zoo_reference as Z
from tinybridge import compiler, graph, plan, preprocess, simulate
from tinybridge.model import Model

ARENA = 256 * 1024                       # TB_ARENA_BYTES
IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "coins")
# The paper's peak training memory on the STM32F746 (sparse update + reordering), bytes, and the
# schemes whose plans are at or under it (with the input streamed); the others' trained parameters
# leave too little room for what their first blocks or backward pass need (docs/compiler.md,
# "Memory").
PAPER = {"mbv2-w0.35": 141 * 1024, "mcunet-5fps": 173 * 1024, "proxyless-w0.3": 135 * 1024}
BEATS_PAPER = {"mbv2-w0.35": ("49kb", "73kb", "99kb", "123kb"),
               "mcunet-5fps": ("49kb", "74kb", "99kb", "124kb", "148kb"),
               "proxyless-w0.3": ("49kb", "74kb", "98kb", "120kb")}


def image(name):
    return preprocess.resize(getattr(data, name)(), (128, 128, 3))


def oracle_layers(name):
    """(op name, oracle function of the simulated inputs) for every op of the zoo model: the
    paper's arithmetic (tests/zoo_reference.py) one layer at a time."""
    m = Z.load(name)
    layers = [("first_conv", lambda v, l=m["first_conv"]: Z.conv(v["input"], l))]
    x = "first_conv"
    for i, block in enumerate(m["blocks"]):
        y = x
        for part in ("pointwise1", "depthwise", "pointwise2"):
            if block[part] is not None:
                op = "blocks.%d.%s" % (i, part)
                layers.append((op, lambda v, t=y, l=block[part]: Z.conv(v[t], l)))
                y = op
        if block["residual"] is not None:
            op = "blocks.%d.add" % i
            layers.append((op, lambda v, s=x, t=y, b=block: Z.residual_add(v[s], v[t], b)))
            y = op
        x = y
    layers.append(("pool", lambda v, t=x: np.clip(np.round(v[t].astype(np.float64).mean(axis=(0, 1))), -128, 127)
                   .astype(np.int8)[None, None]))
    layers.append(("classifier", lambda v: Z.conv(v["pool"], m["classifier"])))
    return m, layers


@pytest.mark.parametrize("name", compiler.ZOO)
def test_zoo_logits_match_the_oracle_on_sim(name):
    """The 1000-class model on the sim device: logits byte for byte those of the host simulation,
    and within one unit of the paper's float arithmetic end to end (docs/compiler.md, "Against the
    paper's arithmetic": the zoo rounds once, from multipliers of the source's own scales; measured:
    every op and every logit equal). Every op within one unit of the oracle on the same input, at
    most one output in 10^5 off (a value within 2^-31 of a rounding tie could round the other way)."""
    model = compiler.compile(name, num_classes=None, update=None)
    sim = simulate.Simulator(model)
    reference, layers = oracle_layers(name)
    inputs = [model.input_tensor(image(n)) for n in IMAGES]
    with tinybridge.connect("sim") as dev:
        dev.load_model(model, progress=False)
        predictions = [dev.infer(image(n)) for n in IMAGES]
    y = model.graph.tensors[model.graph.output]
    agree = 0
    for x, p in zip(inputs, predictions):
        values, _ = sim._forward(x, False)
        logits = np.round(p.scores / np.float32(y.scale) + y.zero_point).astype(np.int8)
        assert np.array_equal(logits, values[model.graph.output].reshape(-1))
        for op, fn in layers:
            d = np.abs(fn(values).astype(np.int32) - values[op].astype(np.int32))
            assert d.max() <= 1, (op, d.max())
            assert (d > 0).mean() < 1e-5, op
        end_to_end = Z.logits(reference, x).astype(np.int32)
        assert np.abs(end_to_end - values[model.graph.output].reshape(-1)).max() <= 1
        agree += p.label == int(np.argmax(end_to_end))
    assert agree == len(IMAGES)


def test_the_zoo_is_package_data():
    for name in compiler.ZOO:
        assert os.path.exists(os.path.join(compiler.ZOO_DIR, name + ".json"))
        np.load(os.path.join(compiler.ZOO_DIR, name + ".npz"), allow_pickle=False)
    with open(os.path.join(compiler.ZOO_DIR, "LICENSE")) as f:
        assert "Copyright (c) 2022 MIT HAN Lab" in f.read()


@pytest.mark.parametrize("name", compiler.ZOO)
def test_every_scheme_compiles_validates_and_fits(name):
    """Each of the paper's schemes with a two-class head (as docs/benchmarks.md, "Memory", compares
    them): the device validates the blob in a 256 KB arena, its executor trains a step as
    tinybridge.simulate does (parameters byte for byte), and the planned peak is at or under the
    paper's figure where the trained parameters allow it."""
    schemes = compiler.zoo_schemes(name)
    models = {s: compiler.compile(name, num_classes=2, update=s, arena_budget=None) for s in schemes}
    results = H.load_many([m.to_bytes() for m in models.values()], ARENA)
    x = image("chelsea")
    for (scheme, m), (status, got) in zip(models.items(), results):
        assert status == 0, (scheme, got)
        assert got == (m.plan.arena_bytes, m.plan.params_bytes)
        assert m.memory.sram <= ARENA and not m.plan.conflicts()
        _, _, params, _, _ = H.run([m.to_bytes()], [H.Record("train", m.input_tensor(x), 1, 0.0)], ARENA)
        sim = simulate.Simulator(m)
        sim.train_step(m.input_tensor(x), 1)
        assert params == sim.params(), scheme
        if scheme in BEATS_PAPER[name]:
            assert m.memory.sram <= PAPER[name], (scheme, m.memory.sram)
        # the default plan spends the device's arena on speed, the parameters as they are
        fast = Model(m.graph, plan.plan(m.graph, arena_budget=plan.DEVICE_ARENA_BYTES))
        assert m.memory.sram <= fast.memory.sram <= ARENA and fast.memory.params == m.memory.params
        # the paper's sparse schemes train nothing of the first conv's weights: the input streams
        assert m.plan.stream_rows.get(m.graph.input) == 3, scheme
        # the backward pass stops at the earliest trained op: nothing before it has a gradient
        g, stop = m.graph, m.graph.backward_stop()
        assert all(m.plan.tensor_refs[op.output]["grad"] is None for op in g.ops[:stop])


def test_a_scheme_maps_to_the_paper_s_layers():
    """mcunet-5fps "49kb": biases of the last 20 convolutions, weights of conv 24 (a quarter of its
    input channels, the largest by L2 norm), 27 and 30 (half); ratio 0 (convs 23, 33, 39) trains the
    bias only; the classifier trains fully."""
    m = compiler.compile("mcunet-5fps", num_classes=2, update="49kb")
    layers = m.graph.ops[:-1]
    convs = [op for op in layers if op.kind in graph.WEIGHTED]
    assert len(convs) == 42
    assert [i for i, op in enumerate(convs) if op.train_bias] == list(range(22, 42))
    trained = {i: len(op.channels) for i, op in enumerate(convs) if op.train_weights}
    assert trained == {24: 12, 27: 24, 30: 24}
    w = convs[24].weights.astype(np.int64)
    norms = (w ** 2).sum(axis=0)
    assert set(convs[24].channels) == set(np.argsort(-norms, kind="stable")[:12])
    head = m.graph.ops[-1]
    assert head.train_bias and head.train_weights and len(head.channels) == head.weights.shape[1]


def test_channel_selection_is_by_magnitude():
    g = tiny_model.sparse_model().graph
    pw = g.op("pw")
    w = np.zeros_like(pw.weights)
    w[:, 5] = 9            # the largest L2 norm
    w[0, 2] = 20           # larger L1 than channel 7, smaller L2 than channel 5
    w[:, 7] = 4
    pw.weights = w
    g.train("pw", weights=True, channels=0.125)        # int(0.125 * 16) = 2 channels
    assert pw.channels.tolist() == [2, 5]
    g.train("pw", weights=True, channels=0.2)          # int(3.2) = 3
    assert pw.channels.tolist() == [2, 5, 7]
    g.train("pw", weights=True, channels=0.01)         # at least one
    assert pw.channels.tolist() == [5]


def test_update_forms():
    n = 42
    m = compiler.compile("mcunet-5fps", num_classes=3, update="bias")
    convs = [op for op in m.graph.ops[:-1] if op.kind in graph.WEIGHTED]
    assert all(op.train_bias and not op.train_weights for op in convs)
    m = compiler.compile("mcunet-5fps", num_classes=3, update="last:3")
    trains = [op.name for op in m.graph.ops if op.trains]
    assert trains == ["blocks.13.depthwise", "blocks.13.pointwise2", "classifier"]
    assert all(op.train_weights and len(op.channels) == op.weights.shape[-1] for op in m.graph.ops if op.trains)
    m = compiler.compile("mcunet-5fps", num_classes=3, update="full")
    assert all(op.train_weights for op in m.graph.ops if op.kind in graph.WEIGHTED)
    assert m.memory.sram > ARENA        # every weight in SRAM: more than the device has
    update = tinybridge.SparseUpdate(bias=["blocks.12.pointwise1", -1],
                                     weights={"blocks.13.pointwise1": [0, 5, 9], n - 2: 0.5})
    m = compiler.compile("mcunet-5fps", num_classes=3, update=update)
    trains = {op.name: (op.train_bias, None if op.channels is None else len(op.channels))
              for op in m.graph.ops if op.trains}
    assert trains == {"blocks.12.pointwise1": (True, None), "blocks.13.pointwise1": (True, 3),
                      "blocks.13.depthwise": (True, 288), "blocks.13.pointwise2": (True, None),
                      "classifier": (True, 160)}
    assert m.graph.op("blocks.13.pointwise1").channels.tolist() == [0, 5, 9]
    assert m.graph.backward_stop() == m.graph.index("blocks.12.pointwise1")
    assert compiler.compile("mcunet-5fps", num_classes=3, update=None).plan.params_bytes == 8


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="mcunet-9fps"), "unknown model 'mcunet-9fps'"),
    (dict(update="50kb"), "unknown update '50kb'.*49kb, 74kb, 99kb, 124kb, 148kb"),
    (dict(update="last:0"), "N must be an int in"),
    (dict(update="last:x"), "N must be an int in"),
    (dict(update=3), "update must be"),
    (dict(num_classes=1), "num_classes must be an int >= 2"),
    (dict(num_classes=0), "num_classes must be an int >= 2"),
    (dict(num_classes=True), "num_classes must be an int >= 2"),
    (dict(num_classes=2.0), "num_classes must be an int >= 2"),
    (dict(calibration=np.zeros((1, 128, 128, 3), np.uint8)), "calibration quantizes torch modules"),
    (dict(input_shape=(128, 128, 1)), r"input_shape must be \(H, W, 3\)"),
    (dict(update=tinybridge.SparseUpdate(bias=["nope"])), "no layer named 'nope'"),
    (dict(update=tinybridge.SparseUpdate(weights={99: 0.5})), "layer 99: expected an op name or an index"),
    (dict(update=tinybridge.SparseUpdate(weights={3: 1.5})), "ratio must be in"),
    (dict(update=tinybridge.SparseUpdate(bias=50)), "SparseUpdate.bias: 50 layers"),
])
def test_errors_are_clear_value_errors(kwargs, message):
    args = dict(source="mcunet-5fps", num_classes=2, update="49kb")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        compiler.compile(args.pop("source"), **args)


def test_dead_channels_get_a_bias_the_device_accepts():
    """The paper's MCUNet has channels with bias -2^31 next to nonzero weights: raised to the
    nearest bias whose sums stay inside int32 (their outputs stay clamped at the bottom)."""
    raw = Z.load("mcunet-5fps")["first_conv"]["params"]
    dead = [c for c in range(len(raw["bias"])) if raw["bias"][c] == -2 ** 31 and raw["weight"][c].any()]
    assert dead == [6]
    m = compiler.compile("mcunet-5fps", num_classes=None, update=None)
    op = m.graph.op("first_conv")
    assert op.bias[6] == -2 ** 31 + 255 * int(np.abs(op.weights[6].astype(np.int64)).sum())
    values, _ = simulate.Simulator(m)._forward(m.input_tensor(image("chelsea")), False)
    assert (values["first_conv"][..., 6] == -128).all()


def test_input_shape_changes_the_resolution():
    m = compiler.compile("proxyless-w0.3", num_classes=2, update="49kb", input_shape=(96, 112, 3))
    assert m.input_shape == (96, 112, 3)
    assert m.graph.tensors["pool"].shape == (1, 1, 96)
    assert H.load_many([m.to_bytes()], ARENA)[0][0] == 0


@pytest.mark.parametrize("arena_budget", [None, plan.DEVICE_ARENA_BYTES], ids=["smallest", "fastest"])
def test_a_zoo_model_trains_on_sim_like_the_host_simulation(arena_budget):
    """mcunet-5fps with a two-class head (faces or not), scheme 49kb: a few steps on the sim device
    (streamed, in-place and sliced buffers; chunked in the smallest plan) leave the same parameters
    as tinybridge.simulate."""
    faces = data.lfw_subset()
    images = [preprocess.resize(faces[i], (128, 128, 3)) for i in (0, 150, 1, 151)]
    labels = [1, 0, 1, 0]
    model = compiler.compile("mcunet-5fps", num_classes=2, update="49kb", arena_budget=arena_budget)
    assert model.plan.stream_rows and any(model.plan.sliced(op) for op in model.graph.ops)
    assert bool(model.plan.grad_chunk) == (arena_budget is None)
    sim = simulate.Simulator(model)
    with tinybridge.connect("sim") as dev:
        dev.load_model(model, progress=False)
        for x, y in zip(images, labels):
            got = dev.train_step(x, y)
            want = sim.train_step(model.input_tensor(x), y)
            assert (got.loss, got.label_pred, got.step) == (np.float32(want.loss), want.label_pred, want.step)
        assert dev.read_params() == sim.params()
        trained = dev.read_model()
    for a, b in zip(trained.graph.ops, model.graph.ops):
        assert np.array_equal(a.weights, sim.weights.get(b.name, b.weights))


def test_cli_compile_reports_the_plan(tmp_path):
    out = tmp_path / "m.tbm"
    p = subprocess.run([sys.executable, "-m", "tinybridge.cli", "compile", "mcunet-5fps", "--num-classes", "2",
                        "--update", "49kb", "--out", str(out), "--report"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    model = Model.load(out)
    lines = p.stdout.splitlines()
    assert lines[0].split()[:5] == ["step", "pass", "op", "kind", "shapes"]
    assert any(line.endswith("<- peak") for line in lines)
    assert lines[-2].startswith("peak: ") and "arena %d bytes" % model.memory.sram in lines[-2]
    assert "blocks.1.pointwise1" in p.stdout and "64x64x8 -> 64x64x32" in p.stdout
    p = subprocess.run([sys.executable, "-m", "tinybridge.cli", "compile", "mcunet-5fps", "--num-classes", "2",
                        "--update", "49kb", "--out", str(out), "--smallest"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    smallest = Model.load(out)
    assert smallest.memory.sram < model.memory.sram and "arena %d bytes" % smallest.memory.sram in p.stdout
    p = subprocess.run([sys.executable, "-m", "tinybridge.cli", "compile", "mcunet-5fps", "--update", "1kb"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("tinybridge: error: unknown update '1kb'")


def test_cli_output_into_a_closed_pipe_is_quiet(tmp_path):
    # `tinybridge compile ... --report | head -1`: the reader leaves after one line
    command = [sys.executable, "-m", "tinybridge.cli", "compile", "mcunet-5fps", "--num-classes", "2",
               "--update", "49kb", "--out", str(tmp_path / "m.tbm"), "--report"]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().split()[:2] == [b"step", b"pass"]
    p.stdout.close()
    assert p.wait() == 0 and p.stderr.read() == b""
