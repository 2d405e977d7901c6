"""float64 numpy references written from the formulas (loops where that is the plainest statement)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def as_distribution(target: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot rows for labels, soft rows unchanged."""
    if target.ndim == 2:
        return target.astype(np.float64)
    return np.eye(num_classes)[target]


def rps(probs: np.ndarray, target: np.ndarray) -> float:
    c = probs.shape[1]
    return float(np.mean(np.sum((np.cumsum(probs, 1) - np.cumsum(as_distribution(target, c), 1)) ** 2, 1)))


def point(probs: np.ndarray, decoding: str) -> np.ndarray:
    if decoding == "expected":
        return probs @ np.arange(probs.shape[1], dtype=np.float64)
    if decoding == "argmax":
        return probs.argmax(1).astype(np.float64)
    return np.array([np.flatnonzero(np.cumsum(row) >= 0.5)[0] for row in probs], dtype=np.float64)


def label_value(target: np.ndarray, num_classes: int) -> np.ndarray:
    return as_distribution(target, num_classes) @ np.arange(num_classes, dtype=np.float64)


def per_class_mae(probs: np.ndarray, target: np.ndarray, decoding: str = "argmax") -> list[float]:
    pred = point(probs, decoding)
    return [float(np.mean(np.abs(pred[target == c] - c))) for c in range(probs.shape[1]) if np.any(target == c)]


def brier(probs: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.sum((probs - as_distribution(target, probs.shape[1])) ** 2, 1)))


def nll(probs: np.ndarray, target: np.ndarray, eps: float = 1e-8) -> float:
    q = as_distribution(target, probs.shape[1])
    return float(np.mean(-np.sum(q * np.log(np.maximum(probs, eps)), 1)))


def group_sums(probs: np.ndarray, target: np.ndarray, group_id: np.ndarray, decoding: str = "expected"):
    """{group: (predicted sum, true sum)}."""
    pred = point(probs, decoding)
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for p, y, g in zip(pred, target, group_id, strict=True):
        sums[int(g)][0] += p
        sums[int(g)][1] += y
    return dict(sums)


def group_sum_errors(probs, target, group_id, decoding="expected") -> dict[str, float]:
    sums = np.array(list(group_sums(probs, target, group_id, decoding).values()))
    error = sums[:, 0] - sums[:, 1]
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "rel": float(np.sum(np.abs(error)) / np.sum(sums[:, 1])),
    }


def group_sum_scores(probs, target, group_id, eps: float = 1e-12) -> dict[str, float]:
    """Mean RPS and NLL of each group's sum distribution (members' pmfs convolved) against the true sum."""
    members: dict[int, list[int]] = defaultdict(list)
    for n, g in enumerate(group_id):
        members[int(g)].append(n)
    rps_values, nll_values = [], []
    for rows in members.values():
        pmf = np.array([1.0])
        for n in rows:
            pmf = np.convolve(pmf, probs[n])
        true_sum = int(sum(target[n] for n in rows))
        step = (np.arange(pmf.size) >= true_sum).astype(np.float64)
        rps_values.append(np.sum((np.cumsum(pmf) - step) ** 2))
        nll_values.append(-np.log(max(pmf[true_sum], eps)))
    return {"rps": float(np.mean(rps_values)), "nll": float(np.mean(nll_values))}


def multilabel_ece(probs: np.ndarray, target: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-label ECE: sum over bins of |mean p - positive rate| weighted by the bin's share of known targets."""
    out = np.full(probs.shape[1], np.nan)
    for label in range(probs.shape[1]):
        known = target[:, label] != -1
        p, y = probs[known, label], target[known, label]
        if p.size == 0:
            continue
        bins = np.minimum(np.floor(p * n_bins).astype(int), n_bins - 1)
        out[label] = sum(
            np.sum(bins == b) / p.size * abs(p[bins == b].mean() - y[bins == b].mean())
            for b in range(n_bins) if np.any(bins == b)
        )
    return out


def topk_recall(probs: np.ndarray, target: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per label: positives ranked in the image's top k, and positives (unknown -1 is not positive)."""
    hits = np.zeros(probs.shape[1])
    positives = np.zeros(probs.shape[1])
    for row, labels in zip(probs, target, strict=True):
        top = set(np.argsort(-row, kind="stable")[:k].tolist())
        for label in np.flatnonzero(labels == 1):
            positives[label] += 1
            hits[label] += label in top
    return hits, positives
