"""The `tinybridge` command (mpremote-like):

    tinybridge devs                          serial ports that may be boards, and the sim
    tinybridge compile SOURCE [--num-classes N] [--update SCHEME] [--out BLOB] [--report]
                                             compile a model (zoo name, .tflite) and plan its memory
    tinybridge [-d DEV] info                 the device, its limits, its model, its counters
    tinybridge [-d DEV] load BLOB            upload and commit a model blob
    tinybridge [-d DEV] infer IMAGE...       predict image files
    tinybridge [-d DEV] train --data DATA    train the device's model on a dataset's training images
    tinybridge [-d DEV] eval --data DATA     evaluate the device's model on a dataset's validation images
    tinybridge sim [--port N]                serve the sim device on TCP for any serial tool
    tinybridge [-d DEV] demo [--out DIR]     fine-tune MCUNet on the device: faces vs not, with a plot
    tinybridge [-d DEV] experiment KIND [--data DATA] [--out DIR]
                                             the paper's experiments: steps, samples, threshold, order,
                                             lr, scheme (docs/experiments.md)
    tinybridge [-d DEV] bench SOURCE [--num-classes N] [--update SCHEME] [--steps N] [--top N]
                                             what a model costs on the device: per inference, per
                                             training step, per op; memory beside the plan

DEV is "sim" (default), "qemu" (the firmware under QEMU), "auto" (first ST-LINK), a serial port or a
pyserial URL. With the sim, --flash FILE keeps its flash between commands. DATA names a dataset
(tinybridge.datasets): lfw, fashion-mnist[:CLASSES], folder:PATH, vww:ANNOTATIONS.json:IMAGES_DIR[:THRESHOLD],
coco-person:ANNOTATIONS.json:IMAGES_DIR. Errors are one line on stderr, exit status 1.
"""
import argparse
import os
import subprocess
import sys
import zlib

import numpy as np

from . import transport
from .datasets import SPEC_FORMS, load_image, parse_spec
from .device import connect
from .errors import TinyBridgeError


def open_device(args):
    return connect(args.device, timeout=args.timeout, flash=args.flash)


def need_model(dev):
    if dev.model is None:
        raise TinyBridgeError("the device has no model: tinybridge load BLOB first")
    return dev.model


def cmd_devs(args):
    from serial.tools import list_ports

    stlinks = {p.device for p in transport.stlink_ports()}
    print("sim\tthe runtime built for this computer")
    for p in list_ports.comports():
        print("%s\t%s%s" % (p.device, p.description, "  [ST-LINK: -d auto]" if p.device in stlinks else ""))


def cmd_info(args):
    with open_device(args) as dev:
        info = dev.info()
        model = info.pop("model")
        for key, value in info.items():
            print("%-18s %s" % (key, value))
        if model:
            for key, value in model.items():
                print("model.%-12s %s" % (key, value))
        else:
            print("model              none")
        for key, value in dev.stats().items():
            print("stats.%-12s %s" % (key, value))


def add_smallest(parser):
    parser.add_argument("--smallest", action="store_true",
                        help="plan the smallest arena (default: the fastest plan that fits the device's 256 KB)")


def arena_budget(args):
    """compile's arena_budget for --smallest: None (the smallest arena), else the device's arena."""
    from .plan import DEVICE_ARENA_BYTES

    return None if args.smallest else DEVICE_ARENA_BYTES


def cmd_compile(args):
    from .compiler import compile as compile_model

    model = compile_model(args.source, num_classes=args.num_classes, update=args.update,
                          arena_budget=arena_budget(args))
    mem = model.memory
    if args.report:
        print(model.plan.report(model.graph))
    if args.out:
        model.save(args.out)
    print("%s: %d classes, blob %d bytes (flash), arena %d bytes (SRAM; params %d), peak at %s"
          % (args.out or args.source, model.num_classes, mem.flash, mem.sram, mem.params, mem.peak_at))


