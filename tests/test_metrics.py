"""Metrics against hand-computed values, against scikit-learn / scipy / torch as reference
implementations, and against the invariants they must keep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as sk

from pyro_bhpeft.analysis import metrics as m

# Four examples, two classes. Predicted classes 0, 1, 0, 1; correct, correct, wrong, wrong.
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
LABELS = np.array([0, 1, 1, 0])


def _softmax_data(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, rng.integers(0, c, n)


# --- hand-computed values -------------------------------------------------------------------------

def test_accuracy_nll_brier_by_hand():
    assert m.accuracy(PROBS, LABELS) == 0.5  # 2 of 4 argmaxes hit the label
    # -(log 0.9 + log 0.8 + log 0.4 + log 0.3) / 4 = (0.10536 + 0.22314 + 0.91629 + 1.20397) / 4
    assert m.nll(PROBS, LABELS) == pytest.approx(2.44877 / 4, abs=1e-5)
    # rows: (0.1^2 + 0.1^2) = 0.02, (0.2^2 + 0.2^2) = 0.08, (0.6^2 + 0.6^2) = 0.72, (0.7^2 + 0.7^2) = 0.98
    assert m.brier(PROBS, LABELS) == pytest.approx((0.02 + 0.08 + 0.72 + 0.98) / 4)  # 0.45


def test_nll_of_a_zero_probability_is_large_but_finite():
    value = m.nll(np.array([[1.0, 0.0]]), np.array([1]))
    assert value == pytest.approx(-np.log(1e-12))


def test_ece_and_mce_by_hand_with_15_bins():
    # bins have width 1/15: 0.9 -> (13/15, 14/15], 0.8 = 12/15 -> (11/15, 12/15] (right-inclusive),
    # 0.6 = 9/15 -> (8/15, 9/15], 0.7 -> (10/15, 11/15]: one example per bin, so each gap is |[correct] - conf|
    bins = m.reliability_bins(PROBS, LABELS)
    assert np.flatnonzero(bins.counts).tolist() == [8, 10, 11, 13]
    assert m.ece(PROBS, LABELS) == pytest.approx(100 * (0.1 + 0.2 + 0.6 + 0.7) / 4)  # 40 %
    assert m.mce(PROBS, LABELS) == pytest.approx(70.0)


def test_ece_and_mce_by_hand_with_shared_bins():
    # 5 bins: (0.4, 0.6] holds 0.6 (wrong); (0.6, 0.8] holds 0.8 (right) and 0.7 (wrong); (0.8, 1] holds 0.9 (right)
    # gaps: |0 - 0.6| = 0.6, |0.5 - 0.75| = 0.25, |1 - 0.9| = 0.1; weights 1/4, 2/4, 1/4
    bins = m.reliability_bins(PROBS, LABELS, n_bins=5)
    assert bins.counts.tolist() == [0, 0, 1, 2, 1]
    assert np.isnan(bins.confidence[:2]).all() and np.isnan(bins.accuracy[:2]).all()
    assert np.allclose(bins.confidence[2:], [0.6, 0.75, 0.9]) and np.allclose(bins.accuracy[2:], [0, 0.5, 1])
    assert m.ece(PROBS, LABELS, n_bins=5) == pytest.approx(100 * (0.6 / 4 + 0.25 * 2 / 4 + 0.1 / 4))  # 30 %
    assert m.mce(PROBS, LABELS, n_bins=5) == pytest.approx(60.0)
    # 1 bin: accuracy 0.5 against mean confidence (0.9 + 0.8 + 0.6 + 0.7) / 4 = 0.75
    assert m.ece(PROBS, LABELS, n_bins=1) == pytest.approx(25.0) == m.mce(PROBS, LABELS, n_bins=1)


def test_bin_edges_are_right_inclusive_and_the_ends_are_kept():
    # confidence 1.0 goes to the last bin, 0.5 = 7.5/15 to (7/15, 8/15], an exact edge 0.6 = 9/15 to the bin below it
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.6, 0.4], [0.4, 0.6]])
    bins = m.reliability_bins(probs, np.array([0, 0, 0, 1]))
    assert bins.counts[14] == 1 and bins.counts[7] == 1 and bins.counts[8] == 2
    assert bins.counts.sum() == 4
    # unnormalised rows: a confidence of 0 joins the first bin, rounding above 1 the last
    odd = m.reliability_bins(np.array([[0.0, 0.0], [1.0 + 1e-12, 0.0]]), np.array([0, 0]))
    assert odd.counts[0] == 1 and odd.counts[14] == 1


def test_regression_by_hand():
    mean, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])
    assert m.mse(mean, y) == pytest.approx((0 + 1 + 4) / 3)
    assert m.mae(mean, y) == pytest.approx((0 + 1 + 2) / 3)
    # 0.5 log(2 pi v) + (y - mean)^2 / (2 v): v = 1, error 0 -> 0.91894; v = 4, error 2 -> 1.61209 + 0.5
    value = m.gaussian_nll(np.array([0.0, 0.0]), np.array([1.0, 4.0]), np.array([0.0, 2.0]))
    assert value == pytest.approx((0.5 * np.log(2 * np.pi) + 0.5 * np.log(8 * np.pi) + 0.5) / 2)
    # 90% interval of N(0, 1) is [-1.6449, 1.6449]: 0 and 1.6 are inside, 1.7 and -3 are not
    assert m.interval_coverage(np.zeros(4), np.ones(4), np.array([0.0, 1.6, 1.7, -3.0])) == 0.5
    # a scalar variance is broadcast; the 50% interval of N(0, 4) is +-2 * 0.6745 = +-1.349
    assert m.interval_coverage(np.zeros(4), 4.0, np.array([0.0, 1.3, 1.4, -1.0]), level=0.5) == 0.75


def test_selective_prediction_by_hand():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1])  # the two confident ones are right, the two unsure ones wrong
    coverage, acc = m.accuracy_coverage_curve(probs, labels)
    assert np.allclose(coverage, [0.25, 0.5, 0.75, 1.0]) and np.allclose(acc, [1, 1, 2 / 3, 0.5])
    assert m.selective_auc(probs, labels) == pytest.approx((1 + 1 + 2 / 3 + 0.5) / 4)
    # an uncertainty that ranks the wrong ones first: accuracy 0, 0, 1/3, 1/2
    backwards = np.array([4.0, 3.0, 2.0, 1.0])
    assert np.allclose(m.accuracy_coverage_curve(probs, labels, backwards).accuracy, [0, 0, 1 / 3, 0.5])
    assert m.selective_auc(probs, labels, backwards) == pytest.approx((0 + 0 + 1 / 3 + 0.5) / 4)


def test_tied_uncertainties_are_averaged_so_data_order_does_not_matter():
    probs = np.full((4, 2), [0.6, 0.4])  # all tied; correct, wrong, wrong, correct
    labels = np.array([0, 1, 1, 0])
    assert np.allclose(m.accuracy_coverage_curve(probs, labels).accuracy, 0.5)
    # a tie group in the middle: kept accuracy inside it interpolates linearly
    u = np.array([0.0, 1.0, 1.0, 2.0])  # first right; tie of one right and one wrong; last wrong
    probs, labels = np.full((4, 2), [0.9, 0.1]), np.array([0, 0, 1, 1])
    assert np.allclose(m.accuracy_coverage_curve(probs, labels, u).accuracy, [1, 1.5 / 2, 2 / 3, 0.5])
    assert np.allclose(m.accuracy_coverage_curve(probs, labels[[0, 2, 1, 3]], u).accuracy, [1, 0.75, 2 / 3, 0.5])


def test_ood_auroc_by_hand():
    # out > in pairs: 2 beats 1 and ties 2 (1.5), 3 beats 1, 2 and ties 3 (2.5), 4 beats all (3): 7 of 9
    assert m.ood_auroc([1, 2, 3], [2, 3, 4]) == pytest.approx(7 / 9)
    assert m.ood_auroc([0.1, 0.2], [0.5, 0.9]) == 1.0
    assert m.ood_auroc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert m.ood_auroc([1.0, 1.0], [1.0]) == 0.5


def test_decomposition_by_hand():
    # two draws that disagree completely: mean (0.5, 0.5), predictive entropy log 2, each draw entropy 0
    draws = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    mean, predictive, expected, mi = m.decompose(draws)
    assert np.allclose(mean, [[0.5, 0.5]])
    assert np.allclose(predictive, np.log(2)) and np.allclose(expected, 0) and np.allclose(mi, np.log(2))
    # two agreeing uniform draws over 4 classes: all aleatoric, log 4 nats
    flat = m.decompose(np.full((2, 1, 4), 0.25))
    assert np.allclose(flat.expected_entropy, np.log(4)) and np.allclose(flat.mutual_information, 0)


def test_summaries_have_exactly_the_documented_keys_and_values():
    summary = m.classification_metrics(PROBS, LABELS)
    assert summary == {"accuracy": 0.5, "nll": m.nll(PROBS, LABELS), "brier": m.brier(PROBS, LABELS),
                       "ece": m.ece(PROBS, LABELS), "mce": m.mce(PROBS, LABELS)}
    assert all(type(v) is float for v in summary.values())
    reg = m.regression_metrics(np.zeros(4), np.ones(4), np.array([0.0, 1.6, 1.7, -3.0]))
    assert set(reg) == {"mse", "mae", "nll", "coverage90"} and reg["coverage90"] == 0.5


# --- reference libraries --------------------------------------------------------------------------

def test_classification_against_scikit_learn():
    probs, labels = _softmax_data(500, 4, seed=0)
    assert m.accuracy(probs, labels) == pytest.approx(sk.accuracy_score(labels, probs.argmax(1)))
    assert m.nll(probs, labels) == pytest.approx(sk.log_loss(labels, probs, labels=range(4)))
    assert m.brier(probs, labels) == pytest.approx(sk.brier_score_loss(labels, probs, labels=range(4)))


def test_binary_brier_is_twice_scikit_learns_default_binary_score():
    probs, labels = _softmax_data(300, 2, seed=1)
    ours = m.brier(probs, labels)
    assert ours == pytest.approx(2 * sk.brier_score_loss(labels, probs[:, 1]))  # 1/N sum (p1 - y)^2, halved scale
    assert ours == pytest.approx(sk.brier_score_loss(labels, probs, scale_by_half=False))


def test_ood_auroc_against_scikit_learn_with_and_without_ties():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=300), rng.normal(0.5, 1.0, size=200)
    for s_in, s_out in ((a, b), (np.round(a), np.round(b))):  # rounding makes many ties
        expected = sk.roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out])
        assert m.ood_auroc(s_in, s_out) == pytest.approx(expected)


def test_regression_against_scikit_learn_scipy_and_torch():
    rng = np.random.default_rng(3)
    mean, y, var = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.2, 3.0, size=50)
    assert m.mse(mean, y) == pytest.approx(sk.mean_squared_error(y, mean))
    assert m.mae(mean, y) == pytest.approx(sk.mean_absolute_error(y, mean))
    assert m.gaussian_nll(mean, var, y) == pytest.approx(-stats.norm.logpdf(y, mean, np.sqrt(var)).mean())
    reference = torch.nn.functional.gaussian_nll_loss(torch.tensor(mean), torch.tensor(y), torch.tensor(var),
                                                      full=True)
    assert m.gaussian_nll(mean, var, y) == pytest.approx(float(reference))
    lo, hi = stats.norm.interval(0.8, mean, np.sqrt(var))
    assert m.interval_coverage(mean, var, y, 0.8) == pytest.approx(((y >= lo) & (y <= hi)).mean())


def _loop_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Straightforward ECE: for each bin (lo, hi] (the first also takes 0), weight * |accuracy - confidence|."""
    conf, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        inside = (conf > edges[b]) & (conf <= edges[b + 1])
        if b == 0:
            inside |= conf == 0
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return 100 * total


