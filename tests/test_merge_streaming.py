"""Streaming merge: same results as the all-at-once definitions, never all n τ_i in memory."""

from __future__ import annotations

import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from speechmerge.architecture import is_prunable
from speechmerge.io import memory
from speechmerge.io.weights import SafetensorsReader, all_finite
from speechmerge.linalg import mask_from_threshold, topk_mask, topk_threshold
from speechmerge.merge import (
    METHODS,
    TaskVectors,
    dare_mask,
    merge_models,
    merge_state_dicts,
    merge_tensor,
)
from speechmerge.prune import count_from_ratio, lors_dense, magnitude_prune

MAT = "model.encoder.layers.0.fc1.weight"
VEC = "model.encoder.layers.0.fc1.bias"
EMB = "model.decoder.embed_tokens.weight"
SHAPES = {MAT: (96, 80), VEC: (96,), EMB: (300, 80)}
PARAMS = {"keep_ratio": 0.3, "rank_ratio": 0.1}


def tensors(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    tvs = [{k: 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(n)]
    return base, tvs


# ---------------------------------------------------------------- the old definitions


def old_ta(name, base, tvs, lam, prune=None):
    use = prune is not None and is_prunable(name, base)
    total = torch.zeros_like(base)
    for tv in tvs:
        total += prune(tv) if use else tv
    return total.mul_(lam).add_(base)


def old_ties(base, tvs, lam, keep):
    trimmed = [magnitude_prune(tv, keep) for tv in tvs]
    total = trimmed[0].clone()
    for t in trimmed[1:]:
        total += t
    elected = torch.sign(total / len(tvs))
    merged = torch.zeros_like(base)
    count = torch.zeros_like(base)
    for t in trimmed:
        agree = (torch.sign(t) == elected) & (t != 0)
        merged += t * agree
        count += agree
    merged /= count.clamp_(min=1)
    return base + lam * merged


def old_dare(name, base, tvs, lam, rate, seed):
    total = torch.zeros_like(base)
    for i, tv in enumerate(tvs):
        total += tv * dare_mask(tv.shape, rate, seed, name, i) / (1.0 - rate)
    return base + lam * total


@pytest.mark.parametrize("name", [MAT, VEC, EMB])
def test_streaming_equals_all_at_once(name: str) -> None:
    """Bitwise equal to the previous list-based implementations (same operation order)."""
    base, tvs = tensors(4)
    b, ts, lam = base[name], [t[name] for t in tvs], 0.3

    def run(method: str, params: dict) -> torch.Tensor:
        return merge_state_dicts({name: b}, [{name: t} for t in ts], method, lam, params)[name]

    assert torch.equal(run("ta", {}), old_ta(name, b, ts, lam))
    assert torch.equal(
        run("mp", PARAMS), old_ta(name, b, ts, lam, lambda t: magnitude_prune(t, 0.3))
    )
    assert torch.equal(
        run("lors", PARAMS), old_ta(name, b, ts, lam, lambda t: lors_dense(t, 0.1, 0.3))
    )
    assert torch.equal(run("ties", {"keep_ratio": 0.2}), old_ties(b, ts, lam, 0.2))
    assert torch.equal(
        run("dare", {"drop_rate": 0.5, "seed": 3}), old_dare(name, b, ts, lam, 0.5, 3)
    )
    mean = torch.stack(ts).mean(0)
    torch.testing.assert_close(run("wa", {}), b + mean)


# ---------------------------------------------------------------- top-k selection


@pytest.mark.parametrize("n", [10, 5000, 200_000])
@pytest.mark.parametrize("ratio", [0.0001, 0.2, 0.4, 0.9])
def test_topk_mask_is_topk(n: int, ratio: float) -> None:
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, generator=g).abs()
    k = count_from_ratio(n, ratio)
    mask = topk_mask(a, k)
    assert int(mask.sum()) == k
    if 0 < k < n:
        ref = torch.zeros(n, dtype=torch.bool)
        ref[torch.topk(a, k).indices] = True
        assert torch.equal(mask, ref)  # no ties in continuous data: the same set


def test_topk_mask_ties_lowest_index_and_threshold_roundtrip() -> None:
    a = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 2.0, 3.0])
    mask = topk_mask(a, 4)  # 3, 3 and the first two 2s
    assert mask.tolist() == [False, True, True, True, False, False, True]
    thr, ties = topk_threshold(a, 4)
    assert (thr, ties) == (2.0, 2)
    assert torch.equal(mask_from_threshold(a, thr, ties), mask)
    # heavy ties in a large input (bracket fallback path): still exactly k
    big = torch.zeros(300_000)
    big[:1000] = 1.0
    m = topk_mask(big, 5000)
    assert int(m.sum()) == 5000 and bool(m[:5000].all())


# ---------------------------------------------------------------- memory: one τ_i at a time


