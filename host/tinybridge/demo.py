"""`tinybridge demo`: an ImageNet-pretrained network learns a new task on the device, image by image.

The paper's experiment in small: a zoo model with a new 2-class head and one of the paper's sparse
schemes is fine-tuned on the device on real person-like / not images (faces vs non-faces,
datasets.lfw_faces), evaluated on held-out images at steps 0, 50, 100, 150, 200 and after the last
epoch. Results: a table on stdout, demo-results.json (one record per evaluation) and demo.png.
"""
import json
import os

import numpy as np

from .datasets import lfw_faces
from .metrics import classification_metrics
from .progress import progress_bar

EVAL_STEPS = (0, 50, 100, 150, 200)


def evaluate(dev, images, labels, desc):
    """Metrics of the device's predictions and the mean cross-entropy of its logits."""
    bar = progress_bar(len(images), desc, unit="img")
    predictions, losses = [], []
    for i, (img, label) in enumerate(zip(images, labels), 1):
        p = dev.infer(img)
        z = p.scores.astype(np.float64) - p.scores.max()
        losses.append(np.log(np.exp(z).sum()) - z[label])
        predictions.append(p.label)
        bar.update_to(i)
    bar.close()
    result = classification_metrics(labels, predictions, 2)
    return {k: result[k] for k in ("accuracy", "precision", "recall", "f1")}, float(np.mean(losses))


def run(device="sim", model="mcunet-5fps", update="49kb", epochs=2, eval_steps=EVAL_STEPS, lr=None,
        out=".", seed=0, train_images=None, val_images=None, connect_options=None):
    """Fine-tunes on the device and writes the results into `out`; returns the evaluation records
    (step, accuracy, precision, recall, f1, loss = validation cross-entropy, train_loss = mean of
    the last 50 training losses). train_images / val_images: use only that many (quick runs)."""
    from . import compile, connect

    compiled = compile(model, num_classes=2, update=update)
    data = lfw_faces(compiled.input_shape, seed=seed)
    data.train_images, data.train_labels = data.train_images[:train_images], data.train_labels[:train_images]
    data.val_images, data.val_labels = data.val_images[:val_images], data.val_labels[:val_images]
    n_train = len(data.train_labels)
    last_step = epochs * n_train
    print("tinybridge demo: %s with a new 2-class head, update %r, on device %r\n"
          "data: %d training / %d validation images, %s vs %s (scikit-image's LFW subset)"
          % (model, update, device, n_train, len(data.val_labels), data.classes[1], data.classes[0]))
    records, train_losses = [], []
    rng = np.random.default_rng(seed)

    def checkpoint(dev, step):
        metrics, val_loss = evaluate(dev, data.val_images, data.val_labels, "evaluate @ step %d" % step)
        recent = train_losses[-50:]
        records.append(dict(step=step, loss=val_loss,
                            train_loss=float(np.mean(recent)) if recent else None, **metrics))

    with connect(device, **(connect_options or {})) as dev:
        dev.load_model(compiled, progress=True)
        checkpoint(dev, 0)
        for epoch in range(1, epochs + 1):
            bar = progress_bar(n_train, "train epoch %d/%d" % (epoch, epochs), unit="img")
            for k, i in enumerate(rng.permutation(n_train), 1):
                result = dev.train_step(data.train_images[i], int(data.train_labels[i]), lr=lr)
                train_losses.append(result.loss)
                bar.set_postfix_str("loss %.3f" % np.mean(train_losses[-50:]))
                bar.update_to(k)
                if result.step in eval_steps and result.step != last_step:
                    bar.close()
                    checkpoint(dev, result.step)
                    bar = progress_bar(n_train, "train epoch %d/%d" % (epoch, epochs), unit="img", initial=k)
            bar.close()
        checkpoint(dev, last_step)
        stats = dev.stats()
    print(table(records))
    print("device: last training step %s, arena high-water %d bytes, stack high-water %d bytes"
          % (_count(stats), stats["arena_high_water"], stats["stack_high_water"]))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "demo-results.json"), "w") as f:
        json.dump(dict(model=model, update=update, device=device, records=records), f, indent=1)
    plot(records, os.path.join(out, "demo.png"), "%s, update %s, on %s" % (model, update, device))
    print("wrote %s and %s" % (os.path.join(out, "demo-results.json"), os.path.join(out, "demo.png")))
    return records


def _count(stats):
    return "%d %s" % (stats["last_step"], stats["counter_unit"])


def table(records):
    lines = ["%6s  %8s  %9s  %6s  %6s  %8s" % ("step", "accuracy", "precision", "recall", "F1", "val loss")]
    for r in records:
        lines.append("%6d  %8.3f  %9.3f  %6.3f  %6.3f  %8.3f"
                     % (r["step"], r["accuracy"], r["precision"], r["recall"], r["f1"], r["loss"]))
    return "\n".join(lines)


def plot(records, path, title):
    """Validation accuracy and F1 against training steps, with the validation loss (cf. the paper's
    Figure 5: on-device training curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [100 * r["accuracy"] for r in records], "o-", label="accuracy")
    ax1.plot(steps, [100 * r["f1"] for r in records], "s--", label="F1")
    ax1.set_xlabel("training steps (images)")
    ax1.set_ylabel("validation %")
    ax1.set_ylim(0, 100)
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.plot(steps, [r["loss"] for r in records], "o-", color="tab:red", label="validation loss")
    ax2.set_xlabel("training steps (images)")
    ax2.set_ylabel("cross-entropy")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle("On-device fine-tuning: " + title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
