"""k-reciprocal re-ranking against a plain loop-and-set reference, and behaviour on easy embeddings."""

import numpy as np
import pytest
import torch

from csdn.data.registry import DATASETS
from csdn.eval import rerank as rerank_module
from csdn.eval.metrics import evaluate
from csdn.eval.rerank import RerankConfig, k_reciprocal_rerank

RULES = {name: reader.rules for name, reader in DATASETS.items()}  # gallery rules by dataset name


def reference_rerank(q, g, k1, k2, lam):
    """Zhong et al.'s algorithm written directly: Python loops, sets, dense float64 arrays."""
    x = np.concatenate([q, g]).astype(np.float64)
    n, n_q = len(x), len(q)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d = d / d.max(axis=1, keepdims=True)
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                expanded |= set(rc)
        idx = sorted(expanded)
        w = np.exp(-d[i, idx])
        v[i, idx] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.zeros((n_q, n - n_q))
    for i in range(n_q):
        for j in range(n - n_q):
            s = np.minimum(v[i], v[n_q + j]).sum()
            jaccard[i, j] = 1 - s / (2 - s)
    return (1 - lam) * jaccard + lam * d[:n_q, n_q:]


def clustered(n_ids, per_id, dim, noise, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    pids = np.repeat(np.arange(n_ids), per_id)
    feats = centres[pids] + noise * rng.normal(size=(len(pids), dim))
    return feats / np.linalg.norm(feats, axis=1, keepdims=True), pids


@pytest.mark.parametrize("k1, k2, lam", [(20, 6, 0.3), (5, 3, 0.3), (4, 1, 0.5), (7, 2, 0.0)])
def test_matches_reference_implementation(k1, k2, lam):
    feats, _ = clustered(n_ids=6, per_id=7, dim=8, noise=0.8, seed=k1)
    q, g = feats[:12], feats[12:]
    got = k_reciprocal_rerank(torch.from_numpy(q), torch.from_numpy(g), k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (12, 30) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference_rerank(q, g, k1, k2, lam), rtol=0, atol=1e-10)


def test_blockwise_jaccard_equals_single_block(monkeypatch):
    feats, _ = clustered(n_ids=5, per_id=6, dim=6, noise=0.7, seed=3)
    q, g = torch.from_numpy(feats[:10]), torch.from_numpy(feats[10:])
    whole = k_reciprocal_rerank(q, g, k1=6, k2=3)
    monkeypatch.setattr(rerank_module, "_PAIR_BUDGET", 7)
    monkeypatch.setattr(rerank_module, "_SORT_ROWS", 4)
    np.testing.assert_allclose(k_reciprocal_rerank(q, g, k1=6, k2=3).numpy(), whole.numpy(), atol=1e-12)


def test_perfect_embedding_stays_perfect():
    feats, pids = clustered(n_ids=5, per_id=8, dim=16, noise=0.05, seed=0)
    is_query = np.tile(np.arange(8) < 3, 5)  # 3 queries and 5 gallery images per identity
    q, g = torch.from_numpy(feats[is_query]).float(), torch.from_numpy(feats[~is_query]).float()
    dist = k_reciprocal_rerank(q, g, **vars(RerankConfig()))
    assert dist.dtype == torch.float32
    m = evaluate(
        dist, pids[is_query], pids[~is_query], [1] * len(q), [2] * len(g), rules=RULES["regdb"], higher_is_better=False
    )
    assert m.mAP == pytest.approx(1.0) and m.mINP == pytest.approx(1.0) and m.r1 == 1.0


def test_lambda_one_is_the_normalised_original_distance():
    feats, _ = clustered(n_ids=4, per_id=5, dim=8, noise=0.5, seed=1)
    q, g = feats[:6], feats[6:]
    got = k_reciprocal_rerank(q, g, k1=5, k2=2, lambda_value=1.0).numpy()
    x = np.concatenate([q, g])
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, (d / d.max(1, keepdims=True))[:6, 6:], atol=1e-6)


def test_gallery_smaller_than_k1_still_works():
    feats, _ = clustered(n_ids=2, per_id=3, dim=4, noise=0.3, seed=2)
    got = k_reciprocal_rerank(feats[:2], feats[2:], k1=20, k2=6)
    np.testing.assert_allclose(got.numpy(), reference_rerank(feats[:2], feats[2:], 20, 6, 0.3), atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k1=0), "k1 and k2"),
        (dict(k2=0), "k1 and k2"),
        (dict(lambda_value=1.5), "lambda_value"),
        (dict(g_feats=np.zeros((3, 5))), "differ"),
        (dict(q_feats=np.zeros((0, 4))), "non-empty"),
        (dict(q_feats=np.full((2, 4), np.nan)), "NaN"),
    ],
)
def test_bad_input_is_rejected(kwargs, message):
    args = dict(q_feats=np.ones((2, 4)), g_feats=np.ones((3, 4)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        k_reciprocal_rerank(**args)
