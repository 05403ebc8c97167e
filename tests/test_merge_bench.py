"""The merge benchmark's own logic (not its timings): parameter overrides, page-cache setup,
and the bar checks of its table."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("merge_bench")


def test_method_spec_overrides_defaults(bench) -> None:
    assert bench.method_spec("lors") == ("lors", {"rank_ratio": 0.05, "keep_ratio": 0.4})
    name, p = bench.method_spec("lors:rank_ratio=0.01")
    assert name == "lors" and p == {"rank_ratio": 0.01, "keep_ratio": 0.4}
    assert bench.method_spec("ties:keep_ratio=0.2,lambda_unused=1") == (
        "ties",
        {"keep_ratio": 0.2, "lambda_unused": 1.0},
    )
    assert bench.PARAMS["lors"]["rank_ratio"] == 0.05  # the defaults were not mutated


@pytest.mark.parametrize("state", ["warm", "cold"])
def test_set_page_cache_keeps_files(bench, tmp_path: Path, state: str) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    bench.set_page_cache([f], state)
    assert f.read_bytes() == b"abc" * 1000


def test_table_bar_checks(bench) -> None:
    def row(wall: float, rss: float) -> dict:
        return {"wall_s": wall, "cpu_s": wall, "peak_rss_bytes": int(rss), "returncode": 0}

    model = 1_000_000_000
    result = {
        "setup": {"page_cache": "warm"},
        "model_fp32_bytes": model,
        "methods": {"ta": row(10, 0.7e9), "lors": row(25, 0.7e9), "ties": row(30, 2.6e9)},
        "naive_inmemory_exact_svd_lors": row(100, 12e9),
        "mergekit": {"task_arithmetic": row(20, 12e9), "ties": row(29, 12e9)},
    }
    text = bench.table(result)
    assert "page cache before each run: warm" in text
    assert "* LoRS <= 2 x TA (wall_s: 25.0 vs 10.0): NOT met" in text
    assert "* LoRS >= 5 x faster than naive (wall_s: 25.0 vs 100.0): NOT met" in text
    assert "* TA no slower than mergekit (wall_s: 10.0 vs 20.0): met" in text
    assert "* TIES no slower than mergekit (wall_s: 30.0 vs 29.0): NOT met" in text
    assert "max 2.60" in text and "NOT met" in text.split("peak RSS of every engine method")[1]
