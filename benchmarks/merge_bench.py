#!/usr/bin/env python
"""Merge-engine benchmark on whisper-small-shaped checkpoints (a script, not a test).

Builds, locally and without downloads, a randomly initialised base with whisper-small's
dimensions (``WhisperConfig``: d_model 768, 12+12 layers, 12 heads, FFN 3072, vocab 51865,
80 mels, 1500/448 positions) saved with ``save_pretrained``, and ten task vectors with a
low-rank + sparse + noise structure written directly as safetensors. Then merges the ten with
every registered method, each in a fresh subprocess, and records wall time and peak RSS
(``getrusage(RUSAGE_CHILDREN)`` of a small wrapper process whose only child is the merge).
Baselines on the same checkpoints: (a) a naive in-memory LoRS (all task vectors loaded fully,
exact ``torch.linalg.svd``), (b) mergekit's ``task_arithmetic`` and ``ties`` when mergekit is
installed in ``/tmp/mk`` (``python3.11 -m venv /tmp/mk && /tmp/mk/bin/pip install
torch==2.13.0 mergekit``); otherwise the reason is recorded.

mergekit workaround: mergekit 0.1.5's ``_data/architectures/whisper.json`` gives the decoder
module ``"weight_prefix": "model.decoder"`` without the trailing dot (the encoder has
``"model.encoder."``), so it looks for tensors named ``model.decoderlayers.0...`` and fails on
every Whisper checkpoint. The benchmark does not touch the installed package: it runs mergekit
through a small launcher (written to the temp dir, run with ``/tmp/mk/bin/python``) that loads
a *copy* of that architecture definition with the trailing dot added to every module's
``weight_prefix``, registers it for ``WhisperForConditionalGeneration`` in mergekit's
``NAME_TO_ARCH`` table and then calls ``mergekit-yaml``'s ``main()``. The fix is applied only
when the prefix lacks the dot, so a fixed mergekit release runs unchanged.

Writes ``<out-dir>/merge.json`` (``merge-quick.json`` with ``--quick``; ``merge[-quick]-cold.json``
with ``--cache cold``): method -> wall seconds and peak RSS bytes, plus the size in bytes of
one fp32 model. Before every run the inputs' page-cache state is set (``--cache``): ``warm``
(default) reads them once, ``cold`` drops them, so that no run depends on what the previous
one left in memory (ten task vectors plus ten fine-tuned models for mergekit are ~20 GB, more
than the page cache keeps). Data go to
``<out-dir>/data[-quick]/`` and are reused by later runs.

With ``--load N`` each method runs quiet and then beside N busy processes (one GEMM thread
each, like fine-tune jobs) in the same run, and ``merge-load[-quick].json`` records both
CPU-second counts; ``--omp-wait default`` runs the merges with libgomp's default wait policy
(spin 300 000 rounds, then sleep) instead of speechmerge's 1000 (:mod:`speechmerge.threads`).

    .venv/bin/python benchmarks/merge_bench.py --quick --out-dir /tmp/bench   # 2+2 layers, 3 τ
    .venv/bin/python benchmarks/merge_bench.py                                # full: results/bench
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WHISPER_SMALL = {
    "d_model": 768,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 12,
    "decoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_ffn_dim": 3072,
    "vocab_size": 51865,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}
LAMBDA = 0.3
#: Hyper-parameters per method (the workflow config's defaults; other methods: their own).
PARAMS: dict[str, dict] = {
    "mp": {"keep_ratio": 0.4},
    "svp": {"rank_ratio": 0.05},
    "lors": {"rank_ratio": 0.05, "keep_ratio": 0.4},
}
MERGEKIT_VENV = Path("/tmp/mk")
#: Set in a merge child's environment: leave OpenMP's wait policy at its default (spin, then
#: sleep) instead of speechmerge's short spin -- the behaviour before speechmerge.threads.
KEEP_OMP_DEFAULT = "MERGE_BENCH_KEEP_OMP_DEFAULT"


def _seed(*parts: object) -> int:
    h = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------- data


def build_data(data: Path, quick: bool, n: int, seed: int) -> dict:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechmerge.architecture import is_prunable
    from speechmerge.io.weights import SafetensorsReader, atomic_save_streaming

    dims = dict(WHISPER_SMALL, **({"encoder_layers": 2, "decoder_layers": 2} if quick else {}))
    stamp = {"dims": dims, "n": n, "seed": seed, "version": 1}
    stamp_file = data / "stamp.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        print(f"reusing data in {data}", flush=True)
        return stamp
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    t0 = time.time()
    torch.manual_seed(seed)
    cfg = WhisperConfig(**dims, pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
                        decoder_start_token_id=50258)  # fmt: skip
    model = WhisperForConditionalGeneration(cfg).eval()
    model.save_pretrained(data / "base", safe_serialization=True)
    del model
    with SafetensorsReader(data / "base" / "model.safetensors") as r:
        specs = [(k, torch.float32, r.shape(k)) for k in r if r.dtype(k).is_floating_point]

    shapes = {k: s for k, _, s in specs}

    def make(i: int):
        def produce(name: str) -> torch.Tensor:
            shape = shapes[name]
            g = torch.Generator().manual_seed(_seed(seed, i, name))
            tv = 1e-4 * torch.randn(shape, generator=g)
            if len(shape) == 2 and is_prunable(name, tv):
                d, k = shape
                a = torch.randn(d, 16, generator=g) * 1e-3
                b = torch.randn(16, k, generator=g) / 4
                tv += a @ b
                idx = torch.randint(0, d * k, (d * k // 100,), generator=g)
                tv.view(-1)[idx] += 1e-2 * torch.randn(idx.numel(), generator=g)
            return tv

        return produce

    for i in range(n):
        atomic_save_streaming(data / f"tv{i}.safetensors", specs, make(i), {"bench": str(i)})
        print(f"  task vector {i + 1}/{n} written", flush=True)
    stamp_file.write_text(json.dumps(stamp))
    print(f"data built in {time.time() - t0:.1f}s", flush=True)
    return stamp


def build_finetuned(data: Path, n: int) -> list[Path]:
    """θ_i = θ_0 + τ_i as model dirs (only for mergekit, which merges models, not τ)."""
    from speechmerge.io.weights import SafetensorsReader, atomic_save_streaming

    out = []
    for i in range(n):
        d = data / f"ft{i}"
        out.append(d)
        if (d / "model.safetensors").is_file():
            continue
        d.mkdir(exist_ok=True)
        for f in (data / "base").iterdir():
            if not f.name.endswith(".safetensors"):
                shutil.copy2(f, d / f.name)
        with (
            SafetensorsReader(data / "base" / "model.safetensors") as b,
            SafetensorsReader(data / f"tv{i}.safetensors") as t,
        ):
            specs = [(k, b.dtype(k), b.shape(k)) for k in b]

            def produce(k: str, b=b, t=t):
                x = b.get_tensor(k)
                return x + t.get_tensor(k) if k in t else x

            atomic_save_streaming(d / "model.safetensors", specs, produce, {"format": "pt"})
    return out


# ---------------------------------------------------------------- children


def method_spec(spec: str) -> tuple[str, dict]:
    """``"lors"`` or ``"lors:rank_ratio=0.01,keep_ratio=0.2"`` -> (method, its parameters):
    the defaults of :data:`PARAMS` with the given values (floats) replaced."""
    name, _, rest = spec.partition(":")
    params = dict(PARAMS.get(name, {}))
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        params[key.strip()] = float(value)
    return name, params


def engine_inputs(data: Path, n: int) -> list[Path]:
    """The files a merge of the n task vectors reads: the base weights, then tv0..tv{n-1}."""
    return [data / "base" / "model.safetensors"] + [data / f"tv{i}.safetensors" for i in range(n)]


def child_merge(method: str, data: Path, n: int, out: Path) -> None:
    from speechmerge.threads import limit_threads, prefer_short_spin

    if not os.environ.get(KEEP_OMP_DEFAULT):
        prefer_short_spin()  # before torch loads, as the CLI and the workflow's merge jobs

    from speechmerge.io.memory import enable_streaming_memory_tuning
    from speechmerge.merge import merge_models

    enable_streaming_memory_tuning()  # as the workflow's merge jobs and the CLI do
    limit_threads()
    tvs = engine_inputs(data, n)[1:]
    name, params = method_spec(method)
    t0 = time.time()
    merge_models(data / "base", tvs, name, LAMBDA, params, out, progress=False)
    print(json.dumps({"merge_s": time.time() - t0}))


def child_busy() -> None:
    """A competing load: one thread of float32 GEMMs, as a fine-tune job's (runs until killed)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(384, 384)
    while True:
        a = torch.tanh(a @ a * 1e-3)


