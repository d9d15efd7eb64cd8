#!/usr/bin/env python3
"""Kernel benchmark: instructions per MAC of every native_kernels kernel on QEMU's Cortex-M7.

    python3 bench/kernels/run.py [--model mcunet-5fps] [--kernels pointwise,depthwise] [--docs]

Extracts every distinct layer shape of a zoo model (first conv, each block's pointwise1 /
depthwise / pointwise2 / residual add, global pool, classifier), builds bench_kernels.c for
QEMU's mps2-an500 with armbuild's flags, runs every kernel of bench_ops.inc on every shape it
applies to, twice: the plain-C reference (the same sources built without __ARM_FEATURE_DSP) and
the kernel as the target builds it (DSP path where there is one). Both get identical random
inputs; a kernel whose outputs differ is reported as DIFFERENT and gets no figures.
Instructions come from QEMU's -icount (one timer tick = 40 instructions), minus the empty-call
overhead. --docs rewrites the "Kernels" section of docs/benchmarks.md.
"""
import argparse
import json
import math
import os
import re
import subprocess
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "host"))

from tinybridge import armbuild  # noqa: E402
from tinybridge.quant import add_multipliers, quantize_multiplier  # noqa: E402

MODELS = os.path.abspath(os.path.join(ROOT, "..", "shared", "models"))
BUILD = os.path.join(ROOT, "build", "bench_kernels")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
SECTION = "## Kernels (instructions per MAC, QEMU Cortex-M7)"
INSTR_PER_TICK = 40

CONV, DW, PW, FC, POOL, ADD = 1, 2, 4, 8, 16, 32
KIND_NAME = {CONV: "conv", DW: "depthwise", PW: "pointwise", FC: "fc", POOL: "pool", ADD: "add"}
LAYER_FORMAT = "<24s21i"   # bench_layer in bench.h
JOB_MAGIC, JOB_VERSION = 0x4B424254, 1


# ---------------------------------------------------------------- layer shapes

def _shift_for(acc_std, target=40.0):
    """TFLite shift of a requantization that maps the accumulator's spread to ~target units."""
    return quantize_multiplier(target / acc_std)[1]


def _acc_std(fan_in, input_offset):
    """Spread of sum(w * (x + offset)) for uniform int8 x and uniform [-127, 127] w."""
    var_w = (255 ** 2 - 1) / 12.0
    ms_x = (256 ** 2 - 1) / 12.0 + (input_offset - 0.5) ** 2
    return math.sqrt(fan_in * var_w * ms_x)


