"""Stage-notebook views: training curves, nearest words of prompt tokens, similarities, fusion, rank lists."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np
import open_clip
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import nn

from csdn.analysis.diagnostics import diagnostics_table, plot_diagnostics
from csdn.analysis.histories import history_frame, history_table, loss_table, plot_history, plot_loss_curves
from csdn.analysis.retrieval import pick_queries, plot_query_rank_list, results_table, top_matches
from csdn.analysis.text_views import (
    context_words_frame,
    fusion_shift_table,
    i2t_accuracy,
    modality_similarities,
    nearest_words,
    own_and_other,
    plot_similarity_heatmaps,
    retrieval_table,
    similarity_by_identity,
    similarity_table,
    word_token_ids,
)
from csdn.config import DataConfig
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.registry import DATASETS
from csdn.eval.metrics import Metrics
from csdn.eval.plots import CORRECT_COLOUR, WRONG_COLOUR
from csdn.eval.protocols import ProtocolResult
from csdn.model.prompts import ModalityPrompts
from csdn.sources import dataset_label
from csdn.style import MODALITY_COLOURS
from csdn.train.text_stages import CachedFeatures

VOCAB, WIDTH = 49408, 16


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.SimpleTokenizer()


def token_id(tokenizer, word: str) -> int:
    ids = tokenizer([word])[0]
    return int(ids[1])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture()
def embedding():
    return torch.randn(VOCAB, WIDTH, generator=torch.Generator().manual_seed(0))


# -- training curves ---------------------------------------------------------------------------------

STAGE3 = [
    {"epoch": 1, "loss": 6.0, "id_loss": 4.0, "hse_loss": 0.5, "lr": 1e-4},
    {
        "epoch": 2,
        "loss": 5.0,
        "id_loss": 3.5,
        "hse_loss": 0.4,
        "lr": 1e-4,
        "val_mAP": 0.4,
        "val_rank1": 0.3,
        "val_score": 0.4,
    },
]


def test_history_frame_is_indexed_by_epoch():
    frame = history_frame(STAGE3)
    assert list(frame.index) == [1, 2]
    assert math.isnan(frame.loc[1, "val_mAP"]) and frame.loc[2, "val_mAP"] == 0.4
    with pytest.raises(ValueError, match="empty"):
        history_frame([])


def test_history_frame_reads_columns_in_reading_order_whatever_the_cached_order():
    cached = [
        dict(sorted({**row, "i2t_top1_visible": 0.5, "i2t_top1_infrared": 0.1, "seconds": 1.0}.items()))
        for row in STAGE3
    ]  # a history read back from JSON comes sorted by name
    assert list(history_frame(cached).columns) == [
        "loss",
        "id_loss",
        "hse_loss",
        "i2t_top1_visible",
        "i2t_top1_infrared",
        "val_rank1",
        "val_mAP",
        "val_score",
        "lr",
        "seconds",
    ]
    assert list(history_table(cached).columns)[:3] == ["loss", "id_loss", "hse_loss"]


def test_loss_table_one_formatted_column_per_trained_history():
    table = loss_table({"official": STAGE3, "none": [], "mean": STAGE3[:1]})
    assert list(table.columns) == ["official", "mean"] and list(table.index) == [1, 2]
    assert table.loc[1, "official"] == "6" and table.loc[2, "mean"] == ""


def test_plot_history_draws_losses_and_validation_panels():
    fig = plot_history(STAGE3, title="stage 3")
    loss_ax, val_ax, lr_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["loss", "id_loss", "hse_loss"]  # reading order
    assert loss_ax.get_yscale() == "log"  # the terms span 0.4 .. 6: a factor above 10
    assert [line.get_label() for line in val_ax.lines] == ["rank1", "mAP"]  # the selection score is left out
    np.testing.assert_allclose(val_ax.lines[1].get_ydata(), [40.0])  # percent, only the validated epoch
    assert list(val_ax.get_xticks()) == [2]  # ticks at the validated epochs only
    assert list(lr_ax.lines[0].get_ydata()) == [1e-4, 1e-4]
    assert len(plot_history([{"epoch": 1, "loss": 1.0}]).axes) == 1
    with pytest.raises(ValueError, match="no loss"):
        plot_history([{"epoch": 1, "lr": 0.1}])


def test_history_table_formats_each_kind_of_value():
    table = history_table(STAGE3)
    assert table.loc[2, "lr"] == "1.00e-04" and table.loc[2, "val_mAP"] == "40.0%" and table.loc[1, "val_mAP"] == ""
    assert table.loc[1, "id_loss"] == "4"


def test_plot_history_has_whole_epoch_ticks_also_for_a_pretraining_history():
    pretraining = [
        {"epoch": 1, "loss": 3.7, "logit_scale": 14.2, "lr": 2e-3, "seconds": 0.2},
        {"epoch": 2, "loss": 3.6, "logit_scale": 14.1, "lr": 0.0, "seconds": 0.1},
    ]
    for history in (pretraining, pretraining[:1], [{"epoch": e, "loss": 1 / e} for e in range(1, 31)]):
        ax = plot_history(history, title="tiny CLIP").axes[0]
        ax.figure.canvas.draw()
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert [line.get_label() for line in ax.lines] == ["loss"]


def test_plot_loss_curves_one_line_per_trained_history():
    fig = plot_loss_curves({"official": STAGE3, "none": [], "mean": STAGE3[:1]})
    assert [line.get_label() for line in fig.axes[0].lines] == ["official", "mean"]
    with pytest.raises(ValueError, match="non-empty"):
        plot_loss_curves({"none": []})
    with pytest.raises(ValueError, match="no 'acc' column"):
        plot_loss_curves({"official": STAGE3}, key="acc")


# -- training diagnostics ----------------------------------------------------------------------------


def stage3_epoch(epoch: int, text: bool = True, validated: bool = False) -> dict[str, float]:
    """One epoch of a stage-3 history as reid_stage records it (values made up, scales realistic)."""
    row = {
        "epoch": epoch,
        "loss": 30.0 / epoch,
        "lr": 3e-4,
        "seconds": 1.0,
        "id_loss": 8.0 / epoch,
        "triplet_loss": 1.5 / epoch,
        "msel_loss": 20.0 / epoch,
        "acc_gem": 0.1 * epoch,
        "acc_proj": 0.08 * epoch,
        "norm_gem_visible": 13.0,
        "norm_gem_infrared": 12.0,
        "norm_proj_visible": 0.9,
        "norm_proj_infrared": 0.8,
        "msel_gem": 200.0 / epoch,
        "msel_proj": 2.0 / epoch,
    }
    if text:
        row.update(
            {
                "hse_loss": 0.3 / epoch,
                "hse_ce_visible": 4.0 / epoch,
                "hse_ce_infrared": 4.2 / epoch,
                "i2t_top1_visible": 0.1 * epoch,
                "i2t_top1_infrared": 0.09 * epoch,
            }
        )
    if validated:
        row.update({"val_rank1": 0.05 * epoch, "val_mAP": 0.06 * epoch, "val_score": 0.06 * epoch})
    return row


CSDN_HISTORY = [stage3_epoch(e, validated=e % 3 == 0) for e in range(1, 8)]  # validated at epochs 3 and 6
VISION_HISTORY = [stage3_epoch(e, text=False) for e in range(1, 8)]
TEXT_HISTORY = [
    {
        "epoch": e,
        "loss": 9.0 - e,
        "lr": 3e-4,
        "seconds": 0.1,
        "i2t_top1_visible": 0.1 * e,
        "i2t_top1_infrared": 0.08 * e,
        "text_norm_visible": 16.0,
        "text_norm_infrared": 15.0,
    }
    for e in range(1, 6)
]


def panels(fig) -> dict[str, plt.Axes]:
    return {ax.get_title(): ax for ax in fig.axes}


def panel(fig, word: str) -> plt.Axes:
    found = [ax for title, ax in panels(fig).items() if word in title]
    assert len(found) == 1, (word, list(panels(fig)))
    return found[0]


def has_panel(fig, word: str) -> bool:
    return any(word in title for title in panels(fig))


def curve(ax, label: str):
    return next(line for line in ax.lines if line.get_label() == label)


def test_plot_diagnostics_stage3_has_one_panel_per_kind_of_quantity():
    fig = plot_diagnostics(CSDN_HISTORY, title="stage 3")
    for word in ("loss", "ID accuracy", "HSE", "top-1", "norm, GeM", "norm, projected", "MSEL", "validation"):
        assert has_panel(fig, word), word
    assert len(fig.axes) == 8
    assert fig.get_suptitle() == "stage 3"
    np.testing.assert_allclose(
        curve(panel(fig, "ID accuracy"), "GeM head").get_ydata(), [10 * e for e in range(1, 8)]
    )  # percent
    # GeM and projected norms differ by an order of magnitude: never on one axis
    assert {line.get_label() for line in panel(fig, "norm, GeM").lines} == {"visible images", "infrared images"}
    assert {line.get_label() for line in panel(fig, "norm, projected").lines} == {"visible images", "infrared images"}


def test_plot_diagnostics_leaves_out_the_loss_and_validation_on_request_and_rows_of_three_at_most():
    fig = plot_diagnostics(CSDN_HISTORY, title="stage 3", loss=False, validation=False)
    assert len(fig.axes) == 6 and not has_panel(fig, "loss") and not has_panel(fig, "validation")
    rows = {round(ax.get_position().y0, 2) for ax in fig.axes}
    assert len(rows) == 2  # six panels: two rows of three
    assert fig.axes[0].title.get_fontsize() >= 12  # readable once scaled to a page's width
    assert len(plot_diagnostics(TEXT_HISTORY, loss=False).axes) == 2


def test_plot_diagnostics_leaves_out_panels_of_missing_keys():
    vision = plot_diagnostics(VISION_HISTORY)
    assert not has_panel(vision, "HSE") and not has_panel(vision, "top-1") and not has_panel(vision, "validation")
    assert has_panel(vision, "ID accuracy") and has_panel(vision, "MSEL")
    text = plot_diagnostics(TEXT_HISTORY, title="stage 1")
    assert len(text.axes) == 3
    assert has_panel(text, "loss") and has_panel(text, "top-1") and has_panel(text, "text feature norm")
    assert not has_panel(text, "ID accuracy") and not has_panel(text, "MSEL")
    with pytest.raises(ValueError, match="no loss or diagnostic"):
        plot_diagnostics([{"epoch": 1, "lr": 0.1, "seconds": 2.0}])


def test_plot_diagnostics_colours_modalities_with_the_library_palette():
    fig = plot_diagnostics(CSDN_HISTORY)
    for word in ("HSE", "top-1", "norm, GeM", "norm, projected"):
        ax = panel(fig, word)
        for modality in (VISIBLE, INFRARED):
            assert to_rgba(curve(ax, f"{modality} images").get_color()) == to_rgba(MODALITY_COLOURS[modality])
    text = plot_diagnostics(TEXT_HISTORY)
    line = curve(panel(text, "text feature norm"), "texts for infrared images")
    assert to_rgba(line.get_color()) == to_rgba(MODALITY_COLOURS[INFRARED])


def test_plot_diagnostics_draws_chance_lines_only_when_num_ids_given():
    without = plot_diagnostics(CSDN_HISTORY)
    assert not any("chance" in line.get_label() for ax in without.axes for line in ax.lines)
    fig = plot_diagnostics(CSDN_HISTORY, num_ids=50)

    def chance(word):
        lines = [line for line in panel(fig, word).lines if "chance" in line.get_label()]
        assert len(lines) == 1, word
        return np.unique(lines[0].get_ydata())

    np.testing.assert_allclose(chance("HSE"), [math.log(50)])
    np.testing.assert_allclose(chance("ID accuracy"), [2.0])  # 1/50 in percent
    np.testing.assert_allclose(chance("top-1"), [2.0])
    assert panel(fig, "HSE").get_ylim()[1] > math.log(50)  # the chance line is in view
    with pytest.raises(ValueError, match="num_ids"):
        plot_diagnostics(CSDN_HISTORY, num_ids=1)


def test_plot_diagnostics_marks_validation_only_at_validated_epochs():
    ax = panel(plot_diagnostics(CSDN_HISTORY), "validation")
    assert {line.get_label() for line in ax.lines} == {"rank-1", "mAP"}  # the selection score is left out
    for line in ax.lines:
        assert list(line.get_xdata()) == [3, 6]
        assert line.get_marker() not in (None, "", "None")
    np.testing.assert_allclose(curve(ax, "mAP").get_ydata(), [18.0, 36.0])


def test_plot_diagnostics_epoch_axes_have_integer_ticks():
    for fig in (plot_diagnostics(CSDN_HISTORY), plot_diagnostics(TEXT_HISTORY[:2])):
        fig.canvas.draw()
        for ax in fig.axes:
            assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
            low, high = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
            assert ax.get_xlabel() == "epoch" and ax.get_ylabel()


def test_plot_diagnostics_puts_losses_of_different_scales_on_a_log_axis():
    fig = plot_diagnostics(CSDN_HISTORY)
    assert panel(fig, "loss").get_yscale() == "log"  # 0.3 (hse) to 30 (total)
    assert panel(fig, "MSEL").get_yscale() == "log"  # 200 (GeM) vs 2 (projected)
    assert panel(plot_diagnostics(TEXT_HISTORY), "loss").get_yscale() == "linear"  # one curve


def test_diagnostics_table_reads_the_last_epoch():
    table = diagnostics_table(CSDN_HISTORY, num_ids=50)
    assert table.loc["acc_gem", "value"] == "70.0%" and table.loc["acc_gem", "epoch"] == 7
    assert table.loc["acc_gem", "chance"] == "2.0%"
    assert table.loc["hse_ce_visible", "chance"] == f"{math.log(50):.4g}"
    assert table.loc["norm_proj_visible", "value"] == "0.9"
    assert table.loc["val_mAP", "value"] == "36.0%" and table.loc["val_mAP", "epoch"] == 6  # last validated
    assert "seconds" not in table.index and "epoch" not in table.index
    assert "hse_ce_visible" not in diagnostics_table(VISION_HISTORY).index
    assert "chance" not in diagnostics_table(TEXT_HISTORY).columns


def test_dataset_label_names_synthvi_by_the_protocol_it_follows():
    assert dataset_label(DataConfig()) == "SynthVI (SYSU-MM01 protocol)"
    assert dataset_label(DataConfig(synth_layout="llcm")) == "SynthVI (LLCM protocol)"
    assert dataset_label(DataConfig(dataset="regdb", root="/data/regdb")) == "RegDB"


def test_results_table_indexes_models_by_data_and_protocol():
    cmc = np.full(20, 1.0)
    cmc[0] = 0.5
    result = ProtocolResult("test", (0,), (Metrics(cmc, 0.4, 0.2, 4, 4),))
    table = results_table({"CSDN": {"all 1-shot": result}, "vision-only": {"all 1-shot": result}}, DataConfig())
    assert list(table.index) == [
        ("SynthVI (SYSU-MM01 protocol)", "CSDN", "all 1-shot"),
        ("SynthVI (SYSU-MM01 protocol)", "vision-only", "all 1-shot"),
    ]
    assert table.loc[("SynthVI (SYSU-MM01 protocol)", "CSDN", "all 1-shot"), "R1"] == 50.0


# -- nearest words -----------------------------------------------------------------------------------


def test_word_token_ids_keeps_single_token_words(tokenizer):
    ids = word_token_ids(tokenizer, ["Red", "red", "backpack,", "qzxwvjk"])
    assert ids.tolist() == sorted({token_id(tokenizer, "red"), token_id(tokenizer, "backpack")})
    with pytest.raises(ValueError, match="single token"):
        word_token_ids(tokenizer, ["qzxwvjk"])


def test_nearest_words_finds_planted_embeddings(tokenizer, embedding):
    red, backpack = token_id(tokenizer, "red"), token_id(tokenizer, "backpack")
    context = torch.stack([3.0 * embedding[red], embedding[backpack] + 0.01 * torch.randn(WIDTH)])
    words = nearest_words(context, embedding, tokenizer, k=2)
    assert [row[0][0] for row in words] == ["red", "backpack"]
    assert words[0][0][1] == pytest.approx(1.0, abs=1e-5)  # cosine ignores the scale
    assert words[0][0][1] >= words[0][1][1]  # best first


def test_nearest_words_restricted_to_candidates(tokenizer, embedding):
    red, hat, shirt = (token_id(tokenizer, w) for w in ("red", "hat", "shirt"))
    embedding[hat] = -embedding[red]  # the farthest candidate
    candidates = torch.tensor([hat, shirt])
    words = nearest_words(embedding[red][None], embedding, tokenizer, k=2, candidates=candidates)
    assert {w for w, _ in words[0]} == {"hat", "shirt"}
    assert words[0][1] == ("hat", pytest.approx(-1.0, abs=1e-5))
    with pytest.raises(ValueError, match="k must be"):
        nearest_words(embedding[red][None], embedding, tokenizer, k=3, candidates=candidates)
    with pytest.raises(ValueError, match="share the width"):
        nearest_words(torch.zeros(2, WIDTH + 1), embedding, tokenizer)


def test_context_words_frame_reads_each_learner(tokenizer, embedding):
    prompts = ModalityPrompts.build(
        3,
        shared=False,
        wording="paper",
        token_embedding=nn.Embedding.from_pretrained(embedding),
        tokenizer=tokenizer,
        context_length=32,
        n_ctx=2,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        prompts.learners[INFRARED].context[1, 1] = embedding[token_id(tokenizer, "backpack")]
    frame = context_words_frame(prompts, embedding, tokenizer, labels=[0, 1], pids=[10, 11], k=1)
    assert len(frame) == 2 * 2 * 2  # identities x learners x tokens
    row = frame[(frame.pid == 11) & (frame.prompt == INFRARED) & (frame.token == 2)]
    assert row["nearest words"].item() == "backpack (1.00)"
    with pytest.raises(ValueError, match="align"):
        context_words_frame(prompts, embedding, tokenizer, labels=[0, 1], pids=[10])


# -- similarities ------------------------------------------------------------------------------------

TEXTS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
IMAGES = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
LABELS = torch.tensor([0, 1, 1])
HALF = 1 / math.sqrt(2)


def test_similarity_by_identity_averages_cosines_per_image_identity():
    matrix = similarity_by_identity(TEXTS, IMAGES, LABELS)
    expected = torch.tensor([[1.0, HALF / 2], [0.0, (1 + HALF) / 2]])
    torch.testing.assert_close(matrix, expected)
    three = similarity_by_identity(torch.cat([TEXTS, TEXTS[:1]]), IMAGES, LABELS)
    assert torch.isnan(three[:, 2]).all()  # identity 2 has no images
    with pytest.raises(ValueError, match="one per image"):
        similarity_by_identity(TEXTS, IMAGES, LABELS[:2])
    with pytest.raises(ValueError, match="must lie in"):
        similarity_by_identity(TEXTS, IMAGES, torch.tensor([0, 1, 2]))


def test_own_and_other_ignore_missing_identities():
    own, other = own_and_other(
        torch.tensor([[1.0, 0.5, float("nan")], [0.0, 0.5, float("nan")], [0.2, 0.2, float("nan")]])
    )
    assert own == pytest.approx(0.75) and other == pytest.approx((0.5 + 0.0 + 0.2 + 0.2) / 4)
    with pytest.raises(ValueError, match="square"):
        own_and_other(torch.zeros(2, 3))


def features() -> CachedFeatures:
    return CachedFeatures(IMAGES, LABELS, torch.tensor([[0.0, 1.0], [1.0, 0.2]]), torch.tensor([0, 1]))


def test_similarity_table_has_one_row_per_text_and_image_modality():
    matrices = modality_similarities({"visible prompts": TEXTS, "infrared prompts": TEXTS.flip(1)}, features())
    assert set(matrices) == {(t, m) for t in ("visible prompts", "infrared prompts") for m in (VISIBLE, INFRARED)}
    table = similarity_table(matrices).set_index(["text", "images"])
    row = table.loc[("visible prompts", VISIBLE)]
    assert row["own identity"] == pytest.approx((1 + (1 + HALF) / 2) / 2, abs=1e-4)
    assert row["margin"] == pytest.approx(row["own identity"] - row["other identities"], abs=1e-4)
    assert table.loc[("infrared prompts", INFRARED), "margin"] > 0  # flipped texts match the infrared images


def test_heatmaps_share_one_colour_scale_symmetric_about_zero():
    matrices = {"a": torch.rand(5, 5), "b": 3 * torch.rand(5, 5), "c": 0.1 * torch.rand(5, 5)}
    fig = plot_similarity_heatmaps(matrices)
    limits = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert len(limits) == 1
    low, high = limits.pop()
    assert low == -high and high > 0
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    raw = plot_similarity_heatmaps(matrices, centre=False)
    assert len({ax.images[0].get_clim() for ax in raw.axes if ax.images}) == 1


def test_heatmaps_one_panel_per_matrix_clipped_to_max_ids():
    fig = plot_similarity_heatmaps({name: torch.rand(5, 5) for name in "abc"}, max_ids=3)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["a", "b", "c"]
    assert [ax.axison for ax in fig.axes if not ax.images and not ax.get_label() == "<colorbar>"] == [False]
    assert panels[0].images[0].get_array().shape == (3, 3)


# -- fusion and retrieval ----------------------------------------------------------------------------


def test_fusion_shift_table_measures_cosine_to_each_prompt():
    t_vis, t_ir = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mean = (t_vis + t_ir) / 2
    table = fusion_shift_table(
        {"mean": {VISIBLE: mean, INFRARED: mean}, "none": {VISIBLE: t_vis, INFRARED: t_ir}}, t_vis, t_ir
    )
    assert table.iloc[0]["cos to visible prompts"] == 0.0  # the reference: orthogonal prompts
    rows = table.set_index(["variant", "prototype for"])
    assert len(table) == 1 + 1 + 2  # a fusion serves both modalities with one text: one row, not two equal ones
    assert rows.loc[("mean", "both modalities"), "cos to visible prompts"] == pytest.approx(HALF, abs=1e-4)
    assert rows.loc[("mean", "both modalities"), "cos to infrared prompts"] == pytest.approx(HALF, abs=1e-4)
    assert rows.loc[("none", INFRARED), "cos to infrared prompts"] == 1.0
    assert rows.loc[("none", INFRARED), "cos to visible prompts"] == 0.0


def test_i2t_accuracy_counts_images_whose_best_text_is_their_own():
    images = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.0]])
    assert i2t_accuracy(images, torch.tensor([0, 1, 1]), TEXTS) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        i2t_accuracy(images, torch.tensor([0, 1]), TEXTS)


def test_retrieval_table_per_source_and_modality():
    table = retrieval_table({"shared": TEXTS, "own": {VISIBLE: TEXTS, INFRARED: TEXTS.flip(0)}}, features())
    # visible images: [2,0]->0 ok, [0,1]->1 ok, [1,1]: tie -> argmax picks 0, wrong: 2/3
    assert table.loc["shared", "visible images"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert table.loc["shared", "infrared images"] == 0.0  # [0,1] labelled 0, [1,0.2] labelled 1: both wrong
    assert table.loc["own", "infrared images"] == 100.0  # flipped texts fix both


# -- rank lists --------------------------------------------------------------------------------------


def rec(pid: int, cam: int, modality: str = VISIBLE, path: str = "x.jpg") -> Record:
    return Record(path, pid, cam, modality)


def test_gallery_rules_keep_what_each_protocol_ranks():
    gallery = [rec(1, 1), rec(1, 2), rec(2, 2), rec(1, 3)]
    sysu, llcm, regdb = (DATASETS[name].rules for name in ("sysu", "llcm", "regdb"))
    assert sysu.kept(rec(1, 3, INFRARED), gallery).tolist() == [True, False, False, True]
    assert sysu.kept(rec(1, 6, INFRARED), gallery).all()
    assert llcm.kept(rec(1, 2, INFRARED), gallery).tolist() == [True, False, True, True]
    assert regdb.kept(rec(1, 3, INFRARED), gallery).all()


def test_top_matches_ranks_allowed_entries_by_dot_product():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    allowed = torch.tensor([False, True, True, True])
    indices, scores = top_matches(torch.tensor([1.0, 0.0]), gallery, allowed, k=10)
    assert indices.tolist() == [1, 3, 2]  # the best entry is masked out; k is clipped to what is allowed
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.5, 0.0]))
    with pytest.raises(ValueError, match="no gallery entry"):
        top_matches(torch.tensor([1.0, 0.0]), gallery, torch.zeros(4, dtype=torch.bool), k=2)


def test_pick_queries_distinct_identities_reproducibly():
    query = [rec(pid, cam, INFRARED) for pid in (5, 6, 7) for cam in (3, 6)]
    chosen = pick_queries(query, 2, seed=1)
    assert chosen == pick_queries(query, 2, seed=1)
    assert len({query[i].pid for i in chosen}) == 2 and all(query[i].cam == 3 for i in chosen)
    assert sorted(pick_queries(query, 10)) == [0, 2, 4]


def test_plot_query_rank_list_frames_correct_matches(tmp_path):
    def image(name: str, value: int) -> str:
        path = tmp_path / name
        Image.fromarray(np.full((16, 8, 3), value, dtype=np.uint8)).save(path)
        return str(path)

    query = Record(image("q.png", 10), 1, 3, INFRARED)
    gallery = [
        Record(image(f"g{i}.png", 50 * i), pid, cam, VISIBLE) for i, (pid, cam) in enumerate([(1, 1), (2, 1), (1, 2)])
    ]
    feats = torch.tensor([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])  # the cam-2 match would rank first
    fig = plot_query_rank_list(query, torch.tensor([1.0, 0.0]), gallery, feats, DATASETS["sysu"].rules, (32, 16), k=5)
    assert len(fig.axes) == 3  # the query and the two allowed gallery images
    assert fig.axes[1].images[0].get_array().shape == (32, 16, 3)  # decoded at the asked size
    colours = [ax.spines["top"].get_edgecolor() for ax in fig.axes[1:]]
    assert colours == [to_rgba(WRONG_COLOUR), to_rgba(CORRECT_COLOUR)]
    assert fig.axes[1].get_title().endswith("pid 2 cam 1") and fig.axes[0].get_title() == "query\npid 1 cam 3"
    assert fig.get_suptitle().endswith("first true match at rank 2")
    # a true match below the top k is appended with its rank
    short = plot_query_rank_list(query, torch.tensor([1.0, 0.0]), gallery, feats, DATASETS["sysu"].rules, (32, 16), k=1)
    assert len(short.axes) == 3 and short.axes[2].get_title().startswith("2\n")
