"""Rule subset: fixed hours of audio per split (scaled), deterministic."""

import json
from pathlib import Path

from speechmerge.corpus import make_subset
from speechmerge.logutil import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]) as log:
    summary = {}
    out_dir = Path(sm.output.summary).parent
    for split, hours in sm.params.hours.items():  # train, dev, test or test-{task}
        src = f"{sm.input.corpus}/{split.split('-')[0]}.tsv"
        out = out_dir / f"{split}.tsv"
        if str(out) not in sm.output:
            raise ValueError(f"{out} is not an output of this job: {list(sm.output)}")
        summary[split] = make_subset(src, out, hours, sm.params.scale, sm.params.seed)
        log.info("%s: %s", split, summary[split])
    with open(sm.output.summary, "w") as f:
        json.dump(summary, f, indent=2)
