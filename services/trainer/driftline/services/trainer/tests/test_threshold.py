import numpy as np

from driftline.services.trainer.runner import best_f1_threshold


def test_threshold_separates_low_scoring_positives_from_negatives():
    # Positives all score below 0.5 (a model that has seen few of them) but above every negative.
    scores = np.array([0.01, 0.02, 0.05, 0.10, 0.20, 0.30])
    labels = np.array([0, 0, 0, 0, 1, 1])
    threshold = best_f1_threshold(labels, scores)
    assert 0.10 < threshold <= 0.20
    assert ((scores >= threshold) == labels.astype(bool)).all()


def test_threshold_is_half_without_positives():
    assert best_f1_threshold(np.zeros(5), np.linspace(0, 1, 5)) == 0.5


def test_threshold_prefers_the_cut_with_best_f1_when_classes_overlap():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    labels = np.array([1, 1, 0, 1, 0, 0])
    threshold = best_f1_threshold(labels, scores)
    predicted = scores >= threshold
    tp = (predicted & (labels == 1)).sum()
    f1 = 2 * tp / (predicted.sum() + labels.sum())
    assert f1 == max(
        2 * ((scores >= t) & (labels == 1)).sum() / ((scores >= t).sum() + labels.sum()) for t in scores
    )
