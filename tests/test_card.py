"""Model cards with scores (issue 16 item 4): the Scores section from score files in the format
``speechmerge.decode.score_model`` writes, its place in a card, ``write_card`` / the ``card``
command, and release dirs (hard links, or copies where links fail)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import REFS, write_scores

from speechmerge import cli
from speechmerge.card import (
    CARD_NAME,
    SCORES_BEGIN,
    SCORES_END,
    release_model,
    scores_section,
    with_scores,
    write_card,
)
from speechmerge.hypotheses import files_ci
from speechmerge.io.atomic import MANIFEST, atomic_dir, verify_folder


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> Path:
    return write_scores(tmp_path_factory.mktemp("scores") / "lors")


def rows(section: str) -> dict[tuple[str, str], list[str]]:
    """{(first cell, task cell): cells} of the section's table."""
    out = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| language", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0], cells[1]] = cells
    return out


def test_scores_section_has_every_test_set_with_its_stored_ci(scores: Path):
    section = scores_section(scores)
    assert section.startswith(SCORES_BEGIN + "\n## Scores\n")
    assert section.rstrip().endswith(SCORES_END)
    table = rows(section)
    for lang, task in REFS:
        s = json.loads((scores / f"{lang}-{task}.json").read_text())
        label = "ASR (transcribe)" if task == "asr" else "ST (translate)"
        cells = table[lang, label]
        assert cells[2] == ("WER %" if task == "asr" else "BLEU")
        assert cells[3] == f"{s['score']:.2f}"
        assert cells[4] == f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
        assert cells[5:] == [f"`results/subsets/{lang}/test.tsv`", "4", "beam 2"]
    assert "95% paired bootstrap, 1000 resamples, seed 0" in section
    assert "BLEU signature: `nrefs:1|case:mixed|" in section
    assert "`results/merged/mlmt/lors`" in section  # the scored model


def test_average_rows_bootstrap_the_hypotheses(scores: Path):
    table = rows(scores_section(scores))
    for task, label in (("asr", "ASR (transcribe)"), ("st", "ST (translate)")):
        files = [scores / f"{lang}-{task}.json" for lang in ("ca", "de")]
        ci = files_ci(files)
        mean = sum(json.loads(f.read_text())["score"] for f in files) / 2
        assert ci["score"] == pytest.approx(mean)
        cells = table["**average**", label]
        assert cells[3] == f"**{ci['score']:.2f}**"
        assert cells[4] == f"[{ci['ci_low']:.2f}, {ci['ci_high']:.2f}]"
        assert cells[5:7] == ["2 test sets", "8"]


def test_without_hypotheses_or_stored_cis_no_ci_is_made_up(tmp_path: Path):
    folder = write_scores(tmp_path / "s", pairs=[("ca", "asr"), ("de", "asr")], hypotheses=False)
    old = json.loads((folder / "de-asr.json").read_text())
    for key in ("ci_low", "ci_high", "ci", "beam_size"):
        del old[key]
    (folder / "de-asr.json").write_text(json.dumps(old))
    table = rows(scores_section(folder))
    assert table["de", "ASR (transcribe)"][4] == "—" and table["de", "ASR (transcribe)"][7] == "—"
    assert table["**average**", "ASR (transcribe)"][4] == "—"
    ca = json.loads((folder / "ca-asr.json").read_text())["score"]
    avg = table["**average**", "ASR (transcribe)"][3]
    assert avg == f"**{(ca + old['score']) / 2:.2f}**"


