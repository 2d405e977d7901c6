"""The numbers behind the pictures against float64 references and torchmetrics; every figure renders."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.functional.classification import (
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multilabel_average_precision,
)

from tailsweep.reporting.figures import (
    Predictions,
    average_precision,
    class_recall,
    confusion_counts,
    expected_labels,
    group_sums,
    label_average_precision,
    label_frequencies,
    prediction_figures,
    reliability_bins,
    reliability_figure,
    row_normalised,
    top_class_reliability,
)


def _probabilities(n: int, c: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, c, generator=generator), dim=1)


def _labels(n: int, c: int, seed: int) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed + 1))


def _multilabel(n: int, labels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(n, labels, generator=generator)
    target = (torch.rand(n, labels, generator=generator) < 0.3).float()
    target[torch.rand(n, labels, generator=generator) < 0.1] = -1.0
    return probabilities, target


def _reference_counts(target: torch.Tensor, predicted: torch.Tensor, c: int) -> torch.Tensor:
    """The confusion counts from their definition (the re-implementation figures.py had before torchmetrics')."""
    return torch.bincount(target.long() * c + predicted.long(), minlength=c * c).reshape(c, c)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_confusion_and_recall_match_their_definition(n: int, c: int, seed: int) -> None:
    probabilities, target = _probabilities(n, c, seed), _labels(n, c, seed)
    predictions = Predictions("ordinal", probabilities, target)
    counts = confusion_counts(predictions)
    reference = _reference_counts(target, probabilities.argmax(dim=1), c)
    assert torch.equal(counts, reference)
    assert torch.equal(counts, multiclass_confusion_matrix(probabilities, target, num_classes=c))
    normalised = row_normalised(counts)
    present = counts.sum(dim=1) > 0
    torch.testing.assert_close(normalised[present].sum(dim=1), torch.ones(int(present.sum()), dtype=torch.float64))
    assert torch.all(normalised[~present] == 0)
    recall, support = class_recall(predictions)
    assert torch.equal(support, reference.sum(dim=1))
    by_definition = reference.diagonal().double() / reference.sum(dim=1).clamp_min(1).double()
    torch.testing.assert_close(recall[present], by_definition[present], rtol=1e-7, atol=0)  # float32's rounding
    assert torch.all(recall[~present].isnan())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 80), c=st.integers(2, 8), bins=st.integers(1, 20), seed=st.integers(0, 10_000),
       scale=st.sampled_from([0.0, 1.0, 5.0, 50.0]))
def test_reliability_bins_match_a_loop_and_torchmetrics_ece(n: int, c: int, bins: int, seed: int,
                                                            scale: float) -> None:
    probabilities, target = _probabilities(n, c, seed, scale), _labels(n, c, seed)
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == target).double()
    result = reliability_bins(confidence, correct, bins)
    # float64 reference: one bin at a time
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence >= low) & ((confidence < high) if b < bins - 1 else (confidence <= 1.0))
        assert int(result.count[b]) == int(inside.sum())
        if inside.any():
            assert float(result.confidence[b]) == pytest.approx(float(confidence[inside].mean()), abs=1e-12)
            assert float(result.frequency[b]) == pytest.approx(float(correct[inside].mean()), abs=1e-12)
        else:
            assert math.isnan(float(result.confidence[b])) and math.isnan(float(result.frequency[b]))
    if bool((probabilities.max(dim=1).values < 1.0).all()):
        # torchmetrics gives a confidence of exactly 1.0 a bin of its own; here it belongs to the last bin
        ece = multiclass_calibration_error(probabilities, target, num_classes=c, n_bins=bins, norm="l1")
        assert result.calibration_error == pytest.approx(float(ece), abs=1e-5)


def test_reliability_of_soft_labels_uses_the_label_mass_on_the_predicted_class() -> None:
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.25, 0.65]])
    target = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    bins = top_class_reliability(probabilities, Predictions("soft", probabilities, target), num_bins=10)
    assert float(bins.frequency[6]) == pytest.approx(0.65)  # both confidences 0.7 and 0.65 fall in [0.6, 0.7)
    assert int(bins.count.sum()) == 2


