"""CMC and rank-list figures: axes, curves, labels and frame colours."""

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from csdn.eval.metrics import Metrics  # noqa: E402
from csdn.eval.plots import plot_cmc, plot_rank_list  # noqa: E402
from csdn.eval.protocols import ProtocolResult  # noqa: E402


def metrics(cmc, mAP=0.5):
    return Metrics(cmc=np.asarray(cmc, dtype=float), mAP=mAP, mINP=0.25, num_queries=4, num_valid_queries=4)


def test_cmc_one_curve_per_result():
    a = metrics([0.5, 0.75, 1.0])
    b = ProtocolResult("b", (0, 1), (metrics([0.0, 0.5, 1.0], 0.4), metrics([1.0, 1.0, 1.0], 0.6)))
    fig = plot_cmc({"baseline": a, "csdn": b})
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(lines[0].get_ydata(), [50, 75, 100])
    np.testing.assert_allclose(lines[1].get_ydata(), [50, 75, 100])  # mean over the two trials
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (R1 50.0%, mAP 50.0%)", "csdn (R1 50.0%, mAP 50.0%)"]
    assert ax.get_xlabel() == "Rank" and "%" in ax.get_ylabel()
    fig.savefig(io.BytesIO(), format="png")  # renders without error


def image(value, h=8, w=4):
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_rank_list_frames_and_titles():
    gallery = [image(v) for v in (10, 20, 30, 40)]
    fig = plot_rank_list(image(0), gallery, [True, False, True, False], [0.9, 0.8, 0.7, 0.6], k=3, title="query 7")
    axes = fig.axes
    assert len(axes) == 4  # query + top 3
    expected = ["black", "green", "red", "green"]
    for ax, colour in zip(axes, expected):
        assert all(s.get_edgecolor() == to_rgba(colour) for s in ax.spines.values())
        assert len(ax.get_images()) == 1 and not ax.get_xticks().size
    assert axes[0].get_title() == "query"
    assert axes[2].get_title() == "2\n0.800"
    assert axes[1].get_images()[0].get_array()[0, 0, 0] == 10
    assert fig.get_suptitle() == "query 7"
    fig.savefig(io.BytesIO(), format="png")


def test_rank_list_k_clipped_to_gallery():
    fig = plot_rank_list(image(0), [image(1), image(2)], [False, True], [0.2, 0.1], k=10)
    assert len(fig.axes) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(k=0), "k must be"),
        (dict(gallery_images=[]), "empty"),
        (dict(correct=[True]), "at least 2"),
        (dict(per_row=0), "per_row must be"),
        (dict(query_image=np.zeros((8, 4, 3))), "query_image must be an H x W x 3 uint8"),
        (dict(gallery_images=[image(1), np.zeros((8, 4), np.uint8)]), r"gallery_images\[1\]"),
    ],
)
def test_rank_list_bad_input(args, message):
    call = dict(
        query_image=image(0), gallery_images=[image(1), image(2)], correct=[True, False], scores=[0.5, 0.4], k=2
    )
    call.update(args)
    with pytest.raises(ValueError, match=message):
        plot_rank_list(**call)


def test_cmc_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        plot_cmc({})
    with pytest.raises(TypeError, match="ProtocolResult or Metrics"):
        plot_cmc({"x": [0.1, 0.2]})


def test_rank_list_wraps_rows_and_names_each_image():
    gallery = [image(v) for v in range(1, 8)]
    captions = [f"pid {v} cam 1" for v in range(1, 8)]
    ranks = [1, 2, 3, 4, 5, 6, 40]  # the last one appended from rank 40
    fig = plot_rank_list(
        image(0), gallery, [False] * 6 + [True], [0.1] * 7, k=7, captions=captions, ranks=ranks, per_row=3
    )
    assert len(fig.axes) == 8  # the query and 7 gallery images: 3 rows of 3, no empty cells left
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1] == "1\n0.100\npid 1 cam 1" and titles[-1] == "40\n0.100\npid 7 cam 1"
    positions = sorted({round(ax.get_position().y0, 3) for ax in fig.axes}, reverse=True)
    assert len(positions) == 3  # three rows
