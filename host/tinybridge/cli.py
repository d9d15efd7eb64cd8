"""The `tinybridge` command (mpremote-like):

    tinybridge devs                          serial ports that may be boards, and the sim
    tinybridge compile SOURCE [--num-classes N] [--update SCHEME] [--out BLOB] [--report]
                                             compile a model (zoo name, .tflite) and plan its memory
    tinybridge [-d DEV] info                 the device, its limits, its model, its counters
    tinybridge [-d DEV] load BLOB            upload and commit a model blob
    tinybridge [-d DEV] infer IMAGE...       predict image files
    tinybridge [-d DEV] train FOLDER         train on an image folder (one subfolder per class)
    tinybridge sim [--port N]                serve the sim device on TCP for any serial tool
    tinybridge [-d DEV] demo [--out DIR]     fine-tune MCUNet on the device: faces vs not, with a plot
    tinybridge [-d DEV] bench SOURCE [--num-classes N] [--update SCHEME] [--steps N] [--top N]
                                             what a model costs on the device: per inference, per
                                             training step, per op; memory beside the plan

DEV is "sim" (default), "qemu" (the firmware under QEMU), "auto" (first ST-LINK), a serial port or a
pyserial URL. With the sim,
--flash FILE keeps its flash between commands. Errors are one line on stderr, exit status 1.
"""
import argparse
import random
import subprocess
import sys
import zlib


from . import transport
from .datasets import image_folder, load_image
from .device import connect
from .errors import TinyBridgeError
from .progress import progress_bar

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


def cmd_compile(args):
    from .compiler import compile as compile_model

    model = compile_model(args.source, num_classes=args.num_classes, update=args.update)
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


def cmd_train(args):
    paths, labels, classes = image_folder(args.folder)
    with open_device(args) as dev:
        model = need_model(dev)
        if len(classes) != model.num_classes:
            raise TinyBridgeError("%s has %d classes (%s); the model has %d"
                                  % (args.folder, len(classes), ", ".join(classes), model.num_classes))
        images = [load_image(p, model.input_shape) for p in paths]
        order = list(range(len(images)))
        rng = random.Random(args.seed)
        for epoch in range(1, args.epochs + 1):
            rng.shuffle(order)
            bar = progress_bar(len(order), "epoch %d/%d" % (epoch, args.epochs), unit="img")
            loss_sum, correct = 0.0, 0
            for done, i in enumerate(order, 1):
                result = dev.train_step(images[i], labels[i], lr=args.lr)
                loss_sum += result.loss
                correct += result.label_pred == labels[i]
                bar.set_postfix_str("loss %.3f acc %.1f%%" % (loss_sum / done, 100.0 * correct / done))
                bar.update_to(done)
            bar.close()
        if args.save:
            print("saved checkpoint %d" % dev.save())
        print("trained %d steps (device step %d)" % (args.epochs * len(order), result.step))


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
        model = compile_model(args.source, num_classes=args.num_classes, update=args.update)
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


def cmd_demo(args):
    from . import demo

    steps = tuple(int(v) for v in args.eval_steps.split(",")) if args.eval_steps else demo.EVAL_STEPS
    demo.run(device=args.device, model=args.model, update=args.update, epochs=args.epochs, eval_steps=steps,
             lr=args.lr, out=args.out, seed=args.seed, train_images=args.train_images, val_images=args.val_images,
             connect_options=dict(timeout=args.timeout, flash=args.flash))


def parser():
    p = argparse.ArgumentParser(prog="tinybridge", description="Drive a tinybridge device.")
    p.add_argument("-d", "--device", default="sim", help='"sim" (default), "auto", a serial port or a pyserial URL')
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
    s.set_defaults(run=cmd_compile)
    s = sub.add_parser("load", help="upload and commit a model blob")
    s.add_argument("blob")
    s.set_defaults(run=cmd_load)
    s = sub.add_parser("infer", help="predict image files")
    s.add_argument("images", nargs="+")
    s.set_defaults(run=cmd_infer)
    s = sub.add_parser("train", help="train on FOLDER/<class>/<image>")
    s.add_argument("folder")
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    s.add_argument("--seed", type=int, default=0, help="shuffling seed")
    s.add_argument("--save", action="store_true", help="persist the trained parameters at the end")
    s.set_defaults(run=cmd_train)
    s = sub.add_parser("sim", help="serve the sim device on a TCP port")
    s.add_argument("--port", type=int, default=2217)
    s.set_defaults(run=cmd_sim)
    s = sub.add_parser("demo", help="fine-tune a pretrained network on the device, faces vs not (docs/results.md)")
    s.add_argument("--model", default="mcunet-5fps", help="zoo model (default mcunet-5fps)")
    s.add_argument("--update", default="49kb", help="training scheme (default 49kb, a paper scheme)")
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--eval-steps", help="comma-separated steps to evaluate at (default 0,50,100,150,200)")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    s.add_argument("--seed", type=int, default=0, help="data split and order seed")
    s.add_argument("--train-images", type=int, help="use only this many training images (quick runs)")
    s.add_argument("--val-images", type=int, help="use only this many validation images (quick runs)")
    s.add_argument("--out", default=".", help="where demo-results.json and demo.png go (default .)")
    s.set_defaults(run=cmd_demo)
    s = sub.add_parser("bench", help="what a model costs on the device: per inference, training step and op")
    s.add_argument("source", help='a zoo model ("mbv2-w0.35", "mcunet-5fps", "proxyless-w0.3"), a .tflite file '
                                  "or a compiled model blob")
    s.add_argument("--num-classes", type=int, default=10, help="a new classifier of N classes (default 10)")
    s.add_argument("--update", default="49kb", help='what trains (default "49kb", a paper scheme)')
    s.add_argument("--steps", type=int, default=3, help="inferences and training steps to run (default 3)")
    s.add_argument("--top", type=int, default=None, help="list only the N costliest ops")
    s.set_defaults(run=cmd_bench)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (TinyBridgeError, ValueError, OSError) as e:
        print("tinybridge: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
