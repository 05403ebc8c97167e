# The run's plan (speechmerge.plan): P holds its settings, file names and job inputs; the
# per-job values come from speechmerge.plan.params, whose helpers read only their own job's
# config entries, so adding a language never changes another job's params.
import os

from speechmerge import config as smcfg
from speechmerge.plan import RESULTS as R
from speechmerge.plan import Plan
from speechmerge.plan import params as smparams
from speechmerge.plan import settings as smsettings

smcfg.check_config(config)
smcfg.check_study(config)
smcfg.canonicalize(config)  # params do not depend on the order of keys in a file
P = Plan(config)


wildcard_constraints:
    **P.wildcard_constraints(),


def setting_taskvectors(wildcards):
    return [P.taskvector(lang, task) for lang, task in P.settings[wildcards.setting]]


def setting_tests(wildcards):
    return pair_tests(P.settings[wildcards.setting])


def pair_tests(pairs):
    return [P.test_tsv(lang, task) for lang, task in pairs]