def cmd_load(args):
    with open_device(args) as dev:
        model = dev.load_model(args.blob, progress=True)
        print("loaded %s: input %dx%dx%d, %d classes, arena %d bytes, params %d bytes"
              % (args.blob, *model.input_shape, model.num_classes, model.arena_bytes, model.params_bytes))


def cmd_infer(args):
    with open_device(args) as dev:
        model = need_model(dev)
        for path in args.images:
            p = dev.infer(load_image(path, model.input_shape))
            print("%s\t%d\t%s" % (path, p.label, " ".join("%.3f" % s for s in p.scores)))


def load_split(args, spec, model, part):
    """The images and labels of `part` of the dataset `spec` at the device model's input shape."""
    data = spec.load(model.input_shape, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                     seed=args.seed)
    if len(data.classes) != model.num_classes:
        raise TinyBridgeError("%s has %d classes (%s); the model has %d"
                              % (args.data, len(data.classes), ", ".join(data.classes), model.num_classes))
    return data.part(part), data.classes


def cmd_train(args):
    from . import experiments

    spec = parse_spec(args.data)
    with open_device(args) as dev:
        model = need_model(dev)
        (images, labels), _ = load_split(args, spec, model, args.split)
        steps = args.steps or args.epochs * len(labels)
        sequence = experiments.training_sequence(labels, steps, args.order, np.random.default_rng(args.seed),
                                                 args.run_length)
        experiments.train(dev, images, labels, sequence, lr=args.lr)
        if args.save:
            print("saved checkpoint %d" % dev.save())
        print("trained %d steps on %d images (device step %d)" % (steps, len(labels), dev.info()["model"]["step"]))


def cmd_eval(args):
    from . import experiments

    spec = parse_spec(args.data)
    with open_device(args) as dev:
        model = need_model(dev)
        (images, labels), classes = load_split(args, spec, model, args.split)
        result = dev.evaluate(images, labels, progress="evaluate %s (%s)" % (args.data, args.split))
    print(experiments.evaluation_report(result, classes))
    if args.out:
        experiments.write_evaluation(result, dict(data=args.data, split=args.split, seed=args.seed, classes=classes,
                                                  model_crc32=model.crc32), args.out)


def cmd_sim(args):
    cmd = [transport.sim_executable(), "--tcp", str(args.port)] + (["--flash", args.flash] if args.flash else [])
    try:  # the sim announces its address on stderr
        subprocess.run(cmd, check=False)
    except KeyboardInterrupt:
        pass


def cmd_bench(args):
    import os

    from . import bench, qemu
    from .compiler import compile as compile_model
    from .device import Device
    from .model import Model

    if os.path.isfile(args.source) and not args.source.endswith(".tflite"):
        model = Model.load(args.source)
    else:
        model = compile_model(args.source, num_classes=args.num_classes, update=args.update,
                              arena_budget=arena_budget(args))
    if args.device == "qemu":  # QEMU's UART takes half a minute for a zoo model: bake it into the flash
        dev = Device(qemu.QemuTransport(model=model), timeout=max(args.timeout, 60.0))
    else:
        dev = open_device(args)
    with dev:
        if dev.model is None or dev.model.crc32 != zlib.crc32(model.to_bytes()):
            dev.load_model(model, progress=True)
        images = bench.random_images(model.input_shape, args.steps)
        labels = [i % model.num_classes for i in range(args.steps)]
        result = bench.measure(dev, model, images, labels, steps=args.steps)
    mem = model.memory
    print("%s: %d classes, blob %d bytes, planned arena %d bytes" % (args.source, model.num_classes, mem.flash, mem.sram))
    print(bench.report(result, top=args.top))


def _setup(args):
    from . import experiments

    return experiments.Setup(
        data=args.data, model=args.model, update=args.update, lr=args.lr, epochs=args.epochs, steps=args.steps,
        order=args.order, run_length=args.run_length, eval_steps=args.eval_steps or (), eval_every=args.eval_every,
        train_per_class=args.train_per_class, val_per_class=args.val_per_class, seed=args.seed, device=args.device,
        connect_options=dict(timeout=args.timeout, flash=args.flash), out=args.out,
        input_shape=(args.resolution, args.resolution, 3) if args.resolution else None)


