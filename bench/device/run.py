"""Measured on the firmware under QEMU's Cortex-M7 (mps2-an500, `-icount shift=0`, exact and
repeatable instruction counts): instructions per training step and per inference of the paper's
three models at 128x128 under a sparse scheme, and the arena and stack high-water marks beside the
planned arena. Beside the paper's per-image training latency on the STM32F746 at 216 MHz. Prints a
Markdown table (docs/benchmarks.md, "Device").

    python3 bench/device/run.py [--scheme 49kb] [--num-classes 10] [--steps 3]

Each model is baked into the firmware's flash image (QEMU's UART moves about 20 KB/s), the images
are the bundled LFW faces and non-faces, resized to the model's input.
"""
import argparse
import binascii
import statistics

import tinybridge
from tinybridge import compiler, datasets, qemu

KB = 1024
M = 1e6
# The paper's training latency per image on the STM32F746 at 216 MHz (sparse update, TTE), in cycles.
PAPER_MS = {"mbv2-w0.35": 373, "proxyless-w0.3": 443, "mcunet-5fps": 546}
PAPER_MHZ = 216


def measure(name, scheme, num_classes, steps, images, labels):
    model = compiler.compile(name, num_classes=num_classes, update=scheme)
    blob = model.to_bytes()
    elf = qemu.build_firmware(model=model)
    with tinybridge.Device(qemu.QemuTransport(elf=elf)) as dev:
        assert dev.model is not None and dev.model.crc32 == binascii.crc32(blob), "the baked-in model did not load"
        infers, trains = [], []
        for image, label in zip(images[:steps], labels[:steps]):
            dev.infer(image)
            infers.append(dev.stats()["last_infer"])
            dev.train_step(image, label % num_classes)
            trains.append(dev.stats()["last_step"])
        stats = dev.stats()
    return {
        "model": name, "scheme": scheme, "train": statistics.median(trains), "infer": statistics.median(infers),
        "train_spread": max(trains) - min(trains), "planned": model.memory.sram,
        "arena_high": stats["arena_high_water"], "stack_high": stats["stack_high_water"],
        "blob": len(blob),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheme", default="49kb")
    parser.add_argument("--num-classes", type=int, default=10, help="the new head (the paper's schemes: 10)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (and inferences) per model")
    args = parser.parse_args(argv)
    qemu.require_qemu()
    data = datasets.lfw_faces((128, 128, 3))
    images, labels = data.train_images, data.train_labels
    print("| model | scheme | train step M instr | paper train M cycles | instr / paper cycles | inference M instr "
          "| arena high-water KB | planned arena KB | stack high-water KB | blob KB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(PAPER_MS):
        r = measure(name, args.scheme, args.num_classes, args.steps, images, labels)
        paper = PAPER_MS[name] * PAPER_MHZ * 1e3
        print("| %s | %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
            name, r["scheme"], r["train"] / M, paper / M, r["train"] / paper, r["infer"] / M,
            r["arena_high"] / KB, r["planned"] / KB, r["stack_high"] / KB, r["blob"] / KB), flush=True)
        assert r["arena_high"] <= r["planned"], "the device used more arena than planned"
        if r["train_spread"]:
            print("  (%s: training steps differ by up to %d instructions)" % (name, r["train_spread"]))


if __name__ == "__main__":
    main()
