"""The smoke preset through profiles/slurm on a real (throw-away, single-node) SLURM cluster.

Opt-in: it needs root, installs slurm-wlm/munge and snakemake-executor-plugin-slurm if they
are missing, runs SLURM daemons for several minutes, so the default suite (and CI) skip it:

    SPEECHMERGE_SLURM_TEST=1 .venv/bin/python -m pytest tests/test_slurm.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests/slurm/run_slurm_test.sh"

pytestmark = pytest.mark.slurm


@pytest.mark.skipif(
    os.environ.get("SPEECHMERGE_SLURM_TEST") != "1",
    reason="real SLURM test: set SPEECHMERGE_SLURM_TEST=1, or run bash tests/slurm/run_slurm_test.sh",
)
def test_smoke_dag_through_real_slurm():
    res = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=3600, check=False
    )
    assert res.returncode == 0, (res.stdout[-4000:], res.stderr[-6000:])
    assert "PASSED" in res.stdout