def cmd_demo(args):
    from . import demo

    demo.run(_setup(args))


def cmd_experiment(args):
    from . import experiments

    experiments.run(args.kind, _setup(args), values=getattr(args, "values", None))


def int_list(text):
    return tuple(int(v) for v in text.split(","))


def float_list(text):
    return tuple(float(v) for v in text.split(","))


def thresholds(text):
    """"coco" (plain COCO labels) or fractions of the image area."""
    return tuple(None if v == "coco" else float(v) for v in text.split(","))


def words(text):
    return tuple(text.split(","))


def data_options(split=None, data_default=None):
    """--data and how to split it (train, eval, experiment, demo)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", required=data_default is None, default=data_default,
                   help="dataset: " + " | ".join(SPEC_FORMS) + ("" if data_default is None else
                                                                " (default %s)" % data_default))
    p.add_argument("--train-per-class", type=int, help="training images per class (default: the dataset's)")
    p.add_argument("--val-per-class", type=int, help="validation images per class (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training order (default 0)")
    if split:
        p.add_argument("--split", choices=("train", "val", "all"), default=split,
                       help="which images of the dataset (default %s)" % split)
    return p


def training_options(epochs):
    """How to train (train, experiment, demo)."""
    from .experiments import ORDERS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--epochs", type=int, default=epochs, help="passes over the training images (default %d)" % epochs)
    p.add_argument("--steps", type=int, help="training steps instead (passes repeat in ORDER)")
    p.add_argument("--order", choices=ORDERS, default="shuffled",
                   help="label order: shuffled (default), interleaved (classes take turns), "
                        "blocked (runs of one class)")
    p.add_argument("--run-length", type=int, default=20,
                   help="images per run of one class in blocked order (default 20)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    return p


def experiment_options(model="mcunet-5fps", update=None):
    """The model each run compiles and where results go (experiment, demo)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", default=model, help="zoo model, .tflite file or compiled model blob (default %s)" % model)
    p.add_argument("--update", default=update,
                   help="what trains (default: the paper's 49kb for zoo models; 'bias', 'last:N', ...)")
    p.add_argument("--resolution", type=int, help="zoo models' input R x R x 3 (default 128)")
    p.add_argument("--eval-steps", type=int_list,
                   help="comma-separated steps to evaluate at (step 0 and the last always; steps and demo: "
                        "default 0,50,100,150,200)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps too (order: default 10)")
    p.add_argument("--out", default=".", help="where the CSV, JSON and PNG go (default .)")
    return p


class Parser(argparse.ArgumentParser):
    """Usage errors too are one line on stderr with exit status 1."""

    def error(self, message):
        self.exit(1, "tinybridge: error: %s (%s --help)\n" % (message, self.prog))


