"""The paper's on-device training experiments on any device, model and dataset (docs/experiments.md).

An experiment is a set of runs. Each run loads a freshly compiled model onto the device (the
pretrained weights and a new zero head), trains it image by image in a given order and evaluates
it on the validation images at given steps. The kinds (KINDS), and what their runs vary:

    steps      nothing: one run, evaluated at Setup.eval_steps (tinybridge demo is this on LFW)
    samples    training images per class, every run training the same number of steps
    threshold  the VWW person-area threshold of the training labels (None: plain COCO labels),
               every run evaluated against the dataset's own labels
    order      the label order (ORDERS); the share of validation images predicted positive shows
               over-confident / over-cautious swings (its range over the second half of training)
    lr         the learning rate
    scheme     the update scheme (what trains), with its planned memory

    results = run("lr", Setup(data="fashion-mnist:0,9", epochs=1), values=[0.001, 0.01])

writes lr.csv, lr-results.json and lr.png into Setup.out, prints a table and returns the results
(the JSON's content). Deterministic given Setup.seed: data, orders and the device's stochastic
rounding all follow from it.
"""
import csv
import json
import os
import time
from dataclasses import dataclass, field, fields

import numpy as np

from . import datasets, plots
from .errors import TinyBridgeError
from .metrics import classification_metrics
from .progress import ProgressBar

KINDS = ("steps", "samples", "threshold", "order", "lr", "scheme")
ORDERS = ("shuffled", "interleaved", "blocked")
DEFAULT_EVAL_STEPS = (0, 50, 100, 150, 200)
DEFAULT_VALUES = {
    "samples": (1, 2, 5, 10, 20, 50, 100, 200, 500),   # kept: those up to the training images per class
    "threshold": (None, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2),
    "order": ORDERS,
    "lr": (0.001, 0.003, 0.005, 0.01, 0.03),
}
# The order experiment's evaluation interval when Setup gives none: its curves need points.
ORDER_EVAL_EVERY = 10
CSV_COLUMNS = ("experiment", "run", "value", "step", "accuracy", "precision", "recall", "f1", "val_loss",
               "positive_share", "train_loss")


@dataclass
class Setup:
    """What every run of an experiment shares.

    data: a dataset name (datasets.parse_spec), a datasets.DataSpec, or a datasets.Split at the
    model's input shape. model: a zoo name or a .tflite path (compiled here with a head of the
    data's classes and `update`; None = the paper's "49kb" for zoo models), or a compiled
    tinybridge.Model or model blob file (it fixes the head and what trains). input_shape: the zoo
    models' (default 128x128x3). steps: training steps per run (default epochs x training images;
    passes over the images repeat in `order`). eval_steps / eval_every: evaluate at these steps /
    every N steps, besides step 0 and the last (steps: default DEFAULT_EVAL_STEPS; order: every
    ORDER_EVAL_EVERY). train_per_class / val_per_class: how many images
    (default datasets.DEFAULT_PER_CLASS). device, connect_options: tinybridge.connect's."""
    data: object = "lfw"
    model: object = "mcunet-5fps"
    update: object = None
    input_shape: tuple = None
    lr: float = None
    epochs: int = 1
    steps: int = None
    order: str = "shuffled"
    run_length: int = 20
    eval_steps: tuple = ()
    eval_every: int = None
    train_per_class: int = None
    val_per_class: int = None
    seed: int = 0
    device: str = "sim"
    connect_options: dict = field(default_factory=dict)
    out: str = "."


@dataclass
class Run:
    """One training run: a compiled model trained on images[sequence] (labels[sequence]) at lr."""
    name: str
    value: object
    model: object
    images: np.ndarray
    labels: np.ndarray
    sequence: np.ndarray
    lr: float = None
    extra: dict = field(default_factory=dict)   # the kind's own summary facts


# ---------------- the pieces: evaluation, training order, one run ----------------