def test_task_vectors_is_lazy() -> None:
    loaded: list[int] = []
    ts = [torch.ones(3) * i for i in range(4)]

    def load(i: int) -> torch.Tensor:
        loaded.append(i)
        return ts[i]

    tv = TaskVectors("x", 4, load, (3,), torch.float32, [f"s{i}" for i in range(4)])
    assert len(tv) == 4 and loaded == []
    assert float(tv[2][0]) == 2.0 and loaded == [2]
    assert float(tv[-1][0]) == 3.0
    with pytest.raises(IndexError):
        tv[4]
    bad = TaskVectors("x", 1, lambda i: torch.ones(2), (3,), torch.float32, ["f.st"], "b.st")
    with pytest.raises(ValueError, match=r"'x' has shape \(2,\) in f.st but \(3,\) in b.st"):
        bad[0]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, list[Path]]:
    base, tvs = tensors(5, seed=1)
    bdir = tmp_path / "base"
    bdir.mkdir()
    save_file(base, bdir / "model.safetensors")
    paths = []
    for i, t in enumerate(tvs):
        paths.append(tmp_path / f"tv{i}.safetensors")
        save_file(t, paths[-1])
    return bdir, paths


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merge_models_holds_one_task_vector_at_a_time(
    files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A reader hook counts the task-vector tensors alive whenever a new one is read."""
    bdir, paths = files
    tv_files = {p.resolve() for p in paths}
    alive: list[weakref.ref] = []
    most = [0]
    reads = [0]
    orig = SafetensorsReader.get_tensor

    def get_tensor(self: SafetensorsReader, name: str) -> torch.Tensor:
        t = orig(self, name)
        if self.path.resolve() in tv_files:
            reads[0] += 1
            alive[:] = [r for r in alive if r() is not None]
            alive.append(weakref.ref(t))
            most[0] = max(most[0], len(alive))
        return t

    monkeypatch.setattr(SafetensorsReader, "get_tensor", get_tensor)
    params = {"keep_ratio": 0.3, "rank_ratio": 0.1}
    merge_models(bdir, paths, method, 0.3, params, tmp_path / "out", progress=False)
    assert reads[0] >= len(paths) * len(SHAPES)  # every τ_i of every tensor was read
    assert most[0] == 1, f"{method}: {most[0]} task-vector tensors alive at once"


def test_merge_tensor_loader_needs_sources() -> None:
    with pytest.raises(TypeError, match="tv_sources"):
        merge_tensor("x", torch.ones(2), lambda i: torch.ones(2), "ta", 1.0, [{}])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_matches_isfinite(dtype: torch.dtype) -> None:
    """The sum-based fast path never hides a NaN/Inf, and an overflowing sum of finite values
    (fp32 3e38 + 3e38, fp16 60000 + 60000) is not reported as non-finite."""
    big = torch.finfo(dtype).max * 0.9
    cases = {
        "ok": torch.randn(1000).to(dtype),
        "nan": torch.randn(1000).to(dtype).index_fill_(0, torch.tensor([7]), float("nan")),
        "inf": torch.randn(1000).to(dtype).index_fill_(0, torch.tensor([999]), float("inf")),
        "-inf": torch.randn(1000).to(dtype).index_fill_(0, torch.tensor([0]), float("-inf")),
        "inf-inf": torch.tensor([float("inf"), float("-inf")], dtype=dtype),
        "overflowing sum": torch.full((4,), big, dtype=dtype),
    }
    for name, t in cases.items():
        assert all_finite(t) == bool(torch.isfinite(t).all()), name
    assert all_finite(torch.arange(5))  # non-float


def test_prefetch_is_harmless(tmp_path: Path) -> None:
    """prefetch (POSIX_FADV_WILLNEED) reads nothing into the process and ignores unknown names."""
    t = {"a": torch.randn(64, 32), "b": torch.arange(5)}
    save_file(t, tmp_path / "x.safetensors")
    with SafetensorsReader(tmp_path / "x.safetensors") as r:
        for name in ("a", "b", "missing"):
            r.prefetch(name)
        assert torch.equal(r.get_tensor("a"), t["a"]) and torch.equal(r.get_tensor("b"), t["b"])


# ---------------------------------------------------------------- memory tuning: opt-in only


def _spy_memory(monkeypatch: pytest.MonkeyPatch, enabled: bool) -> dict[str, int]:
    """Count the tuning's actions during a merge (every tensor counts as large)."""
    calls = {"trim": 0, "prefetch": 0, "mallopt": 0}

    def count(key: str):
        def f(*args, **kwargs) -> None:
            calls[key] += 1

        return f

    monkeypatch.setattr(memory, "_enabled", enabled)
    monkeypatch.setattr(memory, "LARGE_TENSOR_BYTES", 0)
    monkeypatch.setattr(memory, "release_free_memory", count("trim"))
    monkeypatch.setattr(memory, "keep_freed_memory", count("mallopt"))
    monkeypatch.setattr(SafetensorsReader, "prefetch", count("prefetch"))
    return calls


def test_merge_does_not_tune_memory_unless_asked(files, tmp_path, monkeypatch) -> None:
    base, tvs = files
    calls = _spy_memory(monkeypatch, enabled=False)
    merge_models(base, tvs, "lors", 0.3, PARAMS, tmp_path / "m", progress=False)
    assert calls == {"trim": 0, "prefetch": 0, "mallopt": 0}
    assert not memory.tuning_enabled()


def test_enabled_tuning_trims_and_reads_ahead(files, tmp_path, monkeypatch) -> None:
    base, tvs = files
    calls = _spy_memory(monkeypatch, enabled=False)
    memory.enable_streaming_memory_tuning()
    merge_models(base, tvs, "ta", 0.3, None, tmp_path / "m", progress=False)
    assert calls["mallopt"] == 1
    assert calls["trim"] == 2 * len(SHAPES)  # before and after every (large) tensor
    assert calls["prefetch"] == (len(SHAPES) - 1) * (1 + len(tvs))  # the next tensor, each file


def test_importing_the_library_tunes_nothing() -> None:
    code = (
        "import speechmerge.cli, speechmerge.merge, speechmerge.compress, speechmerge.taskvector\n"
        "from speechmerge.io import memory\n"
        "print(memory.tuning_enabled(), memory.keep_freed_memory.cache_info().currsize)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "0"]
