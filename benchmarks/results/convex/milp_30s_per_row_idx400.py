import sys, time, torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
torch.set_num_threads(1)
import convex as B
from certify import convex
from certify.data import load_dataset
from certify.spec.output import robustness_matrix
net, _ = B.train_pgd_mlp(B.SHARED / "data", eps=0.1, epochs=15)
X, y = load_dataset("mnist", "test", str(B.SHARED / "data"))
for i in [400]:
    x, C = X[i:i+1], robustness_matrix(y[i:i+1], 10)
    t0 = time.perf_counter()
    r = convex.milp(net, x, eps=0.1, C=C, mode="decision", time_limit=30.0, bounds_method="alpha")
    print(f"#{i} milp decision, 30 s/row: {r.verdict[0]} status {r.status[0]} lower {[round(v,3) for v in r.lower[0].tolist()]} {time.perf_counter()-t0:.0f} s", flush=True)