def training_sequence(labels, steps, order="shuffled", rng=None, run_length=20):
    """`steps` indexes into `labels`: passes over all images, each in `order`, until `steps`.
    shuffled: a random permutation; interleaved: the classes take turns image by image; blocked:
    the classes take turns in runs of `run_length` images. Within a class the images come in
    random order; a class that runs out leaves the turns to the others."""
    labels = np.asarray(labels)
    if order not in ORDERS:
        raise ValueError("order must be one of %s, got %r" % (", ".join(ORDERS), order))
    if order == "blocked" and run_length < 1:
        raise ValueError("run_length must be at least 1, got %r" % run_length)
    if steps < 1 or not len(labels):
        raise ValueError("a training sequence needs images and at least one step")
    rng = np.random.default_rng(0) if rng is None else rng
    take = 1 if order == "interleaved" else run_length
    out = []
    while len(out) < steps:
        if order == "shuffled":
            out.extend(rng.permutation(len(labels)))
            continue
        queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
        while any(queues):
            for q in queues:
                out.extend(q[:take])
                del q[:take]
    return np.asarray(out[:steps], np.int64)


def train(dev, images, labels, sequence, lr=None, desc="train", checkpoint=None, at=()):
    """Trains the device's model on images[sequence] (labels[sequence]), one step per image, with
    a progress bar; calls checkpoint(step, trace) after the steps in `at`. Returns the trace: per
    step the image (its index in `images`), its label, the label predicted before the update, the loss."""
    last = len(sequence)
    trace = {"image": [], "label": [], "predicted": [], "loss": []}
    bar = ProgressBar(last, desc, unit="img")
    for k, i in enumerate(sequence, 1):
        result = dev.train_step(images[i], int(labels[i]), lr=lr)
        trace["image"].append(int(i))
        trace["label"].append(int(labels[i]))
        trace["predicted"].append(int(result.label_pred))
        trace["loss"].append(float(result.loss))
        hits = np.equal(trace["label"][-50:], trace["predicted"][-50:])
        bar.set_postfix_str("loss %.3f acc %.0f%%" % (np.mean(trace["loss"][-50:]), 100 * hits.mean()))
        bar.update_to(k)
        if checkpoint and k in at:
            bar.close()
            checkpoint(k, trace)
            if k != last:
                bar = ProgressBar(last, desc, unit="img", initial=k)
    if not (checkpoint and last in at):
        bar.close()
    return trace


def execute(dev, run, val_images, val_labels, eval_steps, desc):
    """Loads run.model, evaluates it at step 0, trains along run.sequence, evaluating after the
    steps in `eval_steps` and the last. Returns (records, trace): one record per evaluation (step,
    train_loss = mean of the last 50 training losses, val_loss, Device.evaluate()'s metrics), and train()'s trace."""
    dev.load_model(run.model, progress=False)
    records = []

    def checkpoint(step, trace):
        metrics = dev.evaluate(val_images, val_labels, progress="%s: evaluate @ step %d" % (desc, step))
        recent = trace["loss"][-50:]
        records.append(dict(step=step, train_loss=float(np.mean(recent)) if recent else None,
                            val_loss=metrics.pop("loss"), **metrics))

    checkpoint(0, {"loss": []})
    at = set(eval_steps) | {len(run.sequence)}
    trace = train(dev, run.images, run.labels, run.sequence, run.lr, desc + ": train", checkpoint, at)
    return records, trace


# ---------------- models and data ----------------

def _is_compiled(source):
    from .model import Model

    if isinstance(source, Model):
        return True
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    return path is not None and os.path.isfile(path) and not path.endswith(".tflite")


def _input_shape(setup):
    from .compiler import DEFAULT_INPUT_SHAPE, ZOO
    from .model import Model

    source = setup.model
    if isinstance(source, str) and source in ZOO:
        return tuple(setup.input_shape or DEFAULT_INPUT_SHAPE)
    if setup.input_shape is not None:
        raise ValueError("input_shape is for zoo models; %s fixes its own" % (source,))
    if isinstance(source, Model):
        return source.input_shape
    if _is_compiled(source):
        return Model.load(source).input_shape
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(".tflite"):
        from .frontends import tflite

        g = tflite.load(source)
        return g.tensors[g.input].shape
    raise ValueError("unknown model %r: a zoo name, a .tflite file, a compiled Model or a model blob file" % (source,))


