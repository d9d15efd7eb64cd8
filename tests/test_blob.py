"""Graph IR, arena plan and model blob on the host: round trips, plan invariants, the simulator's
own consistency."""
import struct

import numpy as np
import pytest

import tiny_model
from tinybridge import blob, graph, plan, quant, simulate
from tinybridge.model import Model


@pytest.fixture(scope="module")
def model():
    return tiny_model.sparse_model()


def test_blob_round_trip(model, tmp_path):
    data = model.to_bytes()
    path = tmp_path / "m.tbm"
    model.save(path)
    loaded = Model.load(path)
    assert loaded.to_bytes() == data
    g, h = model.graph, loaded.graph
    assert (h.lr, h.momentum, h.seed, h.step) == (np.float32(g.lr), np.float32(g.momentum), g.seed, g.step)
    for a, b in zip(g.ops, h.ops):
        assert (a.kind, a.stride, a.padding, a.act_min, a.act_max, a.train_bias, a.train_weights) == \
               (b.kind, b.stride, b.padding, b.act_min, b.act_max, b.train_bias, b.train_weights)
        for field in ("weights", "bias", "weight_scales", "channels"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None and y is None) or np.array_equal(x, y), field
    for a, b in zip(g.tensors.values(), h.tensors.values()):
        assert (a.shape, a.scale, a.zero_point) == (b.shape, b.scale, b.zero_point)
    assert [(b.offset, b.size) for b in model.plan.buffers] == [(b.offset, b.size) for b in loaded.plan.buffers]


def test_zoo_blob_round_trip_keeps_rounding_and_multipliers():
    """The zoo rounds once, with multipliers from its source's double scales (not derivable from the
    float32 tensor scales): a blob read back computes and writes exactly the same."""
    from tinybridge import compiler

    model = compiler.compile("proxyless-w0.3", num_classes=2, update="49kb")
    data = model.to_bytes()
    assert struct.unpack_from("<H", data, 26) == (blob.FLAG_SINGLE_ROUNDING,)
    loaded = Model.from_bytes(data)
    assert loaded.graph.rounding == "single" and loaded.to_bytes() == data
    g = model.graph
    differ = [op.name for op in g.ops if op.multipliers is not None and not np.array_equal(
        op.multipliers[0], quant.conv_multipliers(g.tensors[op.inputs[0]].scale, op.weight_scales,
                                                  g.tensors[op.output].scale)[0])]
    assert differ    # some of the source's multipliers differ from the float32 scales' ones


def test_reader_rejects_damaged_blobs(model):
    data = model.to_bytes()
    with pytest.raises(ValueError, match="corrupted"):
        blob.read(data[:-4])
    flipped = bytearray(data)
    flipped[200] ^= 1
    with pytest.raises(ValueError, match="corrupted"):
        blob.read(bytes(flipped))
    with pytest.raises(ValueError, match="not a version 1"):
        blob.read(b"XXXX" + data[4:])


def test_header_fields(model):
    data = model.to_bytes()
    magic, version, header, size = struct.unpack_from("<IHHI", data)
    assert (data[:4], version, header, size) == (b"TBMD", 1, 64, len(data))
    arena, params = struct.unpack_from("<II", data, 28)
    assert (arena, params) == (model.plan.arena_bytes, model.plan.params_bytes)


def _overlap(a, b):
    return a.offset < b.offset + b.size and b.offset < a.offset + a.size


@pytest.mark.parametrize("wgrad_bytes", [4, plan.DEFAULT_WGRAD_BYTES])
def test_plan_never_overlaps_live_buffers(model, wgrad_bytes):
    p = plan.plan(model.graph, wgrad_bytes=wgrad_bytes)
    work = [b for b in p.buffers if b.first is not None]
    params = [b for b in p.buffers if b.first is None]
    assert all(b.offset % 4 == 0 and b.offset + b.size <= p.arena_bytes for b in p.buffers)
    assert all(b.offset >= p.params_bytes for b in work)
    assert all(plan.PARAMS_HEADER <= b.offset and b.offset + b.size <= p.params_bytes for b in params)
    assert not p.conflicts()    # live buffers overlap only where the executor makes it safe
    for i, a in enumerate(params):
        assert not any(_overlap(a, b) for b in params[i + 1:])
    assert p.arena_bytes == max(b.offset + b.size for b in p.buffers)


