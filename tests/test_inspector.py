"""The query/gallery inspector: rankings, first true match, worst queries, filters, figure and widget."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from PIL import Image

from csdn.analysis.inspector import (
    InspectorData,
    InspectorState,
    Split,
    first_match_frame,
    protocol_splits,
    render,
)
from csdn.analysis.widgets import Inspector, build_inspector
from csdn.data.llcm import LLCM
from csdn.data.records import INFRARED, VISIBLE, Record
from csdn.data.regdb import RegDB
from csdn.data.registry import DATASETS
from csdn.data.sysu import SYSUMM01
from csdn.eval.metrics import evaluate
from csdn.eval.plots import CORRECT_COLOUR, WRONG_COLOUR

RULES = {name: reader.rules for name, reader in DATASETS.items()}  # gallery rules by dataset name

SIZE = (16, 8)

# The golden world (sysu rules: a camera-3 query ignores camera-2 gallery images), 2-D features.
QUERY = [(1, 3, [1.0, 0.0]), (2, 6, [0.0, 1.0]), (3, 3, [0.6, 0.8])]  # (pid, cam, feature)
GALLERY = [(1, 1, [0.6, 0.8]), (2, 2, [1.0, 0.0]), (2, 4, [0.8, 0.6]), (3, 2, [0.0, 1.0]), (1, 5, [0.8, 0.6])]
# By hand, model "A" (the features above):
# q0 keeps g0, g2, g4 (cam 2 removed): scores .6, .8, .8 -> order g2, g4 (tie: gallery order), g0;
#    pids 2, 1, 1 -> first true match at rank 2 (score .8); 2 matches among 3.
# q1 keeps all: scores .8, 0, .6, 1, .6 -> order g3, g0, g2, g4, g1; pids 3, 1, 2, 1, 2 -> rank 3 (.6).
# q2 (pid 3, cam 3): its only pid-3 image is on camera 2 -> no true match.
# Model "B" moves q0 to [.6, .8]: scores g0 1.0, g2 .96, g4 .96 -> first true match at rank 1.


def _records(tmp_path, entries, modality, prefix):
    records = []
    for i, (pid, cam, _) in enumerate(entries):
        path = tmp_path / f"{prefix}{i}.png"
        colour = (40 * pid % 256, 30 * cam % 256, 60 * i % 256)
        Image.new("RGB", (SIZE[1], SIZE[0]), colour).save(path)
        records.append(Record(str(path), pid, cam, modality))
    return records


@pytest.fixture
def world(tmp_path):
    query = _records(tmp_path, QUERY, INFRARED, "q")
    gallery = _records(tmp_path, GALLERY, VISIBLE, "g")
    feats_a = torch.tensor([f for *_, f in QUERY] + [f for *_, f in GALLERY])
    feats_b = feats_a.clone()
    feats_b[0] = torch.tensor([0.6, 0.8])
    # A second split: RegDB rules (nothing removed) over the last two queries and the first three images.
    splits = {
        "sysu split": Split(RULES["sysu"], tuple(query), tuple(gallery)),
        "regdb split": Split(RULES["regdb"], tuple(query[1:]), tuple(gallery[:3])),
    }
    return InspectorData(splits, query + gallery, {"A": feats_a, "B": feats_b}), query, gallery


# -- logic --------------------------------------------------------------------------------------------


def test_view_golden_top_k_and_first_match(world):
    data, query, gallery = world
    view = data.view(InspectorState("A", "sysu split", 0, k=10))
    assert view.query == query[0]
    assert view.gallery == (gallery[2], gallery[4], gallery[0])  # camera 2 removed, tie kept in gallery order
    assert view.scores == pytest.approx((0.8, 0.8, 0.6))
    assert view.correct == (False, True, True)
    assert (view.first_match, view.num_matches, view.num_allowed) == (2, 2, 3)
    assert view.first_match_score == pytest.approx(0.8)

    view = data.view(InspectorState("A", "sysu split", 1, k=2))
    assert view.gallery == (gallery[3], gallery[0])
    assert view.correct == (False, False)
    assert view.first_match == 3 and view.first_match_score == pytest.approx(0.6)
    assert "below the top 2" in view.summary() and "rank 3" in view.summary()
    assert len(view.summary().splitlines()) == 2 and all(len(line) <= 100 for line in view.summary().splitlines())


def test_query_without_true_match(world):
    data, _, _ = world
    view = data.view(InspectorState("A", "sysu split", 2))
    assert view.first_match is None and view.first_match_score is None and view.num_matches == 0
    assert view.correct == (False, False, False)
    assert "no true match" in view.summary()


def test_models_rank_differently(world):
    data, _, _ = world
    assert data.ranking("A", "sysu split").first_match.tolist() == [2, 3, 0]
    assert data.ranking("B", "sysu split").first_match.tolist() == [1, 3, 0]
    assert data.ranking("A", "sysu split") is data.ranking("A", "sysu split")  # kept


def test_regdb_split_keeps_every_gallery_image(world):
    data, _, gallery = world
    # q1 against g0..g2: scores .8, 0, .6 -> g0 (pid 1), g2 (pid 2): rank 2; q2 (pid 3) has no match.
    view = data.view(InspectorState("A", "regdb split", 0))
    assert view.gallery == (gallery[0], gallery[2], gallery[1]) and view.first_match == 2
    assert data.ranking("A", "regdb split").first_match.tolist() == [2, 0]


def test_worst_queries_and_filters(world):
    data, _, _ = world
    assert data.worst_queries("A", "sysu split") == [1, 0]  # q2 has no true match: left out
    assert data.worst_queries("A", "sysu split", n=1) == [1]
    assert data.queries_of("sysu split", pid=2) == [1]
    assert data.queries_of("sysu split", cam=3) == [0, 2]
    assert data.queries_of("sysu split", pid=1, cam=6) == []
    assert data.query_pids("sysu split") == [1, 2, 3] and data.query_cams("sysu split") == [3, 6]
    assert data.query_label("A", "sysu split", 1).startswith("pid 2 · cam 6 · q1.png · first match #3")
    assert data.query_label("A", "sysu split", 2).endswith("first match -")


def test_first_match_frame(world):
    data, _, _ = world
    frame = first_match_frame(data, "sysu split")
    assert frame["pid"].tolist() == [1, 2, 3] and frame["file"].tolist() == ["q0.png", "q1.png", "q2.png"]
    assert frame["rank (A)"].tolist() == [2, 3, 0] and frame["rank (B)"].tolist() == [1, 3, 0]


@pytest.mark.parametrize("protocol", ["sysu", "llcm", "regdb"])
def test_first_match_agrees_with_the_metrics(protocol):
    """CMC without identity deduplication is the fraction of valid queries whose first match is within k."""
    rng = np.random.default_rng(3)
    query = [Record(f"/q{i}", int(rng.integers(6)), int(rng.choice([3, 6])), INFRARED) for i in range(30)]
    gallery = [Record(f"/g{i}", int(rng.integers(6)), int(rng.choice([1, 2, 3, 6])), VISIBLE) for i in range(25)]
    features = torch.nn.functional.normalize(torch.randn(55, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    features[3] = features[31]  # a tie
    data = InspectorData({"s": Split(RULES[protocol], tuple(query), tuple(gallery))}, query + gallery, {"m": features})
    first = data.ranking("m", "s").first_match
    metrics = evaluate(
        features[:30] @ features[30:].T,
        [r.pid for r in query],
        [r.pid for r in gallery],
        [r.cam for r in query],
        [r.cam for r in gallery],
        rules=RULES[protocol],
        higher_is_better=True,
        dedup_ids=False,
        max_rank=25,
    )
    valid = first[first > 0]
    assert metrics.num_valid_queries == len(valid)
    expected = [(valid <= k).double().mean().item() for k in range(1, 26)]
    np.testing.assert_allclose(metrics.cmc, expected)


def test_from_models_extracts_each_model_once(world):
    data, query, gallery = world
    calls = []

    def features_of(records):
        calls.append(list(records))
        return torch.stack([data.features["A"][data.records.index(r)] for r in records])

    built = InspectorData.from_models({"A": features_of}, data.splits)
    assert len(calls) == 1 and set(calls[0]) == set(query + gallery) and len(calls[0]) == len(query + gallery)
    assert built.ranking("A", "sysu split").first_match.tolist() == [2, 3, 0]


class _Sysu(SYSUMM01):
    def __init__(self):
        pass

    query = [Record("/q", 1, 3, INFRARED)]

    def gallery(self, trial, mode="all", shots=1):
        return [Record(f"/g{trial}{mode}", 1, 1, VISIBLE)]


class _Llcm(LLCM):
    def __init__(self):
        pass

    def query(self, direction):
        return [Record(f"/q{direction}", 1, 1, INFRARED)]

    def gallery(self, direction, trial):
        return [Record(f"/g{direction}{trial}", 1, 2, VISIBLE)]


class _Regdb(RegDB):
    def __init__(self):
        self.trial, self.test_visible, self.test_thermal = (
            4,
            [Record("/v", 1, 1, VISIBLE)],
            [Record("/t", 1, 2, INFRARED)],
        )


def test_protocol_splits_names_and_contents():
    sysu = protocol_splits(_Sysu(), trials=(0, 1))
    assert list(sysu) == [
        "all 1-shot, trial 0",
        "all 1-shot, trial 1",
        "indoor 1-shot, trial 0",
        "indoor 1-shot, trial 1",
    ]
    assert sysu["indoor 1-shot, trial 1"].gallery[0].path == "/g1indoor"
    assert sysu["all 1-shot, trial 0"].rules == SYSUMM01.rules
    llcm = protocol_splits(_Llcm(), trials=(2,), directions=("visible->infrared",))
    assert list(llcm) == ["visible->infrared, trial 2"]
    assert llcm["visible->infrared, trial 2"].gallery[0].path == "/gvisible->infrared2"
    assert llcm["visible->infrared, trial 2"].rules == LLCM.rules
    regdb = protocol_splits(_Regdb())  # one fixed gallery (the reader's own trial): no trial in the name
    assert list(regdb) == ["infrared->visible", "visible->infrared"] and regdb["infrared->visible"].rules == RegDB.rules
    assert regdb["infrared->visible"].gallery[0].path == "/v"


def test_bad_input(world):
    data, query, gallery = world
    with pytest.raises(ValueError, match="needs queries and gallery"):
        Split(RULES["sysu"], (), tuple(gallery))
    with pytest.raises(ValueError, match="must be \\(8, d\\)"):
        InspectorData(data.splits, data.records, {"A": torch.zeros(7, 2)})
    with pytest.raises(ValueError, match="have no features, e.g. .*g4.png"):
        InspectorData(data.splits, data.records[:-1], {"A": torch.zeros(7, 2)})
    with pytest.raises(KeyError, match="unknown model 'C'"):
        data.ranking("C", "sysu split")
    with pytest.raises(KeyError, match="unknown split"):
        data.view(InspectorState("A", "nope", 0))
    with pytest.raises(IndexError, match="has 3 queries"):
        data.view(InspectorState("A", "sysu split", 3))
    with pytest.raises(ValueError, match="k must be >= 1"):
        data.view(InspectorState("A", "sysu split", 0, k=0))
    with pytest.raises(ValueError, match="at least one non-negative trial"):
        protocol_splits(_Sysu(), trials=())


def test_render_marks_and_title(world):
    data, _, _ = world
    fig = render(data.view(InspectorState("A", "sysu split", 0, k=2)), SIZE)
    axes = fig.axes
    assert len(axes) == 3  # the query and the top 2
    assert [ax.spines["left"].get_edgecolor() for ax in axes[1:]] == [
        pytest.approx(_rgba(WRONG_COLOUR)),
        pytest.approx(_rgba(CORRECT_COLOUR)),
    ]
    assert axes[1].get_title() == "1\n0.800\npid 2 cam 4" and axes[0].get_title() == "query\npid 1 cam 3"
    assert "A · sysu split" in fig.get_suptitle() and "first true match: rank 2" in fig.get_suptitle()
    # the first true match below the top k is appended with its rank
    fig = render(data.view(InspectorState("A", "sysu split", 1, k=1)), SIZE)
    assert len(fig.axes) == 3 and fig.axes[2].get_title().startswith("3\n0.600")
    assert fig.axes[2].spines["left"].get_edgecolor() == pytest.approx(_rgba(CORRECT_COLOUR))
    wide = render(data.view(InspectorState("A", "sysu split", 1, k=5)), SIZE, per_row=2)
    assert len(wide.axes) == 6 and len({round(ax.get_position().y0, 3) for ax in wide.axes}) == 3


def _rgba(colour):
    from matplotlib.colors import to_rgba

    return to_rgba(colour)


# -- widget -------------------------------------------------------------------------------------------


def _png(widget: Inspector) -> bytes:
    (output,) = widget.output.outputs
    return base64.b64decode(output["data"]["image/png"])


def test_widget_starts_on_the_worst_query(world):
    data, _, _ = world
    widget = build_inspector(data, SIZE, k=3)
    assert isinstance(widget, Inspector) and widget.renders == 1
    assert [value for _, value in widget.query.options] == [1, 0]
    assert widget.state == InspectorState("A", "sysu split", 1, 3)
    assert widget.view.first_match == 3
    assert _png(widget).startswith(b"\x89PNG") and "rank 3" in widget.summary.value
    assert widget.group.layout.display == "none"  # worst-ranked mode needs no identity or camera
    assert widget.model.layout.display is None and widget.split.layout.display is None


def test_widget_rerenders_on_every_change(world):
    data, _, _ = world
    widget = build_inspector(data, SIZE, k=3)
    first_png = _png(widget)

    widget.query.value = 0  # the other worst-ranked query
    assert widget.state.query == 0 and widget.view.first_match == 2 and widget.renders == 2
    assert _png(widget) != first_png

    widget.model.value = "B"
    assert widget.state.model == "B" and widget.view.first_match == 1 and widget.renders == 3
    assert widget.query.value == 0  # still offered: kept
    assert widget.query.options[1][0].endswith("first match #1")  # labels follow the model

    widget.top_k.value = 1
    assert widget.state.k == 1 and len(widget.view.gallery) == 1 and widget.renders == 4


def test_widget_selects_by_identity_and_camera(world):
    data, _, _ = world
    widget = build_inspector(data, SIZE)
    widget.mode.value = "identity"
    assert widget.group.layout.display is None and widget.group.description == "identity"
    assert [value for _, value in widget.group.options] == [1, 2, 3]
    assert widget.group.value == 1 and widget.state.query == 0

    widget.group.value = 3  # its query has no true match
    assert widget.state.query == 2 and widget.view.first_match is None
    assert "no true match" in widget.summary.value

    widget.mode.value = "camera"
    assert widget.group.description == "camera" and [v for _, v in widget.group.options] == [3, 6]
    assert widget.group.value == 3 and [v for _, v in widget.query.options] == [0, 2]
    assert widget.state.query == 2  # still offered: kept
    widget.group.value = 6
    assert widget.state.query == 1 and widget.view.first_match == 3


def test_widget_split_change_and_empty_worst_list(world):
    data, _, _ = world
    widget = build_inspector(data, SIZE)
    widget.split.value = "regdb split"
    assert widget.state.split == "regdb split" and widget.state.query == 0 and widget.view.first_match == 2
    # A split whose only query has no true match: the worst list is empty and nothing is drawn.
    lonely = Split(RULES["sysu"], (data.splits["sysu split"].query[2],), data.splits["sysu split"].gallery)
    empty = build_inspector(InspectorData({"lonely": lonely}, data.records, data.features), SIZE)
    assert empty.state is None and empty.output.outputs == () and "no query" in empty.summary.value


def test_widget_keeps_the_query_when_the_model_changes(world):
    data, _, _ = world
    widget = build_inspector(data, SIZE, k=3, worst=1)  # A's worst list: [1]
    widget.mode.value = "identity"
    widget.group.value = 1  # query 0, which is in no worst list of length 1 under B
    widget.mode.value = "worst"
    assert widget.state.query == 1  # a mode change starts from the worst list
    widget.query.options = [(label, i) for label, i in widget.query.options] + [("q0", 0)]
    widget.query.value = 0
    widget.model.value = "B"
    assert widget.state == InspectorState("B", "sysu split", 0, 3)  # the query stayed
    assert [value for _, value in widget.query.options] == [0, 1]  # listed first, before B's worst
    widget.split.value = "regdb split"  # another split: the query list starts over
    assert widget.state.split == "regdb split"


def test_widget_compares_two_models_side_by_side(world):
    data, _, _ = world
    widget = build_inspector(data, SIZE, k=3)
    widget.query.value = 0
    widget.compare.value = "B"
    assert widget.view.state.model == "A" and widget.compared.state.model == "B"
    assert widget.view.first_match == 2 and widget.compared.first_match == 1  # the same query, two rankings
    assert len(widget.output.outputs) == 2 and widget.summary.value.count("<code") == 2
    assert "word-break: normal" in widget.summary.value  # never broken mid-word
    widget.compare.value = "A"  # the model itself: nothing to compare
    assert widget.compared is None and len(widget.output.outputs) == 1


def test_widget_mirror_follows_the_view(world, monkeypatch):
    import csdn.analysis.widgets as widgets_module

    shown = []

    class Handle:
        def update(self, image):
            shown.append(image.data)

    monkeypatch.setattr(widgets_module, "display", lambda image, display_id: shown.append(image.data) or Handle())
    widget = build_inspector(data := world[0], SIZE, k=3)
    widget.mirror()
    widget.query.value = 0
    assert len(shown) == 2 and shown[0] != shown[1] and shown[1] == _png(widget)
    assert data.models == ["A", "B"]


def test_widget_bad_k(world):
    data, _, _ = world
    with pytest.raises(ValueError, match="1 <= k <= max_k"):
        build_inspector(data, SIZE, k=40, max_k=30)


def test_widget_heatmap_toggle_adds_the_maps_of_both_compared_models(world):
    from csdn.analysis.heatmaps import MatchMaps

    data, _, _ = world
    calls = []

    def maps_of(model):
        def compute(query, gallery):
            calls.append((model, query.pid, len(gallery)))
            k = len(gallery)
            return MatchMaps(
                np.zeros((*SIZE, 3), np.uint8),
                [np.zeros((*SIZE, 3), np.uint8)] * k,
                np.ones((k, *SIZE)),
                np.ones((k, *SIZE)),
                np.zeros(k),
                np.zeros(k, bool),
                INFRARED,
                VISIBLE,
            )

        return compute

    widget = build_inspector(data, SIZE, k=2, heatmaps={"A": maps_of("A"), "B": maps_of("B")})
    widget.query.value = 0
    assert len(widget.output.outputs) == 1 and calls == []  # off by default
    widget.show_maps.value = True
    assert len(widget.output.outputs) == 2 and calls == [("A", 1, 2)]
    widget.compare.value = "B"
    assert len(widget.output.outputs) == 3 and calls[-2:] == [("A", 1, 2), ("B", 1, 2)]
    assert widget.output.outputs[-1]["data"]["text/plain"] == "<rank list: similarity heatmaps>"
    assert build_inspector(data, SIZE).show_maps.layout.display == "none"  # no networks: no toggle
