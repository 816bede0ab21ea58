"""Run to run and input sets 4 against 1 from sets_fresh_c0410b4_datasets.tgz (unpack it here first):
a fresh process per cell, four sweeps at once, one per GPU (run 2 of each GPU cut short by the timeout)."""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from agreement import KEY  # noqa: E402
def load(p):
    df=pd.read_parquet(p); df=df[df.status=="ok"]
    return df.set_index(KEY)
kinds={0:["fresh","fresh_sets4","new"],1:["sets4","fresh","fresh_sets4"],2:["fresh","fresh_sets4","new"],3:["sets4","fresh","fresh_sets4"]}
for g in range(4):
    runs=[load(f"sets_fresh_gpu{g}/run{i}") for i in range(3)]
    def cmp(a,b,label):
        j=a[["median_ms"]].join(b[["median_ms"]].add_suffix("_b"),how="inner")
        r=((j.median_ms_b-j.median_ms).abs()/j.median_ms)
        big=j.median_ms>=0.05
        print(f"gpu{g} {label}: n={len(j)} median {r.median()*100:.2f}% p90 {r.quantile(.9)*100:.2f}% max {r.max()*100:.2f}% within3 {(r<=.03).sum()}/{len(r)} >=50us within2 {(r[big]<=.02).sum()}/{big.sum()}")
        w=r.sort_values(ascending=False).head(3)
        print("   worst:", [(i[0],i[6],i[7],round(v*100,2),round(j.median_ms.loc[i],4)) for i,v in w.items()])
    k=kinds[g]
    cmp(runs[0],runs[2],f"{k[0]} run0/run2 (run2 partial)")
    cmp(runs[0],runs[1],f"{k[0]} vs {k[1]}")
    cmp(runs[1],runs[2],f"{k[1]} vs {k[2]}")
