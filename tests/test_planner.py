"""The planner's overlaps on the device's executor (the ASan build of device/model.c and exec.c): the
same numbers with and without them, and the loader rejects an overlap that breaks the rules
(docs/blob-format.md, "Streaming", "In place"). The kernel-level proofs: tests/test_inplace.py."""
import binascii
import struct

import numpy as np
import pytest

import model_harness as H
import tiny_model
from tinybridge import compiler, graph, plan, simulate
from tinybridge.model import Model

rng = np.random.default_rng(7)


@pytest.fixture(scope="module")
def zoo_small():
    """mcunet-5fps at 64x64 with scheme 74kb: streamed chains, in-place ops, chunked input gradients
    and sliced weights, small enough to run quickly."""
    m = compiler.compile("mcunet-5fps", num_classes=2, update="74kb", input_shape=(64, 64, 3), arena_budget=None)
    images = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    return m, images


def in_place_pairs(m):
    p = m.plan
    return [(b.name, p.buffers[j].name) for b in p.buffers if b.over for j in b.over
            if b.offset < p.buffers[j].offset + p.buffers[j].size and p.buffers[j].offset < b.offset + b.size]


def test_the_device_computes_the_same_with_and_without_overlaps(zoo_small):
    m, images = zoo_small
    apart = Model(m.graph, plan.plan(m.graph, overlap=False))
    # chunked input gradients are chosen only where they lower the peak, which moves with the
    # kernels' scratch sizes; tests/test_inplace.py proves them exact on their own
    assert m.plan.stream_rows and any(m.plan.sliced(op) for op in m.graph.ops)
    assert m.graph.input in m.plan.stream_rows and m.graph.input not in apart.plan.stream_rows
    assert len(in_place_pairs(m)) >= 10 and not in_place_pairs(apart) and not m.plan.conflicts()
    assert m.memory.sram < apart.memory.sram
    results = []
    for model in (m, apart):
        recs = [H.Record("train", model.input_tensor(x), i % 2, 0.0) for i, x in enumerate(images[:4])]
        recs.append(H.Record("infer", model.input_tensor(images[4])))
        _, got, params, _, _ = H.run([model.to_bytes()], recs, 256 * 1024)
        sim = simulate.Simulator(model)
        for r in recs[:4]:
            sim.train_step(r.x, r.label)
        assert params == sim.params()
        results.append(got)
    for a, b in zip(*results):
        assert a[:3] == b[:3] and (a[0] == "train" or np.array_equal(a[3], b[3]))


def test_an_arena_budget_buys_fewer_passes(zoo_small):
    """The smallest plan pays instructions for bytes (here input gradients in two passes, a few
    channels at a time); a budget undoes what it can afford, the device's whole arena all of it,
    and never touches the params region."""
    m, images = zoo_small
    smallest, g = m.plan, m.graph
    assert smallest.grad_chunk
    fast = plan.plan(g, arena_budget=plan.DEVICE_ARENA_BYTES)
    assert not fast.grad_chunk and not fast.scale_positions
    assert smallest.arena_bytes < fast.arena_bytes <= plan.DEVICE_ARENA_BYTES
    assert fast.params_bytes == smallest.params_bytes and not fast.conflicts()
    middle = (smallest.arena_bytes + fast.arena_bytes) // 2
    between = plan.plan(g, arena_budget=middle)
    assert smallest.arena_bytes <= between.arena_bytes <= middle
    assert 0 < len(between.grad_chunk) + len(between.scale_positions) < \
        len(smallest.grad_chunk) + len(smallest.scale_positions)
    assert plan.plan(g, arena_budget=1).arena_bytes == smallest.arena_bytes  # below it: the smallest
    # the same training on the device's executor
    model = Model(g, fast)
    recs = [H.Record("train", model.input_tensor(x), i % 2, 0.0) for i, x in enumerate(images[:2])]
    _, _, params, _, _ = H.run([model.to_bytes()], recs, plan.DEVICE_ARENA_BYTES)
    sim = simulate.Simulator(model)
    for r in recs:
        sim.train_step(r.x, r.label)
    assert params == sim.params()


def test_the_loader_rejects_unsafe_overlaps(zoo_small):
    m, _ = zoo_small
    data = m.to_bytes()
    p, g = m.plan, m.graph
    n_t, n_o = len(g.tensors), len(g.ops)
    names = list(g.tensors)
    buffers_at = 64 + 24 * n_t + 88 * n_o

    def with_offset(buffer, offset):
        blob = bytearray(data)
        struct.pack_into("<I", blob, buffers_at + 8 * buffer, offset)
        return fix_crc(blob)

    def with_tensor_rows(name, rows):
        blob = bytearray(data)
        struct.pack_into("<H", blob, 64 + 24 * names.index(name) + 6, rows)
        return fix_crc(blob)

    # an in-place output moved one row too close to the input it still reads
    ops = {op.name: op for op in g.ops}
    name = next(a for a, _ in in_place_pairs(m) if a in ops and ops[a].kind in plan.ROW_KINDS
                and ops[a].inputs[0] not in p.stream_rows)
    op = g.op(name)
    out, x = p.tensor_refs[name]["buffer"], p.tensor_refs[op.inputs[0]]["buffer"]
    closer = p.buffers[x].offset - p.buffers[out].over[x] + 4
    streamed = next(iter(p.stream_rows))
    short = p.stream_rows[streamed] - 1
    cases = [(with_offset(out, closer), "output row"),
             (with_tensor_rows(streamed, short), "streams %d rows" % short),
             (with_tensor_rows(g.output, 1), "streams but no op reads it next")]
    results = H.load_many([c[0] for c in cases], 256 * 1024)
    for (_, message), (status, got) in zip(cases, results):
        assert status == 11 and message in got, (message, got)


