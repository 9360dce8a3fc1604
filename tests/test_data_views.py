"""Tables and figures of notebook 01: camera and pixel statistics, attribute bars, left-aligned text tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from csdn.analysis.data_views import left_aligned, plot_attribute_distributions  # noqa: E402
from csdn.data.records import INFRARED, VISIBLE, Record  # noqa: E402
from csdn.data.stats import camera_table, pixel_statistics  # noqa: E402
from csdn.style import MODALITY_COLOURS, NEUTRAL_COLOUR  # noqa: E402


def records(per_id: dict[int, int]) -> list[Record]:
    """``per_id[cam]`` images of each of two identities per camera (cameras 1, 2 visible, 3 infrared)."""
    return [
        Record(f"/x/{cam}/{pid}/{k}.jpg", pid, cam, VISIBLE if cam < 3 else INFRARED)
        for cam, n in per_id.items()
        for pid in (1, 2)
        for k in range(n)
    ]


def test_camera_table_images_per_identity_is_an_integer_when_whole():
    table = camera_table(records({1: 4, 2: 2, 3: 4}))
    assert table["images_per_id"].tolist() == [4, 2, 4] and table["images_per_id"].dtype.kind == "i"
    uneven = records({1: 3, 3: 2})[:-1]  # identity 2 has one infrared image: 1.5 per identity
    assert camera_table(uneven)["images_per_id"].tolist() == [3, 1.5]


def test_pixel_statistics_are_floats_to_one_decimal():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 8, 4, 3), dtype=np.uint8)
    images[2:] = images[2:, ..., :1]  # the infrared ones grey
    table = pixel_statistics(images, [VISIBLE, VISIBLE, INFRARED, INFRARED])
    numbers = table.drop(columns=["modality", "images"])
    assert all(dtype == np.float64 for dtype in numbers.dtypes)
    assert (numbers == numbers.round(1)).all().all()
    assert table.set_index("modality").loc[INFRARED, "colourfulness"] == 0.0
    assert "139.600006" not in table.to_string()


def test_attribute_bars_are_neutral_horizontal_and_readable():
    attributes = pd.DataFrame(
        {"pid": range(6), "bag": ["none"] * 3 + ["backpack"] * 2 + ["handbag"], "hat": ["none"] * 5 + ["cap"]}
    )
    fig = plot_attribute_distributions(attributes)
    bag = fig.axes[0]
    assert [t.get_text() for t in bag.get_yticklabels()] == ["none", "backpack", "handbag"]  # most frequent first
    assert all(t.get_rotation() == 0 and t.get_fontsize() >= 10 for t in bag.get_yticklabels())
    colours = {to_hex(patch.get_facecolor()) for ax in fig.axes for patch in ax.patches}
    assert colours == {NEUTRAL_COLOUR.lower()}
    assert not colours & {c.lower() for c in MODALITY_COLOURS.values()}
    assert [p.get_width() for p in bag.patches] == [3, 2, 1]


def test_left_aligned_table_hides_the_index_and_aligns_every_cell_left():
    html = left_aligned(pd.DataFrame({"caption": ["a person in a red top."], "pid": [3]})).to_html()
    assert "text-align: left" in html and "a person in a red top." in html
    assert "white-space: normal" in html


def test_camera_table_of_nothing():
    assert list(camera_table([]).columns) == ["cam", "modality", "ids", "images", "images_per_id"]
