#!/usr/bin/env python3
"""Each contrast of Tables 4-9 that the SPO paper names, from `spo-pipe tables --format csv`.

    python3 scripts/contrasts.py [SPO_PIPE_ARGS...]   # run where `spo-pipe run ablations` ran

For the paper's winner A against B on each metric: A - B, the 95% interval
A - B +- t(0.975, nA + nB - 2) * sqrt(sA^2/nA + sB^2/nB) over seeds, the difference in pooled
standard errors, and a verdict ("decisive" at >= 3 standard errors). Prints a Markdown table
and a one-line summary. Needs only the Python standard library.
"""
import csv
import io
import math
import subprocess
import sys

# (table, the paper's winner A, B): spo-reference.md, Tables 4-9
CONTRASTS = [
    ("table4", "continuation=random", "continuation=win"),
    ("table4", "continuation=random", "continuation=lose"),
    ("table5", "variant=spm", "variant=no-step"),
    ("table5", "variant=spm", "variant=pickscore"),
    ("table6", "k=4", "k=2"),
    ("table6", "k=4", "k=6"),
    ("table7", "j=4", "j=1"),
    ("table8", "t_range=[0,751]", "t_range=[0,1000]"),
    ("table8", "t_range=[0,751]", "t_range=[250,751]"),
    ("table8", "t_range=[0,751]", "t_range=[500,751]"),
    ("table8", "t_range=[250,500]", "t_range=[0,250]"),
    ("table8", "t_range=[250,500]", "t_range=[500,751]"),
    ("table9", "pair=best-worst", "pair=random"),
]
METRICS = ["detail", "pickscore", "alignment"]
# two-sided 95% quantiles of Student's t by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 14: 2.145, 16: 2.120, 18: 2.101, 20: 2.086}


def t975(df):
    if df in T975:
        return T975[df]
    below = [d for d in T975 if d <= df]
    return T975[max(below)] if below else T975[1]


def table(name, extra):
    out = subprocess.run(["spo-pipe", *extra, "tables", name, "--format", "csv"],
                         capture_output=True, text=True)
    if out.returncode not in (0, 1) or not out.stdout.strip():
        sys.exit(f"spo-pipe tables {name}: {out.stderr.strip()}")
    return {r["row"]: r for r in csv.DictReader(io.StringIO(out.stdout))}


def main():
    extra = sys.argv[1:]
    tables = {}
    print("| table | paper: A beats B | metric | A − B | 95% interval | pooled SE multiples | verdict |")
    print("|---|---|---|---:|---|---:|---|")
    counts = {"paper": 0, "reversed": 0, "decisive_paper": 0, "decisive_reversed": 0, "n": 0}
    for name, a, b in CONTRASTS:
        rows = tables.setdefault(name, table(name, extra))
        for metric in METRICS:
            ra, rb = rows.get(a), rows.get(b)
            if ra is None or rb is None or not ra[f"{metric}_mean"] or not rb[f"{metric}_mean"]:
                print(f"| {name[5:]} | {a} > {b} | {metric} | — | — | — | missing cells |")
                continue
            ma, sa, na = (float(ra[f"{metric}_{k}"]) for k in ("mean", "std", "n"))
            mb, sb, nb = (float(rb[f"{metric}_{k}"]) for k in ("mean", "std", "n"))
            diff = ma - mb
            se = math.sqrt(sa * sa / na + sb * sb / nb)
            half = t975(int(na + nb - 2)) * se
            mult = diff / se if se > 0 else math.copysign(math.inf, diff)
            way = "paper's direction" if diff > 0 else "reversed direction"
            if abs(mult) >= 3:
                verdict = "decisive, as the paper" if diff > 0 else "decisive, reversed"
                counts["decisive_paper" if diff > 0 else "decisive_reversed"] += 1
            else:
                verdict = f"unresolved ({way})"
            counts["paper" if diff > 0 else "reversed"] += 1
            counts["n"] += 1
            print(f"| {name[5:]} | {a} > {b} | {metric} | {diff:+.3f} | "
                  f"[{diff - half:+.3f}, {diff + half:+.3f}] | {mult:+.1f} | {verdict} |")
    print()
    print(f"{counts['n']} contrasts: {counts['paper']} point the paper's way, "
          f"{counts['decisive_paper']} decisively; {counts['reversed']} reversed, "
          f"{counts['decisive_reversed']} decisively.")


if __name__ == "__main__":
    main()
