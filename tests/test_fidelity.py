"""Fidelity to the authors' release (nengdong96/CSDN at 2224959), point by point, on identical inputs.

The reference values in ``fixtures/release_numerics.json`` and ``fixtures/release_preprocess.*`` were computed
outside this project by the release's own functions (TripletLoss_WRT, SupConLoss, MSEL, its stage-1/2 and
stage-3 schedulers, resize_pos_embed, AGW's IdentitySampler, its TestData + transform_test pipeline); each
fixture's ``source`` says how. The tests feed csdn the same inputs under the real-data profiles' settings.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.functional import normalize, to_tensor

from csdn.cli import apply_weights_settings, main
from csdn.clip.adapt import resize_grid_embedding
from csdn.clip.loader import ClipSource, load_clip
from csdn.config import PROFILES, RELEASE_PREPROCESSING, SMOKE_SYNTH, get_profile
from csdn.data.cache import decode_image
from csdn.data.records import INFRARED, VISIBLE
from csdn.data.release_bank import FeatureBankBatches, agw_identity_pairs
from csdn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, test_transform
from csdn.errors import ConfigError
from csdn.eval.features import extract_features
from csdn.experiment import Experiment
from csdn.losses import msel_loss, supcon_loss, triplet_wrt
from csdn.model.network import CSDNNet
from csdn.model.release import RELEASE_SETTINGS, release_key
from csdn.overrides import override
from csdn.synthvi.layouts import WRITERS
from csdn.train.reid_stage import ReIDStageConfig, head_parameters, make_optimizer, set_trainable_heads
from csdn.train.schedule import make_scheduler
from csdn.train.text_stages import TextStageConfig, text_stage_scheduler

FIXTURES = Path(__file__).parent / "fixtures"
NUMERICS = json.loads((FIXTURES / "release_numerics.json").read_text())
PREPROCESS = load_file(str(FIXTURES / "release_preprocess.safetensors"))
RELEASE_KEYS = [key for key, _ in json.loads((FIXTURES / "release_csdn_2224959_keys.json").read_text())["keys"]]
REAL_PROFILES = [name for name in PROFILES if name not in ("smoke", "demo")]


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _with_grad(values) -> torch.Tensor:
    return _t(values).requires_grad_(True)


# -- the profiles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_PROFILES)
def test_real_data_profiles_take_every_release_behaviour(name: str) -> None:
    cfg = get_profile(name, "/data")
    assert cfg.clip.input_stats == "imagenet" and cfg.clip.grid_interpolation == "bilinear"
    assert cfg.data.resize_filter == "lanczos" and cfg.eval.flip_fusion == "concat"
    assert cfg.stage3.wrt_weights == "agw" and cfg.stage3.param_groups == "release"
    for stage in (cfg.stage1, cfg.stage2):
        assert stage.schedule == "release" and stage.feature_bank == "release"
    assert cfg.compute.precision == "fp32"  # the release has no autocast


@pytest.mark.parametrize("name", ["smoke", "demo"])
def test_the_embedded_default_keeps_its_own_switches(name: str) -> None:
    cfg = get_profile(name)
    assert (cfg.clip.input_stats, cfg.clip.grid_interpolation) == ("clip", "bicubic")
    assert (cfg.data.resize_filter, cfg.eval.flip_fusion) == ("bilinear", "mean")
    assert (cfg.stage3.wrt_weights, cfg.stage3.param_groups) == ("exact", "bnneck")
    assert (cfg.stage1.schedule, cfg.stage1.feature_bank) == ("after_warmup", "images")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("clip.input_stats", "imagnet"),
        ("clip.grid_interpolation", "nearest"),
        ("data.resize_filter", "box"),
        ("eval.flip_fusion", "max"),
        ("stage3.wrt_weights", "soft"),
        ("stage3.param_groups", "all"),
        ("stage1.schedule", "linear"),
        ("stage2.feature_bank", "every"),
    ],
)
def test_every_switch_refuses_an_unknown_value_naming_it(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.rpartition(".")[2]):
        override(get_profile("smoke"), {key: value})


# -- 1, 2: input statistics and resize filter --------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 32), (288, 144)])
def test_release_test_pipeline_equals_lanczos_cache_and_imagenet_statistics(size: tuple[int, int]) -> None:
    name = f"rgb_{size[0]}x{size[1]}"
    cached = decode_image(FIXTURES / "release_input_rgb.png", size, resize_filter="lanczos")
    assert np.array_equal(cached, PREPROCESS[f"{name}_uint8"].numpy())
    transform = test_transform(TransformConfig(height=size[0], width=size[1], mean=IMAGENET_MEAN, std=IMAGENET_STD))
    tensor = transform(torch.from_numpy(cached.copy()).permute(2, 0, 1).contiguous())
    assert torch.allclose(tensor, PREPROCESS[name], atol=1e-6)
    bilinear = decode_image(FIXTURES / "release_input_rgb.png", size)  # the embedded default's filter
    assert not np.array_equal(bilinear, cached)


def test_a_grayscale_file_is_the_release_resize_in_three_channels() -> None:
    # The release's test transform raises on a one-channel array; csdn reads it as RGB after the same resize.
    cached = decode_image(FIXTURES / "release_input_l.png", (64, 32), resize_filter="lanczos")
    release = PREPROCESS["l_64x32_uint8"].numpy()
    assert all(np.array_equal(cached[..., c], release) for c in range(3))


# -- 3: flip fusion ----------------------------------------------------------------------------------------


def test_concat_flip_fusion_is_the_plain_and_flipped_features_side_by_side() -> None:
    torch.manual_seed(0)
    images = torch.randn(5, 3, 8, 4)
    weight = torch.randn(3 * 8 * 4, 6)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.flatten(1) @ weight, dim=1)

    concat = extract_features(encode, images, flip=True, flip_fusion="concat", progress=False)
    expected = torch.cat([encode(images), encode(torch.flip(images, dims=[3]))], dim=1)
    assert torch.allclose(concat, expected, atol=1e-6)  # not normalised again: the release ranks raw dot products
    mean = extract_features(encode, images, flip=True, progress=False)
    assert torch.allclose(mean, torch.nn.functional.normalize(expected[:, :6] + expected[:, 6:], dim=1), atol=1e-6)


# -- 4: WRT, and the other loss terms at small and large distances -------------------------------------------


@pytest.mark.parametrize("case", NUMERICS["wrt"], ids=lambda c: f"scale{c['scale']}")
def test_agw_wrt_weights_equal_the_release_at_every_distance(case: dict) -> None:
    features = _with_grad(case["features"])
    loss = triplet_wrt(features, torch.tensor(case["labels"]), weights="agw")
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-9)
    assert torch.allclose(features.grad, _t(case["grad"]), rtol=1e-7, atol=1e-12)


def test_exact_wrt_departs_from_the_release_only_where_negatives_are_far() -> None:
    relative = {}
    for case in NUMERICS["wrt"]:
        exact = triplet_wrt(_t(case["features"]), torch.tensor(case["labels"]), weights="exact").item()
        relative[case["scale"]] = abs(exact - case["loss"]) / case["loss"]
    distance = {c["scale"]: c["median_negative_distance"] for c in NUMERICS["wrt"]}
    assert distance[8] == pytest.approx(11.1, abs=0.5) and distance[16] == pytest.approx(22.2, abs=1)
    assert relative[0.5] < 1e-5 and relative[2] < 1e-5 and relative[4] < 1e-4
    assert relative[16] > 0.5 and relative[32] > 0.5


@pytest.mark.parametrize("case", NUMERICS["supcon"], ids=lambda c: f"scale{c['scale']}")
def test_supervised_contrastive_loss_equals_the_release(case: dict) -> None:
    labels = torch.tensor(case["labels"])
    for direction in ("i2t", "t2i"):
        image, text = _with_grad(case["image_features"]), _with_grad(case["text_features"])
        anchors, columns = (image, text) if direction == "i2t" else (text, image)
        loss = supcon_loss(anchors, columns, labels, labels)
        loss.backward()
        assert loss.item() == pytest.approx(case[f"loss_{direction}"], rel=1e-7)
        assert torch.allclose(image.grad, _t(case[f"grad_{direction}_wrt_image"]), rtol=1e-6, atol=1e-9)
        assert torch.allclose(text.grad, _t(case[f"grad_{direction}_wrt_text"]), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", NUMERICS["msel"], ids=lambda c: f"scale{c['scale']}")
def test_msel_equals_the_release_at_every_distance(case: dict) -> None:
    inputs = _with_grad(case["inputs"])
    targets = torch.tensor(case["targets"])
    n = len(targets) // 2
    loss = msel_loss(inputs[:n], targets[:n], inputs[n:], targets[n:])
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-6)
    assert torch.allclose(inputs.grad, _t(case["grad"]), rtol=1e-5, atol=1e-9)


# -- 5: stage-3 parameter groups -----------------------------------------------------------------------------


def _trained_rates(groups: str) -> dict[str, float]:
    visual = load_clip(ClipSource(arch="csdn-tiny-rn", pretrained=None, image_size=(64, 32))).visual()
    net = CSDNNet(visual, 5)
    cfg = ReIDStageConfig(param_groups=groups)
    set_trainable_heads(net, groups)
    optimizer = make_optimizer(net, cfg)
    rate = {id(p): g["lr"] / cfg.lr for g in optimizer.param_groups for p in g["params"]}
    return {name: rate[id(p)] for name, p in net.named_parameters() if id(p) in rate}


def test_release_parameter_groups_follow_the_release_name_match() -> None:
    rates = _trained_rates("release")
    release_params = [
        k.removeprefix("module.")
        for k in RELEASE_KEYS
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    image_side = {release_key(k): k for k in release_params if release_key(k) is not None}
    # every image-side tensor the release trains trains here (stem conv/bn names differ only in the tiny
    # tower's depth), at twice the rate exactly where the release's name holds "classifier"
    heads = {ours for ours, theirs in image_side.items() if "classifier" in theirs}
    assert heads == {name for name, rate in rates.items() if rate == 2.0}
    assert heads == {"gem.p", "bn_gem.weight", "bn_gem.bias", "cls_gem.weight"} | {
        "bn_proj.weight",
        "bn_proj.bias",
        "cls_proj.weight",
    }
    assert all(rate == 1.0 for name, rate in rates.items() if name not in heads)


def test_bnneck_groups_freeze_the_biases_and_double_the_classifiers_only() -> None:
    rates = _trained_rates("bnneck")
    assert {name for name, rate in rates.items() if rate == 2.0} == {"cls_gem.weight", "cls_proj.weight"}
    assert "bn_gem.bias" not in rates and "bn_proj.bias" not in rates
    assert rates["gem.p"] == 1.0 and rates["bn_gem.weight"] == 1.0
    visual = load_clip(ClipSource(arch="csdn-tiny-rn", pretrained=None, image_size=(64, 32))).visual()
    assert len(head_parameters(CSDNNet(visual, 5), "release")) == 7


# -- 6: schedules -----------------------------------------------------------------------------------------------


def _epoch_rates(optimizer: torch.optim.Optimizer, scheduler, epochs: int) -> list[list[float]]:
    rates = []
    for _ in range(epochs):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("case", NUMERICS["cosine_lr"], ids=lambda c: f"{c['settings']['num_epochs']}epochs")
def test_stage_1_2_schedule_equals_the_release(case: dict) -> None:
    s = case["settings"]
    cfg = TextStageConfig(
        epochs=s["num_epochs"], lr=s["lr"], warmup_epochs=s["warmup_t"], warmup_lr=s["warmup_lr_init"]
    )
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ours = [r[0] for r in _epoch_rates(optimizer, text_stage_scheduler(optimizer, cfg), cfg.epochs)]
    assert ours == pytest.approx(case["lrs"], rel=1e-9)
    after_warmup = TextStageConfig(**{**cfg.__dict__, "schedule": "after_warmup"})
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    other = [r[0] for r in _epoch_rates(optimizer, text_stage_scheduler(optimizer, after_warmup), cfg.epochs)]
    peak = s["warmup_t"]
    assert other[peak] == pytest.approx(s["lr"]) and case["lrs"][peak] < s["lr"]  # only "after_warmup" peaks


def test_stage_3_schedule_equals_the_release() -> None:
    case = NUMERICS["multistep_lr"]
    s = case["settings"]
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, s["base_lrs"])])
    scheduler = make_scheduler(optimizer, "multistep", 120, s["warmup_iters"], s["warmup_factor"], s["milestones"])
    assert _epoch_rates(optimizer, scheduler, 120) == [pytest.approx(r, rel=1e-9) for r in case["lrs"]]


# -- 7: positional grids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tower", "old"), [("rn50", (7, 7)), ("vit", (14, 14))])
def test_bilinear_grid_interpolation_equals_the_release(tower: str, old: tuple[int, int]) -> None:
    case = NUMERICS["pos_embed"][tower]
    source = torch.tensor(case["input"], dtype=torch.float32)
    resized = resize_grid_embedding(source, old, (case["h"], case["w"]), mode="bilinear")
    assert torch.allclose(resized, torch.tensor(case["output"]), atol=1e-6)
    assert not torch.allclose(resize_grid_embedding(source, old, (case["h"], case["w"])), resized, atol=1e-3)


def test_the_clip_loader_resizes_grids_as_configured() -> None:
    def grid(mode: str) -> torch.Tensor:
        torch.manual_seed(0)
        source = ClipSource(arch="csdn-tiny-rn", pretrained=None, image_size=(96, 48), grid_interpolation=mode)
        return load_clip(source).model.visual.attnpool.positional_embedding.detach()

    assert not torch.allclose(grid("bilinear"), grid("bicubic"))


# -- 8: the stage-1/2 feature bank ---------------------------------------------------------------------------


@pytest.mark.parametrize("run", NUMERICS["identity_sampler"]["runs"], ids=lambda r: f"seed{r['seed']}")
def test_feature_bank_draws_as_agw_identity_sampler(run: dict) -> None:
    case = NUMERICS["identity_sampler"]
    visible, infrared = agw_identity_pairs(
        case["visible_labels"],
        case["infrared_labels"],
        case["batchSize_ids"],
        case["num_pos"],
        np.random.RandomState(run["seed"]),
    )
    assert visible.tolist() == run["index1"] and infrared.tolist() == run["index2"]
    # the release's stage-1 loader (batches of 32 pairs, drop_last) yields every drawn pair: so do the batches
    batches = FeatureBankBatches(case["visible_labels"], case["infrared_labels"], 8, 4, seed=run["seed"])
    assert len(batches) * 32 == run["num_pairs"] == len(batches.visible)


def test_feature_bank_batches_pair_identities_and_mix_stage_two() -> None:
    visible_labels = [i // 5 for i in range(50)]  # 10 identities, 5 visible and 3 infrared images each
    infrared_labels = [i // 3 for i in range(30)]
    pairs = FeatureBankBatches(visible_labels, infrared_labels, 4, 2, seed=3, stage=1)
    for vis, ir in pairs:
        assert len(vis) == len(ir) == 8
        assert [visible_labels[i] for i in vis] == [infrared_labels[i] for i in ir]
    first = list(pairs)
    assert list(pairs) == first  # a pure function of (seed, stage, epoch)
    pairs.set_epoch(1)
    assert list(pairs) != first
    mixed = FeatureBankBatches(visible_labels, infrared_labels, 4, 2, seed=3, stage=2)
    sizes = [(len(v), len(i)) for v, i in mixed]
    assert len(sizes) == len(mixed) and all(v + i == 16 for v, i in sizes) and len({v for v, _ in sizes}) > 1
    assert mixed.visible.tolist() != pairs.visible.tolist()  # each stage draws its own bank


# -- the released weights, evaluated with their own preprocessing ---------------------------------------------


def _release_file(net: CSDNNet, path: Path) -> Path:
    """``net``'s tensors as the release saves them (``module.`` keys, GeM p of shape (1,), a text tensor)."""
    inverse = {release_key(k.removeprefix("module.")): k for k in RELEASE_KEYS}
    state = {inverse[k]: v.reshape(1) if k == "gem.p" else v for k, v in net.state_dict().items()}
    state["module.prompt_learner1.cls_ctx"] = torch.zeros(3, 4, 8)
    torch.save(state, path)
    return path