def test_plan_keeps_what_backward_reads(model):
    p, g = model.plan, model.graph
    step = {name: i for i, name in enumerate(p.steps)}
    conv1 = p.buffers[p.tensor_refs["conv1"]["buffer"]]
    # conv2 trains weights: its input lives until conv2's weight update, then one step longer for
    # conv1's backward, which reads its clamp from it (it has no mask); pw's output has one
    assert conv1.last == step["backward conv1 (conv2d): bias"] == step["backward conv2 (conv2d): weights"] + 1
    assert p.tensor_refs["conv1"]["mask"] is None and p.tensor_refs["pw"]["mask"] is not None
    # conv2's output feeds dw and the add: the add's gradient comes first, dw's is summed to it
    assert g.grad_is_first(g.index("add"), 1) and not g.grad_is_first(g.index("dw"), 0)
    assert p.tensor_refs["input"]["grad"] is None and p.tensor_refs["conv1"]["grad"] is not None
    # a chunk of weight gradient per step: fc's 2 x 16 int32 fit one chunk
    assert p.wgrad_chunk["fc"] == 2 and p.wgrad_chunk["dw"] == 0


def test_memory_and_report(model):
    mem = model.memory
    assert mem.sram == model.plan.arena_bytes and mem.flash == len(model.to_bytes())
    assert mem.params == model.plan.params_bytes
    s, where = model.plan.peak_step
    assert where == mem.peak_at and where in model.plan.report(model.graph)
    # the bytes in use at the peak (buffers overlapping in place counted once) bound the arena
    demand = model.plan.params_bytes + model.plan.live_bytes(s)
    assert demand == max(model.plan.params_bytes + d for d in model.plan.demand) <= mem.sram


def test_inference_only_model_has_no_training_buffers():
    images, _ = tiny_model.faces()
    m = Model(graph.tiny_cnn(images[:8]))
    assert m.plan.params_bytes == plan.PARAMS_HEADER
    assert all(r["grad"] is None and r["mask"] is None for r in m.plan.tensor_refs.values())
    with pytest.raises(ValueError, match="trains no parameter"):
        simulate.Simulator(m).train_step(m.input_tensor(images[0]), 0)


def test_weight_gradient_chunking_does_not_change_training():
    """Chunks split the weight gradient, not its values nor the update order."""
    images, labels = tiny_model.faces()
    a = tiny_model.sparse_model()
    b = Model(a.graph, plan.plan(a.graph, wgrad_bytes=4))
    assert b.plan.wgrad_chunk["conv2"] == 1 and a.plan.wgrad_chunk["conv2"] > 1
    sa, sb = simulate.Simulator(a), simulate.Simulator(b)
    for x, y in zip(images[:10], labels[:10]):
        sa.train_step(a.input_tensor(x), int(y))
        sb.train_step(b.input_tensor(x), int(y))
    assert sa.params() == sb.params()


def test_apply_params_gives_the_trained_model():
    images, labels = tiny_model.faces()
    m = tiny_model.sparse_model()
    sim = simulate.Simulator(m)
    for x, y in zip(images[:12], labels[:12]):
        sim.train_step(m.input_tensor(x), int(y))
    trained = Model.from_bytes(m.to_bytes())
    trained.apply_params(sim.params())
    assert trained.graph.step == 12 and trained.graph.seed == sim.rng
    fresh = simulate.Simulator(trained)
    for x in images[100:110]:
        assert np.array_equal(fresh.infer(m.input_tensor(x)).logits, sim.infer(m.input_tensor(x)).logits)
    with pytest.raises(ValueError, match="params region"):
        trained.apply_params(sim.params()[:-4])


def test_graph_rejects_bad_training_schemas():
    g = tiny_model.sparse_model().graph
    with pytest.raises(ValueError, match="no parameters to train"):
        g.train("pool")
    with pytest.raises(ValueError, match="sorted, distinct"):
        g.train("pw", weights=True, channels=[3, 1])
    with pytest.raises(ValueError, match="ratio"):
        g.train("pw", weights=True, channels=1.5)
    g.train("pw", weights=True, channels=[1, 3])
    assert g.op("pw").channels.tolist() == [1, 3]


def test_input_tensor_checks_the_image(model):
    with pytest.raises(ValueError, match=r"\(32, 32, 1\)"):
        model.input_tensor(np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model.input_tensor(np.zeros((32, 32), np.float32))
    assert model.input_tensor(np.full((32, 32), 200, np.uint8)).flat[0] == 72
