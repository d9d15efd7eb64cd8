"""What a compiled model costs on a device (`tinybridge bench`): the counter (instructions on
QEMU, cycles on the board, ns on the sim) per inference and per training step, the arena and stack
high-water marks beside the planned arena, and the per-op profile (Device.profile) of the last
inference and training step, with the graph's op names.

    result = bench.measure(dev, model, images, labels, steps=3)
    print(bench.report(result, top=15))
"""
import collections
import statistics

import numpy as np

OpCost = collections.namedtuple("OpCost", "index name what infer forward backward")
OpCost.__doc__ = """One op of the graph: `what` it computes (kind, kernel, stride, shapes), its forward
pass in the last inference, its forward and backward pass in the last training step."""
Result = collections.namedtuple(
    "Result", "board counter_unit infer train infer_spread train_spread arena_high_water planned_arena "
              "stack_high_water outside ops")
Result.__doc__ = """measure()'s answer: medians of the inference and training step counts (and the largest
difference between runs), the high-water marks (bytes) beside the planned arena, the last training
step's count outside any op, and an OpCost per op."""


def describe(graph, op):
    """The op as a short text: 'depthwise 7x7 s2 8x8x240->4x4x240'."""
    x, y = (graph.tensors[t].shape for t in (op.inputs[0], op.output))
    kernel = "" if op.kernel == (1, 1) else " %dx%d" % op.kernel
    stride = " s%d" % op.stride if op.stride != 1 else ""
    return "%s%s%s %s->%s" % (op.kind, kernel, stride, "x".join(map(str, x)), "x".join(map(str, y)))


def random_images(shape, n, seed=0):
    """n uint8 images of `shape`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def measure(dev, model, images, labels, steps=3):
    """Runs `steps` inferences and training steps (image i: an inference, then a training step with
    labels[i]) of `model`, already loaded into `dev`, and collects the counts and profiles."""
    if dev.model is None or dev.model.num_classes != model.num_classes:
        raise ValueError("load the model into the device first")
    if len(images) < steps or len(labels) < steps:
        raise ValueError("%d steps need as many images and labels" % steps)
    infers, trains = [], []
    for image, label in zip(images[:steps], labels[:steps]):
        dev.infer(image)
        infers.append(dev.stats()["last_infer"])
        infer_profile = dev.profile()
        dev.train_step(image, label)
        trains.append(dev.stats()["last_step"])
        train_profile = dev.profile()
    stats = dev.stats()
    graph = model.graph
    ops = [OpCost(i, op.name, describe(graph, op), infer_profile.ops[i][0], *train_profile.ops[i])
           for i, op in enumerate(graph.ops)]
    return Result(dev.info()["board"], stats["counter_unit"], statistics.median(infers), statistics.median(trains),
                  max(infers) - min(infers), max(trains) - min(trains), stats["arena_high_water"],
                  model.memory.sram, stats["stack_high_water"], train_profile.outside, ops)


def _m(v):
    return "%.2f M" % (v / 1e6)


def _spread(v):
    return " (runs differ by up to %d)" % v if v else ""


def report(r, top=None):
    """The result as text: totals, memory, and the ops by their training-step cost (all, or `top`)."""
    unit = r.counter_unit
    lines = [
        "%s, counter: %s" % (r.board, unit),
        "inference      %s %s%s" % (_m(r.infer), unit, _spread(r.infer_spread)),
        "training step  %s %s%s" % (_m(r.train), unit, _spread(r.train_spread)),
        "arena high-water %.1f KB of %.1f KB planned; stack high-water %.1f KB"
        % (r.arena_high_water / 1024, r.planned_arena / 1024, r.stack_high_water / 1024),
        "",
        "per op, by training-step cost (%s; %d outside any op):" % (unit, r.outside),
        "%4s  %-24s %-36s %10s %10s %10s %6s" % ("op", "name", "what", "infer", "train fwd", "train bwd", "step %"),
    ]
    total = sum(o.forward + o.backward for o in r.ops) + r.outside
    ranked = sorted(r.ops, key=lambda o: (-(o.forward + o.backward), o.index))
    for o in ranked[:top] if top else ranked:
        lines.append("%4d  %-24s %-36s %10d %10d %10d %6.1f" % (
            o.index, o.name[:24], o.what[:36], o.infer, o.forward, o.backward,
            100.0 * (o.forward + o.backward) / total if total else 0.0))
    return "\n".join(lines)
