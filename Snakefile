# speechmerge: merge per-(language, task) fine-tuned Whisper models (LoRS-Merging and peers).
# Reads like a table of contents; every stage lives in rules/<stage>.smk.
from snakemake.utils import min_version, validate

from speechmerge.config import SCHEMA

min_version("8.0")


# A preset is complete on its own: config.yaml is the config only when no --configfile is
# given (Snakemake would otherwise merge a preset key by key over config.yaml, so every key
# the preset leaves out would silently come from the default).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


validate(config, str(SCHEMA))  # the JSON schema ships inside the package


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/base.smk"
include: "rules/finetune.smk"
include: "rules/select.smk"
include: "rules/merge.smk"
include: "rules/score.smk"
include: "rules/joint.smk"
include: "rules/study.smk"
include: "rules/release.smk"
include: "rules/report.smk"


onstart:
    smcfg.write_effective_config(config, f"{R}/config.effective.yaml")


rule all:
    default_target: True
    input:
        P.final_targets(),