def parser():
    from . import demo

    p = Parser(prog="tinybridge", description="Drive a tinybridge device.")
    p.add_argument("-d", "--device", default="sim", help='"sim" (default), "qemu", "auto", a serial port or a pyserial URL')
    p.add_argument("--flash", help="the sim's flash image file (kept between commands)")
    p.add_argument("-t", "--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("devs", help="list serial ports and the sim").set_defaults(run=cmd_devs)
    sub.add_parser("info", help="device, model and counters").set_defaults(run=cmd_info)
    s = sub.add_parser("compile", help="compile a model and plan its memory")
    s.add_argument("source", help='a zoo model ("mbv2-w0.35", "mcunet-5fps", "proxyless-w0.3") or a .tflite file')
    s.add_argument("--num-classes", type=int, default=None,
                   help="a new classifier of N classes (default: keep the source's)")
    s.add_argument("--update", default=None,
                   help='what trains: a scheme of the zoo model ("49kb", ...), "bias", "last:N", "full" '
                        "(default: nothing, an inference model)")
    s.add_argument("--out", help="write the model blob here")
    s.add_argument("--report", action="store_true", help="print the memory plan step by step and its peak")
    add_smallest(s)
    s.set_defaults(run=cmd_compile)
    s = sub.add_parser("load", help="upload and commit a model blob")
    s.add_argument("blob")
    s.set_defaults(run=cmd_load)
    s = sub.add_parser("infer", help="predict image files")
    s.add_argument("images", nargs="+")
    s.set_defaults(run=cmd_infer)
    s = sub.add_parser("train", help="train the device's model on a dataset",
                       parents=[data_options(split="train"), training_options(epochs=1)])
    s.add_argument("--save", action="store_true", help="persist the trained parameters at the end")
    s.set_defaults(run=cmd_train)
    s = sub.add_parser("eval", help="evaluate the device's model on a dataset", parents=[data_options(split="val")])
    s.add_argument("--out", help="write eval-results.json and eval.csv into this folder")
    s.set_defaults(run=cmd_eval)
    s = sub.add_parser("sim", help="serve the sim device on a TCP port")
    s.add_argument("--port", type=int, default=2217)
    s.set_defaults(run=cmd_sim)
    s = sub.add_parser("demo", help="fine-tune a pretrained network on the device, faces vs not (docs/results.md)",
                       parents=[data_options(data_default=demo.SETUP["data"]),
                                training_options(epochs=demo.SETUP["epochs"]),
                                experiment_options(model=demo.SETUP["model"])])
    s.set_defaults(run=cmd_demo)
    s = sub.add_parser("bench", help="what a model costs on the device: per inference, training step and op")
    s.add_argument("source", help='a zoo model ("mbv2-w0.35", "mcunet-5fps", "proxyless-w0.3"), a .tflite file '
                                  "or a compiled model blob")
    s.add_argument("--num-classes", type=int, default=10, help="a new classifier of N classes (default 10)")
    s.add_argument("--update", default="49kb", help='what trains (default "49kb", a paper scheme)')
    s.add_argument("--steps", type=int, default=3, help="inferences and training steps to run (default 3)")
    s.add_argument("--top", type=int, default=None, help="list only the N costliest ops")
    add_smallest(s)
    s.set_defaults(run=cmd_bench)
    s = sub.add_parser("experiment", help="run one of the paper's experiments (docs/experiments.md)")
    kinds = s.add_subparsers(dest="kind", required=True)
    parents = [data_options(data_default="lfw"), training_options(epochs=1), experiment_options()]
    kinds.add_parser("steps", parents=parents, help="one run, evaluated at --eval-steps")
    for kind, summary, option, parse, help_text in (
            ("samples", "the number of training images (same steps)", "--counts", int_list,
             "training images per class, e.g. 5,10,20 (default: 1,2,5,10,20,50,... up to all)"),
            ("threshold", "the person-area threshold of COCO training labels", "--thresholds", thresholds,
             "training labels: 'coco' (any person annotation) or person-area fractions (default coco,0.001,0.005,"
             "0.02,0.05,0.1,0.2); evaluated on --data's labels"),
            ("order", "the label order: shuffled, interleaved, blocked", "--orders", words,
             "label orders (default shuffled,interleaved,blocked)"),
            ("lr", "the learning rate", "--rates", float_list, "learning rates (default 0.001,0.003,0.005,0.01,0.03)"),
            ("scheme", "what trains (update scheme), with its memory", "--schemes", words,
             "update schemes (default last:1,bias and the zoo model's paper schemes)")):
        k = kinds.add_parser(kind, parents=parents, help="sweep " + summary)
        k.add_argument(option, dest="values", metavar=option[2:].upper(), type=parse, help=help_text)
    s.set_defaults(run=cmd_experiment)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except BrokenPipeError:
        # the reader went away (`tinybridge ... | head`): not an error, and nothing more to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TinyBridgeError, ValueError, OSError) as e:
        print("tinybridge: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