def _update(setup, update=None):
    """What trains: `update`, else setup.update, else the paper's "49kb" for a zoo model (None for
    a compiled model: its blob says)."""
    from .compiler import ZOO

    update = setup.update if update is None else update
    if _is_compiled(setup.model):
        if update is not None:
            raise ValueError("%s is compiled: its blob fixes what trains (no update)" % (setup.model,))
        return None
    if update is None:
        if setup.model not in ZOO:
            raise ValueError("say what trains (update: 'bias', 'last:N', 'full'): %s has no paper schemes"
                             % (setup.model,))
        update = "49kb"
    return update


def build_model(setup, num_classes, update=None):
    """The Model a run loads: setup.model compiled with a `num_classes` head, training as
    _update() says, or the compiled model as given."""
    from .compiler import compile
    from .model import Model

    update = _update(setup, update)
    if update is None:
        model = setup.model if isinstance(setup.model, Model) else Model.load(setup.model)
        if model.num_classes != num_classes:
            raise TinyBridgeError("the model has %d classes, the data %d" % (model.num_classes, num_classes))
        return model
    return compile(setup.model, num_classes=num_classes, update=update, input_shape=setup.input_shape)


def _data_spec(setup):
    return setup.data if isinstance(setup.data, datasets.DataSpec) else datasets.parse_spec(setup.data)


def load_data(setup, shape):
    """setup.data as a Split at `shape`."""
    if isinstance(setup.data, datasets.Split):
        return setup.data
    return _data_spec(setup).load(shape, train_per_class=setup.train_per_class, val_per_class=setup.val_per_class,
                                  seed=setup.seed)


# ---------------- the kinds: their runs ----------------

def _sequence(setup, labels, steps=None, order=None):
    steps = steps or setup.steps or setup.epochs * len(labels)
    return training_sequence(labels, steps, order or setup.order, np.random.default_rng(setup.seed), setup.run_length)


def _runs_steps(setup, data, values):
    if values is not None:
        raise ValueError("the steps experiment has one run: give its evaluation steps as eval_steps")
    model = build_model(setup, len(data.classes))
    return [Run("steps", None, model, data.train_images, data.train_labels, _sequence(setup, data.train_labels),
                setup.lr)]


def _runs_samples(setup, data, values):
    counts = np.bincount(data.train_labels, minlength=len(data.classes))
    most = int(counts.max())
    if values is None:
        values = [n for n in DEFAULT_VALUES["samples"] if n < most] + [most]
    if any(int(n) < 1 for n in values):
        raise ValueError("sample counts must be at least 1, got %s" % (list(values),))
    model = build_model(setup, len(data.classes))
    # the same number of steps for every run: only the number of distinct images differs
    steps = setup.steps or setup.epochs * min(int(max(values)), most) * len(data.classes)
    rank = np.empty(len(data.train_labels), np.int64)   # each image's place among its class's
    for c in range(len(data.classes)):
        rank[data.train_labels == c] = np.arange(counts[c])
    runs = []
    for n in values:
        keep = np.flatnonzero(rank < int(n))   # nested subsets: the first n of each class
        runs.append(Run("%d per class" % n, int(n), model, data.train_images[keep], data.train_labels[keep],
                        _sequence(setup, data.train_labels[keep], steps), setup.lr,
                        extra={"train_images": int(len(keep))}))
    return runs


def _runs_threshold(setup, data, values):
    values = DEFAULT_VALUES["threshold"] if values is None else values
    persons = datasets.read_coco_persons(_data_spec(setup).path)
    model = build_model(setup, len(data.classes))
    runs = []
    for t in values:
        labels = persons.labels(t)[data.train_ids]
        name = "COCO labels" if t is None else "area > %g" % t
        runs.append(Run(name, t, model, data.train_images, labels, _sequence(setup, labels), setup.lr, extra={
            "train_positive_share": float(labels.mean()),
            "train_label_agreement": float(np.mean(labels == data.train_labels))}))
    return runs


