"""The experiments' figures (matplotlib, written as PNG): plot_experiment picks the one of a kind."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(results):
    s = results["setup"]
    return "%s, update %s, on %s, data %s" % (s["model"], s["update"], s["device"], s["data"])


def _rolling(values, window):
    """Mean of each `window` values ending at each step (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_experiment(results, path):
    """STEM.png of experiment results (tinybridge.experiments.run)."""
    kind = results["experiment"]
    if kind == "steps":
        plot_steps(results, path)
    elif kind == "order":
        plot_order(results, path)
    else:
        plot_sweep(results, path)


def plot_steps(results, path):
    """Validation accuracy and F1 against training steps, with the validation loss (cf. the paper's
    Figure 5: on-device training curves)."""
    plt = _pyplot()
    records = results["runs"][0]["records"]
    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [100 * r["accuracy"] for r in records], "o-", label="accuracy")
    ax1.plot(steps, [100 * r["f1"] for r in records], "s--", label="F1")
    ax1.set_xlabel("training steps (images)")
    ax1.set_ylabel("validation %")
    ax1.set_ylim(0, 100)
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.plot(steps, [r["val_loss"] for r in records], "o-", color="tab:red", label="validation loss")
    ax2.set_xlabel("training steps (images)")
    ax2.set_ylabel("cross-entropy")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle("On-device fine-tuning: " + _title(results))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(results, path):
    """Left: the last evaluation's accuracy and F1 per run (lr and samples on a log axis); right:
    validation accuracy against training steps, one line per run."""
    plt = _pyplot()
    kind = results["experiment"]
    runs = [r for r in results["runs"] if r["records"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    numeric = kind in ("lr", "samples")
    x = [r["value"] for r in runs] if numeric else list(range(len(runs)))
    ax1.plot(x, [100 * r["summary"]["accuracy"] for r in runs], "o-", label="accuracy")
    ax1.plot(x, [100 * r["summary"]["f1"] for r in runs], "s--", label="F1")
    if kind == "threshold":
        ax1.plot(x, [100 * r["summary"]["train_positive_share"] for r in runs], "^:", color="gray",
                 label="person share of training labels")
    if numeric:
        ax1.set_xscale("log")
        ax1.set_xlabel({"lr": "learning rate", "samples": "training images per class"}[kind])
    else:
        labels = [r["name"] for r in runs]
        if kind == "scheme":
            labels = ["%s\n%.0f KB" % (r["name"], r["summary"]["sram"] / 1024) for r in runs]
        ax1.set_xticks(x)
        ax1.set_xticklabels(labels, rotation=30 if kind == "threshold" else 0, fontsize=8)
        ax1.set_xlabel({"scheme": "update scheme (planned SRAM)", "threshold": "training labels"}.get(kind, kind))
    ax1.set_ylabel("validation % after training")
    ax1.set_ylim(0, 100)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    for r in runs:
        ax2.plot([rec["step"] for rec in r["records"]], [100 * rec["accuracy"] for rec in r["records"]], ".-",
                 label=r["name"])
    ax2.set_xlabel("training steps (images)")
    ax2.set_ylabel("validation accuracy %")
    ax2.set_ylim(0, 100)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.suptitle("%s experiment: %s" % (kind, _title(results)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_order(results, path):
    """How the label order moves the model's predictions. Left: the share of validation images
    predicted positive (two classes; else the largest share of one predicted class) against steps,
    the true share dashed. Middle: on the training stream, the share of positive predictions
    (two classes; else of predictions equal to the previous image's label), rolling over
    Setup.run_length steps. Right: validation accuracy."""
    plt = _pyplot()
    binary = len(results["data"]["classes"]) == 2
    window = results["setup"]["run_length"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in results["runs"]:
        steps = [rec["step"] for rec in r["records"]]
        share = [rec["positive_share"] if binary else max(rec["predicted_shares"]) for rec in r["records"]]
        line, = axes[0].plot(steps, [100 * v for v in share], ".-", label=r["name"])
        predicted, labels = r["trace"]["predicted"], r["trace"]["label"]
        follows = predicted if binary else [int(p == q) for p, q in zip(predicted[1:], labels)]
        axes[1].plot(range(1, len(follows) + 1), [100 * v for v in _rolling(follows, window)], color=line.get_color(),
                     label=r["name"])
        axes[2].plot(steps, [100 * rec["accuracy"] for rec in r["records"]], ".-", color=line.get_color(),
                     label=r["name"])
    if binary and results["data"]["val_positive_share"] is not None:
        axes[0].axhline(100 * results["data"]["val_positive_share"], ls="--", color="gray", label="true share")
    axes[0].set_ylabel("validation images predicted %s %%" % ("positive" if binary else "as one class (largest)"))
    axes[1].set_ylabel("training images predicted %s %% (rolling %d)"
                       % ("positive" if binary else "as the previous label", window))
    axes[2].set_ylabel("validation accuracy %")
    for ax in axes:
        ax.set_xlabel("training steps (images)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Label order: " + _title(results), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
