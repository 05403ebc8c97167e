"""profiles/slurm gives every GPU rule of the workflow a GPU partition, a runtime and memory.

The rules are read from the workflow itself (Snakemake's API, every preset: some rules exist
only for one corpus source), so a GPU rule added later without a profile entry fails here.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SLURM_PROFILE = REPO / "profiles/slurm/config.yaml"

# Runs in a subprocess: loading a workflow changes the working directory and Snakemake's
# global state. Prints {rule: gpu count (0 without one)} over the rules of every config given.
_LIST_RULES = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

repo = Path(sys.argv[1])
gpus = {}
for cfg in sys.argv[2:]:
    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=8),  # `base` asks for workflow.cores
            config_settings=ConfigSettings(configfiles=[repo / cfg]),
            snakefile=repo / "Snakefile",
            workdir=repo,
        )
        for rule in wf._workflow.rules:
            value = rule.resources.get("gpu")
            value = getattr(value, "value", value)  # Snakemake's Resource wrapper (None: unset)
            if callable(value):
                raise SystemExit(f"rule {rule.name}: gpu resource is a function")
            gpus[rule.name] = max(gpus.get(rule.name, 0), int(value or 0))
print(json.dumps(gpus))
"""


def workflow_gpu_rules() -> dict[str, int]:
    configs = ["config.yaml"] + sorted(
        str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml")
    )
    res = subprocess.run(
        [sys.executable, "-c", _LIST_RULES, str(REPO), *configs],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def uncovered_gpu_rules(profile: dict, gpu_rules) -> list[str]:
    """Problems of `profile` (a SLURM profile's parsed YAML) for the rules in `gpu_rules`: each
    needs its own `set-resources` entry with a partition other than the default (CPU) one,
    a positive runtime and mem_mb, and no `gpu: 0` override."""
    default = profile.get("default-resources") or {}
    entries = profile.get("set-resources") or {}
    problems = []
    for rule in sorted(gpu_rules):
        entry = entries.get(rule)
        if not entry:
            problems.append(f"{rule}: no set-resources entry")
            continue
        part = entry.get("slurm_partition")
        if not part or part == default.get("slurm_partition"):
            problems.append(f"{rule}: slurm_partition {part!r} is not a GPU partition")
        for key in ("runtime", "mem_mb"):
            if not isinstance(entry.get(key), int) or entry[key] <= 0:
                problems.append(f"{rule}: {key} {entry.get(key)!r} (want minutes / MB > 0)")
        if entry.get("gpu", 1) == 0:
            problems.append(f"{rule}: the profile sets gpu 0")
    return problems


@pytest.fixture(scope="module")
def workflow_rules() -> dict[str, int]:
    return workflow_gpu_rules()


@pytest.fixture(scope="module")
def gpu_rules(workflow_rules) -> list[str]:
    return [rule for rule, n in workflow_rules.items() if n > 0]


@pytest.fixture(scope="module")
def profile() -> dict:
    return yaml.safe_load(SLURM_PROFILE.read_text())


def test_rules_are_found(gpu_rules):
    # the reader sees the rules, including `use rule ... with:` children that inherit gpu=1
    assert {"finetune", "joint", "score_study", "joint_scaled", "score_merged"} <= set(gpu_rules)


def test_slurm_profile_covers_every_gpu_rule(profile, gpu_rules):
    assert uncovered_gpu_rules(profile, gpu_rules) == []


def test_profile_names_only_real_rules(profile, workflow_rules):
    rules = set(workflow_rules)
    for section in ("set-resources", "set-threads"):
        assert set(profile.get(section) or {}) <= rules, section


def test_check_fails_when_an_entry_is_missing_or_incomplete(profile, gpu_rules):
    for rule in gpu_rules:
        mutated = copy.deepcopy(profile)
        del mutated["set-resources"][rule]
        assert uncovered_gpu_rules(mutated, gpu_rules) == [f"{rule}: no set-resources entry"]
    rule = gpu_rules[0]
    for key in ("runtime", "mem_mb", "slurm_partition"):
        mutated = copy.deepcopy(profile)
        del mutated["set-resources"][rule][key]
        assert [p.split(":")[0] for p in uncovered_gpu_rules(mutated, gpu_rules)] == [rule], key
    mutated = copy.deepcopy(profile)
    mutated["set-resources"][rule]["slurm_partition"] = profile["default-resources"][
        "slurm_partition"
    ]
    assert len(uncovered_gpu_rules(mutated, gpu_rules)) == 1


def test_check_fails_on_the_real_file_with_an_entry_removed(tmp_path, gpu_rules):
    """The same through the file: drop one GPU rule's block from a copy of the YAML text."""
    text = SLURM_PROFILE.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(text) if line.split("#")[0].rstrip() == "  joint:")
    end = start + 1
    while end < len(text) and text[end].startswith("    "):
        end += 1
    mutated = tmp_path / "config.yaml"
    mutated.write_text("".join(text[:start] + text[end:]))
    assert uncovered_gpu_rules(yaml.safe_load(mutated.read_text()), gpu_rules) == [
        "joint: no set-resources entry"
    ]