def _runs_order(setup, data, values):
    values = DEFAULT_VALUES["order"] if values is None else values
    model = build_model(setup, len(data.classes))
    return [Run(order, order, model, data.train_images, data.train_labels,
                _sequence(setup, data.train_labels, order=order), setup.lr) for order in values]


def _runs_lr(setup, data, values):
    values = DEFAULT_VALUES["lr"] if values is None else values
    model = build_model(setup, len(data.classes))
    sequence = _sequence(setup, data.train_labels)
    return [Run("lr %g" % lr, float(lr), model, data.train_images, data.train_labels, sequence, float(lr))
            for lr in values]


def default_schemes(source):
    """The scheme experiment's updates: the classifier alone, every bias, and a zoo model's paper schemes."""
    from .compiler import ZOO, zoo_schemes

    paper = sorted(zoo_schemes(source), key=lambda k: int(k[:-2])) if source in ZOO else []
    return ["last:1", "bias"] + paper


def _runs_scheme(setup, data, values):
    if _is_compiled(setup.model):
        raise ValueError("the scheme experiment compiles the model once per scheme: give a zoo name or a .tflite file")
    if setup.update is not None:
        raise ValueError("the scheme experiment sweeps the update: give the schemes as its values")
    values = default_schemes(setup.model) if values is None else values
    sequence = _sequence(setup, data.train_labels)
    runs = []
    for update in values:
        model = build_model(setup, len(data.classes), update=update)
        memory = model.memory
        runs.append(Run(str(update), str(update), model, data.train_images, data.train_labels, sequence, setup.lr,
                        extra={"sram": memory.sram, "params": memory.params, "flash": memory.flash}))
    return runs


# ---------------- run ----------------

