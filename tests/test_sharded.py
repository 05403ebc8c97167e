"""Sharded checkpoints in and out (issue 16 item 4): Hugging Face's ``save_pretrained(
max_shard_size=...)`` dirs (``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``)
are read wherever a model dir's weights are (task vectors, the merge, the card's hashes), and
a merge writes its weights that way with ``max_shard_size`` / ``--max-shard-size`` /
``merge.max_shard_size``; the tensors are bitwise those of the unsharded path."""

from __future__ import annotations

import copy
import hashlib
import json
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import cli, tree
from huggingface_hub.serialization._base import (
    parse_size_to_int,
    split_state_dict_into_shards_factory,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from speechmerge.cli import main
from speechmerge.config import load_config, validate_config
from speechmerge.io import memory
from speechmerge.io.atomic import MANIFEST
from speechmerge.io.shards import INDEX_NAME, parse_shard_size, plan_shards, shard_name
from speechmerge.io.weights import (
    SafetensorsReader,
    ShardedSafetensorsReader,
    model_weight_files,
    nbytes,
    open_model_weights,
    save_model_weights,
)
from speechmerge.merge import merge_models
from speechmerge.plan.params import merge_max_shard_size, merge_params
from speechmerge.taskvector import compute_task_vector

ROOT = Path(__file__).resolve().parent.parent
#: Splits the tiny Whisper of conftest (33 kB of fp32 weights) into 5 shards.
SHARD = "8KB"
LORS = ["--method", "lors", "--lambda", "0.5", "--rank-ratio", "0.25", "--keep-ratio", "0.3"]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run(capsys, *args: str) -> tuple[int, str]:
    """The CLI in this process: (status, stderr)."""
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse errors
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


def lors_args(base: Path, fts: list[Path], out: Path, *extra: str) -> list[str]:
    """``merge`` of ``fts`` into ``base`` with LoRS (λ 0.5, r 0.25, p 0.3) into ``out``."""
    return ["merge", "--base", str(base), "--finetuned", *map(str, fts), *LORS, "--quiet",
            "--out", str(out), *extra]  # fmt: skip


def merge_cli(capsys, base: Path, fts: list[Path], out: Path, *extra: str) -> Path:
    rc, err = run(capsys, *lors_args(base, fts, out, *extra))
    assert rc == 0, err
    return out


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k, t in a.items():
        assert t.dtype == b[k].dtype and torch.equal(t, b[k]), k


@pytest.fixture(scope="module")
def sharded(whisper):
    """conftest's tiny base and fine-tunes, saved again by Hugging Face in shards of 8 kB."""
    from transformers import WhisperForConditionalGeneration

    root, base, fts = whisper
    out = []
    for d in [base, *fts]:
        dst = root / f"sharded-{d.name}"
        model = WhisperForConditionalGeneration.from_pretrained(d)
        model.save_pretrained(dst, max_shard_size=SHARD)
        for f in ("preprocessor_config.json",):
            if (d / f).is_file():
                shutil.copyfile(d / f, dst / f)
        assert (dst / INDEX_NAME).is_file() and not (dst / "model.safetensors").exists()
        assert len(list(dst.glob("model-*-of-*.safetensors"))) >= 3
        out.append(dst)
    return out[0], out[1:]


@pytest.fixture(scope="module")
def unsharded_cli(whisper, tmp_path_factory):
    """The reference: conftest's unsharded dirs merged by the CLI (LoRS, two fine-tunes)."""
    _, base, fts = whisper
    out = tmp_path_factory.mktemp("ref") / "merged"
    assert main(lors_args(base, fts, out)) == 0
    return out


# ------------------------------------------------------------------ reading


def test_a_sharded_dir_reads_as_its_unsharded_twin(whisper, sharded) -> None:
    _, base, _ = whisper
    sbase, _ = sharded
    with open_model_weights(base) as one, open_model_weights(sbase) as many:
        assert isinstance(many, ShardedSafetensorsReader)
        assert sorted(many.keys()) == sorted(one.keys())
        for k in one:
            assert many.shape(k) == one.shape(k) and many.dtype(k) == one.dtype(k)
            assert torch.equal(many.get_tensor(k), one.get_tensor(k))
            assert many.shard_path(k).name in json.loads((sbase / INDEX_NAME).read_text())[
                "weight_map"
            ].get(k, "")
        assert many.metadata() == {"format": "pt"}
        many.prefetch(many.keys()[0])  # delegated to the shard; no error
        with pytest.raises(KeyError, match=f"'nope' is not in {sbase / INDEX_NAME}"):
            many.get_tensor("nope")
    files = model_weight_files(sbase)
    assert files[0] == sbase / INDEX_NAME
    assert files[1:] == sorted(sbase.glob("model-*-of-*.safetensors"))


def test_task_vectors_of_sharded_models_are_the_unsharded_ones(whisper, sharded, tmp_path) -> None:
    _, base, fts = whisper
    sbase, sfts = sharded
    ref = load_file(compute_task_vector(base, fts[0], tmp_path / "ref.safetensors"))
    for b, f in ((sbase, sfts[0]), (base, sfts[0]), (sbase, fts[0])):
        got = load_file(compute_task_vector(b, f, tmp_path / "tv.safetensors"))
        assert_same_tensors(dict(sorted(got.items())), dict(sorted(ref.items())))


def test_library_merge_of_sharded_inputs_is_bitwise_the_unsharded_one(
    whisper, sharded, tmp_path
) -> None:
    _, base, fts = whisper
    sbase, sfts = sharded
    params = {"rank_ratio": 0.25, "keep_ratio": 0.3}
    outs = []
    for b, dirs, tag in ((base, fts, "one"), (sbase, sfts, "many")):
        tvs = [
            compute_task_vector(b, d, tmp_path / f"{tag}{i}.safetensors")
            for i, d in enumerate(dirs)
        ]
        outs.append(merge_models(b, tvs, "lors", 0.5, params, tmp_path / tag, progress=False))
    # same tensors, same order, same metadata: the same file
    assert (outs[0] / "model.safetensors").read_bytes() == (
        outs[1] / "model.safetensors"
    ).read_bytes()
    card = (outs[1] / "README.md").read_text()
    assert "## Shards of sharded inputs" in card and f"`{sha(sbase / INDEX_NAME)}`" in card
    for shard in sbase.glob("model-*-of-*.safetensors"):
        assert f"| `{sbase}` | `{shard.name}` | `{sha(shard)}` |" in card


def test_cli_merge_of_sharded_inputs_is_bitwise_the_unsharded_one(
    capsys, sharded, unsharded_cli, tmp_path
) -> None:
    sbase, sfts = sharded
    out = merge_cli(capsys, sbase, sfts, tmp_path / "merged")
    assert (out / "model.safetensors").read_bytes() == (
        unsharded_cli / "model.safetensors"
    ).read_bytes()
    card = (out / "README.md").read_text()
    for d in [sbase, *sfts]:  # every shard of the base and of each fine-tune is named
        for f in model_weight_files(d):
            assert f"`{sha(f)}`" in card, f


# ------------------------------------------------------------------ writing


def test_cli_writes_sharded_output_that_transformers_loads(unsharded_cli, tmp_path) -> None:
    """As a user runs it (a subprocess): --max-shard-size gives HF's layout, loaded by
    from_pretrained into bitwise the unsharded merge; the index's total_size is the tensors'
    bytes; the manifest lists every shard."""
    from transformers import WhisperForConditionalGeneration

    merge = json.loads((unsharded_cli / "merge.json").read_text())
    base = Path(merge["base"])
    fts = [Path(t["path"]) for t in merge["taskvectors"]]
    out = tmp_path / "sharded"
    r = cli(*lors_args(base, fts, out, "--max-shard-size", SHARD))
    assert r.returncode == 0, r.stderr
    assert not (out / "model.safetensors").exists()
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    n = len(shards)
    assert n >= 3 and [p.name for p in shards] == [shard_name(i, n) for i in range(1, n + 1)]
    ref = load_file(unsharded_cli / "model.safetensors")
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in ref.values()
    )
    assert list(index["weight_map"]) == list(ref)  # the unsharded file's order
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    for p in shards:
        with SafetensorsReader(p) as r:
            assert r.metadata() == {"format": "pt"}
            size = sum(nbytes(r.dtype(k), r.shape(k)) for k in r)
            assert size <= parse_shard_size(SHARD) or len(r.keys()) == 1
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert {p.name for p in shards} | {INDEX_NAME} <= set(manifest)
    with open_model_weights(out) as many:
        assert_same_tensors({k: many.get_tensor(k) for k in many}, ref)
    one = WhisperForConditionalGeneration.from_pretrained(unsharded_cli).state_dict()
    many = WhisperForConditionalGeneration.from_pretrained(out).state_dict()
    assert_same_tensors(many, one)


