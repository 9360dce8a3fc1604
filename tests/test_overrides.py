"""Dotted config overrides: types, nesting, text and file input, clear errors; up-front config checks; errors."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from csdn.analysis.ablation import VARIANTS
from csdn.config import ClipConfig, EvalConfig, ExperimentConfig, get_profile
from csdn.errors import CheckpointError, ClipWeightsError, ConfigError, CsdnError, DataError, NonFiniteLossError
from csdn.model.network import ModelConfig
from csdn.overrides import (
    check_overrides,
    flatten,
    format_overrides,
    format_value,
    load_overrides,
    override,
    parse_override,
    parse_overrides,
)
from csdn.train.reid_stage import ReIDStageConfig

SMOKE = get_profile("smoke")


def test_override_sets_fields_of_several_types_and_keeps_the_rest():
    cfg = override(
        SMOKE,
        {
            "seed": 3,
            "stage3.epochs": 10,
            "stage3.lr": 1,
            "model.sii": "attention",
            "eval.flip": False,
            "stage3.milestones": [5, 8],
            "data.dataset": "sysu",  # a data root is for a real dataset (SynthVI refuses one)
            "data.root": "/data/x",
            "clip.pretrain.max_images": None,
            "clip.pretrain.epochs": 7,
        },
    )
    assert (cfg.seed, cfg.stage3.epochs, cfg.model.sii, cfg.eval.flip) == (3, 10, "attention", False)
    assert cfg.stage3.lr == 1.0 and isinstance(cfg.stage3.lr, float)  # an int is accepted for a float
    assert cfg.stage3.milestones == (5, 8)  # a list becomes the tuple the field holds
    assert cfg.data.root == "/data/x" and cfg.clip.pretrain.epochs == 7 and cfg.clip.pretrain.max_images is None
    assert cfg.stage3.instances == SMOKE.stage3.instances and cfg.stage1 == SMOKE.stage1 and cfg.name == "smoke"
    assert SMOKE.stage3.epochs == 2  # the original is untouched (frozen)
    assert override(SMOKE, {}) == SMOKE


def test_override_accepts_nested_mappings_and_whole_sections():
    nested = override(SMOKE, {"stage3": {"epochs": 4}, "clip": {"pretrain": {"epochs": 5}}})
    assert (nested.stage3.epochs, nested.clip.pretrain.epochs) == (4, 5)
    assert override(SMOKE, {"eval": EvalConfig(trials=3)}).eval == EvalConfig(trials=3)
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    cfg = override(SMOKE, {"clip.pretrain.image_size": [32, 16], "eval.sysu_modes": ["all"], "name": "x"})
    assert cfg.clip.pretrain.image_size == (32, 16) and cfg.eval.sysu_modes == ("all",) and cfg.name == "x"


def test_override_builds_configs_equal_to_nested_replace():
    by_hand = dataclasses.replace(
        SMOKE,
        stage1=dataclasses.replace(SMOKE.stage1, pairing="all"),
        model=dataclasses.replace(SMOKE.model, variant="vision-only"),
    )
    assert override(SMOKE, {"stage1.pairing": "all", "model.variant": "vision-only"}) == by_hand


def test_unknown_key_names_it_and_lists_the_valid_keys():
    with pytest.raises(ConfigError) as error:
        override(SMOKE, {"stage3.epoch": 1})
    message = str(error.value)
    assert "unknown key 'stage3.epoch'" in message and "did you mean 'stage3.epochs'" in message
    assert "stage3 has: epochs, lr," in message and "workers" in message
    with pytest.raises(ConfigError, match=r"unknown key 'sede'.*the config has: name, seed, device, data"):
        override(SMOKE, {"sede": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'clip.pretrain.epoch'.*clip.pretrain has: arch, image_size"):
        override(SMOKE, {"clip.pretrain.epoch": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'seed.x': seed is a value \(int\), not a config section"):
        override(SMOKE, {"seed.x": 1})


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("stage3.epochs", "ten", r"stage3.epochs must be int, got str 'ten'"),
        ("stage3.epochs", 2.5, r"stage3.epochs must be int, got float 2.5"),
        ("stage3.epochs", True, r"stage3.epochs must be int, got bool True"),
        ("eval.flip", 1, r"eval.flip must be bool, got int 1"),
        ("model.sii", None, r"model.sii must be str, got NoneType None"),
        ("stage3.lr", "fast", r"stage3.lr must be float, got str 'fast'"),
        ("data.root", 5, r"data.root must be str \| None, got int 5"),
        ("stage3.milestones", [1, "x"], r"stage3.milestones\[1\] must be int, got str 'x'"),
        ("stage3.milestones", 3, r"stage3.milestones must be tuple\[int, \.\.\.\], got int 3"),
        ("clip.pretrain.image_size", [1, 2, 3], r"clip.pretrain.image_size must be tuple\[int, int\] \(2 items\)"),
        ("stage3", 3, r"stage3 is a config section \(ReIDStageConfig\), got int 3.*stage3 has: epochs, lr"),
        ("clip", ModelConfig(), r"clip is a config section \(ClipConfig\), got ModelConfig"),
    ],
)
def test_wrong_type_names_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        override(SMOKE, {key: value})


def test_invalid_values_are_config_errors_naming_the_keys():
    with pytest.raises(ConfigError, match=r"stage3.triplet=soft: triplet must be one of"):
        override(SMOKE, {"stage3.triplet": "soft"})
    with pytest.raises(ConfigError, match=r"model.sii=fancy: sii must be one of"):
        override(SMOKE, {"model.sii": "fancy"})
    with pytest.raises(ConfigError, match="both as a whole and field by field"):
        override(SMOKE, {"stage3": ReIDStageConfig(), "stage3.epochs": 3})
    # several fields of one level change together: no half-changed DataConfig is validated on its own
    cfg = override(SMOKE, {"data.dataset": "sysu", "data.root": "/data/sysu"})
    assert (cfg.data.dataset, cfg.data.root) == ("sysu", "/data/sysu")
    with pytest.raises(ConfigError, match=r"data.dataset=sysu: dataset 'sysu' needs a root folder"):
        override(SMOKE, {"data.dataset": "sysu"})


def test_parse_override_reads_yaml_values():
    assert parse_override("stage3.epochs=10") == ("stage3.epochs", 10)
    assert parse_override("model.sii=attention") == ("model.sii", "attention")
    assert parse_override("stage3.milestones=[20,30]") == ("stage3.milestones", [20, 30])
    assert parse_override("data.root=null") == ("data.root", None)
    assert parse_override("data.root=") == ("data.root", None)
    assert parse_override("eval.flip=false") == ("eval.flip", False)
    assert parse_override(" stage3.lr = 1e-3") == ("stage3.lr", 1e-3)  # YAML 1.1 alone would give a string
    assert parse_override("device=cuda:1") == ("device", "cuda:1")
    assert parse_override("clip.weights=local-dir:/a/b=c") == ("clip.weights", "local-dir:/a/b=c")
    assert parse_overrides(["seed=1", "seed=2", "stage3.lr=0.5"]) == {"seed": 2, "stage3.lr": 0.5}
    for bad in ("stage3.epochs", "=3", "stage3.milestones=[1,"):
        with pytest.raises(ConfigError, match=re.escape(f"override {bad!r}")):
            parse_override(bad)
    cfg = override(SMOKE, parse_overrides(["stage3.epochs=1", "stage3.milestones=[]", "eval.sysu_shots=[1, 10]"]))
    assert (cfg.stage3.epochs, cfg.stage3.milestones, cfg.eval.sysu_shots) == (1, (), (1, 10))


def test_format_overrides_reads_back():
    changes = {
        "stage3.epochs": 1,
        "model.sii": "attention",
        "data.root": None,
        "name": "true",
        "x": (1, 2),
        "stage3.lr": 1e-3,
    }
    text = format_overrides(changes)
    assert text == 'stage3.epochs=1, model.sii=attention, data.root=null, name="true", x=[1, 2], stage3.lr=0.001'
    assert format_overrides({}) == "none"
    back = parse_overrides(f"{key}={format_value(value)}" for key, value in changes.items())
    assert back == {**changes, "x": [1, 2]}


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_load_overrides_from_files_dotted_and_nested(tmp_path: Path, suffix: str):
    content = {
        "stage3.epochs": 3,
        "model": {"sii": "mean"},
        "clip": {"pretrain.epochs": 4},
        "stage3.milestones": [1, 2],
        "data.root": None,
    }
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(content))
    else:
        path.write_text(
            "stage3.epochs: 3\nmodel:\n  sii: mean\nclip:\n  pretrain.epochs: 4\n"
            "stage3.milestones: [1, 2]\ndata.root: null\n"
        )
    loaded = load_overrides(path, ExperimentConfig)
    assert loaded == {
        "stage3.epochs": 3,
        "model.sii": "mean",
        "clip.pretrain.epochs": 4,
        "stage3.milestones": [1, 2],
        "data.root": None,
    }
    cfg = override(SMOKE, loaded)
    assert (cfg.stage3.epochs, cfg.model.sii, cfg.clip.pretrain.epochs, cfg.stage3.milestones) == (3, "mean", 4, (1, 2))


def test_load_overrides_yaml_scientific_floats_and_empty_file(tmp_path: Path):
    (tmp_path / "lr.yaml").write_text("stage3:\n  lr: 3e-4\n")
    assert load_overrides(tmp_path / "lr.yaml") == {"stage3.lr": 3e-4}
    (tmp_path / "empty.yml").write_text("# nothing\n")
    assert load_overrides(tmp_path / "empty.yml") == {}


def test_bad_override_files_name_the_file(tmp_path: Path):
    cases = {
        "missing.yaml": None,
        "bad.yaml": "stage3: [1,\n",
        "bad.json": "{'a': 1}",
        "list.yaml": "- 1\n- 2\n",
        "run.toml": "a = 1",
        "typo.yaml": "stage3:\n  epoch: 3\n",
        "type.json": '{"stage3.epochs": "x"}',
    }
    expected = {
        "missing.yaml": "cannot read the overrides file",
        "bad.yaml": "not valid YAML",
        "bad.json": "not valid JSON",
        "list.yaml": "expected a mapping of keys to values, got a list".replace(
            "values, ", "values (e.g. 'stage3.epochs: 10'), "
        ),
        "run.toml": "must end in .yaml, .yml, .json",
        "typo.yaml": "unknown key 'stage3.epoch'",
        "type.json": "stage3.epochs must be int",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_overrides(path, ExperimentConfig)
        assert str(error.value).startswith(f"{path}: ") and expected[name] in str(error.value), name


def test_check_overrides_checks_without_building():
    assert check_overrides(ExperimentConfig, {"select": "best_val"}) == {"select": "best_val"}  # valid alone
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        check_overrides(ExperimentConfig, {"x": 1})


# -- up-front validation of the configs -----------------------------------------------------------------


def test_experiment_config_is_validated_up_front():
    with pytest.raises(ConfigError, match="select='best_val' needs validation: set validate_every > 0"):
        ExperimentConfig(name="x", select="best_val", validate_every=0)
    with pytest.raises(ConfigError, match="select must be one of"):
        ExperimentConfig(name="x", select="best")
    with pytest.raises(ConfigError, match="validate_every must be >= 0"):
        ExperimentConfig(name="x", validate_every=-1)
    with pytest.raises(ConfigError, match="select=best_val, validate_every=0: select='best_val' needs validation"):
        override(SMOKE, {"select": "best_val", "validate_every": 0})
    assert override(SMOKE, {"select": "best_val", "validate_every": 2}).select == "best_val"
    for name in ("sysu-rn50", "regdb-vitb16", "llcm-rn50"):  # real data: no held-out ids, no validation
        cfg = get_profile(name, data_root="/data")
        assert (cfg.data.hold_out_val, cfg.validate_every, cfg.select) == (False, 0, "final")


def test_enumerated_choices_are_checked():
    with pytest.raises(ConfigError, match="sysu_modes may hold 'all', 'indoor'; got 'outdoor'"):
        EvalConfig(sysu_modes=("all", "outdoor"))
    with pytest.raises(ConfigError, match="directions may hold"):
        EvalConfig(directions=("visible->visible",))
    with pytest.raises(ConfigError, match="sysu_shots must be >= 1"):
        EvalConfig(sysu_shots=(0,))
    with pytest.raises(ConfigError, match="trials >= 1"):
        EvalConfig(trials=0)
    with pytest.raises(ConfigError, match="prompt_wording must be one of"):
        ModelConfig(prompt_wording="poetic")
    with pytest.raises(ConfigError, match="sii must be one of"):
        ModelConfig(sii="fancy")
    with pytest.raises(ConfigError, match="last_stride must be 1 or 2"):
        ClipConfig(last_stride=3)
    with pytest.raises(ConfigError, match="unknown profile 'smok'"):
        get_profile("smok")
    assert get_profile("smoke", seed=5).seed == 5  # top-level keyword overrides go through override()


def test_ablation_variants_are_override_dicts_giving_nested_replacements():
    def by_hand(v, base, seed=None):  # the variants' transformation written with nested dataclasses.replace
        model = dataclasses.replace(
            base.model,
            variant=v.overrides["model.variant"],
            sii=v.overrides["model.sii"],
            prompt_wording=v.overrides["model.prompt_wording"],
        )
        stage1 = dataclasses.replace(base.stage1, pairing=v.overrides["stage1.pairing"])
        stage3 = dataclasses.replace(base.stage3, msel_weight=v.overrides["stage3.msel_weight"])
        seed = base.seed if seed is None else seed
        return dataclasses.replace(base, model=model, stage1=stage1, stage3=stage3, seed=seed)

    switches = {v.name: tuple(v.overrides.values()) for v in VARIANTS}
    assert switches == {
        "vision-only no-MSEL": ("vision-only", "none", "paper", "private", 0.0),
        "vision-only-stems no-MSEL": ("vision-only-stems", "none", "paper", "private", 0.0),
        "vision-only-stems": ("vision-only-stems", "none", "paper", "private", 1.0),
        "vision-only": ("vision-only", "none", "paper", "private", 1.0),
        "clip-reid": ("clip-reid", "none", "paper", "private", 1.0),
        "csdn sii=none": ("csdn", "none", "paper", "private", 1.0),
        "csdn": ("csdn", "official", "paper", "private", 1.0),
        "csdn no-MSEL": ("csdn", "official", "paper", "private", 0.0),
        "csdn sii=attention": ("csdn", "attention", "paper", "private", 1.0),
        "csdn pairing=all": ("csdn", "official", "paper", "all", 1.0),
        "csdn wording=released": ("csdn", "official", "released", "private", 1.0),
    }
    for base in (SMOKE, get_profile("demo")):
        for v in VARIANTS:
            for seed in (None, 0, 2):
                assert v.apply(base, seed) == by_hand(v, base, seed), (v.name, seed)


# -- the error hierarchy ----------------------------------------------------------------------------------


def test_errors_keep_their_builtin_bases():
    from csdn.clip.checkpoints import CheckpointMismatchError, ClipWeightsNotFound
    from csdn.clip.hub import ClipWeightsUnavailable
    from csdn.data.protocol import DatasetError
    from csdn.train.checkpoint import CheckpointError as StageCheckpointError
    from csdn.train.loop import NonFiniteLossError as LoopNonFinite

    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(DatasetError, DataError) and issubclass(DatasetError, ValueError)
    assert StageCheckpointError is CheckpointError and issubclass(CheckpointError, RuntimeError)
    assert LoopNonFinite is NonFiniteLossError and issubclass(NonFiniteLossError, FloatingPointError)
    assert issubclass(ClipWeightsUnavailable, ClipWeightsError) and issubclass(ClipWeightsUnavailable, RuntimeError)
    assert issubclass(CheckpointMismatchError, ClipWeightsError) and issubclass(CheckpointMismatchError, ValueError)
    assert issubclass(ClipWeightsNotFound, FileNotFoundError)
    for kind in (ConfigError, DataError, CheckpointError, ClipWeightsError, NonFiniteLossError, DatasetError):
        assert issubclass(kind, CsdnError)
