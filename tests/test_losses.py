import numpy as np
import pytest
import tensorflow as tf

from aaa_keras.model.losses import (adversarial_gate, adversarial_loss, attention_bce_loss,
                                    attention_loss, batch_hard_triplet_loss, gated_adversarial_loss,
                                    label_smoothing_cross_entropy, regularization_loss)

RNG = np.random.default_rng(0)
M_ATT = RNG.normal(size=(6, 8, 4, 1)).astype(np.float32)
M_OCC = (RNG.random((6, 8, 4, 1)) > 0.8).astype(np.float32)
P_BF = RNG.random(6).astype(np.float32)
P_AF = RNG.random(6).astype(np.float32)


def _l_att(m, target):  # eq. 2, numpy reference, L1 norm per position
    return np.abs(np.maximum(m, 0) - target).mean(axis=(1, 2, 3))


def _l_r(m):  # eq. 3, numpy reference (log1p form), L1 norm per position
    return np.log1p(np.exp(-np.abs(m).mean(axis=(1, 2, 3))))


def _bce(m, target):  # per-position sigmoid cross-entropy, averaged; numpy reference in float64
    m, target = m.astype(np.float64), target.astype(np.float64)
    sigmoid = 1.0 / (1.0 + np.exp(-m))
    return -(target * np.log(sigmoid) + (1 - target) * np.log(1 - sigmoid)).mean(axis=(1, 2, 3))


def test_attention_loss_matches_numpy():
    np.testing.assert_allclose(attention_loss(M_ATT, M_OCC, "l1"), _l_att(M_ATT, M_OCC), rtol=1e-5)


@pytest.mark.parametrize("target", ["binary", "graded"])
def test_bce_attention_loss_matches_numpy(target):
    occ = M_OCC if target == "binary" else RNG.random(M_OCC.shape).astype(np.float32)
    np.testing.assert_allclose(attention_bce_loss(M_ATT, occ), _bce(M_ATT, occ), rtol=1e-5)
    np.testing.assert_allclose(attention_loss(M_ATT, occ, "bce"), _bce(M_ATT, occ), rtol=1e-5)


def test_bce_attention_loss_is_finite_for_large_logits():
    big = np.array([-200.0, -30.0, 30.0, 200.0], np.float32).reshape(1, 2, 2, 1)
    target = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
    assert float(attention_bce_loss(big, target)[0]) == pytest.approx((200.0 + 200.0) / 4, rel=1e-4)


def test_regularization_loss_matches_numpy_and_is_stable():
    small = M_ATT * 0.01  # small norms, where log(1 + exp(-x)) is far from 0
    np.testing.assert_allclose(regularization_loss(small), _l_r(small), rtol=1e-5)
    huge = np.full((1, 8, 4, 1), 1e4, np.float32)
    assert np.isfinite(regularization_loss(huge)).all()


def test_regularization_loss_is_not_zero_on_a_large_map():
    # a 32x16 map of values ~1: its summed L1 norm is ~400, exp(-400) = 0.0 in float32;
    # normalised per position eq. 3 keeps a value and a gradient (docs/decisions.md, "Eq. 3")
    attention_map = tf.Variable(np.ones((2, 32, 16, 1), np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(regularization_loss(attention_map))
    assert float(loss) > 0.1
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, attention_map)))) > 0