def test_a_sharded_merge_is_a_base_like_any_other(capsys, whisper, tmp_path) -> None:
    """A sharded merged output, merged again (as the base), gives the unsharded result."""
    _, base, fts = whisper
    one = merge_cli(capsys, base, fts, tmp_path / "one")
    many = merge_cli(capsys, base, fts, tmp_path / "many", "--max-shard-size", "5000")
    again = [merge_cli(capsys, b, fts[:1], tmp_path / f"again-{b.name}") for b in (one, many)]
    assert (again[0] / "model.safetensors").read_bytes() == (
        again[1] / "model.safetensors"
    ).read_bytes()


def test_a_limit_above_the_model_writes_one_file(whisper, unsharded_cli, capsys, tmp_path) -> None:
    _, base, fts = whisper
    out = merge_cli(capsys, base, fts, tmp_path / "big", "--max-shard-size", "1GB")
    assert not (out / INDEX_NAME).exists()
    assert tree(out)["model.safetensors"] == tree(unsharded_cli)["model.safetensors"]


def test_save_model_weights_refuses_a_folder_with_weights(tmp_path) -> None:
    specs = [("a", torch.float32, (4,)), ("b", torch.float32, (4,))]

    def produce(name: str) -> torch.Tensor:
        return torch.full((4,), 1.0 if name == "a" else 2.0)

    files = save_model_weights(tmp_path, specs, produce, max_shard_size=16)
    assert [f.name for f in files] == [shard_name(1, 2), shard_name(2, 2), INDEX_NAME]
    for stale in (shard_name(1, 2), "model.safetensors"):
        d = tmp_path / stale.replace(".", "-")
        d.mkdir()
        (d / stale).write_bytes(b"")
        with pytest.raises(FileExistsError, match=f"already holds weights.*{stale}"):
            save_model_weights(d, specs, produce, max_shard_size=16)
    with pytest.raises(ValueError, match="duplicate tensor name 'a'"):
        save_model_weights(tmp_path / "dup", specs + specs[:1], produce, max_shard_size=16)