def test_multilabel_reliability_ignores_unknown_entries() -> None:
    probabilities = torch.tensor([[0.95, 0.05], [0.91, 0.02]])
    target = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    bins = top_class_reliability(probabilities, Predictions("multilabel", probabilities, target), num_bins=10)
    assert int(bins.count.sum()) == 3
    assert float(bins.frequency[9]) == pytest.approx(0.5) and float(bins.frequency[0]) == pytest.approx(0.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), c=st.integers(2, 12), groups=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_group_sums_of_expected_labels_match_a_loop(n: int, c: int, groups: int, seed: int) -> None:
    probabilities = _probabilities(n, c, seed)
    group_id = torch.randint(100, 100 + groups, (n,), generator=torch.Generator().manual_seed(seed))
    expected = expected_labels(probabilities)
    reference_expected = [sum(k * float(probabilities[i, k]) for k in range(c)) for i in range(n)]
    torch.testing.assert_close(expected, torch.tensor(reference_expected, dtype=torch.float64))
    ids, sums = group_sums(expected, group_id)
    reference: dict[int, float] = {}
    for i in range(n):
        reference[int(group_id[i])] = reference.get(int(group_id[i]), 0.0) + reference_expected[i]
    assert ids.tolist() == sorted(reference)
    torch.testing.assert_close(sums, torch.tensor([reference[k] for k in sorted(reference)], dtype=torch.float64))