def model_layers(name="mcunet-5fps", classes=None):
    """Every layer of the model as a dict (network order)."""
    with open(os.path.join(MODELS, name + ".json")) as f:
        m = json.load(f)
    out = []

    def conv(label, kind, c):
        k = c["kernel_size"][0]
        p = c["params"]
        in_off = -int(p["x_zero"])
        fan_in = k * k * (1 if kind == DW else c["in_channel"])
        out.append(dict(label=label, kind=kind, in_h=c["in_shape"], in_w=c["in_shape"],
                        in_c=c["in_channel"], out_h=c["out_shape"], out_w=c["out_shape"],
                        out_c=c["out_channel"], kernel=k, stride=c["stride"], pad=k // 2,
                        in_off=in_off, out_off=int(p["y_zero"]), act_min=-128, act_max=127,
                        shift=_shift_for(_acc_std(fan_in, in_off)), extra=[0] * 6))
        return c

    conv("first_conv", CONV, m["first_conv"])
    last = None
    for i, b in enumerate(m["blocks"]):
        for part, kind in (("pointwise1", PW), ("depthwise", DW), ("pointwise2", PW)):
            if b[part] is not None:
                last = conv("blocks.%d.%s" % (i, part), kind, b[part])
        if b["residual"] is not None:
            r = b["residual"]["params"]
            pw2 = b["pointwise2"]
            (ma, sa), (mb, sb), (my, sy) = add_multipliers(r["x_scale"], pw2["params"]["y_scale"],
                                                           r["y_scale"])
            n = pw2["out_shape"]
            out.append(dict(label="blocks.%d.residual" % i, kind=ADD, in_h=n, in_w=n,
                            in_c=pw2["out_channel"], out_h=n, out_w=n, out_c=pw2["out_channel"],
                            kernel=1, stride=1, pad=0, in_off=-int(r["x_zero"]),
                            out_off=int(r["y_zero"]), act_min=-128, act_max=127, shift=0,
                            extra=[ma, sa, mb, sb, my, sy]))
    n, c = last["out_shape"], last["out_channel"]
    out.append(dict(label="avgpool", kind=POOL, in_h=n, in_w=n, in_c=c, out_h=1, out_w=1, out_c=c,
                    kernel=1, stride=1, pad=0, in_off=0, out_off=0, act_min=-128, act_max=127,
                    shift=0, extra=[0] * 6))
    cl = m["classifier"]
    n_out = classes or cl["out_channel"]
    in_off = -int(cl["params"]["x_zero"])
    out.append(dict(label="classifier", kind=FC, in_h=1, in_w=1, in_c=cl["in_channel"], out_h=1,
                    out_w=1, out_c=n_out, kernel=1, stride=1, pad=0, in_off=in_off,
                    out_off=int(cl["params"]["y_zero"]), act_min=-128, act_max=127,
                    shift=_shift_for(_acc_std(cl["in_channel"], in_off)), extra=[0] * 6))
    return out


