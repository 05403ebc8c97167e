#!/usr/bin/env python
"""OpenMP wait policies on LoRS (a script that prints numbers, not a test).

LoRS (r = 5 %, p = 40 %) of 6 768x3072 and 12 768x768 random matrices, twice, in this
process; prints torch's threads, the wait settings and wall / CPU seconds. Compare settings
by environment, quiet and beside busy processes (docs/performance.md):

    .venv/bin/python benchmarks/omp_wait.py                                   # libgomp default
    GOMP_SPINCOUNT=1000 .venv/bin/python benchmarks/omp_wait.py               # speechmerge's
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/omp_wait.py
"""

import os
import resource
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from speechmerge.prune import lors_dense

g = torch.Generator().manual_seed(0)
mats = [torch.randn(768, 3072, generator=g) for _ in range(6)] + [
    torch.randn(768, 768, generator=g) for _ in range(12)
]
t0 = time.time()
r0 = resource.getrusage(resource.RUSAGE_SELF)
for rep in range(2):
    for m in mats:
        lors_dense(m, 0.05, 0.4)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(
    f"threads={torch.get_num_threads()} wait={os.environ.get('OMP_WAIT_POLICY', '-')} spin={os.environ.get('GOMP_SPINCOUNT', '-')} wall={time.time() - t0:.2f} cpu={r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime:.2f}"
)
