"""csdn.synthvi.pretrain: the contrastive loss, augmentation, schedule, a tiny end-to-end run, resume, its cache."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import csdn.synthvi.pretrain as pretrain_module
import csdn.synthvi.world as synthetic
from csdn.clip.loader import load_clip, local_dir_source
from csdn.synthvi.pretrain import (
    PretrainConfig,
    _lr_factor,
    attribute_agreement,
    augment_batch,
    multi_positive_clip_loss,
    pretrain_tiny_clip,
    read_history,
    read_summary,
    strip_colors,
    tiny_clip,
    to_grayscale,
)
from csdn.synthvi.vocabulary import PoolVocabulary

SIZE = (32, 16)


@dataclass
class FakePool:
    """The ClipPool interface: two identities (red top / blue top), visible and infrared images."""

    images: np.ndarray
    captions: list[str]
    modalities: list[str]
    pids: np.ndarray
    attributes: list[dict[str, str]]


def fake_pool(n: int = 16) -> FakePool:
    rng = np.random.default_rng(0)
    images, captions, modalities, pids, attributes = [], [], [], [], []
    for i in range(n):
        red = i % 2 == 0
        infrared = i % 4 == 3
        image = rng.integers(0, 40, size=(*SIZE, 3), dtype=np.uint8)
        image[: SIZE[0] // 2] = (200, 30, 30) if red else (30, 30, 200)
        if infrared:
            image[:] = image.mean(axis=2, keepdims=True).astype(np.uint8)
        colour = "red" if red else "blue"
        images.append(image)
        captions.append(
            "an infrared photo of a person wearing a top."
            if infrared
            else f"a photo of a person wearing a {colour} top."
        )
        modalities.append("infrared" if infrared else "visible")
        pids.append(0 if red else 1)
        attributes.append({"top_color": colour})
    return FakePool(np.stack(images), captions, modalities, np.asarray(pids), attributes)


def test_loss_is_clips_loss_when_every_group_differs():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    clip = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))) / 2
    torch.testing.assert_close(multi_positive_clip_loss(image, text, torch.arange(5), scale), clip)


def test_loss_golden_values_by_hand():
    eye = torch.eye(2)
    scale = torch.tensor(0.0)  # logits = cosine similarities = the identity matrix
    # distinct groups: -log(e / (e + 1)) = log(1 + e^-1)
    distinct = multi_positive_clip_loss(eye, eye, torch.tensor([0, 1]), scale)
    torch.testing.assert_close(distinct, torch.tensor(math.log(1 + math.exp(-1))))
    # one group: targets (1/2, 1/2) -> -(1/2)(1 - log(1+e)) - (1/2)(0 - log(1+e)) = log(1+e) - 1/2
    shared = multi_positive_clip_loss(eye, eye, torch.tensor([3, 3]), scale)
    torch.testing.assert_close(shared, torch.tensor(math.log(1 + math.e) - 0.5))


def test_attribute_agreement_by_hand():
    codes = torch.tensor([[0, 0], [0, 1], [1, 1]])
    everything = torch.ones(3, 2, dtype=torch.bool)
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]])
    torch.testing.assert_close(attribute_agreement(codes, everything), expected)
    # the third sample (say infrared) cannot show attribute 1: its pairs compare attribute 0 only
    partial = torch.tensor([[True, True], [True, True], [True, False]])
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(attribute_agreement(codes, partial), expected)


def test_augmentation_is_seeded_shape_preserving_and_off_at_zero():
    x = torch.randn(4, 3, *SIZE)
    assert augment_batch(x, 0.0, torch.Generator().manual_seed(0)) is x
    a = augment_batch(x, 1.0, torch.Generator().manual_seed(1))
    b = augment_batch(x, 1.0, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, x)


def test_strip_colors_removes_only_colour_words():
    words = {"red", "blue", "gray"}
    assert strip_colors("a photo of a person in a red striped top, blue trousers and gray shoes.", words) == (
        "a photo of a person in a striped top, trousers and shoes."
    )
    assert strip_colors("a person with a red.", words) == "a person with a."
    assert strip_colors("a reddish bluegray top", words) == "a reddish bluegray top"


def test_grayscale_uses_luma_weights():
    images = torch.tensor([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]]], dtype=torch.uint8)
    gray = to_grayscale(images)
    assert gray.shape == (1, 1, 4, 3) and gray.dtype == torch.uint8
    assert gray[0, 0, :, 0].tolist() == [76, 150, 29, 18]  # 0.299*255, 0.587*255, 0.114*255, 17.9
    assert torch.equal(gray[..., 0], gray[..., 2])


def test_schedule_warms_up_linearly_then_decays_to_zero():
    assert _lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert _lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert _lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert _lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert _lr_factor(20, 4, 20) == pytest.approx(0.0)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="epochs"):
        PretrainConfig(epochs=0)
    with pytest.raises(ValueError, match="augment"):
        PretrainConfig(augment=1.5)
    with pytest.raises(ValueError, match="grayscale"):
        PretrainConfig(grayscale=-0.1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        pretrain_tiny_clip(PretrainConfig(batch_size=64, image_size=SIZE), fake_pool(16), "unused")


def test_pretraining_learns_saves_and_loads_back(tmp_path):
    cfg = PretrainConfig(arch="csdn-tiny-vit", image_size=SIZE, epochs=6, batch_size=8, lr=2e-3, augment=0.5)
    seen = []
    history = pretrain_tiny_clip(cfg, fake_pool(), tmp_path / "tiny", on_epoch=lambda e, b: seen.append(e))
    assert seen == list(range(6))
    assert [h["epoch"] for h in history] == list(range(1, 7)) and history[-1]["loss"] < history[0]["loss"]
    summary = read_summary(tmp_path / "tiny")
    assert summary["n_images"] == 16 and summary["n_infrared"] == 4 and summary["images_per_second"] > 0
    assert read_history(tmp_path / "tiny") == history
    assert json.loads((tmp_path / "tiny" / "open_clip_config.json").read_text())["csdn"]["arch"] == "csdn-tiny-vit"
    bundle = load_clip(local_dir_source(tmp_path / "tiny"))
    assert bundle.image_size == SIZE and not bundle.model.training


def test_pretraining_is_deterministic(tmp_path):
    cfg = PretrainConfig(
        arch="csdn-tiny-rn", image_size=SIZE, epochs=1, batch_size=8, grayscale=0.5, attribute_targets=8.0
    )
    first = pretrain_tiny_clip(cfg, fake_pool(), tmp_path / "a")
    second = pretrain_tiny_clip(cfg, fake_pool(), tmp_path / "b")
    assert [h["loss"] for h in first] == [h["loss"] for h in second]


def test_the_compact_token_table_trains_exactly_as_the_full_one(tmp_path, monkeypatch):
    """Pretraining trains only the pool's tokens' rows: the saved weights equal, bit for bit, those of training
    the whole 49,408-row table (every other row stays as initialised), and ``on_epoch`` sees the full table."""
    cfg = PretrainConfig(arch="csdn-tiny-rn", image_size=SIZE, epochs=2, batch_size=8, grayscale=0.5)
    sizes = []

    def encode_a_new_word(epoch, bundle):  # a token the pool never uses: needs the full table
        sizes.append(bundle.model.token_embedding.num_embeddings)
        bundle.model.encode_text(bundle.tokenizer(["an umbrella"]))

    pretrain_tiny_clip(cfg, fake_pool(), tmp_path / "compact", on_epoch=encode_a_new_word)
    real_of = PoolVocabulary.of
    monkeypatch.setattr(
        pretrain_module.PoolVocabulary, "of", lambda vocab_size, *t: real_of(vocab_size, torch.arange(vocab_size))
    )
    pretrain_tiny_clip(cfg, fake_pool(), tmp_path / "full")
    compact, full = _weights(tmp_path / "compact"), _weights(tmp_path / "full")
    assert sizes == [49408, 49408] and compact["token_embedding.weight"].shape == (49408, 128)
    assert compact.keys() == full.keys() and all(torch.equal(compact[k], full[k]) for k in full)


def test_pool_vocabulary_keeps_the_order_of_token_ids():
    tokens = torch.tensor([[49406, 320, 1929, 49407, 0], [49406, 1929, 49407, 0, 0]])
    vocabulary = PoolVocabulary.of(49408, tokens, None)
    assert vocabulary.used.tolist() == [0, 320, 1929, 49406, 49407]
    compact = vocabulary.compact(tokens)
    assert compact.tolist() == [[3, 1, 2, 4, 0], [3, 2, 4, 0, 0]]
    assert torch.equal(compact.argmax(dim=1), tokens.argmax(dim=1))  # the end-of-text token is still the largest
    full = torch.nn.Embedding(49408, 4)
    table = vocabulary.compact_embedding(full)
    assert torch.equal(table.weight, full.weight[vocabulary.used])
    with torch.no_grad():
        table.weight.add_(1.0)
    before = full.weight.detach().clone()
    vocabulary.write_back(table, full)
    changed = (full.weight != before).any(dim=1).nonzero().flatten()
    assert changed.tolist() == [0, 320, 1929, 49406, 49407]
    with pytest.raises(ValueError, match="token ids must lie"):
        PoolVocabulary.of(100, tokens)


def test_tiny_clip_is_built_once_per_config(tmp_path, monkeypatch):
    calls = []

    def pool(cfg, heldout=False):
        calls.append(cfg)
        return fake_pool()

    monkeypatch.setattr(pretrain_module, "clip_pool", pool)
    cfg = PretrainConfig(arch="csdn-tiny-vit", image_size=SIZE, epochs=1, batch_size=8)
    synth = synthetic.SynthConfig(height=SIZE[0], width=SIZE[1])
    first = tiny_clip(cfg, synth, tmp_path)
    again = tiny_clip(cfg, synth, tmp_path)
    assert first == again and len(calls) == 1
    assert (first / ".complete").is_file() and (first / "open_clip_model.safetensors").is_file()
    assert len(read_history(first)) == 1 and not list((tmp_path / "runs").iterdir())  # checkpoints removed
    reseeded = PretrainConfig(arch="csdn-tiny-vit", image_size=SIZE, epochs=1, batch_size=8, seed=1)
    other = tiny_clip(reseeded, synth, tmp_path)
    assert other != first and len(calls) == 2


def test_read_history_names_a_folder_without_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="history.json"):
        read_history(tmp_path)
    with pytest.raises(FileNotFoundError, match="history.json"):
        read_summary(tmp_path)


class Killed(Exception):
    """Stands for a kill after epoch 1's checkpoint."""


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "open_clip_model.safetensors"))