# ------------------------------------------------------------------ bad inputs


def damaged(sbase: Path, tmp_path: Path) -> Path:
    d = tmp_path / "damaged"
    shutil.copytree(sbase, d)
    return d


def test_an_index_naming_a_missing_shard_is_refused_naming_it(
    capsys, sharded, tmp_path, whisper
) -> None:
    sbase, sfts = sharded
    d = damaged(sbase, tmp_path)
    gone = d / shard_name(2, len(list(d.glob("model-*-of-*.safetensors"))))
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=f"shard {gone} listed in {d / INDEX_NAME}"):
        open_model_weights(d)
    _, _, fts = whisper
    tv = compute_task_vector(sbase, sfts[0], tmp_path / "tv.safetensors")
    with pytest.raises(FileNotFoundError, match=str(gone)):
        merge_models(d, [tv], "ta", out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    rc, err = run(capsys, *lors_args(d, fts[:1], tmp_path / "cli"))
    assert rc == 1 and str(gone) in err and not (tmp_path / "cli").exists()


def test_inconsistent_indexes_are_refused_naming_the_file(sharded, tmp_path) -> None:
    sbase, _ = sharded
    d = damaged(sbase, tmp_path)
    index = d / INDEX_NAME
    good = json.loads(index.read_text())
    wm = good["weight_map"]
    name = next(iter(wm))
    other = next(f for f in sorted(set(wm.values())) if f != wm[name])

    def expect(doc: object, *match: str, exc: type[Exception] = ValueError) -> None:
        index.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        with pytest.raises(exc) as e:
            open_model_weights(d)
        for m in match:
            assert m in str(e.value)

    # a tensor mapped to a shard that lacks it
    expect({"weight_map": {**wm, name: other}}, repr(name), str(d / other), str(index))
    # a tensor in a shard that the index does not list
    expect({"weight_map": {k: v for k, v in wm.items() if k != name}}, repr(name), str(index))
    expect("{not json", "malformed", str(index))
    expect({"metadata": {}}, "malformed", "weight_map", str(index))
    expect({"weight_map": {name: "../model.safetensors"}}, "malformed", "'../model.safetensors'")
    expect(
        {"weight_map": {name: "nope.safetensors"}},
        str(d / "nope.safetensors"),
        exc=FileNotFoundError,
    )
    (d / other).write_bytes(b"junk")  # a shard that is not safetensors
    expect(good, "not a valid safetensors file", str(d / other))


# ------------------------------------------------------------------ shard sizes


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GB", 2 * 10**9),
        ("500MB", 500 * 10**6),
        ("20KB", 20_000),
        ("1.5GB", 1_500_000_000),
        ("1TB", 10**12),
        ("2gb", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1GiB", 2**30),
        ("3 KiB", 3 * 1024),
        ("100B", 100),
        (" 12345 ", 12345),
        (12345, 12345),
        (None, None),
    ],
)
def test_shard_sizes(text, size) -> None:
    assert parse_shard_size(text) == size
    if isinstance(text, str) and text.strip()[-2:].upper() in ("KB", "MB", "GB", "TB"):
        assert parse_size_to_int(text) == size  # Hugging Face's meaning


