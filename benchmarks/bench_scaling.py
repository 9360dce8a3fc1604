"""What a stage-3 epoch costs as the data grows: seconds per epoch against training identities and image size.

A stage-3 epoch is ``max(visible, infrared images) // (P * K)`` steps (the cross-modality sampler), and a
step's cost depends on the image size, not on how many identities there are. So this script measures the
seconds of one step of the real stage-3 loop (``train_reid``: batch assembly with the augmentations, the
network on the compute path, losses, backward, Adam) on the demo world's training images cached at each
size, as the difference of two short runs (``--steps`` and 5 steps, so loader start-up and the first
step cancel), and multiplies it by the steps an epoch of 80, 160 and 320 identities takes at the demo's
images per identity. It prints the table and saves the plot (``--plot``) for the README. Random CLIP
weights suffice (timing only); the network has the demo's CSDN heads and text prototypes.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_scaling.py [--steps 25] [--precision auto|fp32]
        [--workers 0] [--sizes 128x64,256x128] [--plot docs/figures/stage3_epoch_cost.png] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from csdn.artifacts import default_cache_root  # noqa: E402
from csdn.config import get_profile  # noqa: E402
from csdn.data.records import INFRARED, VISIBLE  # noqa: E402
from csdn.experiment import Experiment  # noqa: E402
from csdn.overrides import override  # noqa: E402
from csdn.plan import stage3_step_seconds  # noqa: E402
from csdn.style import NEUTRAL_COLOUR  # noqa: E402

IDENTITIES = (80, 160, 320)  # training identities the epoch cost is given for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25, help="steps of the longer timed run (> 5)")
    parser.add_argument("--precision", default="auto", help="compute.precision (auto, bf16, fp32)")
    parser.add_argument("--workers", type=int, default=0, help="stage3.workers: processes assembling batches")
    parser.add_argument("--sizes", default="128x64,256x128", help="image sizes HxW, comma-separated")
    parser.add_argument("--plot", type=Path, default=None, help="save the plot here")
    parser.add_argument("--cache", type=Path, default=None, help="artifact cache (default: $CSDN_CACHE)")
    args = parser.parse_args()
    if args.steps <= 5:
        parser.error("--steps must be > 5")
    cache_root = args.cache or default_cache_root()
    print(
        f"CPU threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
        f"compute.precision={args.precision}, stage3.workers={args.workers}"
    )
    per_size = {}
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    for height, width in sizes:
        changes = {"data.height": height, "data.width": width, "clip.weights": "random"}
        changes.update({"compute.precision": args.precision, "stage3.workers": args.workers})
        cfg = override(get_profile("demo"), changes)
        experiment = Experiment(cfg, cache_root, progress=False)
        cache = experiment.train_cache
        ids = len({r.pid for r in cache.records})
        per_modality = max(sum(r.modality == m for r in cache.records) for m in (VISIBLE, INFRARED)) / ids
        batch = cfg.stage3.ids_per_batch * cfg.stage3.instances
        seconds = stage3_step_seconds(experiment, args.steps, base=5)
        per_size[(height, width)] = {n: int(n * per_modality) // batch * seconds for n in IDENTITIES}
        print(
            f"{height}x{width}: {seconds:.3f} s a step ({3 * batch} images, {experiment.compute.identity()}); "
            f"{per_modality:.1f} images per identity and modality, {batch} per step"
        )
    print(f"{'identities':>10}" + "".join(f"{f'{h}x{w} s/epoch':>18}" for h, w in sizes))
    for n in IDENTITIES:
        print(f"{n:>10}" + "".join(f"{per_size[size][n]:>18.1f}" for size in sizes))
    if args.plot:
        figure, axis = plt.subplots(figsize=(5, 3.4))
        styles = [{"color": "black", "marker": "o"}, {"color": NEUTRAL_COLOUR, "marker": "s", "linestyle": "--"}]
        for ((height, width), cost), style in zip(per_size.items(), styles * len(per_size)):
            axis.plot(list(cost), list(cost.values()), label=f"{height}x{width}", **style)  # no modality colours
        axis.set_xticks(list(IDENTITIES))
        axis.set_xlabel("training identities (demo's images per identity)")
        axis.set_ylabel("seconds per stage-3 epoch")
        axis.set_ylim(bottom=0)
        axis.set_title(f"Stage-3 epoch cost, this machine's CPU ({torch.get_num_threads()} threads)")
        axis.legend(title="image size")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