def test_pretraining_killed_after_epoch_1_resumes_at_epoch_2_with_the_same_result(tmp_path):
    cfg = PretrainConfig(arch="csdn-tiny-rn", image_size=SIZE, epochs=3, batch_size=8, grayscale=0.5, warmup_epochs=1.5)
    straight = pretrain_tiny_clip(cfg, fake_pool(), tmp_path / "straight")

    def kill_after_epoch_1(epoch, bundle):
        if epoch == 1:  # epoch 2 is trained, but the loop has checkpointed only epoch 1
            raise Killed()

    with pytest.raises(Killed):
        pretrain_tiny_clip(cfg, fake_pool(), tmp_path / "out", on_epoch=kill_after_epoch_1, run_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    seen = []
    resumed = pretrain_tiny_clip(
        cfg, fake_pool(), tmp_path / "out", on_epoch=lambda e, b: seen.append(e), run_dir=tmp_path / "run"
    )
    assert seen == [1, 2]  # epochs 2 and 3
    expected, got = _weights(tmp_path / "straight"), _weights(tmp_path / "out")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in run] for run in (straight, resumed)]
    assert untimed[0] == untimed[1] and read_history(tmp_path / "out") == resumed


def test_tiny_clip_resumes_a_killed_build_from_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_module, "clip_pool", lambda cfg, heldout=False: fake_pool())
    cfg = PretrainConfig(arch="csdn-tiny-vit", image_size=SIZE, epochs=2, batch_size=8)
    synth = synthetic.SynthConfig(height=SIZE[0], width=SIZE[1])
    original = pretrain_module.save_local_dir

    def killed(*args, **kwargs):  # a kill after the last epoch's checkpoint, before the folder is saved
        raise Killed()

    monkeypatch.setattr(pretrain_module, "save_local_dir", killed)
    with pytest.raises(Killed):
        tiny_clip(cfg, synth, tmp_path)
    key = pretrain_module.tiny_clip_key(cfg, synth)
    run = tmp_path / "runs" / f"tiny_clip-{key}"
    assert (run / "checkpoints" / "latest.json").is_file() and not (tmp_path / "tiny_clip" / key).exists()
    monkeypatch.setattr(pretrain_module, "save_local_dir", original)

    def no_training(*args):
        def train_epoch(epoch, tick):
            raise AssertionError(f"epoch {epoch + 1} trained again")

        return train_epoch

    monkeypatch.setattr(pretrain_module, "_epoch_runner", no_training)  # both epochs are checkpointed
    folder = tiny_clip(cfg, synth, tmp_path)
    assert [h["epoch"] for h in read_history(folder)] == [1, 2] and not run.exists()


def test_read_history_and_summary_of_an_earlier_dict_of_lists_folder(tmp_path):
    old = {
        "loss": [3.0, 2.5],
        "seconds": [1.0, 1.2],
        "logit_scale": [14.2, 14.1],
        "arch": "csdn-tiny-rn",
        "epochs": 2,
        "total_seconds": 2.2,
        "images_per_second": 80.0,
        "threads": 2,
        "config": {"epochs": 2},
    }
    (tmp_path / "history.json").write_text(json.dumps(old))
    assert read_history(tmp_path) == [
        {"epoch": 1, "loss": 3.0, "seconds": 1.0, "logit_scale": 14.2},
        {"epoch": 2, "loss": 2.5, "seconds": 1.2, "logit_scale": 14.1},
    ]
    assert read_summary(tmp_path) == {
        "arch": "csdn-tiny-rn",
        "epochs": 2,
        "total_seconds": 2.2,
        "images_per_second": 80.0,
        "threads": 2,
        "config": {"epochs": 2},
    }
