"""Rule subset: fixed hours of audio per split (scaled), deterministic."""

import json

from speechmerge.corpus import make_subset
from speechmerge.logutil import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]) as log:
    summary = {}
    for split in ("train", "dev", "test"):
        src = f"{sm.input.corpus}/{split}.tsv"
        summary[split] = make_subset(
            src, sm.output[split], sm.params.hours[split], sm.params.scale, sm.params.seed
        )
        log.info("%s: %s", split, summary[split])
    with open(sm.output.summary, "w") as f:
        json.dump(summary, f, indent=2)
