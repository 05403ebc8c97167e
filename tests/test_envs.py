"""The environment files: envs/requirements.txt and envs/speechmerge.yaml (the rules' `conda:`).

Static checks always run. Two real ones are opt-in or need a tool this machine lacks:

* `SPEECHMERGE_ENV_TEST=1`: `pip install --dry-run -r envs/requirements.txt` in a fresh venv,
  from the repository root (needs the package index; about a minute, mostly I/O).
* with `conda` on PATH (Snakemake's `--sdm conda` calls `conda`; neither conda, mamba nor
  micromamba can be installed from the package registries this project's machines reach,
  and conda channels are not reachable from them either): Snakemake creates the env from its
  copied location and runs the smoke preset's corpus and subset jobs in it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
REQS = REPO / "envs/requirements.txt"
CONDA_ENV = REPO / "envs/speechmerge.yaml"


def pins(lines) -> dict[str, str]:
    """{normalised name: version} of `name==version` lines; anything else is an error."""
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        out[re.sub(r"[-_.]+", "-", req.name).lower()] = spec.version
    return out


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


def conda_pip_section() -> list[str]:
    env = yaml.safe_load(CONDA_ENV.read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return pip


def test_conda_env_has_no_relative_or_local_path():
    """Snakemake creates the env from .snakemake/conda/<hash>.yaml: a path would point
    elsewhere there."""
    for entry in conda_pip_section():
        assert not entry.startswith("-"), entry  # -e .., -r requirements.txt, ...
        assert ".." not in entry and "/" not in entry and "file:" not in entry, entry


#: The extras a workflow run of any preset needs (the rules' env installs exactly these).
WORKFLOW_EXTRAS = ("workflow", "synthetic", "plots", "covost", "whisper-base")


def project_requirements(extras) -> list[Requirement]:
    """pyproject's dependencies plus those of `extras`, ``speechmerge[...]`` expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out, todo, seen = [Requirement(d) for d in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for d in map(Requirement, project["optional-dependencies"][extra]):
            if d.name == project["name"]:
                todo += sorted(d.extras)
            else:
                out.append(d)
    return out


def test_requirements_have_no_path_and_pin_every_dependency():
    text = REQS.read_text()
    assert not re.search(r"^\s*-(e|r|c)\b", text, re.MULTILINE)
    pinned = pins(text.splitlines())
    # the library, the workflow's extras and the default preset's base model
    declared = {}
    for req in project_requirements(WORKFLOW_EXTRAS):
        declared.setdefault(re.sub(r"[-_.]+", "-", req.name).lower(), req)
    assert set(pinned) == set(declared)
    for name, req in declared.items():  # each pin satisfies pyproject's own bound
        assert req.specifier.contains(pinned[name], prereleases=True), (name, pinned[name])


def test_test_extra_installs_the_workflow_and_the_default_run():
    """`pip install -e '.[test]'` (the README's test command) installs every workflow extra,
    and `.[whisper-base]` (its run command) what the default preset's run needs."""
    names = {r.name for r in project_requirements(["test"])}
    assert {r.name for r in project_requirements(WORKFLOW_EXTRAS)} <= names
    default_run = {r.name for r in project_requirements(["whisper-base"])}
    assert {"snakemake", "espeakng-loader", "num2words", "matplotlib"} <= default_run


def test_library_needs_no_workflow_dependency():
    """A library user (`pip install speechmerge`) gets no Snakemake, eSpeak, matplotlib or
    datasets."""
    core = {r.name for r in project_requirements([])}
    assert not core & {"snakemake", "espeakng-loader", "num2words", "matplotlib", "datasets"}


def test_conda_env_pins_equal_requirements():
    assert pins(conda_pip_section()) == pins(REQS.read_text().splitlines())


def test_conda_env_torch_is_the_pypi_build():
    """torch comes from PyPI's default index (the CUDA build on Linux), not a CPU-only index."""
    env_text = CONDA_ENV.read_text()
    assert "download.pytorch.org/whl/cpu" not in env_text.split("dependencies:")[1]
    assert "torch" in pins(conda_pip_section())


_SEARCHPATH = r"""
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.common import get_snakemake_searchpaths
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

repo = Path(sys.argv[1])
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[repo / "configs/smoke.yaml"]),
        snakefile=repo / "Snakefile",
        workdir=repo,
    )
    wf._workflow  # parses the Snakefile
    print("\n".join(get_snakemake_searchpaths()))
"""


def test_rule_scripts_find_the_package_in_the_workflow_directory(tmp_path):
    """What lets the conda env skip installing the project: the search path Snakemake hands
    every `script:` (appended to its sys.path) holds the workflow's own directory, put there
    by Snakemake itself (run from elsewhere, without PYTHONPATH, it is not on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    plain = run(
        [sys.executable, "-c", "import sys; print(*sys.path, sep='\\n')"], 60, cwd=tmp_path, env=env
    )
    assert plain.returncode == 0 and str(REPO) not in plain.stdout.splitlines()
    res = run([sys.executable, "-c", _SEARCHPATH, REPO], 120, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    paths = [Path(p).resolve() for p in res.stdout.splitlines()]
    assert REPO in paths
    assert (REPO / "speechmerge/__init__.py").is_file()


@pytest.mark.skipif(
    os.environ.get("SPEECHMERGE_ENV_TEST") != "1",
    reason="needs the package index and a minute: set SPEECHMERGE_ENV_TEST=1",
)
def test_requirements_resolve_in_a_fresh_venv_from_the_root(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    res = run(
        [venv / "bin/pip", "install", "--dry-run", "-q", "-r", "envs/requirements.txt"],
        1200,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.skipif(shutil.which("conda") is None, reason="conda is not installed")
def test_snakemake_creates_the_conda_env_and_runs_jobs_in_it(tmp_path):
    """Real: env created by Snakemake from its copied file, two jobs run inside it, and their
    scripts import speechmerge from the workflow directory (the env does not install it)."""
    snakemake = Path(sys.executable).parent / "snakemake"
    res = run(
        [snakemake, "-s", REPO / "Snakefile", "--directory", tmp_path]
        + ["--configfile", REPO / "configs/smoke.yaml", "--sdm", "conda", "--cores", "2"]
        + ["results/subsets/de/train.tsv"],
        3600,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    assert (tmp_path / "results/subsets/de/train.tsv").is_file()
    copied = list((tmp_path / ".snakemake/conda").glob("*.yaml"))
    assert copied and "-e .." not in copied[0].read_text()
