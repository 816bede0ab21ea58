"""Pairs of sweeps from scale_c0410b4.txt's side-by-side medians (rounded to 0.1 us there, so the
smallest cells' differences carry up to ~1% of rounding): the default's sweeps on 1, 2 and 4 GPUs
against each other, and each against the in-process graph-timed loop."""
from pathlib import Path

lines = (Path(__file__).parent / "scale_c0410b4.txt").read_text().splitlines()
start = next(k for k, line in enumerate(lines) if line.startswith("device: NVIDIA"))
names = ["dobench", "graph", "g1", "g2", "g4", "g1-p0", "g2-p0", "g4-p0"]  # the file's columns, in order
# (the file's own tags, from before the default changed: g1 a fresh process per cell, g1-p0 one process per device)
rows = []
for line in lines[start + 2:]:
    if not line.strip() or line.startswith("where"):
        break
    p = line.split()
    rows.append((" ".join([p[0], p[6], p[7]]), p[8:]))


def pair(a, b):
    ds = []
    for cell, v in rows:
        try:
            x, y = float(v[names.index(a)]), float(v[names.index(b)])
        except ValueError:  # oom
            continue
        ds.append((abs(y - x) / x, cell))
    ds.sort()
    n, d = len(ds), [x for x, _ in ds]
    worst = [(c, round(x * 100, 1)) for x, c in ds[::-1][:3]]
    return (f"{a} vs {b}: n={n} |diff| median {d[n // 2] * 100:.2f}%, p90 {d[int(0.9 * (n - 1))] * 100:.2f}%, "
            f"max {d[-1] * 100:.2f}%, within 3% {sum(x <= 0.03 for x in d)}/{n}; worst {worst}")


for a, b in [("g1-p0", "g2-p0"), ("g1-p0", "g4-p0"), ("g2-p0", "g4-p0"), ("g1", "g2"), ("g1", "g4"), ("g2", "g4"),
             ("graph", "g1-p0"), ("graph", "g1")]:
    print(pair(a, b))