@pytest.mark.parametrize("n_bins", [1, 10, 15, 20])
def test_ece_matches_an_independent_loop(n_bins):
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), size=1000)
    probs[:20] = [0.6, 0.3, 0.1]  # exactly on an edge for 10, 15 and 20 bins
    probs[20:30] = [0.5, 0.25, 0.25]
    labels = rng.integers(0, 3, 1000)
    assert m.ece(probs, labels, n_bins) == pytest.approx(_loop_ece(probs, labels, n_bins))
    assert m.mce(probs, labels, n_bins) >= m.ece(probs, labels, n_bins)


def test_calibrated_predictions_have_small_ece_and_overconfident_ones_large():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(3) * 0.5, size=20000)
    labels = (rng.random((20000, 1)) > probs.cumsum(1)).sum(1)  # labels drawn from probs: calibrated
    assert m.ece(probs, labels) < 1.5
    sharp = probs ** 4 / (probs ** 4).sum(1, keepdims=True)
    assert m.ece(sharp, labels) > 5


# --- invariants and inputs ------------------------------------------------------------------------

def test_decomposition_invariants():
    draws = np.random.default_rng(6).dirichlet(np.ones(3), size=(8, 20))
    mean, predictive, expected, mi = m.decompose(draws)
    assert np.allclose(mean, draws.mean(0))
    assert (mi >= 0).all() and (mi > 0).any()
    assert np.allclose(predictive, expected + mi)
    assert (predictive <= np.log(3) + 1e-12).all()
    same = np.repeat(draws[:1], 8, axis=0)
    assert np.allclose(m.decompose(same).mutual_information, 0.0)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_coverage_of_a_correct_gaussian_is_the_level(level):
    rng = np.random.default_rng(7)
    mean = rng.normal(size=20000)
    var = rng.uniform(0.5, 4.0, size=20000)
    y = rng.normal(mean, np.sqrt(var))
    assert m.interval_coverage(mean, var, y, level) == pytest.approx(level, abs=0.01)
    assert m.interval_coverage(mean, var / 4, y, level) < level - 0.1  # overconfident: too narrow