def fix_crc(blob):
    struct.pack_into("<I", blob, 12, binascii.crc32(bytes(blob[16:])))
    return bytes(blob)


def planned_with(g, sliced=(), chunked=None, positions=None):
    """g's plan with these choices (sliced weights, input channels per chunk of an input gradient,
    positions per chunk of a scaled output gradient) instead of those the planner's trials make."""
    needs = g.needs_output_grad()
    consumers = plan._consumers(g)
    choices = plan._Choices(frozenset(sliced), chunked or {}, positions or {})
    return plan._layout(g, needs, consumers, plan._streamed(g, needs, consumers), choices,
                        plan.DEFAULT_WGRAD_BYTES, True)


def expansion_model():
    """On the faces (32x32): conv 3x3/2 -> depthwise -> pointwise expand -> depthwise 3x3/2 ->
    pointwise project -> pool -> fully connected, training the head, expand's weights on half its
    input channels and the biases before, so that expand's output gradient comes through a
    depthwise input gradient and varies by position (unlike an output gradient from the pool)."""
    images, _ = tiny_model.faces()
    b = graph.Builder(images[:32])
    t = b.conv2d(b.input, rng.normal(0, 0.3, (8, 3, 3, 1)), stride=2, padding=1, activation="relu6", name="conv")
    t = b.depthwise(t, rng.normal(0, 0.3, (3, 3, 8)), activation="relu6", name="dw")
    t = b.pointwise(t, rng.normal(0, 0.3, (24, 8)), activation="relu6", name="expand")
    t = b.depthwise(t, rng.normal(0, 0.3, (3, 3, 24)), stride=2, activation="relu6", name="dw2")
    t = b.pointwise(t, rng.normal(0, 0.3, (8, 24)), name="project")
    g = b.build(b.fully_connected(b.avgpool(t, name="pool"), rng.normal(0, 0.3, (2, 8)), name="fc"), lr=0.05)
    g.train("fc", bias=True, weights=True)
    for name in ("project", "dw2", "dw"):
        g.train(name, bias=True)
    g.train("expand", bias=True, weights=True, channels=0.5)
    return g


@pytest.mark.parametrize("sliced, chunked, positions", [
    ((), {}, {"expand": 1}),
    (("expand",), {}, {"expand": 5}),          # sliced weights: the trained channels' sums by chunks too
    ((), {"expand": 3}, {"expand": 7}),        # a chunked input gradient, each chunk by positions
])
def test_an_output_gradient_scaled_by_positions_trains_as_the_simulation(sliced, chunked, positions):
    """expand's output gradient (256 positions) scaled a few positions at a time (device/exec.c,
    scaled_rows): the device's parameters after four steps are those of the simulation, which
    scales the whole tensor."""
    g = expansion_model()
    model = Model(g, planned_with(g, sliced, chunked, positions))
    size = model.plan.buffers[model.plan.op_refs["expand"]["grad_scaled"]].size
    assert size == plan.scaled_bytes(g, g.op("expand"), positions["expand"]) < g.tensors["expand"].size
    assert not model.plan.conflicts()
    images, labels = tiny_model.faces()
    recs = [H.Record("train", model.input_tensor(x), int(y), 0.0) for x, y in zip(images[:4], labels[:4])]
    _, got, params, _, _ = H.run([model.to_bytes()], recs, 256 * 1024)
    sim = simulate.Simulator(model)
    for r, result in zip(recs, got):
        assert result[:2] == ("train", 0) and sim.train_step(r.x, r.label).loss == pytest.approx(result[2])
    assert params == sim.params()


def test_the_loader_rejects_wrong_scaled_positions():
    g = expansion_model()
    model = Model(g, planned_with(g, positions={"expand": 5}))
    data = model.to_bytes()
    assert Model.from_bytes(data).to_bytes() == data
    names = list(g.tensors)

    def with_positions(tensor, positions):
        blob = bytearray(data)
        struct.pack_into("<H", blob, 64 + 24 * names.index(tensor) + 22, positions)
        return fix_crc(blob)

    n_pos = g.tensors["expand"].size // g.tensors["expand"].shape[2]
    cases = [(with_positions("expand", 9), "grad_scaled buffer"),                 # more than it holds
             (with_positions("expand", n_pos), "scaled by %d positions: not allowed" % n_pos),
             (with_positions("dw2", 2), "scaled by 2 positions: not allowed")]     # not pointwise
    results = H.load_many([c[0] for c in cases] + [data], 256 * 1024)
    for (_, message), (status, got) in zip(cases, results):
        assert status == 11 and message in got, (message, got)
    assert results[-1][0] == 0