def _release_input(path: str) -> torch.Tensor:
    """The release's test preprocessing, written here with PIL and torchvision only (see the fixture test)."""
    with Image.open(path) as image:
        array = np.array(image.resize((144, 288), Image.Resampling.LANCZOS))
    return normalize(to_tensor(array), IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.slow
def test_converted_release_weights_are_evaluated_with_their_own_preprocessing(tmp_path: Path, capsys) -> None:
    root = tmp_path / "SYSU-MM01"
    WRITERS["sysu"](SMOKE_SYNTH, root, progress=False)
    args = ["--profile", "sysu-rn50", "--data", str(root), "--clip", "random"]
    quick = ["--set", "eval.trials=1", "--set", "eval.sysu_shots=[1]", "--set", "eval.sysu_modes=[all]"]
    cfg = override(get_profile("sysu-rn50", str(root)), {"clip.weights": "random", "eval.trials": 1})
    experiment = Experiment(cfg, tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    net = experiment.build_network()
    net.bn_gem.running_mean.normal_()  # statistics a trained network would have, so the BNNeck matters
    converted = tmp_path / "release.safetensors"
    assert main(["convert-release", str(_release_file(net, tmp_path / "model_119.pth")), str(converted)]) == 0
    assert "model.release_stem=true, clip.input_stats=imagenet" in capsys.readouterr().out

    common = ["--cache", str(tmp_path / "cache"), "eval", *args, "--weights", str(converted), *quick]
    common += ["--reports", str(tmp_path / "reports")]
    assert main(common) == 0
    printed = capsys.readouterr().out
    needs = "need: model.release_stem=true, clip.input_stats=imagenet, data.resize_filter=lanczos, eval.flip_fusion"
    assert needs in printed and "applied: model.release_stem=true\n" in printed  # the profile has the rest

    # its features are the release network's on the release's preprocessing, plain and flipped side by side
    applied, _ = apply_weights_settings(converted, cfg, {})
    experiment = Experiment(applied, tmp_path / "cache", progress=False, trained_only=True)
    network = experiment.network_from_weights(converted).eval()
    split = experiment.dataset.test_splits(experiment.split_options())[0]
    records = [*split.query[:3], *split.gallery(split.trials[0])[:3]]
    features = experiment.features_of(network.embed, network)(records)
    with torch.no_grad():
        for record, feature in zip(records, features):
            x = _release_input(record.path)[None]
            modality = INFRARED if record.modality == INFRARED else VISIBLE
            expected = torch.cat([network.embed(x, modality), network.embed(torch.flip(x, dims=[3]), modality)], 1)
            assert torch.allclose(feature, expected[0], atol=1e-5)

    # a setting that contradicts the file is refused, naming both
    assert main([*common, "--set", "clip.input_stats=clip"]) == 2
    err = capsys.readouterr().err
    assert "clip.input_stats" in err and "leave that setting out" in err and str(converted) in err


def test_the_embedded_world_trains_end_to_end_with_every_release_switch(tmp_path: Path) -> None:
    release = {
        **RELEASE_PREPROCESSING,
        **{f"stage{n}.{k}": "release" for n in (1, 2) for k in ("schedule", "feature_bank")},
        "stage3.wrt_weights": "agw",
        "stage3.param_groups": "release",
    }
    cfg = override(get_profile("smoke"), release)
    plain = Experiment(get_profile("smoke"), tmp_path, progress=False)
    experiment = Experiment(cfg, tmp_path, progress=False)
    assert experiment.stage3_key != plain.stage3_key and experiment.clip_features_key != plain.clip_features_key
    results = experiment.evaluate()
    assert all(np.isfinite(r.mAP) and r.mAP > 0 for r in results.values())
    for stage in ("stage1", "stage2", "stage3"):
        assert all(np.isfinite(epoch["loss"]) for epoch in experiment.histories[stage])
    assert experiment.network.bn_gem.bias.abs().sum() > 0  # the release trains the BNNeck biases


def test_release_settings_are_the_profiles_preprocessing_plus_the_stem() -> None:
    assert {k: v for k, v in RELEASE_SETTINGS.items() if k != "model.release_stem"} == {
        k: v for k, v in RELEASE_PREPROCESSING.items() if k != "clip.grid_interpolation"
    }
    assert RELEASE_SETTINGS["model.release_stem"] is True
