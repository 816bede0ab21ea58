"""The before/after table of the 2026-11-27 section: the largest run-to-run difference of the
reported median, per cell under 20 us, from the datasets of that day's runs (one input set
against eight). Usage: python docs/h100x2/small_cells.py"""
import itertools
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
from agreement import KEY  # noqa: E402


def load(p):
    d = pd.read_parquet(p)
    return d[d.status == "ok"].drop_duplicates(KEY, keep="last").set_index(KEY).median_ms


def largest(groups):
    """Per cell, the largest |diff| (% of the smaller) over the pairs of runs within each group (one GPU)."""
    out = {}
    for runs in groups:
        for a, b in itertools.combinations(runs, 2):
            for k, v in (abs(a - b) / np.minimum(a, b) * 100).dropna().items():
                out[k] = max(out.get(k, 0), v)
    return pd.Series(out), sum(len(g) * (len(g) - 1) // 2 for g in groups)


with tempfile.TemporaryDirectory() as t:
    t = Path(t)
    for name in ("agreement_2e92289", "sets8_f174ec0", "agreement_default_09e15de"):
        with tarfile.open(HERE / f"{name}_datasets.tgz") as tar:
            tar.extractall(t / name, filter="data")
    base, s8, d = t / "agreement_2e92289", t / "sets8_f174ec0", t / "agreement_default_09e15de"
    cols = {
        "2e92289, 1 set (host A)": largest([[load(base / f"agr_gpu{g}/run{i}") for i in range(2)] for g in (0, 1)]),
        "f174ec0, 1 set (host C)": largest([[load(s8 / f"sets8_gpu0/run{i}") for i in (0, 2, 4)],
                                            [load(s8 / f"sets8_gpu1/run{i}") for i in (1, 3, 5)]]),
        "f174ec0, 8 sets (host C)": largest([[load(s8 / f"sets8_gpu0/run{i}") for i in (1, 3, 5)],
                                             [load(s8 / f"sets8_gpu1/run{i}") for i in (0, 2, 4)]]),
        "09e15de, the default: 8 sets (host D)": largest([[load(d / f"default_gpu{g}/run{i}") for i in range(4)]
                                                           for g in (0, 1)]),
    }
    ref = load(d / "default_gpu0/run0")
small = ref[ref < 0.02].index
table = pd.DataFrame({f"{k} [{n} pairs]": v.reindex(small) for k, (v, n) in cols.items()})
table.index = [f"{i[0]} b{i[6]} s{i[7]} ({ref[i] * 1e3:.1f} us)" for i in table.index]
table = table.sort_values(table.columns[0], ascending=False)
print("largest run-to-run |diff| of the reported median (%), cells under 20 us, one GPU per pair:\n")
print("| cell | " + " | ".join(table.columns) + " |")
print("| --- " * (len(table.columns) + 1) + "|")
for i, row in table.iterrows():
    print(f"| {i} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
print("\ncells over 3%: " + ", ".join(f"{k}: {int((v.reindex(small) > 3).sum())}" for k, (v, _) in cols.items()))