def run(kind, setup=None, values=None, stem=None):
    """Runs experiment `kind` (KINDS) with `setup` over `values` (None: DEFAULT_VALUES), writes
    STEM.csv, STEM-results.json and STEM.png (STEM: the kind) into setup.out, prints a table and
    returns the results: {experiment, setup, data, device, runs: [{name, value, summary, records,
    trace}]}."""
    if kind not in KINDS:
        raise ValueError("unknown experiment %r: one of %s" % (kind, ", ".join(KINDS)))
    setup = Setup() if setup is None else setup
    if setup.order not in ORDERS:
        raise ValueError("order must be one of %s, got %r" % (", ".join(ORDERS), setup.order))
    if values is not None and not len(values):
        raise ValueError("no values to run")
    if setup.eval_every is not None and setup.eval_every < 1:
        raise ValueError("eval_every must be at least 1, got %d" % setup.eval_every)
    if kind == "threshold" and (isinstance(setup.data, datasets.Split)
                                or _data_spec(setup).kind not in ("vww", "coco-person")):
        raise TinyBridgeError("the threshold experiment needs COCO annotations: data vww:... or coco-person:...")
    data = load_data(setup, _input_shape(setup))
    runs = {"steps": _runs_steps, "samples": _runs_samples, "threshold": _runs_threshold, "order": _runs_order,
            "lr": _runs_lr, "scheme": _runs_scheme}[kind](setup, data, values)
    eval_steps = set(setup.eval_steps or (DEFAULT_EVAL_STEPS if kind == "steps" else ()))
    every = setup.eval_every or (ORDER_EVAL_EVERY if kind == "order" else None)
    if every:
        eval_steps.update(range(every, max(len(r.sequence) for r in runs), every))
    print("tinybridge %s: %d run%s on device %r; data %s: %d training / %d validation images, "
          "classes %s" % ("experiment " + kind if stem is None else stem, len(runs), "s" * (len(runs) > 1),
                          setup.device, _data_name(setup),
                          len(data.train_labels), len(data.val_labels), ", ".join(data.classes)))
    results = {"experiment": kind, "setup": _setup_record(setup, kind), "data": {
        "classes": list(data.classes), "train_images": int(len(data.train_labels)),
        "val_images": int(len(data.val_labels)),
        "val_positive_share": float(np.mean(data.val_labels == 1)) if len(data.classes) == 2 else None},
        "runs": []}
    from .device import connect

    with connect(setup.device, **setup.connect_options) as dev:
        info = dev.info()
        for n, r in enumerate(runs, 1):
            desc = "run %d/%d %s" % (n, len(runs), r.name) if len(runs) > 1 else r.name
            if r.model.memory.sram > info["arena_bytes"]:
                print("%s: needs %d bytes of SRAM, the device has %d: not run" % (desc, r.model.memory.sram,
                                                                                  info["arena_bytes"]))
                results["runs"].append(dict(name=r.name, value=r.value, summary=dict(r.extra, fits=False),
                                            records=[], trace=None))
                continue
            started = time.monotonic()
            records, trace = execute(dev, r, data.val_images, data.val_labels, eval_steps, desc)
            final = records[-1]
            lr = r.lr if r.lr is not None else float(np.float32(dev.model.default_lr))
            seconds = round(time.monotonic() - started, 1)
            summary = dict(r.extra, steps=len(r.sequence), lr=round(lr, 6), seconds=seconds,
                           **{k: final[k] for k in ("accuracy", "precision", "recall", "f1", "val_loss",
                                                    "positive_share")})
            if kind == "order" and final["positive_share"] is not None:
                # the swing once the model has learned something: over the second half of training
                shares = [rec["positive_share"] for rec in records if rec["step"] > len(r.sequence) / 2]
                summary.update(positive_share_min=min(shares), positive_share_max=max(shares))
            results["runs"].append(dict(name=r.name, value=r.value, summary=summary, records=records, trace=trace))
        stats = dev.stats()
    results["device"] = {"board": info["board"], "firmware_version": info["firmware_version"],
                         "last_step": stats["last_step"], "counter_unit": stats["counter_unit"],
                         "arena_high_water": stats["arena_high_water"], "stack_high_water": stats["stack_high_water"]}
    print(table(results))
    print("device %s: last training step %d %s, arena high-water %d bytes, stack high-water %d bytes"
          % (info["board"], stats["last_step"], stats["counter_unit"], stats["arena_high_water"],
             stats["stack_high_water"]))
    write(results, setup.out, stem or kind)
    return results


def _data_name(setup):
    return "(a Split)" if isinstance(setup.data, datasets.Split) else _data_spec(setup).text


def _setup_record(setup, kind):
    record = {f.name: getattr(setup, f.name) for f in fields(setup)}
    record["data"] = _data_name(setup)
    if isinstance(setup.model, (str, os.PathLike)):
        record["model"] = os.fspath(setup.model)
    else:   # a compiled Model
        record["model"] = "a %s model" % "x".join(str(d) for d in setup.model.input_shape)
    update = "swept" if kind == "scheme" else _update(setup)
    record["update"] = "as compiled" if update is None else str(update)
    return record


# ---------------- output ----------------