@pytest.mark.parametrize("reading", ["l1", "bce"])
def test_eq2_and_eq3_do_not_depend_on_the_map_size(reading):
    """Both terms are per-position means (issue 20.4): the same map at 2x2 the resolution (each
    position repeated) has the same eq. 2 and eq. 3, so eq. 4's lambda1 : lambda2 and the
    attention learning rate mean the same at 128x64 and 256x128."""
    finer_map = np.repeat(np.repeat(M_ATT, 2, axis=1), 2, axis=2)
    finer_target = np.repeat(np.repeat(M_OCC, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(attention_loss(finer_map, finer_target, reading),
                               attention_loss(M_ATT, M_OCC, reading), rtol=1e-5)
    np.testing.assert_allclose(regularization_loss(finer_map), regularization_loss(M_ATT), rtol=1e-5)
    # the two terms are of one order: eq. 3 is at least a tenth of eq. 2 on a map of order 1
    assert np.all(regularization_loss(M_ATT) > 0.1 * attention_loss(M_ATT, M_OCC, reading))


def test_adversarial_loss_is_the_sum_of_eq2_and_eq3():
    np.testing.assert_allclose(adversarial_loss(M_ATT * 0.1, M_OCC, "l1"),
                               _l_att(M_ATT * 0.1, M_OCC) + _l_r(M_ATT * 0.1), rtol=1e-5)


def test_gated_adversarial_loss_matches_numpy():
    lambda1, lambda2, omega = 0.3, 1.7, 0.04
    gate = (P_BF - P_AF > omega).astype(np.float32)
    expected = gate * (lambda1 * _l_r(M_ATT * 0.1) + lambda2 * _l_att(M_ATT * 0.1, M_OCC))
    got = gated_adversarial_loss(M_ATT * 0.1, M_OCC, P_BF, P_AF, lambda1, lambda2, omega, "l1")
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    expected_bce = gate * (lambda1 * _l_r(M_ATT) + lambda2 * _bce(M_ATT, M_OCC))
    got_bce = gated_adversarial_loss(M_ATT, M_OCC, P_BF, P_AF, lambda1, lambda2, omega, "bce")
    np.testing.assert_allclose(got_bce, expected_bce, rtol=1e-5)
    assert 0 < gate.sum() < 6  # the test data exercises both sides of the gate


def _attention_gradient(omega):
    attention_map = tf.Variable(M_ATT)
    p_bf, p_af = tf.Variable(P_BF), tf.Variable(P_AF)
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_mean(gated_adversarial_loss(attention_map, M_OCC, p_bf, p_af, omega=omega,
                                                     reading="bce"))
    return tape.gradient(loss, attention_map), tape.gradient(loss, [p_bf, p_af])


def test_gate_above_every_gap_gives_zero_gradient():
    gradient, _ = _attention_gradient(omega=2.0)
    assert gradient is None or not np.any(gradient.numpy())


def test_gate_below_the_gaps_gives_a_gradient():
    gradient, _ = _attention_gradient(omega=-2.0)
    assert np.abs(gradient.numpy()).sum() > 0


def test_no_gradient_flows_through_the_gate():
    _, (grad_bf, grad_af) = _attention_gradient(omega=0.0)
    assert grad_bf is None and grad_af is None


@pytest.mark.parametrize("omega,expected", [(0.1, [0, 1, 0]), (-0.5, [1, 1, 1])])
def test_adversarial_gate(omega, expected):
    gate = adversarial_gate(np.array([0.5, 0.9, 0.2]), np.array([0.45, 0.1, 0.3]), omega)
    np.testing.assert_array_equal(gate, expected)


# === The strong recipe's losses ===

def _batch_hard_brute_force(embeddings, labels, margin):
    """One anchor at a time: farthest positive, closest negative, in float64."""
    x = embeddings.astype(np.float64)
    losses = []
    for a in range(len(x)):
        distances = [np.linalg.norm(x[a] - x[j]) for j in range(len(x))]
        positives = [distances[j] for j in range(len(x)) if labels[j] == labels[a]]  # includes a
        negatives = [distances[j] for j in range(len(x)) if labels[j] != labels[a]]
        losses.append(max(0.0, margin + max(positives) - min(negatives)) if negatives else 0.0)
    return np.array(losses)


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 0, 2, 1, 2, 3, 3], [5, 1, 2, 3, 4, 0, 6, 7]])
@pytest.mark.parametrize("margin", [0.3, 5.0])
def test_batch_hard_triplet_loss_matches_a_brute_force(labels, margin):
    embeddings = RNG.normal(size=(8, 5)).astype(np.float32)
    labels = np.array(labels, np.int32)
    np.testing.assert_allclose(batch_hard_triplet_loss(embeddings, labels, margin),
                               _batch_hard_brute_force(embeddings, labels, margin), rtol=1e-4, atol=1e-4)


def test_batch_hard_triplet_loss_has_finite_gradients_and_is_zero_without_negatives():
    embeddings = tf.Variable(RNG.normal(size=(4, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(batch_hard_triplet_loss(embeddings, np.array([0, 0, 1, 1]), 0.3))
    assert np.isfinite(tape.gradient(loss, embeddings).numpy()).all()
    assert np.all(batch_hard_triplet_loss(embeddings, np.zeros(4, np.int32), 0.3).numpy() == 0.0)


def test_label_smoothing_cross_entropy_matches_its_formula():
    logits = RNG.normal(size=(6, 7)).astype(np.float32) * 3
    labels = RNG.integers(0, 7, 6).astype(np.int32)
    epsilon = 0.1
    log_p = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    q = np.full((6, 7), epsilon / 7)  # q = (1 - eps) onehot + eps / N
    q[np.arange(6), labels] += 1 - epsilon
    np.testing.assert_allclose(label_smoothing_cross_entropy(labels, logits, epsilon),
                               -(q * log_p).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(label_smoothing_cross_entropy(labels, logits, 0.0),
                               -log_p[np.arange(6), labels], rtol=1e-5)