def test_label_frequencies() -> None:
    probabilities = torch.tensor([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    single = Predictions("ordinal", probabilities, torch.tensor([0, 1, 1]))
    true, predicted = label_frequencies(single)
    torch.testing.assert_close(true, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(predicted, torch.tensor([1.3 / 3, 1.7 / 3], dtype=torch.float64))
    soft = Predictions("soft", probabilities, torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.5, 0.5]]))
    torch.testing.assert_close(label_frequencies(soft)[0], torch.tensor([0.6, 0.4], dtype=torch.float64))
    multi = Predictions("multilabel", probabilities, torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, -1.0]]))
    true, predicted = label_frequencies(multi)
    torch.testing.assert_close(true, torch.tensor([0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(predicted, torch.tensor([0.4, 0.8], dtype=torch.float64))


def test_label_average_precision_matches_the_formula_and_skips_labels_without_positives() -> None:
    probabilities = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.3, 0.2, 0.6], [0.1, 0.4, 0.1]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    with warnings.catch_warnings():  # label 1 has no positive: left out, without torchmetrics' warning
        warnings.simplefilter("error")
        frequency, ap, index = label_average_precision(Predictions("multilabel", probabilities, target))
    assert index.tolist() == [0, 2]
    # label 0, ranked 0.9(+) 0.8(-) 0.3(+) 0.1(-): AP = (1/1 + 2/3) / 2; label 2 (known 0.3- 0.2- 0.1+): AP = 1/3
    torch.testing.assert_close(ap, torch.tensor([(1 + 2 / 3) / 2, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(frequency, torch.tensor([0.5, 1 / 3], dtype=torch.float64))


def _reference_average_precision(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AP per column from its definition, ties judged at the end of their block (the re-implementation figures.py
    had before torchmetrics'): sum_n (R_n - R_{n-1}) P_n over distinct thresholds; NaN without a positive."""
    scores, target = scores.T.contiguous().double(), target.T.contiguous()
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    sorted_scores, sorted_target = scores.gather(1, order), target.gather(1, order)
    known, positive = (sorted_target >= 0).double(), (sorted_target == 1).double()
    precision = positive.cumsum(dim=1) / known.cumsum(dim=1).clamp_min(1)
    n = scores.shape[1]
    block_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    block_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    position = torch.arange(n).expand_as(sorted_scores)
    end_index = torch.where(block_end, position, n - 1).flip(1).cummin(dim=1).values.flip(1)
    total = positive.sum(dim=1)
    ap = (positive * precision.gather(1, end_index)).sum(dim=1) / total.clamp_min(1)
    return torch.where(total > 0, ap, math.nan)


@pytest.mark.filterwarnings("ignore:No positive samples")  # the reference, on the label without positives
@pytest.mark.parametrize("levels", [None, 5])  # continuous scores, and scores with many ties
def test_average_precision_matches_its_definition_and_torchmetrics(levels: int | None) -> None:
    probabilities, target = _multilabel(300, 12, seed=4)
    if levels:
        probabilities = (probabilities * levels).round() / levels
    target[:, 3] = torch.where(target[:, 3] == 1, 0.0, target[:, 3])  # a label without positives: NaN
    ap = average_precision(probabilities, target)
    reference = multilabel_average_precision(probabilities, target.long(), num_labels=12, average=None,
                                             ignore_index=-1)
    assert math.isnan(float(ap[3]))
    keep = torch.arange(12) != 3
    torch.testing.assert_close(ap[keep], reference[keep].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ap[keep], _reference_average_precision(probabilities, target)[keep],
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (dict(task="regression"), "task must be one of"),
        (dict(target=torch.zeros(4, 3)), r"target for task 'ordinal' must have shape \(4,\)"),
        (dict(group_id=torch.zeros(3, dtype=torch.long)), r"group_id must have shape \(4,\)"),
        (dict(corrected_probabilities=torch.zeros(4, 2)), r"corrected_probabilities must have shape \(4, 3\)"),
    ],
)
def test_bad_predictions_name_the_field(bad: dict, match: str) -> None:
    fields = dict(task="ordinal", probabilities=torch.full((4, 3), 1 / 3), target=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="Predictions: " + match):
        Predictions(**{**fields, **bad})


def _names(predictions: Predictions, tmp_path: Path) -> set[str]:
    figures = prediction_figures(predictions)
    for name, figure in figures.items():
        figure.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    return set(figures)


def test_each_task_draws_its_pictures(tmp_path: Path) -> None:
    probabilities, target = _probabilities(48, 30, 0), _labels(48, 30, 0)
    grouped = Predictions("ordinal", probabilities, target, group_id=torch.arange(48) // 8)
    assert _names(grouped, tmp_path) == {"confusion_matrix", "class_recall", "group_sums", "label_histogram",
                                         "reliability"}
    ungrouped = Predictions("multiclass", probabilities, target, group_id=torch.arange(48))
    assert "group_sums" not in _names(ungrouped, tmp_path)
    soft = Predictions("soft", probabilities[:, :3].softmax(dim=1), _probabilities(48, 3, 1))
    assert _names(soft, tmp_path) == {"confusion_matrix", "class_recall", "label_histogram", "reliability"}
    multi = Predictions("multilabel", *_multilabel(64, 40, seed=2))
    assert _names(multi, tmp_path) == {"label_ap", "label_histogram", "reliability"}


def test_reliability_shows_raw_and_corrected_side_by_side() -> None:
    probabilities, target = _probabilities(40, 5, 0), _labels(40, 5, 0)
    raw = reliability_figure(Predictions("ordinal", probabilities, target))
    both = reliability_figure(Predictions("ordinal", probabilities, target, corrected_probabilities=probabilities))
    assert len(raw.axes) == 1 and "raw" not in raw.axes[0].get_title()  # no correction: nothing is "raw"
    assert [ax.get_title().split(":")[0] for ax in both.axes] == ["raw", "prior-corrected"]


def test_pictures_name_the_classes_and_show_their_support() -> None:
    probabilities, target = _probabilities(60, 4, 0), torch.tensor([0] * 30 + [1] * 20 + [2] * 10)
    names = ("none", "one", "two", "many")
    predictions = Predictions("ordinal", probabilities, target, class_names=names)
    figures = prediction_figures(predictions)
    matrix = figures["confusion_matrix"].axes[0]
    assert [t.get_text() for t in matrix.get_yticklabels()] == ["none (n=30)", "one (n=20)", "two (n=10)",
                                                                  "many (n=0)"]
    assert [t.get_text() for t in matrix.get_xticklabels()] == list(names)
    recall = figures["class_recall"].axes[0]
    assert [t.get_text() for t in recall.texts] == ["n=30", "n=20", "n=10", "n/a"]
    reliability = figures["reliability"].axes[0]
    assert sum(int(t.get_text()) for t in reliability.texts if t.get_text()) == 60  # per-bin counts
    with pytest.raises(ValueError, match="class_names must name the 4 classes"):
        Predictions("ordinal", probabilities, target, class_names=names[:3])


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 12), c=st.integers(2, 5), seed=st.integers(0, 100),
       extreme=st.sampled_from(["onehot", "uniform", "random"]))
def test_figures_render_for_tiny_and_extreme_inputs(n: int, c: int, seed: int, extreme: str) -> None:
    if extreme == "onehot":
        probabilities = torch.nn.functional.one_hot(_labels(n, c, seed), c).float()
    elif extreme == "uniform":
        probabilities = torch.full((n, c), 1.0 / c)
    else:
        probabilities = _probabilities(n, c, seed, scale=100.0)
    tasks = [Predictions("ordinal", probabilities, _labels(n, c, seed + 7), group_id=torch.arange(n) // 2),
             Predictions("multilabel", probabilities, torch.zeros(n, c))]
    for predictions in tasks:
        for figure in prediction_figures(predictions).values():
            figure.canvas.draw()  # renders with Agg; fails on NaN limits or empty data mishandled
