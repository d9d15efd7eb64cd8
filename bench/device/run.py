"""Measured on the firmware under QEMU's Cortex-M7 (mps2-an500, `-icount shift=0`, exact and
repeatable instruction counts): instructions per training step and per inference of the paper's
three models at 128x128 under sparse schemes, the arena and stack high-water marks beside the
planned arena, and the costliest ops of a training step (the device's PROFILE). Beside the paper's
per-image training latency on the STM32F746 at 216 MHz. Prints Markdown tables (docs/benchmarks.md,
"Device").

    python3 bench/device/run.py [--schemes 49kb,99kb] [--num-classes 10] [--steps 3] [--top 5]

Each model is baked into the firmware's flash image (QEMU's UART moves about 20 KB/s); the images
are the bundled LFW faces and non-faces, resized to the model's input.
"""
import argparse
import binascii

import tinybridge
from tinybridge import bench, compiler, datasets, plan, qemu

KB = 1024
M = 1e6
# The paper's training latency per image on the STM32F746 at 216 MHz (sparse update, TTE).
PAPER_MS = {"mbv2-w0.35": 373, "proxyless-w0.3": 443, "mcunet-5fps": 546}
PAPER_MHZ = 216
# The paper's schemes are named by their memory; the same rank in each model's list.
SCHEMES = {"mbv2-w0.35": ["49kb", "73kb", "99kb", "123kb", "138kb"],
           "mcunet-5fps": ["49kb", "74kb", "99kb", "124kb", "148kb"],
           "proxyless-w0.3": ["49kb", "74kb", "98kb", "120kb", "148kb"]}


def measure(name, scheme, num_classes, steps, images, labels, arena_budget):
    model = compiler.compile(name, num_classes=num_classes, update=scheme, arena_budget=arena_budget)
    blob = model.to_bytes()
    with tinybridge.Device(qemu.QemuTransport(elf=qemu.build_firmware(model=model)), timeout=60) as dev:
        assert dev.model is not None and dev.model.crc32 == binascii.crc32(blob), "the baked-in model did not load"
        return model, bench.measure(dev, model, images, [label % num_classes for label in labels], steps=steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", default="1", help="ranks of the paper's schemes (1 = 49kb ... 5), comma-separated")
    parser.add_argument("--num-classes", type=int, default=10, help="the new head (the paper's schemes: 10)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (and inferences) per model")
    parser.add_argument("--top", type=int, default=5, help="costliest ops of a training step listed per model")
    parser.add_argument("--smallest", action="store_true",
                        help="the smallest plans (docs/benchmarks.md, \"Memory\"), not the fastest that fit the device")
    args = parser.parse_args(argv)
    qemu.require_qemu()
    data = datasets.lfw_faces((128, 128, 3))
    images, labels = data.train_images, [int(v) for v in data.train_labels]
    ranks = [int(r) for r in args.schemes.split(",")]
    results = []
    print("| model | scheme | train step M instr | paper train M cycles | instr / paper cycles | inference M instr "
          "| arena high-water KB | planned arena KB | stack high-water KB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rank in ranks:
        for name in sorted(PAPER_MS):
            scheme = SCHEMES[name][rank - 1]
            model, r = measure(name, scheme, args.num_classes, args.steps, images, labels,
                               None if args.smallest else plan.DEVICE_ARENA_BYTES)
            paper = PAPER_MS[name] * PAPER_MHZ * 1e3
            print("| %s | %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f |" % (
                name, scheme, r.train / M, paper / M, r.train / paper, r.infer / M,
                r.arena_high_water / KB, r.planned_arena / KB, r.stack_high_water / KB), flush=True)
            assert r.arena_high_water <= r.planned_arena, "the device used more arena than planned"
            results.append((name, scheme, r))
    print()
    print("| model | scheme | op | what | train fwd M | train bwd M | share of the step |")
    print("|---|---|---|---|---|---|---|")
    for name, scheme, r in results:
        for o in sorted(r.ops, key=lambda o: -(o.forward + o.backward))[:args.top]:
            print("| %s | %s | %s | %s | %.2f | %.2f | %.1f %% |" % (
                name, scheme, o.name, o.what, o.forward / M, o.backward / M, 100.0 * (o.forward + o.backward) / r.train))
    for name, scheme, r in results:
        if r.train_spread or r.infer_spread:
            print("\n(%s %s: runs differ by up to %d instructions per step, %d per inference)"
                  % (name, scheme, r.train_spread, r.infer_spread))


if __name__ == "__main__":
    main()
