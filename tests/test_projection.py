"""t-SNE / UMAP projections with shared settings, the side-by-side figure and the ablation bar chart."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from csdn.analysis.projection import (
    IDENTITY_MARKERS,
    ProjectionConfig,
    marked_identities,
    plot_ablation,
    plot_gap,
    plot_projections,
    project,
    project_models,
)
from csdn.data.records import INFRARED, VISIBLE, Record


def two_clusters(n: int = 30, dim: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.1, size=(2 * n, dim))
    x[:n, 0] += 1.0
    x[n:, 1] += 1.0
    return x


def separation(xy: np.ndarray, n: int) -> float:
    """Distance between the two halves' centres over the mean distance of a point to its half's centre."""
    a, b = xy[:n], xy[n:]
    within = np.mean([np.linalg.norm(a - a.mean(0), axis=1).mean(), np.linalg.norm(b - b.mean(0), axis=1).mean()])
    return float(np.linalg.norm(a.mean(0) - b.mean(0)) / within)


def test_tsne_keeps_clusters_apart_and_is_deterministic():
    x = two_clusters()
    cfg = ProjectionConfig(pca_dims=4, seed=3)
    xy = project(torch.tensor(x), "t-SNE", cfg)
    assert xy.shape == (60, 2)
    assert separation(xy, 30) > 3
    np.testing.assert_allclose(project(x, "t-SNE", cfg), xy)


@pytest.mark.slow  # numba compiles UMAP on first use (about 20-30 s on 2 cores)
def test_umap_keeps_clusters_apart():
    xy = project(two_clusters(), "UMAP", ProjectionConfig(n_neighbors=10, seed=0))
    assert xy.shape == (60, 2)
    assert separation(xy, 30) > 3


def test_small_sets_cap_perplexity_and_bad_input_is_refused():
    assert project(two_clusters(n=4), "t-SNE").shape == (8, 2)  # perplexity 30 capped at 7/3
    with pytest.raises(ValueError, match="N >= 4"):
        project(np.zeros((3, 5)), "t-SNE")
    with pytest.raises(ValueError, match="method must be"):
        project(two_clusters(), "PCA")
    with pytest.raises(ValueError, match="methods must be"):
        ProjectionConfig(methods=("t-SNE", "Isomap"))
    with pytest.raises(ValueError, match="marked_ids"):
        ProjectionConfig(marked_ids=len(IDENTITY_MARKERS) + 1)


def test_project_models_uses_the_same_settings_for_every_model():
    x = two_clusters()
    cfg = ProjectionConfig(methods=("t-SNE",), seed=1)
    coords = project_models({"a": x, "b": x.copy()}, cfg)
    assert list(coords) == ["t-SNE"] and list(coords["t-SNE"]) == ["a", "b"]
    np.testing.assert_allclose(coords["t-SNE"]["a"], coords["t-SNE"]["b"])
    with pytest.raises(ValueError, match="same records"):
        project_models({"a": x, "b": x[:10]}, cfg)


def test_marked_identities_are_a_seeded_subset():
    pids = [5, 1, 9, 9, 3, 7, 1]
    chosen = marked_identities(pids, 3, seed=0)
    assert chosen == sorted(chosen) and len(chosen) == 3 and set(chosen) <= {1, 3, 5, 7, 9}
    assert marked_identities(pids, 3, seed=0) == chosen
    assert marked_identities(pids, 10) == [1, 3, 5, 7, 9]


def test_projection_figure_grid_and_identity_legend():
    records = [Record(f"/x/{k}.jpg", k % 5, 1 if k < 10 else 3, VISIBLE if k < 10 else INFRARED) for k in range(20)]
    rng = np.random.default_rng(0)
    coords = {m: {"zero-shot": rng.normal(size=(20, 2)), "CSDN": rng.normal(size=(20, 2))} for m in ("t-SNE", "UMAP")}
    cfg = ProjectionConfig(marked_ids=3)
    fig = plot_projections(coords, records, cfg, title="test")
    axes = fig.axes
    assert len(axes) == 4
    assert [ax.get_title() for ax in axes[:2]] == ["zero-shot", "CSDN"]
    assert [axes[0].get_ylabel(), axes[2].get_ylabel()] == ["t-SNE", "UMAP"]
    legend = axes[1].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert {VISIBLE, INFRARED} <= set(labels)
    assert {f"id {p}" for p in marked_identities([r.pid for r in records], 3)} <= set(labels)
    plt.close(fig)
    coords["UMAP"]["CSDN"] = coords["UMAP"]["CSDN"][:5]
    with pytest.raises(ValueError, match="5 points for 20 records"):
        plot_projections(coords, records, cfg)
    plt.close("all")


def ablation_runs() -> pd.DataFrame:
    rows = []
    for variant, values in (("zero-shot CLIP", [10.0]), ("vision-only", [20.0, 30.0]), ("CSDN", [40.0, 44.0])):
        for seed, v in enumerate(values):
            for protocol in ("all 1-shot", "indoor 1-shot"):
                rows.append(
                    {"variant": variant, "seed": seed, "protocol": protocol, "R1": v, "mAP": v / 2, "mINP": v / 4}
                )
    return pd.DataFrame(rows)


def test_ablation_bars_show_means_and_seed_sd():
    fig = plot_ablation(ablation_runs(), metrics=("R1", "mAP"), protocol="indoor 1-shot")
    r1_axis = fig.axes[0]
    widths = sorted(round(p.get_width(), 6) for p in r1_axis.patches)
    assert widths == [10.0, 25.0, 42.0]  # bar = mean over seeds
    drawn = [np.asarray(line.get_xdata(), dtype=float) for line in r1_axis.lines]
    spans = sorted(float(np.nanmax(x) - np.nanmin(x)) for x in drawn if not np.isnan(x).all())
    # error bar = mean +- sample sd (vision-only 7.071, CSDN 2.828); the single zero-shot run has none
    assert spans == pytest.approx([2 * np.std([40, 44], ddof=1), 2 * np.std([20, 30], ddof=1)], abs=1e-3)
    assert "indoor 1-shot" in fig.get_suptitle()
    assert "mean ± sd over 2 seeds" in fig.get_suptitle()
    plt.close(fig)


def test_ablation_bars_of_one_seed_say_there_is_no_spread():
    runs = ablation_runs()
    fig = plot_ablation(runs[runs["seed"] == runs["seed"].min()], title="quick grid")
    assert fig.get_suptitle() == "quick grid (one seed: no spread)"
    plt.close(fig)


def test_ablation_bars_of_gap_columns_name_what_they_measure():
    runs = ablation_runs().drop(columns="protocol").drop_duplicates(["variant", "seed"])
    runs = runs.assign(margin=0.1, nn_cross=0.3)
    fig = plot_ablation(runs, metrics=("margin", "nn_cross", "R1"))
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["identity-modality margin", "other-modality NN: same identity (fraction)", "R1 (%)"]
    plt.close(fig)


def test_ablation_bars_refuse_bad_tables():
    with pytest.raises(ValueError, match="lacks columns"):
        plot_ablation(ablation_runs().drop(columns="mINP"))
    with pytest.raises(ValueError, match="not in the table"):
        plot_ablation(ablation_runs(), protocol="multi-shot")


def test_gap_figure_panels():
    table = pd.DataFrame(
        {
            "id-modality margin": [-0.2, 0.1],
            "other-modality NN (%)": [0.0, 30.0],
            "other-modality NN ideal (%)": [50.0, 50.0],
            "modality clf acc (%)": [100.0, 60.0],
            "NN intra (%)": [40.0, 80.0],
            "NN cross (%)": [10.0, 70.0],
        },
        index=pd.Index(["zero-shot CLIP", "CSDN"], name="model"),
    )
    fig = plot_gap(table)
    margin, other, nn, classifier = fig.axes[:4]
    assert sorted(round(p.get_height(), 6) for p in margin.patches) == [-0.2, 0.1]
    assert sorted(p.get_height() for p in other.patches) == [0.0, 30.0]
    assert list(other.collections[-1].get_offsets()[:, 1]) == [50.0, 50.0]  # the ideal ticks
    assert 50 in [line.get_ydata()[0] for line in classifier.lines]  # the chance line
    heights = sorted(round(p.get_height(), 6) for p in nn.patches if p.get_height() > 0)
    assert heights == [10.0, 40.0, 70.0, 80.0]
    plt.close(fig)
    with pytest.raises(ValueError, match="lacks columns"):
        plot_gap(table.drop(columns="NN cross (%)"))
