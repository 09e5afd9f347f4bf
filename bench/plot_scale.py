#!/usr/bin/env python3
"""Log-log plot of wall seconds per verb against cells, from bench/scale.sh's TSV output.

    python3 bench/plot_scale.py bench/scale.tsv docs/scale.svg

One colour per verb; solid lines for spo-pipe, dotted for the build labelled `before`,
dashed for DVC and Snakemake; a grey slope-1 guide shows linear growth."""
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Verb as plotted <- the TSV rows it is read from, best-of-N first.
VERBS = {
    "first run": ["first-run"],
    "no-op run": ["no-op-run(best)", "no-op-run"],
    "dag (load)": ["dag"],
    "status": ["status(best)", "status"],
    "tables": ["tables(best)", "tables"],
    "diff": ["diff"],
    "gc --dry-run": ["gc-dry-run"],
}
STYLE = {"spo-pipe": "-", "before": ":", "dvc": "--", "snakemake": "-."}
FLOOR = 0.005  # seconds; GNU time reports hundredths

src, out = sys.argv[1], sys.argv[2]
raw = defaultdict(dict)  # (tool, tsv verb) -> cells -> seconds
with open(src) as f:
    for line in f:
        p = line.rstrip("\n").split("\t")
        if len(p) < 4 or p[0] == "tool":
            continue
        try:
            # The first sitting in the file wins where sittings overlap.
            raw[(p[0], p[2])].setdefault(int(p[1]), max(float(p[3]), FLOOR))
        except ValueError:
            continue

fig, ax = plt.subplots(figsize=(8, 5.5))
colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
tools = sorted({t for t, _ in raw}, key=lambda t: list(STYLE).index(t) if t in STYLE else 9)
for ci, (verb, names) in enumerate(VERBS.items()):
    for tool in tools:
        pts = {}
        for name in reversed(names):
            pts.update(raw.get((tool, name), {}))
        if not pts:
            continue
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], STYLE.get(tool, "-"), marker="o", markersize=3,
                color=colours[ci % len(colours)], label=f"{verb} ({tool})")
cells = sorted({c for pts in raw.values() for c in pts})
if cells:
    ax.plot([cells[0], cells[-1]], [0.01, 0.01 * cells[-1] / cells[0]], color="grey",
            alpha=0.5, linewidth=3, label="linear growth (slope 1)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("cells (a sweep of N commands + one downstream stage: 2N)")
ax.set_ylabel(f"wall seconds (floored at {FLOOR * 1000:.0f} ms)")
ax.set_title("bench/scale.sh: spo-pipe verbs vs sweep size")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=6.5, ncol=2, loc="upper left")
fig.tight_layout()
fig.savefig(out)
