"""Prompt templates, the per-identity prompt learner and the modality pair, on a tiny random open_clip model."""

import open_clip
import pytest
import torch
from torch import nn

from csdn.model.prompts import (
    PAPER_INFRARED,
    PAPER_VISIBLE,
    RELEASED,
    ModalityPrompts,
    PromptLearner,
    PromptTemplate,
    template_for,
)

CONTEXT_LENGTH = 32


class ReferenceTextEncoder(nn.Module):
    """Minimal stand-in for csdn.clip.adapt.TextEncoder (switch to it once it exists): open_clip's
    encode_text from token embeddings onward, pooled at the given EOT positions."""

    def __init__(self, clip: open_clip.model.CLIP) -> None:
        super().__init__()
        self.transformer, self.ln_final = clip.transformer, clip.ln_final
        self.positional_embedding, self.text_projection = clip.positional_embedding, clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        x = self.transformer(prompts + self.positional_embedding, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=dict(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        text_cfg=dict(context_length=CONTEXT_LENGTH, vocab_size=49408, width=64, heads=2, layers=2),
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.SimpleTokenizer()


@pytest.fixture(scope="module")
def encoder(clip):
    return ReferenceTextEncoder(clip)


def make_learner(clip, tokenizer, template=RELEASED, num_ids=3, n_ctx=4, **kw):
    return PromptLearner(
        num_ids,
        template,
        n_ctx,
        token_embedding=clip.token_embedding,
        tokenizer=tokenizer,
        context_length=CONTEXT_LENGTH,
        **kw,
    )


# ------------------------------------------------------------------------------------------------ templates


def test_template_constants_and_selection():
    assert template_for("visible", "paper").text == PAPER_VISIBLE == "A visible photo of a X X X X person."
    assert template_for("infrared", "paper").text == PAPER_INFRARED == "An infrared photo of a X X X X person."
    assert template_for("infrared", "released").text == RELEASED == "A photo of a X X X X person."
    assert template_for("visible", "released", n_ctx=2).text == "A photo of a X X person."
    assert PromptTemplate(PAPER_VISIBLE).n_ctx == 4
    assert PromptTemplate(RELEASED).filled(["tall", "man", "in", "red"]) == "A photo of a tall man in red person."


@pytest.mark.parametrize(
    ("text", "message"),
    [("A photo of a person.", "no placeholder"), ("A X photo of X X person.", "consecutive")],
)
def test_template_rejects_bad_wording(text, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(text)


def test_template_for_rejects_unknown_names():
    with pytest.raises(ValueError, match="modality"):
        template_for("thermal")
    with pytest.raises(ValueError, match="wording"):
        template_for("visible", "fancy")


# ------------------------------------------------------------------------------------------------ learner


@pytest.mark.parametrize("template", [RELEASED, PAPER_VISIBLE, PAPER_INFRARED])
def test_learner_with_word_context_equals_encoding_the_sentence(clip, tokenizer, encoder, template):
    """Context set to real word embeddings must reproduce open_clip's encoding of the filled sentence:
    proves the prefix / context / suffix split and the EOT index."""
    learner = make_learner(clip, tokenizer, template, num_ids=2)
    words = [["tall", "man", "with", "backpack"], ["short", "woman", "in", "skirt"]]
    with torch.no_grad():
        for label, w in enumerate(words):
            ids = tokenizer(w, context_length=3)[:, 1]  # each word is one token between SOT and EOT
            learner.context[label] = clip.token_embedding(ids)
        prompts, eot = learner(torch.tensor([1, 0, 1]))
        got = encoder(prompts, eot)
        sentences = [learner.template.filled(words[i]) for i in (1, 0, 1)]
        expected = clip.encode_text(tokenizer(sentences, context_length=CONTEXT_LENGTH))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_learner_shapes_and_eot(clip, tokenizer):
    learner = make_learner(clip, tokenizer, PAPER_INFRARED, num_ids=5)
    prompts, eot = learner(torch.tensor([4, 0]))
    assert prompts.shape == (2, CONTEXT_LENGTH, 64)
    # SOT, an, infrared, photo, of, a, X X X X, person, ., EOT -> EOT at index 12
    assert eot.tolist() == [12, 12]
    assert learner.token_ids[0, 12].item() == tokenizer.eot_token_id


def test_only_the_context_is_a_parameter(clip, tokenizer):
    learner = make_learner(clip, tokenizer, num_ids=7)
    assert [name for name, _ in learner.named_parameters()] == ["context"]
    assert learner.context.shape == (7, 4, 64)
    assert {"token_prefix", "token_suffix", "token_ids"} <= {name for name, _ in learner.named_buffers()}


def test_context_init_is_normal_with_requested_std_and_seedable(clip, tokenizer):
    g = torch.Generator().manual_seed(5)
    a = make_learner(clip, tokenizer, num_ids=50, generator=g)
    b = make_learner(clip, tokenizer, num_ids=50, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.context, b.context)
    assert abs(a.context.mean().item()) < 1e-3
    assert a.context.std().item() == pytest.approx(0.02, rel=0.05)  # 12,800 draws


def test_gradient_reaches_only_the_requested_identities(clip, tokenizer, encoder):
    learner = make_learner(clip, tokenizer, num_ids=4)
    prompts, eot = learner(torch.tensor([1, 3]))
    encoder(prompts, eot).sum().backward()
    row_has_grad = learner.context.grad.abs().sum(dim=(1, 2)) > 0
    assert row_has_grad.tolist() == [False, True, False, True]
    assert all(p.grad is None for p in clip.parameters())


def test_learner_rejects_bad_arguments(clip, tokenizer):
    with pytest.raises(ValueError, match="4 placeholders but n_ctx=2"):
        make_learner(clip, tokenizer, RELEASED, n_ctx=2)
    with pytest.raises(ValueError, match="longer than the context length"):
        make_learner(clip, tokenizer, "A photo of " + "a very " * 20 + "X X X X person.")
    with pytest.raises(ValueError, match="consecutive placeholder tokens"):
        make_learner(clip, tokenizer, "A photo of x X X X X person.")
    learner = make_learner(clip, tokenizer, num_ids=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        learner(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be \(B,\)"):
        learner(torch.zeros(2, 2, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ modality pair


def build_prompts(clip, tokenizer, shared, wording="paper", num_ids=5):
    return ModalityPrompts.build(
        num_ids,
        shared=shared,
        wording=wording,
        token_embedding=clip.token_embedding,
        tokenizer=tokenizer,
        context_length=CONTEXT_LENGTH,
        generator=torch.Generator().manual_seed(1),
    )


def test_modality_pair_uses_each_modality_learner(clip, tokenizer, encoder):
    prompts = build_prompts(clip, tokenizer, shared=False)
    assert not prompts.shared
    assert prompts.learner("visible").template.text == PAPER_VISIBLE
    assert prompts.learner("infrared").template.text == PAPER_INFRARED
    labels = torch.tensor([0, 2])
    vis, ir = prompts(labels, "visible", encoder), prompts(labels, "infrared", encoder)
    assert vis.shape == ir.shape == (2, 32)
    assert not torch.allclose(vis, ir)
    prompts_vis_only = prompts.learner("visible")(labels)
    torch.testing.assert_close(vis, encoder(*prompts_vis_only))


def test_shared_learner_serves_both_modalities_with_released_wording(clip, tokenizer, encoder):
    prompts = build_prompts(clip, tokenizer, shared=True, wording="paper")
    assert prompts.shared
    assert prompts.learner("visible") is prompts.learner("infrared")
    assert prompts.learner("visible").template.text == RELEASED
    labels = torch.tensor([1, 4])
    torch.testing.assert_close(prompts(labels, "visible", encoder), prompts(labels, "infrared", encoder))


@pytest.mark.parametrize("batch_size", [2, 256])
def test_all_text_features_covers_every_identity_without_grad(clip, tokenizer, encoder, batch_size):
    prompts = build_prompts(clip, tokenizer, shared=False, num_ids=5)
    feats = prompts.all_text_features(encoder, "infrared", batch_size=batch_size)
    assert feats.shape == (5, 32) and not feats.requires_grad
    with torch.no_grad():
        expected = prompts(torch.arange(5), "infrared", encoder)
    torch.testing.assert_close(feats, expected)


def test_modality_prompts_state_dict_round_trip(clip, tokenizer, encoder):
    a = build_prompts(clip, tokenizer, shared=False)
    b = build_prompts(clip, tokenizer, shared=False)
    with torch.no_grad():
        b.learner("visible").context.add_(1.0)  # make b differ before loading a's state
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.all_text_features(encoder, "visible"), a.all_text_features(encoder, "visible"))


def test_modality_prompts_rejects_bad_input(clip, tokenizer):
    prompts = build_prompts(clip, tokenizer, shared=False)
    with pytest.raises(ValueError, match="modality"):
        prompts.learner("thermal")
    learner = make_learner(clip, tokenizer)
    with pytest.raises(ValueError, match="keyed"):
        ModalityPrompts({"visible": learner})
    with pytest.raises(ValueError, match="same identities"):
        ModalityPrompts({"visible": learner, "infrared": make_learner(clip, tokenizer, num_ids=9)})