def table(results):
    """The results as text: per evaluation for one run (steps), else per run (its last evaluation)."""
    runs = results["runs"]
    if results["experiment"] == "steps":
        lines = ["%6s  %8s  %9s  %6s  %6s  %8s" % ("step", "accuracy", "precision", "recall", "F1", "val loss")]
        for r in runs[0]["records"]:
            lines.append("%6d  %8.3f  %9.3f  %6.3f  %6.3f  %8.3f"
                         % (r["step"], r["accuracy"], r["precision"], r["recall"], r["f1"], r["val_loss"]))
        return "\n".join(lines)
    extras = [k for k in runs[0]["summary"] if k not in ("steps", "lr", "seconds", "accuracy", "precision", "recall",
                                                         "f1", "val_loss", "positive_share", "fits")]
    width = max(len("run"), *(len(r["name"]) for r in runs))
    head = ["%-*s" % (width, "run"), "%6s" % "steps", "%8s" % "accuracy", "%9s" % "precision", "%6s" % "recall",
            "%6s" % "F1", "%8s" % "val loss"] + ["%s" % k for k in extras]
    lines = ["  ".join(head)]
    for r in runs:
        s = r["summary"]
        if not s.get("fits", True):
            lines.append("%-*s  does not fit the device's SRAM (%s bytes)" % (width, r["name"], s["sram"]))
            continue
        cells = ["%-*s" % (width, r["name"]), "%6d" % s["steps"], "%8.3f" % s["accuracy"], "%9.3f" % s["precision"],
                 "%6.3f" % s["recall"], "%6.3f" % s["f1"], "%8.3f" % s["val_loss"]]
        cells += [("%*.3f" if isinstance(s[k], float) else "%*s") % (len(k), s[k]) for k in extras]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def write(results, out, stem):
    """STEM.csv (one row per run and evaluation), STEM-results.json and STEM.png into `out`."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, stem + suffix) for suffix in (".csv", "-results.json", ".png")]
    with open(paths[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results["runs"]:
            for rec in r["records"]:
                w.writerow([results["experiment"], r["name"], "" if r["value"] is None else r["value"], rec["step"]]
                           + [_csv_number(rec[k]) for k in CSV_COLUMNS[4:]])
    with open(paths[1], "w") as f:
        json.dump(results, f, indent=1)
    plots.plot_experiment(results, paths[2])
    print("wrote %s" % ", ".join(paths))


def _csv_number(value):
    return "" if value is None else "%.6g" % value


def evaluation_report(result, classes):
    """Device.evaluate()'s result as text: accuracy and loss, precision / recall / F1 / support per class
    and averaged, the confusion matrix."""
    width = max(len("binary"), *(len(c) for c in classes))
    pc = result["per_class"]
    lines = ["accuracy %.3f  loss %.3f  (%d images)" % (result["accuracy"], result["loss"], result["n"]),
             "%-*s  %9s  %6s  %6s  %7s" % (width, "class", "precision", "recall", "F1", "support")]
    row = "%-*s  %9.3f  %6.3f  %6.3f  %7d"
    for c, name in enumerate(classes):
        lines.append(row % (width, name, pc["precision"][c], pc["recall"][c], pc["f1"][c], pc["support"][c]))
    lines.append(row % (width, result["average"], result["precision"], result["recall"], result["f1"], result["n"]))
    if result["average"] == "binary":
        lines.append("(binary: the metrics of class %r)" % classes[1])
    lines.append("confusion (rows: true class, columns: predicted)")
    names = ["%d %s" % (c, name) for c, name in enumerate(classes)]
    width = max(len(name) for name in names)
    cell = max(5, *(len(str(v)) for row in result["confusion"] for v in row))
    lines.append("%-*s  %s" % (width, "", " ".join("%*d" % (cell, c) for c in range(len(classes)))))
    for name, row in zip(names, result["confusion"]):
        lines.append("%-*s  %s" % (width, name, " ".join("%*d" % (cell, v) for v in row)))
    return "\n".join(lines)


def write_evaluation(result, facts, out):
    """eval-results.json (facts and the whole result) and eval.csv (per class and averaged) into `out`."""
    os.makedirs(out, exist_ok=True)
    classes = facts["classes"]
    paths = [os.path.join(out, "eval-results.json"), os.path.join(out, "eval.csv")]
    with open(paths[0], "w") as f:
        json.dump(dict(facts, **result), f, indent=1)
    with open(paths[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("class", "precision", "recall", "f1", "support"))
        pc = result["per_class"]
        for c, name in enumerate(classes):
            w.writerow([name] + [_csv_number(pc[k][c]) for k in ("precision", "recall", "f1")] + [pc["support"][c]])
        w.writerow([result["average"]] + [_csv_number(result[k]) for k in ("precision", "recall", "f1")]
                   + [result["n"]])
    print("wrote %s" % ", ".join(paths))
