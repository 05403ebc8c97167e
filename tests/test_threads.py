"""CPU threads on a shared machine (issue 16 item 6): OpenMP's short spin before torch loads,
and the CPUs a process may use from its affinity and cgroup quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechmerge import threads

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("content", "expected"),
    [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("garbage", None)],
)
def test_cgroup_v2_quota(tmp_path: Path, content: str, expected: float | None) -> None:
    (tmp_path / "cpu.max").write_text(content)
    assert threads.cgroup_cpu_limit(tmp_path) == expected


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_is_unlimited(tmp_path: Path) -> None:
    assert threads.cgroup_cpu_limit(tmp_path / "absent") is None


def test_available_cpus_is_capped_by_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert threads.available_cpus(tmp_path / "absent") == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: rounded up to 1
    assert threads.available_cpus(tmp_path) == 1


def _fresh(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (torch not yet loaded); its stdout."""
    full = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")
    }
    full.update(PYTHONPATH=str(REPO), **env)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, check=True
    )
    return res.stdout.strip()


def test_short_spin_comes_before_torch_and_respects_the_user() -> None:
    code = (
        "import os; from speechmerge import threads; ok = threads.prefer_short_spin(); "
        "import torch; print(ok, os.environ.get('GOMP_SPINCOUNT'))"
    )
    assert _fresh(code) == "True 1000"
    assert _fresh(code, GOMP_SPINCOUNT="5") == "False 5"  # the user's choice wins
    assert _fresh(code, OMP_WAIT_POLICY="active") == "False None"
    late = "import torch; from speechmerge import threads; print(threads.prefer_short_spin())"
    assert _fresh(late) == "False"  # after torch loaded OpenMP it can no longer act


def test_the_console_entry_sets_the_spin_count_before_torch() -> None:
    code = (
        "import sys, os; sys.argv = ['speechmerge', 'methods']; "
        "import speechmerge.console as c; assert 'torch' not in sys.modules; "
        "rc = c.main(); print(rc, os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)"
    )
    assert _fresh(code).splitlines()[-1] == "0 1000 True"


def test_limit_threads() -> None:
    code = (
        "from speechmerge import threads; import torch; torch.set_num_threads(64); "
        "n = threads.limit_threads(); m = threads.limit_threads(1); print(n, m)"
    )
    n, m = map(int, _fresh(code).split())
    assert n == min(64, threads.available_cpus()) and m == 1
    assert _fresh(code, OMP_NUM_THREADS="3").split()[0] == "64"  # the user's setting is kept


def test_merge_type_workflow_scripts_set_the_spin_count_first() -> None:
    for name in ("merge", "taskvector", "select_lambda", "select_taskvector", "prune_sweep"):
        text = (REPO / "workflow_scripts" / f"{name}.py").read_text()
        first_import = next(ln for ln in text.splitlines() if ln.startswith(("from ", "import ")))
        assert first_import.startswith("from speechmerge.threads import"), name
        assert text.index("prefer_short_spin()") < text.index("from speechmerge.io"), name
