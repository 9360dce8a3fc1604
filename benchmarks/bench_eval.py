"""Benchmark csdn.eval.metrics.evaluate against a straightforward per-query loop, at SYSU-MM01 scale.

Synthetic SYSU-MM01 test set: 3,803 infrared queries (cams 3/6) of 96 identities against a visible
gallery of 301 (id, camera) pairs, single-shot (301 images) and multi-shot (10 each: 3,010 images),
10 trials with fresh scores each. Scores are coarsely quantised so that ties occur. Both
implementations evaluate every trial; every metric is compared (they must agree to 1e-12) and the
median wall time of the 10-trial evaluation is reported with the loop / vectorised ratio (runs of the
two are interleaved, so both see the same machine load).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_eval.py [--repeats 5] [--loop-repeats 3]
        [--threads 1] [--rerank]

Both run on one thread by default (``--threads``), so the ratio compares algorithms rather than
core counts; on a shared machine extra torch threads can slow the vectorised code down.

``--rerank`` also times one k-reciprocal re-ranking at multi-shot scale (3,803 x 3,010, 512-d) and
reports the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np
import torch

from csdn.data.registry import DATASETS
from csdn.eval.metrics import evaluate
from csdn.eval.rerank import k_reciprocal_rerank

RULES = {name: reader.rules for name, reader in DATASETS.items()}  # gallery rules by dataset name

NUM_IDS, NUM_QUERIES, NUM_PAIRS, TRIALS, MAX_RANK = 96, 3803, 301, 10, 20
GALLERY_CAMS = (1, 2, 4, 5)


def synthetic_sysu(shots: int, seed: int = 0):
    """Query/gallery labels and one score matrix per trial (float32, quantised to create ties)."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, NUM_IDS, NUM_QUERIES)
    q_cams = rng.choice([3, 6], NUM_QUERIES)
    pairs = [(pid, cam) for pid in range(NUM_IDS) for cam in GALLERY_CAMS]
    chosen = sorted(rng.choice(len(pairs), NUM_PAIRS, replace=False))
    g_pids = np.repeat([pairs[i][0] for i in chosen], shots)
    g_cams = np.repeat([pairs[i][1] for i in chosen], shots)
    same = q_pids[:, None] == g_pids[None, :]
    trials = []
    for _ in range(TRIALS):
        scores = rng.normal(size=same.shape) + 1.5 * same
        trials.append((np.round(scores * 16) / 16).astype(np.float32))
    return trials, q_pids, g_pids, q_cams, g_cams


def loop_evaluate(scores, q_pids, g_pids, q_cams, g_cams, max_rank=MAX_RANK):
    """The plain way: one query at a time (SYSU filter, deduplicated CMC, AP, INP)."""
    cmc_sum, aps, inps = np.zeros(max_rank), [], []
    for q in range(len(q_pids)):
        order = np.argsort(-scores[q], kind="stable")
        keep = ~((q_cams[q] == 3) & (g_cams[order] == 2))
        ranked_pids = g_pids[order][keep]
        hits = ranked_pids == q_pids[q]
        if not hits.any():
            continue
        positions = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
        inps.append(len(positions) / positions[-1])
        first_of_each = np.sort(np.unique(ranked_pids, return_index=True)[1])
        first = np.flatnonzero(ranked_pids[first_of_each] == q_pids[q])[0] + 1
        if first <= max_rank:
            cmc_sum[first - 1 :] += 1
    return cmc_sum / len(aps), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def vectorised_evaluate(scores, q_pids, g_pids, q_cams, g_cams):
    m = evaluate(
        scores,
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        rules=RULES["sysu"],
        higher_is_better=True,
        dedup_ids=True,
        max_rank=MAX_RANK,
    )
    return m.cmc, m.mAP, m.mINP, m.num_valid_queries


def run_all(fn, trials, labels):
    return [fn(scores, *labels) for scores in trials]


def timed_alternately(fast, slow, fast_runs: int, slow_runs: int):
    """Median wall times of ``fast`` and ``slow``, their runs interleaved so both see the same load."""
    fast_times, slow_times, fast_result, slow_result = [], [], None, None
    for i in range(max(fast_runs, slow_runs)):
        if i < fast_runs:
            start = time.perf_counter()
            fast_result = fast()
            fast_times.append(time.perf_counter() - start)
        if i < slow_runs:
            start = time.perf_counter()
            slow_result = slow()
            slow_times.append(time.perf_counter() - start)
    return statistics.median(fast_times), fast_result, statistics.median(slow_times), slow_result


def max_difference(fast, slow) -> float:
    worst = 0.0
    for (cmc_a, map_a, minp_a, n_a), (cmc_b, map_b, minp_b, n_b) in zip(fast, slow):
        if n_a != n_b:
            return float("inf")
        worst = max(worst, float(np.abs(cmc_a - cmc_b).max()), abs(map_a - map_b), abs(minp_a - minp_b))
    return worst


def bench_metrics(shots: int, repeats: int, loop_repeats: int) -> bool:
    trials, *labels = synthetic_sysu(shots)
    shape = trials[0].shape
    fast_time, fast, slow_time, slow = timed_alternately(
        lambda: run_all(vectorised_evaluate, trials, labels),
        lambda: run_all(loop_evaluate, trials, labels),
        repeats,
        loop_repeats,
    )
    diff = max_difference(fast, slow)
    mean_r1 = np.mean([r[0][0] for r in fast])
    print(
        f"{'single' if shots == 1 else 'multi'}-shot {shape[0]} x {shape[1]}, {TRIALS} trials (mean R1 {mean_r1:.3f}):"
    )
    print(f"  vectorised  median {fast_time:8.3f} s  ({repeats} runs)")
    print(f"  loop        median {slow_time:8.3f} s  ({loop_repeats} runs)")
    print(f"  speed-up    {slow_time / fast_time:8.1f} x   max |difference| over all metrics: {diff:.1e}")
    return diff <= 1e-12


def bench_rerank() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(NUM_IDS, 512))
    q_pids = rng.integers(0, NUM_IDS, NUM_QUERIES)
    g_pids = np.repeat(rng.integers(0, NUM_IDS, NUM_PAIRS), 10)
    feats = [centres[p] + 4.0 * rng.normal(size=(len(p), 512)) for p in (q_pids, g_pids)]
    q, g = (torch.nn.functional.normalize(torch.tensor(f, dtype=torch.float32), dim=1) for f in feats)
    start = time.perf_counter()
    dist = k_reciprocal_rerank(q, g)
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    same = q_pids[:, None] == g_pids[None, :]
    before = evaluate(q @ g.T, q_pids, g_pids, [6] * len(q), [1] * len(g), rules=RULES["regdb"], higher_is_better=True)
    after = evaluate(dist, q_pids, g_pids, [6] * len(q), [1] * len(g), rules=RULES["regdb"], higher_is_better=False)
    print(
        f"re-ranking {tuple(dist.shape)} (512-d, {int(same.any(1).sum())} valid queries): "
        f"{elapsed:.1f} s, process peak RSS {peak_mib:.0f} MiB; "
        f"mAP {before.mAP:.3f} -> {after.mAP:.3f}, R1 {before.r1:.3f} -> {after.r1:.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the vectorised version")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed runs of the loop baseline")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rerank", action="store_true", help="also time k-reciprocal re-ranking")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch thread(s)")
    ok = all([bench_metrics(shots, args.repeats, args.loop_repeats) for shots in (1, 10)])
    if args.rerank:
        bench_rerank()
    if not ok:
        print("MISMATCH between the vectorised and loop implementations", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