def child_baseline() -> None:
    """Peak RSS of a merge process that does nothing: Python + torch + speechmerge imported."""
    import speechmerge.merge.engine  # noqa: F401  (speechmerge.merge alone loads no torch)

    print(json.dumps({"merge_s": 0.0}))


def child_naive(data: Path, n: int, out: Path) -> None:
    """LoRS the naive way: every τ fully in memory, exact SVD (torch.linalg.svd)."""
    import torch
    from safetensors.torch import load_file, save_file

    from speechmerge.architecture import is_prunable
    from speechmerge.prune import count_from_ratio, rank_from_ratio

    t0 = time.time()
    base = load_file(data / "base" / "model.safetensors")
    tvs = [load_file(data / f"tv{i}.safetensors") for i in range(n)]
    p = PARAMS["lors"]
    merged = {}
    for name, b in base.items():
        if not b.is_floating_point():
            merged[name] = b
            continue
        total = torch.zeros_like(b)
        for tv in tvs:
            t = tv[name]
            if is_prunable(name, t):
                r = rank_from_ratio(t.shape, p["rank_ratio"])
                u, s, vh = torch.linalg.svd(t, full_matrices=False)
                low = (u[:, :r] * s[:r]) @ vh[:r]
                res = (t - low).flatten()
                k = count_from_ratio(res.numel(), p["keep_ratio"])
                sp = torch.zeros_like(res)
                idx = res.abs().topk(k).indices
                sp[idx] = res[idx]
                t = low + sp.view_as(low)
            total += t
        merged[name] = b + LAMBDA * total
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, out / "model.safetensors", metadata={"format": "pt"})
    print(json.dumps({"merge_s": time.time() - t0}))


