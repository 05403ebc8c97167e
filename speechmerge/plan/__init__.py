"""The plan of a run: the config turned into settings, jobs and file names.

Every rule (``rules/*.smk``), workflow script and report learns what a run does and where its
files are from here; nothing else decides. Pure functions of a validated config
(:mod:`speechmerge.config` loads and checks it), cheap to import: no Snakemake, no torch.

* :mod:`.settings` — which merges, joint-training baselines, study variants and tables the
  config asks for (names and the (language, task) pairs of each);
* :mod:`.params` — each job's own values (hyper-parameters, λ, ratios, device), read only from
  that job's config entries, so adding a language never changes another language's params;
* :mod:`.files` — :class:`Plan`: one run's file names, job inputs and ``rule all``'s targets.
"""

from .files import RESULTS, SCORES, Plan

__all__ = ["RESULTS", "SCORES", "Plan"]
