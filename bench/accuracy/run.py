"""Top-1 accuracy of training a compiled zoo model on a real transfer task, in host simulation:
int8 + QAS (what the device runs, tinybridge.simulate), int8 without QAS (the paper's baseline,
`Simulator(model, qas=False)`) and float fine-tuning of the same parameters (tinybridge.float_twin).
Prints Markdown tables (docs/benchmarks.md, "Accuracy").

    python3 bench/accuracy/run.py                 # the recorded run
    python3 bench/accuracy/run.py --tasks lfw --seeds 1 --epochs 1 --lrs 0.01    # a quick look

Every method trains the same network from the same start (the compiled model's zero head) on the
same images in the same order: batch size 1 (as on the device), `--epochs` passes over the
training images in a seeded random order, learning rate decayed by a cosine from its peak to near 0.
Each method's peak learning rate is chosen on a validation split of the training images (the
best accuracy, ties to the lower rate: a rate at the edge of divergence may win a tie on one seed
and fail on the next), then the method trains on all training images once per seed and is scored
on the task's test images.
"""
import argparse
import math
import sys
import time

import numpy as np

from tinybridge import compiler, datasets, simulate

SHAPE = (128, 128, 3)
METHODS = ("int8 + QAS", "int8 no QAS", "float")
# Peak learning rates swept for QAS and float SGD (both step the dequantized parameters by lr · G).
# Without QAS an int8 parameter's step shrinks by its scale squared, so that method sweeps the rates
# that step the classifier as these do (no_qas_lr) and ten times the largest: there the classifier
# alone would diverge, but the biases and the other layers' weights, whose steps shrink more, move.
LRS = (0.003, 0.01, 0.03)


class Int8Trainer:
    """The device's training step in host simulation, with or without QAS."""

    def __init__(self, model, qas, seed):
        model.graph.seed = seed + 1         # the stochastic rounding's xorshift32 state (nonzero)
        self.model = model
        self.sim = simulate.Simulator(model, qas=qas)

    def input(self, image):
        return self.model.input_tensor(image)

    def step(self, x, label, lr):
        self.sim.train_step(x, label, lr)

    def logits(self, images):
        out = []
        for image in images:
            r = self.sim.infer(self.input(image))
            out.append(r.scale * (r.logits.astype(np.float64) - r.zero_point))
        return np.array(out)


class FloatTrainer:
    """Float SGD of the same parameters of the same network (tinybridge.float_twin)."""

    def __init__(self, model):
        from tinybridge.float_twin import FloatTwin

        self.model = model
        self.twin = FloatTwin(model.graph)

    def input(self, image):
        return self._inputs([image])

    def step(self, x, label, lr):
        self.twin.sgd_step(x, [label], lr)

    def logits(self, images, batch=50):
        import torch

        with torch.no_grad():
            return np.concatenate([self.twin(self._inputs(images[i:i + batch])).double().numpy()
                                   for i in range(0, len(images), batch)])

    def _inputs(self, images):
        return self.twin.inputs([self.model.input_tensor(im) for im in images])


def trainer(method, model, seed):
    if method == "float":
        return FloatTrainer(model)
    return Int8Trainer(model, method == "int8 + QAS", seed)


def no_qas_lr(model, lr):
    """The learning rate without QAS that steps the classifier's int8 weights as QAS does at lr:
    lr / s_W² (the median of the classifier's weight scales)."""
    s_w = float(np.median(model.graph.ops[-1].weight_scales))
    return lr / s_w ** 2


def cosine_lr(peak, step, total):
    """Cosine decay from peak at step 0 to just above 0 at the last step (never 0: the simulator
    reads lr 0 as the model's default)."""
    return peak * 0.5 * (1 + math.cos(math.pi * step / total))


