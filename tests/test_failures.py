"""Rank-1 confusions and the attributes confused identities share, on hand-made splits."""

import pandas as pd
import pytest
import torch

from csdn.analysis.failures import attribute_confusions, rank1_confusions
from csdn.data.protocol import EvalSplit, GalleryRules
from csdn.data.records import INFRARED, VISIBLE, Record


def rec(pid, cam, modality, k=0):
    return Record(f"/synth/{modality}/{pid:04d}/{cam}_{k}.jpg", pid, cam, modality)


QUERY = (rec(1, 3, INFRARED), rec(2, 3, INFRARED), rec(3, 6, INFRARED))
GALLERY = [rec(1, 1, VISIBLE), rec(2, 1, VISIBLE), rec(3, 2, VISIBLE)]
SPLIT = EvalSplit("all", "hand", QUERY, lambda trial: GALLERY, (0,), GalleryRules(ignored_cameras=((3, 2),)))


def test_rank1_confusions_apply_the_rules():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    frame = rank1_confusions(q, g, SPLIT, 0)
    assert list(frame["first_pid"]) == [1, 1, 3] and list(frame["hit"]) == [True, False, True]
    # a camera-3 query never sees camera 2: pid 1's query would otherwise still rank pid 1 first
    q_cam2 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert rank1_confusions(q_cam2, g, SPLIT, 0)["first_pid"].tolist()[0] != 3
    with pytest.raises(ValueError, match="one feature per image"):
        rank1_confusions(q[:2], g, SPLIT, 0)


def test_attribute_confusions_by_hand():
    attributes = {
        1: {"bag": "none", "top_color": "red"},
        2: {"bag": "none", "top_color": "blue"},
        3: {"bag": "backpack", "top_color": "red"},
        4: {"bag": "backpack", "top_color": "blue"},
    }
    confusions = pd.DataFrame(
        {
            "synthvi_pid": [1, 2, 3, 4],
            "first_synthvi_pid": [2, 1, 3, 3],
            "hit": [False, False, True, False],
        }
    )
    table = attribute_confusions(confusions, attributes, ["bag", "top_color"])
    # failed pairs (1,2), (2,1), (4,3): bag same in 3 of 3, top colour in 0 of 3;
    # all 6 pairs of the 4 identities: bag same for (1,2), (3,4) -> 1/3; colour same for (1,3), (2,4) -> 1/3
    assert table.loc["bag", "confused"] == 1.0 and table.loc["bag", "base rate"] == pytest.approx(1 / 3)
    assert table.loc["bag", "lift"] == pytest.approx(3.0) and table.loc["top_color", "lift"] == 0.0
    assert bool(table.loc["top_color", "colour"]) and list(table.index) == ["bag", "top_color"]
    assert (table["failures"] == 3).all()
    with pytest.raises(ValueError, match="no query failed"):
        attribute_confusions(confusions.assign(hit=True), attributes, ["bag"])