@pytest.mark.parametrize(
    "bad",
    [
        "2GBs",
        "GB",
        "",
        "two GB",
        "-1GB",
        "1e9",
        "2 G",
        "5Gbit",
        "0",
        "0.0001KB",
        0,
        -5,
        True,
        1.5,
    ],
)
def test_bad_shard_sizes_are_refused_clearly(bad, capsys) -> None:
    with pytest.raises(
        ValueError, match=r"max_shard_size: .*(not a size|at least 1 byte|expected)"
    ):
        parse_shard_size(bad)
    if isinstance(bad, str) and bad:
        args = ["merge", "--base", "b", "--finetuned", "f", "--method", "ta", "--out", "o"]
        rc, err = run(capsys, *args, f"--max-shard-size={bad}")
        assert rc == 2 and "argument --max-shard-size:" in err and repr(bad) in err
        assert "--max-shard-size: --max-shard-size" not in err


def plans(sizes: list[int], limit: int) -> list[list[str]]:
    return plan_shards([(f"t{i}", n) for i, n in enumerate(sizes)], limit)


def test_plan_shards_examples() -> None:
    assert plans([], 10) == []
    assert plans([4, 4, 4], 8) == [["t0", "t1"], ["t2"]]
    # a tensor over the limit gets a shard of its own, in its place
    assert plans([2, 20, 2, 2], 8) == [["t0"], ["t1"], ["t2", "t3"]]
    assert plans([0, 0, 8, 0], 8) == [["t0", "t1", "t2", "t3"]]
    with pytest.raises(ValueError, match="at least 1 byte"):
        plans([1], 0)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 120), max_size=30), limit=st.integers(1, 100))
def test_plan_shards_partition(sizes: list[int], limit: int) -> None:
    """Every tensor in exactly one shard, in order; no shard over the limit but a single
    tensor; a shard is closed only when the next tensor would take it over (greedy)."""
    size = {f"t{i}": n for i, n in enumerate(sizes)}
    shards = plans(sizes, limit)
    assert [name for shard in shards for name in shard] == list(size)
    assert all(shard for shard in shards)
    totals = [sum(size[k] for k in shard) for shard in shards]
    for shard, total in zip(shards, totals, strict=True):
        assert total <= limit or len(shard) == 1
    for total, nxt in zip(totals, shards[1:], strict=False):
        assert total + size[nxt[0]] > limit
    if all(n <= limit for n in sizes):  # then exactly Hugging Face's split
        hf = split_state_dict_into_shards_factory(
            size,
            get_storage_size=lambda n: n,
            filename_pattern="model{suffix}.safetensors",
            max_shard_size=limit,
        )
        assert list(hf.filename_to_tensors.values()) == shards


# ------------------------------------------------------------------ the workflow's config


@pytest.fixture
def smoke() -> dict:
    return copy.deepcopy(load_config(ROOT / "configs" / "smoke.yaml"))


def test_config_max_shard_size(smoke) -> None:
    assert smoke["merge"].get("max_shard_size") is None and merge_max_shard_size(smoke) is None
    params = merge_params(smoke, [("ca", "asr")])
    for value, size in (("2GB", 2 * 10**9), (4096, 4096), ("512MiB", 512 * 2**20)):
        smoke["merge"]["max_shard_size"] = value
        validate_config(smoke)
        assert merge_max_shard_size(smoke) == size
        assert merge_params(smoke, [("ca", "asr")]) == params  # not a param: no reruns
    for bad in ("2 gigs", 0, "0KB", True):
        smoke["merge"]["max_shard_size"] = bad
        with pytest.raises(ValueError, match="merge.max_shard_size"):
            validate_config(smoke)


def test_the_workflow_merge_script_shards_from_the_config(whisper, tmp_path, monkeypatch) -> None:
    """workflow_scripts/merge.py, run with a stand-in ``snakemake`` object (no workflow run):
    ``merge.max_shard_size`` reaches the merge from the config."""
    _, base, fts = whisper
    monkeypatch.setattr(memory, "enable_streaming_memory_tuning", lambda: False)  # not here
    tvs = [compute_task_vector(base, d, tmp_path / f"tv{i}.safetensors") for i, d in enumerate(fts)]
    for size, sharded in ((None, False), (SHARD, True)):
        out = tmp_path / f"merged-{sharded}"
        sm = SimpleNamespace(
            wildcards=SimpleNamespace(method="ta"),
            params=SimpleNamespace(lam=0.5, params=[{}, {}]),
            input=SimpleNamespace(base=str(base), taskvectors=list(map(str, tvs))),
            output=[str(out)],
            log=[str(tmp_path / "merge.log")],
            config={"merge": {"max_shard_size": size}},
        )
        runpy.run_path(str(ROOT / "workflow_scripts" / "merge.py"), {"snakemake": sm})
        assert (out / INDEX_NAME).exists() is sharded
        assert (out / "model.safetensors").exists() is not sharded
