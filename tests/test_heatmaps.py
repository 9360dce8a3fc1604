"""Similarity heatmaps (:mod:`csdn.analysis.heatmaps`): where a match comes from, for RN and ViT towers.

A tiny network (random tiny CLIP, 128x64) is trained for a few dozen steps on images whose only identity
cue is a band across the middle (a fixed random pattern per identity); everything else is fresh noise in
every image. The maps of a query and a same-identity gallery image must then put their mass on that band.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csdn.analysis.heatmaps import mass_in, plot_matches, query_maps, similarity_maps
from csdn.cli import main
from csdn.config import get_profile
from csdn.experiment import Experiment
from csdn.overrides import override

IDS, H, W = 4, 128, 64
BAND = (slice(48, 80), slice(None))  # the only informative region: a quarter of the image


def _images(labels: torch.Tensor, patterns: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(len(labels), 3, H, W, generator=g)
    x[:, :, BAND[0]] = patterns[labels]
    return torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x, x.flip(3))  # flip-invariant identities


def _trained(arch: str, steps: int, lr: float, tmp: Path):
    cfg = override(
        get_profile("smoke"),
        {"clip.weights": "random", "clip.arch": arch, "clip.pretrain.arch": arch, "data.height": H, "data.width": W},
    )
    torch.manual_seed(0)
    net = Experiment(cfg, tmp, progress=False).build_network(num_ids=IDS)
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(IDS, 3, BAND[0].stop - BAND[0].start, W, generator=g)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        y = torch.arange(IDS).repeat(4)
        out = net([(_images(y, patterns, g), "visible")])
        loss = F.cross_entropy(out.gem_logits, y) + F.cross_entropy(out.proj_logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net, patterns, g


@pytest.fixture(scope="module", params=[("csdn-tiny-rn", 60, 2e-3), ("csdn-tiny-vit", 120, 1e-3)], ids=["rn", "vit"])
def trained(request, tmp_path_factory):
    return _trained(*request.param, tmp_path_factory.mktemp("heatmaps"))


@pytest.mark.parametrize(("flip", "fusion"), [(False, "mean"), (True, "mean"), (True, "concat")])
def test_the_mass_lies_on_the_only_region_that_carries_the_identity(trained, flip: bool, fusion: str) -> None:
    net, patterns, g = trained
    masses = []
    for pid in range(IDS):
        label = torch.tensor([pid])
        query, gallery = _images(label, patterns, g)[0], _images(label, patterns, g)
        q_maps, g_maps, scores = similarity_maps(net, query, "visible", gallery, "visible", flip, fusion)
        assert q_maps.shape == g_maps.shape == (1, H, W) and (q_maps >= 0).all() and (g_maps >= 0).all()
        masses += [float(mass_in(q_maps, BAND)[0]), float(mass_in(g_maps, BAND)[0])]
    # the band is a quarter of the image: on average the maps put more than twice that share of their mass
    # there (measured: 0.6-0.7), and every ResNet map more than the band's area (min 0.56). A ViT map at the
    # last block's input can miss it (min 0.12): the earlier blocks' attention has already spread the band's
    # content over other tokens.
    area = (BAND[0].stop - BAND[0].start) / H
    assert np.mean(masses) > 2 * area, masses
    if not hasattr(net.trunk, "transformer"):
        assert min(masses) > area, masses


def test_maps_are_deterministic_and_the_scores_are_the_ranking_similarities(trained) -> None:
    net, patterns, g = trained
    query, gallery = _images(torch.tensor([0]), patterns, g)[0], _images(torch.tensor([0, 1, 2]), patterns, g)
    first = similarity_maps(net, query, "visible", gallery, "visible", flip=True)
    second = similarity_maps(net, query, "visible", gallery, "visible", flip=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with torch.no_grad():
        f = lambda x: F.normalize(net.embed(x, "visible") + net.embed(x.flip(3), "visible"), dim=1)  # noqa: E731
        expected = (f(query[None]) @ f(gallery).T)[0]
    torch.testing.assert_close(first[2], expected, atol=1e-5, rtol=0)
    assert all(p.grad is None for p in net.parameters())  # nothing left behind


def test_query_maps_of_a_split_rank_by_the_evaluation_and_plot(tmp_path: Path) -> None:
    # float32 features: the maps' scores (computed in float32) then equal the ranking's to 1e-5
    changes = {"clip.weights": "random", "model.variant": "vision-only", "compute.precision": "fp32"}
    experiment = Experiment(override(get_profile("smoke"), changes), tmp_path, progress=False)
    net = experiment.build_network(num_ids=5).eval()
    split = experiment.dataset.test_splits(experiment.split_options())[0]
    (maps,) = query_maps(experiment, net, split, [0], k=3)
    features_of = experiment.features_of(net.embed, net)
    q, gallery = split.query[0], split.gallery(None)
    kept = [r for r in gallery if split.rules.kept(q, [r])[0]]
    scores = (features_of([q]) @ features_of(kept).T)[0]
    np.testing.assert_allclose(maps.scores, np.sort(scores.numpy())[::-1][:3], atol=1e-5)
    assert maps.query.shape == (64, 32, 3) and maps.query_maps.shape == (3, 64, 32) and len(maps.gallery) == 3
    figure = plot_matches([("a", maps), ("b", maps)], title="t")
    assert len(figure.axes) == 2 * 4


def test_heatmaps_command_writes_one_png_per_query(tmp_path: Path, capsys) -> None:
    cfg = override(get_profile("smoke"), {"clip.weights": "random", "model.variant": "vision-only"})
    experiment = Experiment(cfg, tmp_path / "cache", progress=False)
    _ = experiment.network  # trained into the cache
    argv = ["--cache", str(tmp_path / "cache"), "heatmaps", "--profile", "smoke", "--clip", "random"]
    argv += ["--variant", "vision-only", "--run", str(experiment.stage3_dir), "--compare", "vision-only"]
    assert main([*argv, "--queries", "2", "--top-k", "3", "--out", str(tmp_path / "maps")]) == 0
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "2 heatmap figure(s) (vision-only)" in capsys.readouterr().out
    assert main([*argv, "--queries", "0", "--out", str(tmp_path / "none")]) == 2
    assert "--queries and --top-k must be >= 1" in capsys.readouterr().err and not (tmp_path / "none").exists()
