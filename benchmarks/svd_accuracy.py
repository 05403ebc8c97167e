#!/usr/bin/env python
"""Randomized vs exact SVD on the task vectors LoRS is used on (a script that prints numbers).

    .venv/bin/python benchmarks/svd_accuracy.py RUN_DIR [--ratios 0.01 0.05 0.1] [--keep 0.4]

For every prunable matrix (architecture rule: 2-D linear weights, no embeddings) of every task
vector in ``RUN_DIR/results/taskvectors/`` that is not all zero (a decoder-only fine-tune has
zero encoder deltas), and for a flat-spectrum control (i.i.d. Gaussian 512x512 and 2048x512
matrices, the worst case for a randomized SVD), it runs SVP and LoRS with the default path
(``exact=None``: randomized when ``r <= min(d, k) / 4``) and with ``exact=True``, and prints
per rank ratio the worst and median over matrices of

- ``svp``:  ‖SVP_rand − SVP_exact‖_F / ‖τ‖_F
- ``lors``: ‖LoRS_rand − LoRS_exact‖_F / ‖τ‖_F
- ``flip``: fraction of the sparse part's kept positions that differ between the two
- ``ey``:   ‖τ − SVP_rand‖_F / ‖τ − SVP_exact‖_F − 1 (excess over the optimal rank-r error)
- ``gap``:  σ_{r+1} / σ_r of the exact SVD (1 = no spectral gap at the cut)

and the number of matrices. Accuracy only: the machine's load does not change the numbers.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from safetensors import safe_open

from speechmerge import prune

try:  # the library's tensor rule, wherever it lives
    from speechmerge.architecture import is_prunable
except ImportError:  # pragma: no cover - before the issue-17 split
    from speechmerge.prune import is_prunable


def measure(t: torch.Tensor, ratio: float, keep: float) -> dict[str, float]:
    t = t.float()
    norm = t.norm().item()
    # LoRS's low-rank part is SVP(τ) (eq. 6): one SVD per path serves both measures
    svp_r, sp_r = prune.lors(t, ratio, keep)
    svp_e, sp_e = prune.lors(t, ratio, keep, exact=True)
    mask_r, mask_e = sp_r != 0, sp_e != 0
    kept = max(int(mask_e.sum()), 1)
    s = torch.linalg.svdvals(t)
    r = prune.rank_from_ratio(t.shape, ratio)
    return {
        "svp": (svp_r - svp_e).norm().item() / norm,
        "lors": ((svp_r + sp_r) - (svp_e + sp_e)).norm().item() / norm,
        "flip": int((mask_r ^ mask_e).sum()) / (2 * kept),
        "ey": (t - svp_r).norm().item() / max((t - svp_e).norm().item(), 1e-30) - 1,
        "gap": (s[r] / s[r - 1]).item() if r < len(s) else 0.0,
    }


def real_matrices(run: Path):
    for path in sorted((run / "results/taskvectors").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                t = f.get_tensor(name)
                if is_prunable(name, t) and t.abs().max() > 0:
                    yield f"{path.stem}:{name}", t


def flat_matrices():
    g = torch.Generator().manual_seed(0)
    for shape in [(512, 512), (2048, 512), (512, 2048)]:
        for i in range(3):
            yield f"gauss{shape}#{i}", torch.randn(shape, generator=g)


def summarize(label: str, rows: list[dict[str, float]]) -> str:
    keys = ["svp", "lors", "flip", "ey", "gap"]
    cells = []
    for k in keys:
        vals = [r[k] for r in rows]
        cells.append(f"{max(vals):.2e} / {statistics.median(vals):.2e}")
    return f"| {label} | {len(rows)} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    ap.add_argument("--keep", type=float, default=0.4)
    a = ap.parse_args()
    torch.manual_seed(0)
    real = list(real_matrices(a.run))
    flat = list(flat_matrices())
    print(f"{len(real)} nonzero prunable matrices in {a.run}/results/taskvectors; keep {a.keep}")
    print()
    print("| input, rank ratio | n | svp max / median | lors | flip | ey | gap σr+1/σr |")
    print("|---|---|---|---|---|---|---|")
    for ratio in a.ratios:
        for label, mats in [("task vectors", real), ("flat (Gaussian)", flat)]:
            rows = [measure(t, ratio, a.keep) for _, t in mats]
            print(summarize(f"{label}, r {ratio:g}", rows))


if __name__ == "__main__":
    main()