def train(t, images, labels, *, lr, epochs, seed):
    """`epochs` passes of batch-size-1 SGD in a seeded random order (the same for every method)."""
    order = np.random.default_rng(seed)
    total = epochs * len(labels)
    step = 0
    for _ in range(epochs):
        for i in order.permutation(len(labels)):
            t.step(t.input(images[i]), int(labels[i]), cosine_lr(lr, step, total))
            step += 1


def evaluate(t, images, labels):
    """Top-1 accuracy on images (a diverged network's non-finite logits count as wrong)."""
    z = t.logits(images)
    return float(((z.argmax(axis=1) == labels) & np.isfinite(z).all(axis=1)).mean())


def run(name, scheme, num_classes, method, split, *, lr, epochs, seed):
    """Top-1 accuracy on split's test images (val_*) after training on its training images."""
    model = compiler.compile(name, num_classes=num_classes, update=scheme)
    t = trainer(method, model, seed)
    train(t, split.train_images, split.train_labels, lr=lr, epochs=epochs, seed=seed)
    return evaluate(t, split.val_images, split.val_labels)


def lr_grid(method, model, lrs):
    """The peak learning rates `method` sweeps, as (lr, the QAS-equivalent lr of the classifier)."""
    if method != "int8 no QAS":
        return [(lr, lr) for lr in lrs]
    return [(no_qas_lr(model, lr), lr) for lr in sorted(lrs) + [10 * max(lrs)]]


def validation_split(split, fraction, seed):
    """The training images split again, stratified: (1 - fraction) to train, fraction to validate."""
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(split.train_labels == c))[:round(fraction * n)]
                          for c, n in zip(*np.unique(split.train_labels, return_counts=True))])
    keep = np.setdiff1d(np.arange(len(split.train_labels)), val)
    return datasets.Split(split.train_images[keep], split.train_labels[keep], split.train_images[val],
                          split.train_labels[val], split.classes)


# (training, test) images per class of each task by default; LFW has 70 and 30
TASK_SIZES = {"lfw": (70, 30), "fashion": (50, 50)}


def load_task(task, train_per_class=None, test_per_class=None):
    """The task's fixed split (datasets; seed 0) as a datasets.Split whose val_* are the test images,
    with the first `train_per_class` / `test_per_class` images of each class (default TASK_SIZES)."""
    if task not in TASK_SIZES:
        raise ValueError("unknown task %r (%s)" % (task, ", ".join(TASK_SIZES)))
    n_train = TASK_SIZES[task][0] if train_per_class is None else train_per_class
    n_test = TASK_SIZES[task][1] if test_per_class is None else test_per_class
    if task == "fashion":
        return datasets.fashion_mnist(SHAPE, n_train_per_class=n_train, n_val_per_class=n_test)
    split = datasets.lfw_faces(SHAPE)
    train = _first_per_class(split.train_labels, n_train)
    test = _first_per_class(split.val_labels, n_test)
    return datasets.Split(split.train_images[train], split.train_labels[train], split.val_images[test],
                          split.val_labels[test], split.classes)


def _first_per_class(labels, n):
    """Indexes of the first n images of each class, in their order."""
    seen = {}
    keep = []
    for i, c in enumerate(labels):
        seen[c] = seen.get(c, 0) + 1
        if seen[c] <= n:
            keep.append(i)
    return np.array(keep)


def _mean_spread(values):
    values = 100 * np.asarray(values)
    if len(values) == 1:
        return "%.1f" % values[0]
    return "%.1f ± %.1f" % (values.mean(), values.std(ddof=1))


