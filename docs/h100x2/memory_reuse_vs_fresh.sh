# the memory columns of one process per device against a fresh process per cell, from the datasets in this folder,
# with benchmarks/agreement.py's memory_agreement (run from the repository root):
set -e
t=$(mktemp -d)
tar xzf docs/h100x2/inprocess_5f9e681_datasets.tgz -C $t
mkdir $t/after && tar xzf docs/h100x2/agreement_new_reuse_1d9b39a_datasets.tgz -C $t/after
python - $t <<'PY'
import sys
sys.path.insert(0, "benchmarks")
import pandas as pd
from agreement import KEY, memory_agreement
t = sys.argv[1]
for what, fresh, reused in [("5f9e681 (before the fix), inprocess.py's 1-GPU sweeps", "store-g1", "store-g1-p0"),
                            ("1d9b39a (after), agreement.py --runs new:1,reuse:1", "after/run0", "after/run1")]:
    a = pd.read_parquet(f"{t}/{fresh}").set_index(KEY)
    b = pd.read_parquet(f"{t}/{reused}").set_index(KEY).reindex(a.index)
    print(f"{what}:\n  {memory_agreement(a, b, a.status.eq('ok') & b.status.eq('ok'))}")
PY
rm -rf $t
