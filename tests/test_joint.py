"""Joint-training baselines (speechmerge.joint; planned by speechmerge.plan), micro-batched
training, and the tables' training rows (speechmerge.report.tables)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ARCH_TINY
from num2words import num2words

from speechmerge import config as smcfg
from speechmerge import joint as smjoint
from speechmerge.corpus import Utterance, write_tsv
from speechmerge.model import build_synthetic_base, build_tokenizer, save_model_dir
from speechmerge.plan import params as smparams
from speechmerge.plan import settings as smsettings
from speechmerge.report.tables import METHOD_NAMES, build_tables
from speechmerge.train import load_examples, optimizer_steps, train

REPO = Path(__file__).resolve().parent.parent
LANGS = ["ca", "de"]


def smoke_config(**overrides) -> dict:
    config = yaml.safe_load((REPO / "configs/smoke-study.yaml").read_text())
    config.update(overrides)
    return config


# --------------------------------------------------------------------------------------
# config: which joint models and combined settings, their hyper-parameters


def test_joint_models_are_the_merge_settings_pairs():
    config = smoke_config()
    joint = smsettings.joint_models(config)
    assert joint == {
        "ml-asr": [("ca", "asr"), ("de", "asr")],
        "ml-st": [("ca", "st"), ("de", "st")],
        "mt-ca": [("ca", "asr"), ("ca", "st")],
        "mt-de": [("de", "asr"), ("de", "st")],
        "mlmt": [("ca", "asr"), ("ca", "st"), ("de", "asr"), ("de", "st")],
    }
    # the same pairs as the merge settings of the same names
    settings = smsettings.merge_settings(config)
    assert all(joint[name] == settings[name] for name in joint)


@pytest.mark.parametrize("joint", [None, {}, {"settings": []}])
def test_no_joint_section_builds_nothing(joint):
    config = smoke_config()
    config["merge"]["settings"] = ["ml-asr", "mlmt"]
    if joint is None:
        del config["joint"]
    else:
        config["joint"] = joint
    smcfg.validate_config(config)
    assert smsettings.joint_models(config) == {}
    assert smsettings.combined_settings(config) == {}


def test_joint_hparams_lr_lookup():
    config = smoke_config()
    config["joint"]["lr"] = {"default": 1e-4, "mt": 3e-4, "mt-de": 4e-4, "ml-st": 5e-5}
    lr = {n: smparams.joint_hparams(config, n)["lr"] for n in smsettings.joint_models(config)}
    assert lr == {"ml-asr": 1e-4, "ml-st": 5e-5, "mt-ca": 3e-4, "mt-de": 4e-4, "mlmt": 1e-4}
    hp = smparams.joint_hparams(config, "mlmt")
    ft = config["finetune"]
    assert (hp["batch_size"], hp["grad_accum"], hp["epochs"]) == (
        ft["batch_size"],
        ft["grad_accum"],
        ft["epochs"],
    )
    assert hp["micro_batch_size"] == ft["micro_batch_size"]
    del config["joint"]["lr"]  # falls back to the fine-tunes' default
    assert smparams.joint_hparams(config, "mt-ca")["lr"] == ft["lr"]["default"]


def test_combined_settings_task_vectors_and_pairs():
    config = smoke_config()
    combined = smsettings.combined_settings(config)
    pairs = [("ca", "asr"), ("ca", "st"), ("de", "asr"), ("de", "st")]
    assert combined == {
        "mttrain-mlmerge": {"models": ["mt-ca", "mt-de"], "pairs": pairs},
        "mltrain-mtmerge": {"models": ["ml-asr", "ml-st"], "pairs": pairs},
    }
    # merge_settings (fine-tuned task vectors) leaves them to combined_settings
    assert not set(combined) & set(smsettings.merge_settings(config))
    params = smparams.combined_params(config, "mltrain-mtmerge")
    assert params == [{"rank_ratio": 0.05, "keep_ratio": 0.4}] * 2
    assert smparams.merge_lambda(config, "mltrain-mtmerge") == 0.5
    assert smparams.merge_lambda(config, "mttrain-mlmerge") == config["merge"]["lambda"]["default"]
    assert smsettings.combined_methods(config) == ["lors"]  # the preset's
    del config["merge"]["combined_methods"]
    assert smsettings.combined_methods(config) == ["ta", "lors"]  # the default


def test_combined_settings_need_their_joint_models():
    config = smoke_config()
    config["joint"]["settings"] = ["ml-asr", "mlmt"]
    with pytest.raises(ValueError, match=r"joint\.settings.*") as e:
        smsettings.combined_settings(config)
    assert "mttrain-mlmerge" in str(e.value) and "merge.settings" in str(e.value)
    config["merge"]["settings"].remove("mttrain-mlmerge")
    with pytest.raises(ValueError, match="ml-asr and ml-st"):
        smsettings.combined_settings(config)


def test_combined_settings_skipped_with_one_language():
    config = smoke_config(languages=["ca"])
    assert smsettings.combined_settings(config) == {}
    assert set(smsettings.joint_models(config)) == {"mt-ca"}


def test_schema_accepts_joint_and_rejects_typos():
    smcfg.validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    config = smoke_config()
    config["joint"]["settings"] = ["ml"]
    with pytest.raises(ValueError, match="joint.settings"):
        smcfg.validate_config(config)
    config = smoke_config()
    config["joint"]["lr"]["mt-xx"] = 1e-4
    with pytest.raises(ValueError, match="joint.lr"):
        smcfg.validate_config(config)


# --------------------------------------------------------------------------------------
# the budget: a joint model runs the sum of its pairs' fine-tuning steps


@pytest.mark.parametrize(
    "sizes,batch,accum,epochs",
    [([505, 505], 8, 4, 10), ([60, 61, 7], 8, 1, 1), ([100, 33], 8, 4, 2.5), ([3], 8, 4, 1)],
)
def test_joint_steps_is_the_sum_of_the_finetunes(sizes, batch, accum, epochs):
    steps = smjoint.joint_steps(sizes, batch, accum, epochs)
    assert steps == sum(optimizer_steps(n, batch, accum, epochs) for n in sizes)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A tiny saved base and two languages' training TSVs with (silent-ish) audio."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("joint")
    texts = [num2words(n, lang=lang) for lang in [*LANGS, "en"] for n in range(30)]
    tok = build_tokenizer(texts, LANGS, vocab_size=300)
    model, processor = build_synthetic_base(tok, ARCH_TINY, chunk_seconds=1, seed=0)
    save_model_dir(model, processor, root / "base")
    rng = np.random.default_rng(0)
    tsvs = {}
    for lang, n in (("ca", 11), ("de", 7)):
        (root / lang / "clips").mkdir(parents=True)
        rows = []
        for i in range(n):
            sf.write(root / lang / "clips" / f"{i}.wav", rng.normal(0, 0.1, 8000), 16000)
            rows.append(
                Utterance(
                    f"{lang}{i}", f"clips/{i}.wav", 0.5, num2words(i, lang=lang), num2words(i)
                )
            )
        write_tsv(rows, root / lang / "train.tsv")
        tsvs[lang] = str(root / lang / "train.tsv")
    return root, tsvs


def test_joint_training_runs_the_finetunes_steps_on_their_data(tiny_world, tmp_path):
    from speechmerge.model import load_pretrained

    root, tsvs = tiny_world
    hp = {"lr": 1e-4, "batch_size": 4, "grad_accum": 2, "epochs": 2}
    pairs = [("ca", "asr"), ("ca", "st"), ("de", "asr"), ("de", "st")]
    finetune_steps = 0
    _, processor = load_pretrained(str(root / "base"))
    for lang, task in pairs:
        model, _ = load_pretrained(str(root / "base"))
        ex = load_examples(processor, [(tsvs[lang], lang, [task])], progress=False)
        summary = train(model, processor, ex, max_steps=None, progress=False, **hp)
        finetune_steps += summary["steps"]
    summary = smjoint.train_joint(root / "base", tsvs, pairs, hp, tmp_path / "joint", seed=0)
    assert summary["steps"] == finetune_steps
    assert summary["examples"] == 2 * (11 + 7)
    assert (tmp_path / "joint" / "model.safetensors").exists()
    examples, sizes = smjoint.joint_examples(processor, pairs, tsvs)
    assert sizes == {("ca", "asr"): 11, ("ca", "st"): 11, ("de", "asr"): 7, ("de", "st"): 7}
    # the union of the fine-tunes' examples: same targets
    singles = [
        e.labels
        for lang, task in pairs
        for e in load_examples(processor, [(tsvs[lang], lang, [task])], progress=False)
    ]
    assert sorted(map(tuple, singles)) == sorted(tuple(e.labels) for e in examples)


def test_joint_examples_need_every_language(tiny_world):
    from speechmerge.model import load_pretrained

    root, tsvs = tiny_world
    _, processor = load_pretrained(str(root / "base"))
    with pytest.raises(ValueError, match=r"\['it'\]"):
        smjoint.joint_examples(processor, [("ca", "asr"), ("it", "asr")], tsvs)


# --------------------------------------------------------------------------------------
# tables: training rows and Table 4's combined rows


def write_scores(root: Path, config: dict) -> None:
    """A score file for every system the config's tables read, with distinct values."""
    langs, tasks = config["languages"], config["tasks"]
    pairs = [(lang, t) for lang in langs for t in tasks]
    value = iter(range(1, 100_000))

    def put(folder: Path, lang: str, task: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{lang}-{task}.json").write_text(json.dumps({"score": float(next(value))}))

    for lang, task in pairs:
        put(root / "pretrained", lang, task)
        put(root / "finetuned", lang, task)
    for setting, members in smsettings.merge_settings(config).items():
        for m in config["merge"]["methods"]:
            for lang, task in members:
                put(root / "merged" / setting / m, lang, task)
    for name, members in smsettings.joint_models(config).items():
        for lang, task in members:
            put(root / "joint" / name, lang, task)
    for setting, c in smsettings.combined_settings(config).items():
        for m in smsettings.combined_methods(config):
            for lang, task in c["pairs"]:
                put(root / "merged" / setting / m, lang, task)


def test_tables_have_training_rows(tmp_path):
    config = smoke_config()
    # two methods per combined setting (the preset runs one): each joint row is followed by
    # all of its merges, in the configured order
    config["merge"]["combined_methods"] = ["ta", "lors"]
    write_scores(tmp_path, config)
    tables = build_tables(config, smsettings.merge_settings(config), tmp_path)
    merges = [METHOD_NAMES[m] for m in config["merge"]["methods"]]
    assert "LoRS-Merging" in merges
    for name in ("table1", "table2"):
        assert list(tables[name].index) == [
            "Pretrained",
            "Finetuned",
            "Multi-lingual training",
            *merges,
        ]
    for name in ("table3", "table11"):
        assert list(tables[name].index) == [
            "Pretrained",
            "Finetuned",
            "Multi-task training",
            *merges,
        ]
    assert list(tables["table4"].index) == [
        "Pretrained",
        "Finetuned",
        "ML and MT training",
        *[f"ML and MT {METHOD_NAMES[m]}" for m in smsettings.setting_methods(config, "mlmt")],
        "MT training",
        "MT training + ML Task Arithmetic",
        "MT training + ML LoRS-Merging",
        "ML training",
        "ML training + MT Task Arithmetic",
        "ML training + MT LoRS-Merging",
    ]
    for df in tables.values():
        assert not df.isna().any().any()
    # the cells come from the right files

    def score(*parts: str) -> float:
        return json.loads(tmp_path.joinpath(*parts).read_text())["score"]

    t1, t4 = tables["table1"], tables["table4"]
    assert t1.loc["Multi-lingual training", "de"] == score("joint", "ml-asr", "de-asr.json")
    assert tables["table2"].loc["Multi-lingual training", "ca"] == score(
        "joint", "ml-st", "ca-st.json"
    )
    assert t4.loc["MT training", "BLEU de"] == score("joint", "mt-de", "de-st.json")
    assert t4.loc["ML training", "WER ca"] == score("joint", "ml-asr", "ca-asr.json")
    assert t4.loc["ML training", "BLEU ca"] == score("joint", "ml-st", "ca-st.json")
    assert t4.loc["ML and MT training", "WER de"] == score("joint", "mlmt", "de-asr.json")
    assert t4.loc["ML training + MT LoRS-Merging", "BLEU de"] == score(
        "merged", "mltrain-mtmerge", "lors", "de-st.json"
    )
    assert t4.loc["MT training + ML Task Arithmetic", "WER ca"] == score(
        "merged", "mttrain-mlmerge", "ta", "ca-asr.json"
    )
    t3 = tables["table3"]
    assert t3.loc["Multi-task training", "Avg. WER"] == pytest.approx(
        (score("joint", "mt-ca", "ca-asr.json") + score("joint", "mt-de", "de-asr.json")) / 2
    )


def test_tables_without_joint_training_are_unchanged(tmp_path):
    config = smoke_config()
    del config["joint"]
    config["merge"]["settings"] = ["ml-asr", "ml-st", "mt", "mlmt"]
    write_scores(tmp_path, config)
    tables = build_tables(config, smsettings.merge_settings(config), tmp_path)
    assert list(tables["table1"].index)[:3] == ["Pretrained", "Finetuned", "Weight Averaging"]
    assert len(tables["table4"]) == 2 + len(smsettings.setting_methods(config, "mlmt"))
