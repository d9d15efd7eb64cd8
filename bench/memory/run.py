"""Planned peak training memory of the paper's three models at 128x128 under each of their five
sparse-update schemes (tinybridge.compile, two-class head), beside the paper's STM32F746 figures
(sparse update + operator reordering), what the input takes (its planned buffer: a ring of the first
conv's rows when it streams, docs/blob-format.md "Streamed input", else the whole image), the most
in use while it is in memory (the first layers, run as its rows arrive) and the blob's flash size.
Prints a Markdown table (docs/benchmarks.md, "Memory").

    python3 bench/memory/run.py
"""
import time

from tinybridge import compiler, plan
from tinybridge.model import Model

KB = 1024
PAPER_KB = {"mbv2-w0.35": 141, "mcunet-5fps": 173, "proxyless-w0.3": 135}
ARENA_KB = 256   # TB_ARENA_BYTES


def main():
    print("| model | scheme | planned peak KB | paper KB | at or under | trained params KB | params + input KB "
          "| params + first layers KB | every buffer apart KB | flash KB | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in compiler.ZOO:
        for scheme in compiler.zoo_schemes(name):
            t = time.time()
            model = compiler.compile(name, num_classes=2, update=scheme, arena_budget=None)
            seconds = time.time() - t
            mem = model.memory
            apart = Model(model.graph, plan.plan(model.graph, overlap=False)).memory.sram
            image = model.plan.buffers[model.plan.tensor_refs[model.graph.input]["buffer"]].size
            assert mem.sram <= ARENA_KB * KB
            print("| %s | %s | %.1f | %d | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
                name, scheme, mem.sram / KB, PAPER_KB[name], "yes" if mem.sram <= PAPER_KB[name] * KB else "no",
                mem.params / KB, (mem.params + image) / KB, (mem.params + first_layers(model.plan, model.graph)) / KB,
                apart / KB, mem.flash / KB, seconds))


def first_layers(p, g):
    """The most bytes in use while the input is in memory: at the first layers, which stream over the
    image or, when the input streams, run as its rows arrive."""
    image = p.buffers[p.tensor_refs[g.input]["buffer"]]
    return max(p.demand[s] for s in range(image.first, image.last + 1))


if __name__ == "__main__":
    main()
