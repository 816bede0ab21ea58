"""What the attention op's host accuracy check costs in a fresh GPU process, by thread count.

    CUDA_VISIBLE_DEVICES=0 python docs/h100x2/probe_host_check.py

Each line is one fresh process (``torch.set_num_threads(T)``; T=0: torch's default), with K of them
running at once: for flash outputs at seq 128, 4096 and 16384 (batch 4, 16 heads, head 128, bf16,
causal), milliseconds of the copies to the host and of the whole check (copies, fp32 reference of
up to 256 rows, error), the first check in the process and the next one.
"""

import subprocess
import sys

CHILD = r"""
import sys, time, torch, torch.nn.functional as F
T = int(sys.argv[1])
if T:
    torch.set_num_threads(T)
from tasks.attention import _host, reference, rel_error
dev = torch.device("cuda", 0)
torch.empty(1, device=dev)
out = []
for n in (128, 4096, 16384):
    q, k, v = (torch.randn(4, 16, n, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.cuda.synchronize()
    for rep in ("first", "next"):
        t0 = time.perf_counter(); [_host(t) for t in (q, k, v, o)]; t1 = time.perf_counter()
        err = rel_error(o, reference(q, k, v, True)); t2 = time.perf_counter()
        out.append(f"n{n} {rep}: copies {1e3*(t1-t0):6.1f} check {1e3*(t2-t1):6.1f}")
print(f"threads {torch.get_num_threads():2d} | " + " | ".join(out))
"""

for k in (1, 4):
    for t in (0, 1, 4):
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(t)], stdout=subprocess.PIPE, text=True)
                 for _ in range(k)]
        for p in procs:
            print(f"K={k} T={t}:", p.communicate()[0].strip(), flush=True)
