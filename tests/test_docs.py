"""README.md and docs/: the README stays short, every relative link resolves (files, folders and
`#anchor`s into Markdown headings, GitHub-style), and the README's test command is what CI runs."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the target may be wrapped in <…> and followed by a "title"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: Markdown markup dropped, lower case, every character that
    is not a letter, digit, underscore, hyphen or space removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file (repeats get -1, -2, … as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text()):
        out.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link or image in a Markdown file."""
    out = []
    for n, line in prose_lines(path.read_text()):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, …
                continue
            out.append((n, target))
    return out


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    errors = []
    for n, target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{n}: {target}"
        if not dest.exists():
            errors.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            errors.append(f"{where}: no heading #{anchor} in {dest.relative_to(root)}")
    return errors


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail to docs/ (bar: 200)"


def test_pages_exist():
    assert len(PAGES) > 1, "no docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page: Path):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_readme_links_every_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    pages = sorted((REPO / "docs").glob("*.md"))  # the pages, not the generated tables under them
    missing = [str(p.relative_to(REPO)) for p in pages if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_readme_test_command_is_what_ci_runs():
    """`.ci/run`'s command (its last line) is one of the README's fenced command lines."""
    ci = [
        line.strip()
        for line in (REPO / ".ci/run").read_text().splitlines()
        if line.strip()
        and not line.lstrip().startswith("#")
        and not line.startswith(("set ", "cd "))
    ]
    assert len(ci) == 1, ci
    readme_lines, fenced = set(), False
    for line in README.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced:
            readme_lines.add(line.strip())
    assert ci[0] in readme_lines, f".ci/run runs {ci[0]!r}, which is not a README command"
    assert "pytest" in ci[0]


def test_slug_matches_github():
    assert slug("Training: streamed features, resumable jobs, GPU") == (
        "training-streamed-features-resumable-jobs-gpu"
    )
    assert slug("The paper's studies: Figures 3–5, Tables 5–10") == (
        "the-papers-studies-figures-35-tables-510"
    )
    assert slug("`merge.select` and `--paper-exact`") == "mergeselect-and---paper-exact"
    assert slug("Merge benchmark results (whisper-small shape, ten task vectors)") == (
        "merge-benchmark-results-whisper-small-shape-ten-task-vectors"
    )


def test_a_broken_link_is_caught(tmp_path: Path):
    page = tmp_path / "docs/x.md"
    page.parent.mkdir()
    (tmp_path / "docs/y.md").write_text("# Real heading\n\n```\n# not a heading\n```\n")
    page.write_text(
        "[ok](y.md#real-heading) [gone](nope.md) [bad anchor](y.md#not-a-heading)\n"
        "`[in code](nope.md)` [web](https://example.org/x)\n"
    )
    errors = broken_links(page, tmp_path)
    assert len(errors) == 2 and "nope.md: no such file" in errors[0], errors
    assert "no heading #not-a-heading" in errors[1], errors