def test_scores_section_takes_files_and_refuses_bad_input(scores: Path, tmp_path: Path):
    one = scores_section([scores / "ca-asr.json"])
    assert "**average**" not in one and len(rows(one)) == 1
    with pytest.raises(ValueError, match="two score files for ca-asr"):
        scores_section([scores, scores / "ca-asr.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no score files"):
        scores_section(tmp_path / "empty")
    (tmp_path / "x.json").write_text('{"lang": "ca"}')
    with pytest.raises(ValueError, match="not a score file"):
        scores_section(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError):
        scores_section(tmp_path / "missing")


def test_with_scores_goes_before_use_and_replaces_an_older_section(scores: Path):
    card = "---\nlibrary_name: transformers\n---\n\n# M\n\n## Inputs\n\nx\n\n## Use\n\ncode\n"
    section = scores_section(scores)
    once = with_scores(card, section)
    assert once.index("## Inputs") < once.index("## Scores") < once.index("## Use")
    assert with_scores(once, section) == once
    newer = with_scores(once, scores_section(scores / "ca-asr.json"))
    assert newer.count(SCORES_BEGIN) == 1 and "**average**" not in newer
    assert newer.endswith("## Use\n\ncode\n")
    assert with_scores("# bare\n", section) == "# bare\n\n" + section


def fake_model(folder: Path) -> Path:
    """A model dir as the merge writes it: files, a card, a manifest."""
    with atomic_dir(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(os.urandom(4096))
        (tmp / "config.json").write_text('{"model_type": "whisper"}')
        (tmp / CARD_NAME).write_text("---\nx: 1\n---\n\n# Merged\n\n## Use\n\ncode\n")
    return folder


def test_write_card_in_place_keeps_the_manifest_true(scores: Path, tmp_path: Path):
    model = fake_model(tmp_path / "merged")
    write_card(model, scores)
    card = (model / CARD_NAME).read_text()
    assert card.index("# Merged") < card.index("## Scores") < card.index("## Use")
    assert verify_folder(model) == []
    (model / ".snakemake_timestamp").touch()  # a workflow output: never changed in place
    with pytest.raises(ValueError, match="output of the workflow"):
        write_card(model, scores)
    out = write_card(model, scores, tmp_path / "card.md")
    assert out.read_text() == card


def test_card_command(scores: Path, tmp_path: Path, capsys):
    model = fake_model(tmp_path / "merged")
    assert cli.main(["card", str(model), "--scores", str(scores)]) == 0
    assert "## Scores" in (model / CARD_NAME).read_text()
    out = tmp_path / "notes.md"
    out.write_text("mine")
    assert cli.main(["card", str(model), "--scores", str(scores), "--out", str(out)]) == 1
    assert out.read_text() == "mine" and "not an output of speechmerge" in capsys.readouterr().err
    assert cli.main(["card", str(model), "--scores", str(tmp_path / "nope")]) == 1
    assert "not found" in capsys.readouterr().err


def test_release_links_the_model_and_adds_the_scores(scores: Path, tmp_path: Path):
    model = fake_model(tmp_path / "merged")
    (model / ".snakemake_timestamp").touch()
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    out, linked, copied = release_model(model, scores, tmp_path / "release")
    assert (linked, copied) == (2, 0)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.safetensors", "config.json", CARD_NAME, MANIFEST]
    )
    for name in ("model.safetensors", "config.json"):
        assert (out / name).stat().st_ino == (model / name).stat().st_ino
    card = (out / CARD_NAME).read_text()
    assert card.startswith("---\nx: 1\n---\n\n# Merged\n") and "## Scores" in card
    assert verify_folder(out) == []
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # the model unchanged
    release_model(model, scores, out)  # its own output is replaced
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError):
        release_model(model, scores, tmp_path / "mine")


def test_release_copies_where_hard_links_fail(scores: Path, tmp_path: Path, monkeypatch):
    model = fake_model(tmp_path / "merged")

    def no_links(src, dst, *a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    out, linked, copied = release_model(model, scores, tmp_path / "release")
    assert (linked, copied) == (0, 2)
    weights = out / "model.safetensors"
    assert weights.read_bytes() == (model / "model.safetensors").read_bytes()
    assert weights.stat().st_ino != (model / "model.safetensors").stat().st_ino
    assert verify_folder(out) == []
