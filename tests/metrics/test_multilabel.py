"""Multi-label metrics and the torchmetrics adapters: references, unknown (-1) masking, chunked updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision

from tailsweep.metrics import (
    MultilabelAUROCUnknown,
    MultilabelECE,
    MultilabelMAP,
    MultilabelTopKRecall,
    SoftTargetAccuracy,
    adapters,
    build_metric_collection,
)

from . import reference as ref
from .data import class_probs, labels, multilabel, soft_targets, update_in_batches

L = 9
N = 180


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_multilabel_ece_matches_formula(n_bins: int) -> None:
    probs, target = multilabel(N, L)
    target[:, 4] = -1  # a label never observed
    per_label, macro = MultilabelECE(L, n_bins=n_bins, average="none"), MultilabelECE(L, n_bins=n_bins)
    update_in_batches(per_label, probs, target)
    update_in_batches(macro, probs, target)
    expected = ref.multilabel_ece(probs.numpy(), target.numpy(), n_bins)
    np.testing.assert_allclose(per_label.compute().numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(macro.compute()), np.nanmean(expected), rtol=1e-10)


def test_multilabel_ece_is_zero_when_calibrated() -> None:
    probs = torch.full((8, 2), 0.25)
    target = torch.tensor([[1, 0], [0, 0], [0, 1], [0, 0]] * 2)
    metric = MultilabelECE(2)
    metric.update(probs, target)
    assert float(metric.compute()) == 0.0


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("average", ["macro", "micro", "none"])
def test_topk_recall_matches_protocol(k: int, average: str) -> None:
    probs, target = multilabel(N, L, seed=1)
    target[:, 2] = 0  # a label with no positive: left out of the macro average
    metric = MultilabelTopKRecall(L, k=k, average=average)
    update_in_batches(metric, probs, target)
    hits, positives = ref.topk_recall(probs.numpy(), target.numpy(), k)
    with np.errstate(invalid="ignore"):
        expected = {"micro": hits.sum() / positives.sum(), "none": hits / positives,
                    "macro": np.nanmean(hits / positives)}[average]
    np.testing.assert_allclose(metric.compute().numpy(), expected, rtol=1e-12)


def test_topk_recall_is_one_when_all_positives_rank_first() -> None:
    target = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 1, -1]])
    probs = target.clamp_min(0) * 0.5 + 0.25
    metric = MultilabelTopKRecall(5, k=2)
    metric.update(probs, target)
    assert float(metric.compute()) == 1.0


@pytest.mark.parametrize(("ours", "theirs"), [(MultilabelMAP, MultilabelAveragePrecision),
                                              (MultilabelAUROCUnknown, MultilabelAUROC)])
def test_adapters_equal_torchmetrics_on_integer_targets(ours, theirs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Float targets with -1 and row-chunked updates give torchmetrics' own value (ignore_index=-1)."""
    monkeypatch.setattr(adapters, "CHUNK_ELEMENTS", 7 * L * 20)  # chunks of 7 rows
    probs, target = multilabel(N, L, seed=2)
    probs = probs.float()
    mine = ours(L, average="macro", thresholds=20)
    reference = theirs(L, average="macro", thresholds=20, ignore_index=-1)
    update_in_batches(mine, probs, target, batch=50)
    update_in_batches(reference, probs, target.long(), batch=50)
    assert mine._update_count == reference._update_count
    torch.testing.assert_close(mine.compute(), reference.compute())


def test_soft_target_accuracy_uses_the_target_mode() -> None:
    probs, target = class_probs(N, 4), soft_targets(N, 4)
    metric = SoftTargetAccuracy(4, average="micro")
    metric.update(probs, target)
    expected = float((probs.argmax(1) == target.argmax(1)).double().mean())
    torch.testing.assert_close(float(metric.compute()), expected)
    hard = SoftTargetAccuracy(4, average="micro")
    hard.update(probs, labels(N, 4))
    assert 0.0 <= float(hard.compute()) <= 1.0


def _rare_labels(n: int, num_labels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """~1% positives per label, scores crowded below 0.05 (a calibrated model of rare attributes), 5% unknown."""
    generator = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, num_labels, generator=generator) < 0.01).float()
    target[:, 0] = 0.0
    target[:20, 0] = 1.0  # at least a few positives in label 0
    logits = -5.0 + 2.0 * target + torch.randn(n, num_labels, generator=generator)
    target[torch.rand(n, num_labels, generator=generator) < 0.05] = -1.0
    return logits.sigmoid(), target


def test_exact_map_and_auroc_agree_with_scikit_learn_on_rare_labels() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    probs, target = _rare_labels(6000, 12)
    ours_map, ours_auroc = MultilabelMAP(12), MultilabelAUROCUnknown(12)
    update_in_batches(ours_map, probs, target, batch=512)
    update_in_batches(ours_auroc, probs, target, batch=512)
    aps, aucs = [], []
    for label in range(12):
        known = target[:, label] >= 0
        y, p = target[known, label].numpy(), probs[known, label].numpy()
        if y.sum() > 0:
            aps.append(average_precision_score(y, p))
            if y.sum() < len(y):
                aucs.append(roc_auc_score(y, p))
    assert abs(float(ours_map.compute()) - np.mean(aps)) < 1e-4
    assert abs(float(ours_auroc.compute()) - np.mean(aucs)) < 1e-4
    binned = MultilabelMAP(12, thresholds=100)
    update_in_batches(binned, probs, target, batch=512)
    assert abs(float(binned.compute()) - np.mean(aps)) > 0.02  # what 100 bins did to rare labels


def test_exact_curves_keep_the_split_once_and_start_empty_each_epoch() -> None:
    """Memory is bounded by the evaluated split: one [N, L] copy of the scores and int8 targets, shared by map and
    auroc (one compute group), emptied by reset."""
    probs, target = _rare_labels(700, 9, seed=1)
    collection = build_metric_collection("multilabel", 9, stage="val", names=["map", "auroc"])
    update_in_batches(collection, probs.float(), target, batch=100)
    assert any({"map", "auroc"} <= set(group) for group in collection.compute_groups.values())
    state = collection["val/map"]
    assert sum(t.shape[0] for t in state.preds) == 700 and all(t.dtype == torch.int8 for t in state.target)
    collection.compute()
    collection.reset()
    assert not collection["val/map"].preds


@pytest.mark.parametrize("metric_class", [MultilabelMAP, MultilabelAUROCUnknown])
def test_macro_over_defined_labels_does_not_warn_about_the_labels_it_leaves_out(metric_class) -> None:
    """A label without a positive (or without a negative) in the split is left out of the macro mean, so
    torchmetrics' warning about it is not shown (a 1000-attribute validation split always has such labels); the
    value still equals the mean over the defined labels."""
    import warnings

    probs, target = multilabel(N, L, seed=3)
    target[:, 1] = 0  # no positive
    target[:, 2] = 1  # no negative
    metric = metric_class(L)
    metric.update(probs, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = metric.compute()
    per_label = metric_class(L, average="none")
    per_label.update(probs, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = per_label.compute()
    defined = [label for label in range(L) if label != 1 and (metric_class is MultilabelMAP or label != 2)]
    torch.testing.assert_close(value, scores[defined].mean())