SHAPE_KEYS = ("kind", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel", "stride", "pad")


def distinct_shapes(layers):
    """Distinct shapes in order of first appearance; each with count and the layers it stands for."""
    shapes = {}
    for L in layers:
        key = tuple(L[k] for k in SHAPE_KEYS)
        if key in shapes:
            shapes[key]["count"] += 1
            shapes[key]["layers"].append(L["label"])
        else:
            shapes[key] = dict(L, count=1, layers=[L["label"]])
    return list(shapes.values())


def shape_text(s):
    if s["kind"] == FC:
        return "%d->%d" % (s["in_c"], s["out_c"])
    if s["kind"] in (POOL, ADD):
        return "%dx%dx%d" % (s["in_h"], s["in_w"], s["in_c"])
    k = "%dx%d" % (s["kernel"], s["kernel"])
    txt = "%dx%dx%d->%dx%dx%d" % (s["in_h"], s["in_w"], s["in_c"], s["out_h"], s["out_w"], s["out_c"])
    return txt + ("" if s["kind"] == PW else " %s s%d" % (k, s["stride"]))


def job_file(shapes):
    data = struct.pack("<4i", JOB_MAGIC, JOB_VERSION, len(shapes), struct.calcsize(LAYER_FORMAT))
    for s in shapes:
        data += struct.pack(LAYER_FORMAT, s["label"].encode()[:23],
                            *[s[k] for k in SHAPE_KEYS],
                            s["in_off"], s["out_off"], s["act_min"], s["act_max"], s["shift"],
                            *s["extra"])
    return data


# ---------------------------------------------------------------- build

def _global_symbols(src, includes, obj_dir):
    obj = os.path.join(obj_dir, os.path.basename(src) + ".o")
    cmd = [armbuild.CC] + armbuild.CFLAGS + ["-I" + d for d in includes] + ["-c", src, "-o", obj]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("compiling %s failed:\n%s" % (src, r.stderr))
    nm = subprocess.run(["arm-none-eabi-nm", "-g", "--defined-only", obj], capture_output=True,
                        text=True, check=True).stdout
    return [ln.split()[-1] for ln in nm.splitlines() if ln.strip()]


TARGETS = {"pointwise": 1.0, "depthwise": 0.5}   # MAC/instruction over the network
# backward kernels: within 2x of their forward counterpart (at least half its MAC/instruction)
BACKWARD = (("pointwise_weight_grad", "pointwise"), ("pointwise_input_grad", "pointwise"),
            ("depthwise_weight_grad", "depthwise"), ("depthwise_input_grad", "depthwise"),
            ("conv2d_weight_grad", "conv2d"), ("conv2d_input_grad", "conv2d"))


def network_ratio(rows, kernel):
    """Total work / total instructions of a kernel over the network (None: no figures)."""
    ops = ins = 0.0
    for r in rows:
        if r["kernel"] != kernel:
            continue
        if r["status"] != "ok":
            return None
        w = r["shape"]["count"] * r["scale"]
        ops += r["ops"] * w
        ins += r["instr"] * w
    return ops / ins if ins else None


def kernel_tree(build_dir, before=None):
    """The kernel sources and include dirs to build: the working tree's, or the sources and internal
    headers as they were at git revision `before` (the public headers from the working tree: the
    revision must have today's kernel prototypes)."""
    sources, includes = armbuild.kernel_sources()
    if not before:
        return sources, includes
    src_dir = os.path.join(build_dir, "src_" + re.sub(r"[^A-Za-z0-9_.-]", "_", before))
    os.makedirs(src_dir, exist_ok=True)
    out = []
    for src in sources:
        name = os.path.basename(src)
        rel = os.path.relpath(src, ROOT)
        r = subprocess.run(["git", "-C", ROOT, "show", "%s:%s" % (before, rel)],
                           capture_output=True, text=True)
        if r.returncode != 0:   # a source the revision did not have
            out.append(src)
            continue
        text = r.stdout
        dst = os.path.join(src_dir, name)
        _write_if_changed(dst, text)
        out.append(dst)
    # the revision's sources find their own internal headers first, then the working tree's
    for h in subprocess.run(["git", "-C", ROOT, "ls-tree", "--name-only", before,
                             "native_kernels/src/"], capture_output=True, text=True).stdout.split():
        if h.endswith(".h"):
            _write_if_changed(os.path.join(src_dir, os.path.basename(h)),
                              subprocess.run(["git", "-C", ROOT, "show", "%s:%s" % (before, h)],
                                             capture_output=True, text=True, check=True).stdout)
    return out, [src_dir] + list(includes)


def build(build_dir=BUILD, before=None):
    """The bench ELF: bench_kernels.c + both kernel tables + the kernels + their plain-C copies."""
    armbuild.require_toolchain()
    os.makedirs(os.path.join(build_dir, "obj"), exist_ok=True)
    sources, includes = kernel_tree(build_dir, before)
    symbols = []
    for src in sources:
        symbols += _global_symbols(src, includes, os.path.join(build_dir, "obj"))
    rename = ["/* generated by bench/kernels/run.py: the plain-C reference copies' names */"]
    rename += ["#define %s ref_%s" % (s, s) for s in sorted(set(symbols))]
    _write_if_changed(os.path.join(build_dir, "ref_rename.h"), "\n".join(rename) + "\n")
    refs = []
    for src in sources:
        ref = os.path.join(build_dir, "ref_" + os.path.basename(src))
        _write_if_changed(ref, "/* generated: %s as the plain-C reference */\n"
                               "#include \"ref_rename.h\"\n#undef __ARM_FEATURE_DSP\n"
                               "#define TB_NO_DSP 1\n#include \"%s\"\n"
                               % (os.path.relpath(src, ROOT), src))
        refs.append(ref)
    board = armbuild.QEMU_BOARD
    bench = [os.path.join(HERE, f) for f in ("bench_kernels.c", "bench_ops_main.c", "bench_ops_ref.c")]
    elf = os.path.join(build_dir, "bench_kernels.elf")
    if os.path.exists(elf):
        os.remove(elf)   # bench_ops.inc is not among build_elf's tracked inputs
    return armbuild.build_elf(elf, bench + [os.path.join(board, "semihost.c")] + sources + refs,
                              include_dirs=[HERE, build_dir] + includes)


def _write_if_changed(path, text):
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


# ---------------------------------------------------------------- run

def run_qemu(elf, jobs, results, kernel_filter="all", timeout=7200):
    cwd = os.path.dirname(jobs)
    cmd = ["qemu-system-arm", "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config",
           "enable=on,target=native,arg=bench,arg=%s,arg=%s,arg=%s"
           % (os.path.basename(jobs), os.path.basename(results), kernel_filter.replace(",", "+")),
           "-icount", "shift=0,sleep=off", "-kernel", elf]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit("bench firmware exited with %d (0xDEAD = fault):\n%s%s"
                         % (r.returncode, r.stdout, r.stderr))
    return open(results).read()


def parse(text, shapes):
    overhead = None
    rows = []
    for ln in text.splitlines():
        f = ln.split()
        if not f:
            continue
        if f[0] == "O":
            overhead = int(f[1]) * INSTR_PER_TICK / int(f[2])
        elif f[0] == "K":
            name, unit, li, status = f[1], f[2], int(f[3]), f[4]
            ret, ops, rt, rc, dt, dc, out_h, chunk = (int(v) for v in f[5:13])
            shape = shapes[li]
            row = dict(kernel=name, unit=unit, shape=shape, status=status, ret=ret, ops=ops, out_h=out_h,
                       chunk=chunk, difference=" ".join(f[13:]))
            if status != "toobig":
                row["ref_instr"] = rt * INSTR_PER_TICK / rc - overhead
                row["instr"] = dt * INSTR_PER_TICK / dc - overhead
                # the full layer's work, when fewer rows were measured
                row["scale"] = shape["out_h"] / out_h if shape["kind"] not in (FC, POOL) else 1.0
                if chunk:   # one chunk of output channels, as the device runs large weight gradients
                    row["scale"] *= shape["out_c"] / chunk
            rows.append(row)
    return overhead, rows


# ---------------------------------------------------------------- report

def report(rows, before=None, before_rev=None):
    """Markdown: one aggregate table and one table per kernel (per distinct shape). before: rows of
    the same bench on the kernels of revision before_rev (the kernels' figures as they were)."""
    bmap = {}
    for r in before or []:
        if r["status"] == "ok":
            bmap[(r["kernel"], r["shape"]["label"])] = r
    kernels = []
    for r in rows:
        if r["kernel"] not in kernels:
            kernels.append(r["kernel"])
    agg, per_kernel = [], []
    for k in kernels:
        kr = [r for r in rows if r["kernel"] == k]
        unit = kr[0]["unit"]
        has_before = before_rev and any((k, r["shape"]["label"]) in bmap for r in kr)
        head = "| layer(s) | shape | × | %ss/call |" % unit
        head += (" %s/instr at %s |" % (unit, before_rev)) if has_before else ""
        head += " plain C instr | plain C %s/instr | target instr | target %s/instr | check |" % (unit, unit)
        lines = ["### %s" % k, "", head,
                 "|---|---|---:|---:|" + ("---:|" if has_before else "") + "---:|---:|---:|---:|---|"]
        tot_ops = tot_ref = tot_dut = tot_bops = tot_bins = 0.0
        worst = None
        bad = False
        for r in kr:
            s = r["shape"]
            names = s["layers"][0] + (" (+%d)" % (len(s["layers"]) - 1) if len(s["layers"]) > 1 else "")
            shp = shape_text(s)
            if r.get("out_h", s["out_h"]) != s["out_h"] and s["kind"] not in (FC, POOL):
                shp += " [%d rows measured]" % r["out_h"]
            if r.get("chunk"):
                shp += " [%d output channels a call]" % r["chunk"]
            b = bmap.get((k, s["label"]))
            bcell = ""
            if has_before:
                bcell = " %.3f |" % (b["ops"] / b["instr"]) if b else " |"
            if r["status"] != "ok":
                bad = bad or r["status"] == "differ"
                lines.append("| %s | %s | %d | %d |%s | | | | **%s** |"
                             % (names, shp, s["count"], r["ops"], bcell,
                                "DIFFERENT from the plain-C reference " + r["difference"]
                                if r["status"] == "differ" else "does not fit the bench arena"))
                continue
            ref_r, dut_r = r["ops"] / r["ref_instr"], r["ops"] / r["instr"]
            lines.append("| %s | %s | %d | %d |%s %.0f | %.3f | %.0f | %.3f | identical |"
                         % (names, shp, s["count"], r["ops"], bcell, r["ref_instr"], ref_r,
                            r["instr"], dut_r))
            w = s["count"] * r["scale"]
            tot_ops += r["ops"] * w
            tot_ref += r["ref_instr"] * w
            tot_dut += r["instr"] * w
            if b:
                tot_bops += b["ops"] * w
                tot_bins += b["instr"] * w
            if worst is None or dut_r < worst[0]:
                worst = (dut_r, s["layers"][0], shape_text(s))
        per_kernel.append("\n".join(lines))
        bagg = ((" %.3f |" % (tot_bops / tot_bins)) if tot_bins else " |") if before_rev else ""
        if bad:
            agg.append("| %s | %s | |%s | | | **outputs differ from the plain-C reference: no figures** |"
                       % (k, unit, bagg))
        elif tot_ops:
            agg.append("| %s | %s | %.2f M |%s %.3f | %.3f | %.2f× | %.3f (%s, %s) |"
                       % (k, unit, tot_ops / 1e6, bagg, tot_ops / tot_ref, tot_ops / tot_dut,
                          (tot_bins / tot_bops * tot_ops if tot_bins else tot_ref) / tot_dut,
                          worst[0], worst[1], worst[2]))
    head = ["| kernel | unit | work over the network |%s plain C work/instr | target work/instr | "
            "speed-up%s | worst layer (target) |"
            % ((" work/instr at %s |" % before_rev) if before_rev else "",
               (" (vs %s, else vs plain C)" % before_rev) if before_rev else " vs plain C"),
            "|---|---|---:|" + ("---:|" if before_rev else "") + "---:|---:|---:|---|"]
    return "\n".join(head + agg), "\n\n".join(per_kernel)


def tool_versions():
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return first([armbuild.CC, "--version"]), first(["qemu-system-arm", "--version"])


def write_docs(text):
    old = open(DOCS).read() if os.path.exists(DOCS) else "# Benchmarks\n"
    pat = re.compile(r"^%s\n.*?(?=^## |\Z)" % re.escape(SECTION), re.S | re.M)
    if pat.search(old):
        new = pat.sub(lambda _: text.rstrip("\n") + "\n\n", old)
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    with open(DOCS, "w") as f:
        f.write(new)


def bench(shapes, kernel_filter, build_dir, before=None):
    """Build and run the bench on `shapes`; (empty-call overhead, rows)."""
    elf = build(build_dir, before)
    jobs = os.path.join(build_dir, "jobs.bin")
    with open(jobs, "wb") as f:
        f.write(job_file(shapes))
    results = os.path.join(build_dir, "results.txt")
    if os.path.exists(results):
        os.remove(results)
    return parse(run_qemu(elf, jobs, results, kernel_filter), shapes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mcunet-5fps")
    ap.add_argument("--classes", type=int, default=None, help="classifier outputs (default: the model's 1000)")
    ap.add_argument("--kernels", default="all", help="comma-separated kernel names (bench_ops.inc)")
    ap.add_argument("--docs", action="store_true", help="rewrite the section in docs/benchmarks.md")
    ap.add_argument("--json", help="also write the raw rows here")
    ap.add_argument("--before", metavar="REV",
                    help="also run the kernel sources as of git revision REV and add their figures")
    args = ap.parse_args(argv)

    layers = model_layers(args.model, args.classes)
    shapes = distinct_shapes(layers)
    t0 = time.time()
    overhead, rows = bench(shapes, args.kernels, BUILD)
    before = None
    if args.before:
        _, before = bench(shapes, args.kernels, BUILD + "_before", args.before)
    elapsed = time.time() - t0

    agg, detail = report(rows, before, args.before)
    gcc, qemu = tool_versions()
    cmd = "python3 bench/kernels/run.py" + "".join(
        " " + a for a in (sys.argv[1:] if argv is None else argv))
    targets = []
    for k, goal in TARGETS.items():
        got = network_ratio(rows, k)
        if got is not None:
            targets.append("%s %.3f (target %.1f: %s)" % (k, got, goal, "met" if got >= goal else "NOT met"))
    backward = []
    for k, fwd in BACKWARD:
        got, ref = network_ratio(rows, k), network_ratio(rows, fwd)
        if got is not None and ref is not None:
            backward.append("%s %.3f (%.2fx the instructions per MAC of %s's %.3f: %s)"
                            % (k, got, ref / got, fwd, ref, "met" if got >= ref / 2 else "NOT met"))
    text = "\n".join([
        SECTION, "",
        "Produced by `%s` (%.0f s on this machine). %s; %s; flags `%s`."
        % (cmd, elapsed, gcc, qemu, " ".join(armbuild.CPU_FLAGS + ["-O2"])),
        "",
        "Model: %s at 128x128 input, every distinct layer shape (× = how many layers have it; padding"
        " k//2 as the model defines it); random int8 data, requantization scales drawn around the"
        " accumulator's spread, full [-128, 127] output range (the model's ReLU6 spans it)."
        " Instructions: QEMU mps2-an500 with `-icount shift=0,sleep=off` (one CMSDK timer tick = 40"
        " instructions), every call repeated to at least 2 M instructions, minus the empty-call"
        " overhead (%.1f instructions). Columns: *at REV* is the kernel sources of that git revision"
        " on the same bench (the kernels as they were); *plain C* is today's source built for the"
        " Cortex-M7 without"
        " `__ARM_FEATURE_DSP` (the reference path); *target* is today's source as the device builds it"
        " (DSP path where the kernel has one, equal to plain C otherwise). Every *target* figure is for"
        " outputs byte-identical to the plain-C reference's on the same inputs, checked in the bench"
        " firmware; a kernel whose outputs differ gets no figures. Network figures = total work /"
        " total instructions over all layers; work is MACs (nominal: every tap, padding included) or"
        " elements for elementwise kernels. Layers too large for the bench's RAM are measured on fewer"
        " output rows, weight gradients on a chunk of output channels (as the device runs them),"
        " and scaled." % (args.model, overhead),
        "",
        "Aggregate forward figures: " + "; ".join(targets) + "." if targets else "",
        "",
        "Backward kernels, target within 2x of the forward counterpart: " + "; ".join(backward) + "."
        if backward else "",
        "",
        "Reference points (STM32F746 at 216 MHz, forward int8, from the papers): TinyEngine 82 MMAC/s"
        " ≈ 0.38 MAC/cycle; CMSIS-NN 52 MMAC/s ≈ 0.24 MAC/cycle. Cycles are not instructions: the M7"
        " dual-issues some pairs, but an LDM of n registers takes about n cycles and loads can stall,"
        " so these frame the picture rather than compare one to one. How the DSP paths get there:"
        " docs/kernels.md, \"Optimized kernels\".",
        "",
        "### Network totals per kernel", "", agg, "", detail, ""])
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(overhead=overhead, rows=rows, before=before), f, indent=1, default=str)
    if args.docs:
        write_docs(text)
        print("\nwrote %s" % os.path.relpath(DOCS, ROOT))
    return 1 if any(r["status"] == "differ" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