def test_selective_auc_of_an_uninformative_score_is_the_accuracy():
    probs, labels = _softmax_data(200, 3, seed=8)
    assert m.selective_auc(probs, labels, np.zeros(200)) == pytest.approx(m.accuracy(probs, labels))
    assert m.selective_auc(probs, labels) > m.accuracy(probs, labels)  # confidence is informative here


def test_torch_tensors_and_lists_give_the_same_numbers():
    probs, labels = _softmax_data(64, 3, seed=9)
    as_torch = m.classification_metrics(torch.tensor(probs, requires_grad=True), torch.tensor(labels))
    assert as_torch == pytest.approx(m.classification_metrics(probs, labels))
    assert m.accuracy(torch.tensor(probs, dtype=torch.bfloat16), torch.tensor(labels)) == pytest.approx(
        m.accuracy(probs.astype(np.float32), labels), abs=0.05)
    assert m.mse([1.0, 2.0], [1.0, 1.0]) == 0.5
    draws = torch.tensor(np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 5)))
    assert np.allclose(m.decompose(draws).mean, draws.numpy().mean(0))


BAD_INPUTS = {
    "probs not 2-D": (lambda: m.ece(np.ones(3), np.zeros(3)), r"probs has shape \(3,\); expected \(N, C\)"),
    "labels too short": (lambda: m.accuracy(PROBS, LABELS[:3]), r"labels has shape \(3,\); expected \(4,\)"),
    "labels 2-D": (lambda: m.nll(PROBS, LABELS[:, None]), r"expected \(4,\)"),
    "label out of range": (lambda: m.brier(PROBS, np.array([0, 1, 2, 0])), r"expected class indices 0\.\.1"),
    "negative label": (lambda: m.brier(PROBS, np.array([0, -1, 1, 0])), "expected class indices"),
    "fractional label": (lambda: m.accuracy(PROBS, np.array([0, 0.5, 1, 0])), "non-integer"),
    "empty": (lambda: m.accuracy(np.zeros((0, 2)), np.zeros(0, int)), "at least one example"),
    "zero bins": (lambda: m.ece(PROBS, LABELS, n_bins=0), "positive integer"),
    "fractional bins": (lambda: m.reliability_bins(PROBS, LABELS, n_bins=2.5), "positive integer"),
    "regression shapes": (lambda: m.mse(np.zeros(3), np.zeros(4)), r"expected one shape"),
    "column vs vector": (lambda: m.mae(np.zeros((3, 1)), np.zeros(3)), r"expected one shape"),
    "variance shape": (lambda: m.gaussian_nll(np.zeros(3), np.ones(2), np.zeros(3)), r"var has shape \(2,\)"),
    "negative variance": (lambda: m.interval_coverage(np.zeros(2), -np.ones(2), np.zeros(2)), "variances >= 0"),
    "level": (lambda: m.interval_coverage(np.zeros(2), np.ones(2), np.zeros(2), level=90), "between 0 and 1"),
    "uncertainty shape": (lambda: m.selective_auc(PROBS, LABELS, np.zeros(3)), r"expected \(4,\)"),
    "ood empty": (lambda: m.ood_auroc([], [1.0]), "N >= 1"),
    "ood nan": (lambda: m.ood_auroc([np.nan], [1.0]), "contains nan"),
    "draws not 3-D": (lambda: m.decompose(PROBS), r"expected \(K, N, C\)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_one_clear_line(case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_ece_floor_matches_the_one_bin_closed_form():
    # every confidence 0.8 (one bin): ECE = |acc - 0.8| with acc ~ Binomial(N, 0.8) / N, whose mean
    # absolute deviation is about sqrt(2 c (1 - c) / (pi N)).
    n, c = 400, 0.8
    probs = np.tile([c, 1 - c], (n, 1))
    floor = m.ece_floor(probs, draws=2000, seed=1)
    expected = 100 * np.sqrt(2 * c * (1 - c) / (np.pi * n))
    assert floor.mean == pytest.approx(expected, rel=0.08)
    assert 0 < floor.sd < floor.mean
    # four times the examples halve the floor
    assert m.ece_floor(np.tile([c, 1 - c], (4 * n, 1)), draws=2000, seed=1).mean == pytest.approx(expected / 2,
                                                                                                   rel=0.08)


def test_ece_floor_is_below_the_ece_of_a_miscalibrated_model():
    probs, labels = _softmax_data(2000, 3, seed=4)
    sharp = np.exp(3 * np.log(probs))
    sharp /= sharp.sum(1, keepdims=True)  # overconfident version of the same predictions
    assert m.ece(sharp, labels) > m.ece_floor(sharp).mean + 5 * m.ece_floor(sharp).sd


def test_prediction_rows_of_texts_without_labels_say_none():
    import torch

    from pyro_bhpeft.predict import ClassPrediction, RegressionPrediction, prediction_rows

    reg = RegressionPrediction(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 1.0]), torch.ones(2), torch.zeros(2), None, 4)
    assert [r["label"] for r in prediction_rows(reg, ["a", "b"])] == [None, None]
    nan = RegressionPrediction(torch.tensor([1.0]), torch.tensor([4.0]), torch.ones(1), torch.zeros(1),
                               torch.tensor([float("nan")]), 4)
    assert prediction_rows(nan, ["a"])[0]["label"] is None and prediction_rows(reg, ["a", "b"])[0]["std"] == 2.0
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    cls = ClassPrediction(probs, torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.tensor([1, -1]), 4)
    assert [r["label"] for r in prediction_rows(cls, ["a", "b"])] == [1, None]


def test_confidence_ece_is_the_ece_of_the_same_predictions_given_as_confidences():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, size=200)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    assert m.confidence_ece(conf, correct) == pytest.approx(m.ece(probs, labels), abs=1e-12)
    assert m.confidence_ece([0.9, 0.9], [True, False]) == pytest.approx(40.0)  # |0.5 - 0.9| in percent