def bench(tasks, models, schemes, methods, *, seeds, epochs, lrs, train_per_class, test_per_class,
          val_fraction=0.2, out=sys.stdout):
    """Runs the sweeps and the final runs; prints their tables to `out`. Returns {(task, model,
    scheme, method): {"lr": the chosen (lr, QAS-equivalent lr), "accuracy": [test top-1 per seed],
    "sweep": {(lr, QAS-equivalent lr): validation top-1}}}."""
    results = {}
    for task in tasks:
        split = load_task(task, train_per_class, test_per_class)
        sweep_split = validation_split(split, val_fraction, seed=0)
        num_classes = len(split.classes)
        for name in models:
            for scheme in schemes:
                grids = {m: lr_grid(m, compiler.compile(name, num_classes=num_classes, update=scheme), lrs)
                         for m in methods}
                for method in methods:
                    began = time.time()
                    sweep = {(lr, equivalent): run(name, scheme, num_classes, method, sweep_split, lr=lr,
                                                   epochs=epochs, seed=0)
                             for lr, equivalent in grids[method]}
                    best = max(sweep, key=lambda k: (sweep[k], -k[0]))
                    accuracy = [run(name, scheme, num_classes, method, split, lr=best[0], epochs=epochs, seed=s)
                                for s in range(seeds)]
                    results[task, name, scheme, method] = dict(lr=best, accuracy=accuracy, sweep=sweep)
                    print("%s %s %s %s: sweep %s; lr %.3g: test %s (%.0f s)" % (
                        task, name, scheme, method, _sweep_text(sweep), best[0],
                        " ".join("%.3f" % a for a in accuracy), time.time() - began), file=sys.stderr, flush=True)
    print_tables(results, methods, out)
    return results


def print_tables(results, methods, out):
    keys = sorted({k[:3] for k in results})
    print("| task | model | scheme | " + " | ".join("%s top-1 %%" % m for m in methods) + " | QAS − float |",
          file=out)
    print("|---|---|---|" + "---|" * len(methods) + "---|", file=out)
    for key in keys:
        cells = [_mean_spread(results[key + (m,)]["accuracy"]) for m in methods]
        gap = ""
        if "int8 + QAS" in methods and "float" in methods:
            gap = "%+.1f" % (100 * (np.mean(results[key + ("int8 + QAS",)]["accuracy"])
                                    - np.mean(results[key + ("float",)]["accuracy"])))
        print("| %s | %s | %s | %s | %s |" % (key + (" | ".join(cells), gap)), file=out)
    print("\nPeak learning rates: the sweep's validation top-1 % of each (without QAS: the QAS-equivalent "
          "rate of the classifier in parentheses), and the chosen one:\n", file=out)
    print("| task | model | scheme | method | sweep: lr → validation top-1 % | chosen lr |", file=out)
    print("|---|---|---|---|---|---|", file=out)
    for key in keys:
        for m in methods:
            r = results[key + (m,)]
            print("| %s | %s | %s | %s | %s | %.3g |" % (key + (m, _sweep_text(r["sweep"]), r["lr"][0])), file=out)


def _sweep_text(sweep):
    return ", ".join("%.3g%s → %.1f" % (lr, "" if lr == equivalent else " (%.3g)" % equivalent, 100 * acc)
                     for (lr, equivalent), acc in sweep.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="lfw,fashion", help="lfw (faces vs non-faces), fashion (Fashion-MNIST)")
    parser.add_argument("--models", default="mcunet-5fps")
    parser.add_argument("--schemes", default="49kb")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="training orders and rounding seeds of the final runs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lrs", default=",".join(str(v) for v in LRS),
                        help="peak learning rates swept for QAS and float (no QAS: see no_qas_lr)")
    parser.add_argument("--train-per-class", type=int, help="training images per class (default: TASK_SIZES)")
    parser.add_argument("--test-per-class", type=int, help="test images per class (default: TASK_SIZES)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error("unknown methods %s (known: %s)" % (sorted(unknown), ", ".join(METHODS)))
    import torch

    torch.set_num_threads(1)    # batch size 1: threads would only contend with other work
    return bench(args.tasks.split(","), args.models.split(","), args.schemes.split(","), methods,
                 seeds=args.seeds, epochs=args.epochs, lrs=[float(v) for v in args.lrs.split(",")],
                 train_per_class=args.train_per_class, test_per_class=args.test_per_class)


if __name__ == "__main__":
    main()