def measure(cmd: list[str]) -> None:
    """Run ``cmd`` as this process's only child; print its wall time and peak RSS."""
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.time() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss = ru.ru_maxrss * 1024  # KiB on Linux
    inner = {}
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            inner = json.loads(line)
            break
    cpu = round(ru.ru_utime + ru.ru_stime, 2)  # less sensitive than wall to a busy machine
    res = {"wall_s": round(wall, 2), "cpu_s": cpu, "peak_rss_bytes": rss,
           "returncode": p.returncode, **inner}  # fmt: skip
    if p.returncode:
        res["error"] = (p.stderr or p.stdout).strip().splitlines()[-5:]
    print(json.dumps(res))


def set_page_cache(files: list[Path], state: str) -> None:
    """Put the input files of the next measurement in a known page-cache state.

    ``warm``: read every file once, so the merge reads from memory (the inputs of one run,
    ~10 GB, fit in RAM; without this, whatever the previous run evicted decides the time);
    ``cold``: drop the files' pages (fsync, then ``POSIX_FADV_DONTNEED``), so the merge reads
    from disk, as a user merging checkpoints that are not in memory does.
    """
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if state == "cold":
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 64 << 20):
                    pass
        finally:
            os.close(fd)


def run_measured(cmd: list[str], inputs: list[Path] | None = None, cache: str = "warm") -> dict:
    if inputs:
        set_page_cache(inputs, cache)
    p = subprocess.run(
        [sys.executable, __file__, "_measure", "--", *cmd],
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode:
        return {"error": p.stderr.strip().splitlines()[-5:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- mergekit


def mergekit_status(install: bool) -> tuple[Path | None, str]:
    exe = MERGEKIT_VENV / "bin" / "mergekit-yaml"
    if exe.is_file():
        return exe, "found"
    if not install:
        return None, f"mergekit is not installed in {MERGEKIT_VENV} (--install-mergekit)"
    log = []
    for cmd in (
        ["python3.11", "-m", "venv", str(MERGEKIT_VENV)],
        [str(MERGEKIT_VENV / "bin" / "pip"), "install", "-q", "torch==2.13.0", "mergekit"],
    ):
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log.append(p.stderr.strip()[-2000:])
        if p.returncode:
            return None, f"mergekit could not be installed: {' '.join(cmd)}: {log[-1]}"
    return (exe, "installed") if exe.is_file() else (None, "mergekit-yaml missing after install")


#: Launcher run with the mergekit venv's python: fixes whisper.json (see the module docstring).
MERGEKIT_LAUNCHER = """\
import json, sys
from importlib import resources

import mergekit._data.architectures as arch_data
from mergekit.architecture import json_definitions as jd

data = json.loads((resources.files(arch_data) / "whisper.json").read_text())
fixed = []
for name, module in data.get("modules", {}).items():
    prefix = module.get("weight_prefix")
    if prefix and not prefix.endswith("."):
        module["weight_prefix"] = prefix + "."
        fixed.append(name)
if fixed:
    arch = jd._load_architecture_json(json.dumps(data))
    for a in arch.architectures:
        jd.NAME_TO_ARCH[a] = [arch]
    print(f"whisper.json: added the trailing dot to weight_prefix of {fixed}", file=sys.stderr)

from mergekit.scripts.run_yaml import main

sys.argv = ["mergekit-yaml", *sys.argv[1:]]
sys.exit(main())
"""


def mergekit_config(method: str, base: Path, fts: list[Path]) -> str:
    lines = [f"merge_method: {method}", f"base_model: {base}", "dtype: float32", "models:"]
    for f in fts:
        lines.append(f"  - model: {f}")
        if method == "task_arithmetic":
            lines.append(f"    parameters: {{weight: {LAMBDA}}}")
        else:  # TIES with the paper's defaults: top-20 %, λ = 1
            lines.append("    parameters: {weight: 1.0, density: 0.2}")
    if method == "ties":
        lines.append("parameters: {normalize: true}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- report


def table(result: dict) -> str:
    """Markdown table and bar checks of a merge.json (``merge_bench.py table merge.json``)."""
    model = result["model_fp32_bytes"]
    from speechmerge.merge import METHODS

    rows = [(f"`{m}`", m, r) for m, r in result["methods"].items()]
    if "naive_inmemory_exact_svd_lors" in result:
        naive = result["naive_inmemory_exact_svd_lors"]
        rows.append(("naive LoRS (in memory, exact SVD)", "naive", naive))
    for mk in ("task_arithmetic", "ties"):
        if mk in result.get("mergekit", {}):
            rows.append((f"mergekit `{mk}`", f"mergekit {mk}", result["mergekit"][mk]))
    cache = result.get("setup", {}).get("page_cache", "not controlled")
    lines = [
        f"Inputs' page cache before each run: {cache}.",
        "",
        "| method | wall s | CPU s | peak RSS GB | RSS / one fp32 model |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    m: dict[str, dict] = {}
    for label, key, r in rows:
        if "error" in r or r.get("returncode"):
            lines.append(f"| {label} | failed | | | |")
            continue
        rss = r["peak_rss_bytes"]
        lines.append(
            f"| {label} | {r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.1f} "
            f"| {rss / 1e9:.2f} | {rss / model:.2f} |"
        )
        m[key] = r
    checks = []

    def bar(text: str, a: str, b: str, f) -> None:
        if a in m and b in m:
            for key in ("wall_s", "cpu_s"):
                if key in m[a] and key in m[b]:
                    x, y = m[a][key], m[b][key]
                    res = "met" if f(x, y) else "NOT met"
                    checks.append(f"* {text} ({key}: {x:.1f} vs {y:.1f}): {res}")
        else:
            checks.append(f"* {text}: not measured")

    bar("LoRS <= 2 x TA", "lors", "ta", lambda x, y: x <= 2 * y)
    bar("LoRS >= 5 x faster than naive", "lors", "naive", lambda x, y: 5 * x <= y)
    bar("TA no slower than mergekit", "ta", "mergekit task_arithmetic", lambda x, y: x <= y)
    bar("TIES no slower than mergekit", "ties", "mergekit ties", lambda x, y: x <= y)
    for a, b in (("ta", "mergekit task_arithmetic"), ("ties", "mergekit ties")):
        if a in m and b in m:
            x, y = m[a]["peak_rss_bytes"], m[b]["peak_rss_bytes"]
            res = "met" if x <= y else "NOT met"
            checks.append(
                f"* {a} peak RSS <= mergekit's ({x / 1e9:.2f} vs {y / 1e9:.2f} GB): {res}"
            )
    engine = [m[k]["peak_rss_bytes"] / model for k in METHODS if k in m]
    if engine:
        res = "met" if max(engine) <= 2.5 else "NOT met"
        if len(engine) < len(METHODS):
            res += f" so far ({len(METHODS) - len(engine)} not measured)"
        checks.append(
            f"* peak RSS of every engine method <= 2.5 x one fp32 model (max {max(engine):.2f}; "
            f"{len(engine)} of {len(METHODS)} methods measured): {res}"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(checks)


# ---------------------------------------------------------------- load mode


def run_load(args, data: Path, n: int, result: dict, out_dir: Path, show) -> None:
    """Each method quiet, then beside ``args.load`` busy processes, in the same run; the
    CPU-seconds ratio loaded / quiet says whether the merge's threads waste cycles when the
    cores are shared (they spun at OpenMP barriers before speechmerge.threads)."""
    result["setup"]["load_processes"] = args.load
    result["setup"]["omp_wait"] = args.omp_wait
    result["load"] = {}
    suffix = "-quick" if args.quick else ""
    suffix += "-ompdefault" if args.omp_wait == "default" else ""
    path = out_dir / f"merge-load{suffix}.json"
    inputs = engine_inputs(data, n)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".merge-bench-") as tmp:
        for m in args.methods:
            entry = {}
            for state in ("quiet", "loaded"):
                busy = []
                if state == "loaded":
                    busy = [subprocess.Popen([sys.executable, __file__, "_busy"])
                            for _ in range(args.load)]  # fmt: skip
                    time.sleep(2.0)  # let them reach their loop
                try:
                    cmd = [sys.executable, __file__, "_merge", m, str(data), str(n), f"{tmp}/{m}"]
                    entry[state] = run_measured(cmd, inputs, args.cache)
                finally:
                    for b in busy:
                        b.kill()
                        b.wait()
                shutil.rmtree(f"{tmp}/{m}", ignore_errors=True)
                show(f"{m} ({state})", entry[state])
            q, ld = entry["quiet"], entry["loaded"]
            if not any("error" in r or r.get("returncode") for r in (q, ld)):
                entry["cpu_ratio"] = round(ld["cpu_s"] / q["cpu_s"], 3)
                entry["wall_ratio"] = round(ld["wall_s"] / q["wall_s"], 3)
                print(f"{m}: loaded / quiet CPU-seconds {entry['cpu_ratio']:.2f}x, "
                      f"wall {entry['wall_ratio']:.2f}x", flush=True)  # fmt: skip
            result["load"][m] = entry
            path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", flush=True)


# ---------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        return measure(sys.argv[3:])
    if len(sys.argv) > 1 and sys.argv[1] == "_merge":
        return child_merge(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    if len(sys.argv) > 1 and sys.argv[1] == "_busy":
        return child_busy()
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        return child_baseline()
    if len(sys.argv) > 1 and sys.argv[1] == "_naive":
        return child_naive(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    if len(sys.argv) > 1 and sys.argv[1] == "table":
        return print(table(json.loads(Path(sys.argv[2]).read_text())))

    from speechmerge.merge import METHODS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2+2 layers and 3 task vectors")
    ap.add_argument("--out-dir", default=str(ROOT / "results" / "bench"))
    ap.add_argument("--n", type=int, default=None, help="task vectors (default 10, quick 3)")
    # the methods the bars are about first, the slow SVD-of-everything ones last
    first = [m for m in ("ta", "lors", "ties", "wa", "mp", "svp", "dare", "cart") if m in METHODS]
    order = first + sorted(set(METHODS) - set(first))
    ap.add_argument("--methods", nargs="*", default=order, metavar="METHOD[:key=value,...]",
                    help=f"registered methods ({', '.join(sorted(METHODS))}); a suffix "
                    "overrides parameters, e.g. lors:rank_ratio=0.01")  # fmt: skip
    ap.add_argument("--update", action="store_true",
                    help="keep the other entries of an existing merge.json (re-run a part)")  # fmt: skip
    ap.add_argument("--no-naive", action="store_true", help="skip the naive exact-SVD LoRS")
    ap.add_argument("--no-mergekit", action="store_true", help="skip mergekit")
    ap.add_argument("--install-mergekit", action="store_true",
                    help=f"create {MERGEKIT_VENV} and pip install mergekit if missing")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm",
                    help="page-cache state of each run's input files: warm = read once "
                    "before the run (default), cold = dropped before the run")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in every merge process (OMP_NUM_THREADS; default: "
                    "torch's). 1 avoids OpenMP oversubscription on a machine that is busy")  # fmt: skip
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="load mode: each method measured quiet, then beside N busy processes "
                    "(one GEMM thread each, like fine-tune jobs), in the same run; writes "
                    "merge-load[-quick].json. No mergekit, no naive baseline")  # fmt: skip
    ap.add_argument("--omp-wait", choices=("speechmerge", "default"), default="speechmerge",
                    help="OpenMP wait policy of the merge processes: speechmerge's (spin 1000, "
                    "as the CLI and the workflow) or libgomp's default (spin, then sleep; the "
                    "behaviour before speechmerge.threads)")  # fmt: skip
    args = ap.parse_args()
    for spec in args.methods:
        if method_spec(spec)[0] not in METHODS:
            ap.error(f"unknown method {spec!r}; known: {', '.join(sorted(METHODS))}")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["MKL_NUM_THREADS"] = str(args.threads)

    n = args.n or (3 if args.quick else 10)
    out_dir = Path(args.out_dir)
    data = out_dir / ("data-quick" if args.quick else "data")
    stamp = build_data(data, args.quick, n, args.seed)
    import torch

    from speechmerge.io.weights import SafetensorsReader

    with SafetensorsReader(data / "base" / "model.safetensors") as r:
        sizes = [torch.Size(r.shape(k)).numel() * 4 for k in r if r.dtype(k).is_floating_point]
    model_bytes, largest = sum(sizes), max(sizes)
    result: dict = {
        "setup": {**stamp, "lambda": LAMBDA, "params": PARAMS, "torch_threads":
                  args.threads or torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                  "page_cache": args.cache},
        "model_fp32_bytes": model_bytes,
        "largest_tensor_fp32_bytes": largest,
        "methods": {},
    }  # fmt: skip
    print(
        f"one fp32 model: {model_bytes / 2**20:.0f} MiB (largest tensor "
        f"{largest / 2**20:.0f} MiB); {n} task vectors",
        flush=True,
    )
    print(f"{'method':<22}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB':>14}{'RSS / model':>13}",
          flush=True)  # fmt: skip

    def show(name: str, res: dict) -> None:
        if "error" in res or res.get("returncode"):
            print(f"{name:<22} FAILED: {res.get('error')}", flush=True)
            return
        rss = res["peak_rss_bytes"]
        print(f"{name:<22}{res['wall_s']:>9.1f}{res.get('cpu_s', 0):>9.1f}{rss / 2**20:>14.0f}"
              f"{rss / model_bytes:>13.2f}", flush=True)  # fmt: skip

    if args.omp_wait == "default":
        os.environ[KEEP_OMP_DEFAULT] = "1"
        os.environ.pop("OMP_WAIT_POLICY", None)
        os.environ.pop("GOMP_SPINCOUNT", None)
    if args.load:
        return run_load(args, data, n, result, out_dir, show)

    name = ("merge-quick" if args.quick else "merge") + ("-cold" if args.cache == "cold" else "")
    name += ".json"
    if args.update and (out_dir / name).is_file():
        old = json.loads((out_dir / name).read_text())
        for key in ("methods", "mergekit"):
            result[key] = {**old.get(key, {}), **result.get(key, {})}
        for key in ("naive_inmemory_exact_svd_lors", "process_baseline"):
            if key in old:
                result[key] = old[key]

    def save() -> None:  # after every measurement, so an interrupted run keeps what it has
        (out_dir / name).write_text(json.dumps(result, indent=2) + "\n")

    def run_mergekit(tmp: str) -> None:
        exe, status = mergekit_status(args.install_mergekit)
        result["mergekit"] = {**result.get("mergekit", {}), "status": status}
        if exe is None:
            print(f"mergekit: {status}", flush=True)
            return
        fts = build_finetuned(data, n)
        launcher = Path(tmp) / "mergekit_whisper.py"
        launcher.write_text(MERGEKIT_LAUNCHER)
        py = str(MERGEKIT_VENV / "bin" / "python")
        for mk in ("task_arithmetic", "ties"):
            cfg = Path(tmp) / f"{mk}.yml"
            cfg.write_text(mergekit_config(mk, data / "base", fts))
            ft_files = [data / "base" / "model.safetensors"]
            ft_files += [f / "model.safetensors" for f in fts]
            res = run_measured(
                [py, str(launcher), str(cfg), f"{tmp}/mk-{mk}"], ft_files, args.cache
            )
            shutil.rmtree(f"{tmp}/mk-{mk}", ignore_errors=True)
            result["mergekit"][mk] = res
            show(f"mergekit {mk}", res)
            save()

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".merge-bench-") as tmp:
        res = run_measured([sys.executable, __file__, "_baseline"])
        result["process_baseline"] = res
        show("(imports only)", res)
        inputs = engine_inputs(data, n)
        for i, m in enumerate(args.methods):
            res = run_measured(
                [sys.executable, __file__, "_merge", m, str(data), str(n), f"{tmp}/{m}"],
                inputs,
                args.cache,
            )
            shutil.rmtree(f"{tmp}/{m}", ignore_errors=True)
            result["methods"][m] = res
            show(m, res)
            save()
            if i == 2 and not args.no_mergekit:  # mergekit right after ta, lors, ties
                run_mergekit(tmp)
        if not args.no_mergekit and len(args.methods) < 3:
            run_mergekit(tmp)
        if not args.no_naive:
            res = run_measured(
                [sys.executable, __file__, "_naive", str(data), str(n), f"{tmp}/nv"],
                inputs,
                args.cache,
            )
            shutil.rmtree(f"{tmp}/nv", ignore_errors=True)
            result["naive_inmemory_exact_svd_lors"] = res
            show("naive lors (exact SVD)", res)
            save()
    save()
    print(f"wrote {out_dir / name}", flush=True)


if __name__ == "__main__":
    main()
