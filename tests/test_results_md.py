"""The README's Results section generator (speechmerge.report.results_md): verdicts from table CSVs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from speechmerge.cli import main
from speechmerge.report.results_md import BEGIN, END, replace_section, results_section, verdicts
from speechmerge.report.significance import COLUMNS as SIG_COLUMNS

LANGS = ["ca", "de"]


def _write(tables: Path, name: str, rows: dict[str, list[float]], cols: list[str]) -> None:
    df = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    df.index.name = "System"
    df.to_csv(tables / f"{name}.csv")
    (tables / f"{name}.md").write_text(f"**{name}**\n\n{df.to_markdown()}\n")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    tables = tmp_path / "results/tables"
    tables.mkdir(parents=True)
    cols = [*LANGS, "Avg."]
    # ASR (WER, lower is better): LoRS 70 beats TA 72; TA 72 loses to WA 71; joint 69 wins
    _write(
        tables,
        "table1",
        {
            "Pretrained": [80, 80, 80],
            "Finetuned": [60, 60, 60],
            "Multi-lingual training": [69, 69, 69],
            "Weight Averaging": [71, 71, 71],
            "Task Arithmetic": [72, 72, 72],
            "LoRS-Merging": [70, 70, 70],
        },
        cols,
    )
    # ST (BLEU, higher is better): LoRS 3 < TA 4; TA 4 > WA 2; best merge TA 4 > joint 3.5
    _write(
        tables,
        "table2",
        {
            "Pretrained": [1, 1, 1],
            "Finetuned": [6, 6, 6],
            "Multi-lingual training": [3.5] * 3,
            "Weight Averaging": [2, 2, 2],
            "Task Arithmetic": [4, 4, 4],
            "LoRS-Merging": [3, 3, 3],
        },
        cols,
    )
    # significance.csv: the ML ASR differences; LoRS vs TA is inside its CI
    sig = [
        ("ml-asr", "WER", "LoRS-Merging", "Task Arithmetic", -2, -4.5, 0.5, 0.09, NSD),
        ("ml-asr", "WER", "Task Arithmetic", "Weight Averaging", 1, 0.2, 1.8, 0.01, "worse"),
        ("ml-asr", "WER", "LoRS-Merging", "Joint training", 1, -0.5, 2.5, 0.3, NSD),
        ("ml-asr", "WER", "LoRS-Merging", "Finetuned", 10, 8, 12, 0.002, "worse"),
        ("ml-asr", "WER", "Task Arithmetic", "Finetuned", 12, 9, 14, 0.002, "worse"),
        ("ml-st", "BLEU", "Task Arithmetic", "Weight Averaging", 2, 1, 3, 0.002, "better"),
    ]
    pd.DataFrame(sig, columns=SIG_COLUMNS).to_csv(tables / "significance.csv", index=False)
    (tables / "significance.md").write_text("**Significance** (test)\n\n| setting |\n")
    return tmp_path


NSD = "no significant difference"


def test_verdicts_come_from_the_bootstrap(run: Path):
    v = verdicts(run / "results/tables").set_index("Setting")
    asr, st = v.loc["ML ASR (Table 1)"], v.loc["ML ST (Table 2)"]
    # LoRS's WER is 2 points lower than TA's, but the CI contains 0: not a win
    assert asr["LoRS vs TA"] == f"{NSD} (-2.00 [-4.50, 0.50])"
    assert asr["TA vs WA"] == "worse (+1.00 [0.20, 1.80])"
    assert asr["Best merge vs joint"].startswith(NSD)
    assert asr["Merges vs finetuned"] == "2 worse"
    assert asr["Best merge"] == "LoRS-Merging (70.00)"
    assert st["TA vs WA"].startswith("better") and st["LoRS vs TA"] == "–"
    assert st["Best merge"] == "Task Arithmetic (4.00)" and st["Joint training"] == "3.50"


def test_verdicts_without_significance_state_no_winner(run: Path):
    tables = run / "results/tables"
    (tables / "significance.csv").unlink()
    asr = verdicts(tables).set_index("Setting").loc["ML ASR (Table 1)"]
    assert (asr["LoRS vs TA"], asr["TA vs WA"], asr["Best merge vs joint"]) == ("–",) * 3
    assert asr["LoRS"] == "70.00"


def test_verdicts_without_joint_training(run: Path):
    tables = run / "results/tables"
    df = pd.read_csv(tables / "table1.csv", index_col=0).drop("Multi-lingual training")
    df.to_csv(tables / "table1.csv")
    asr = verdicts(tables).set_index("Setting").loc["ML ASR (Table 1)"]
    assert asr["Joint training"] == "–"


def test_section_replaces_only_the_marked_text(run: Path, tmp_path: Path):
    fig = run / "results/figures"
    fig.mkdir()
    (fig / "fig3-num-languages.png").write_bytes(b"\x89PNG fake")
    (fig / "fig3-num-languages.csv").write_text("languages,score\n2,1.0\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{BEGIN}\nold\n{END}\n\n## after\n")
    assert (
        main(
            [
                "results-md",
                str(run),
                "--readme",
                str(readme),
                "--figures-dir",
                str(tmp_path / "docs/results"),
                "--label",
                "Run X.",
            ]
        )
        == 0
    )
    text = readme.read_text()
    assert text.startswith("# top\n\n" + BEGIN) and text.endswith(END + "\n\n## after\n")
    assert "old" not in text and "Run X." in text and "**table2**" in text
    assert "**Significance** (test)" in text
    # the verdict table keeps two decimals (tabulate would print "70.00" as "70")
    row = next(line for line in text.splitlines() if line.startswith("| ML ASR (Table 1)"))
    assert "| 70.00 " in row and "| 69.00 " in row and "LoRS-Merging (70.00)" in row
    assert "![Figure 3" in text and "(docs/results/fig3-num-languages.png)" in text
    assert (tmp_path / "docs/results/fig3-num-languages.png").read_bytes() == b"\x89PNG fake"


def test_errors_name_the_file(run: Path, tmp_path: Path):
    readme = tmp_path / "NOMARKERS.md"
    readme.write_text("# nothing\n")
    with pytest.raises(ValueError, match="NOMARKERS.md: no results markers"):
        replace_section(readme, "x")
    with pytest.raises(FileNotFoundError, match="no tables"):
        results_section(tmp_path / "empty", tmp_path / "figs", tmp_path, "")
