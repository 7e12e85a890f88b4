"""The paper's losses (eq. 1-4), once each, written in ``keras.ops``.

Attention maps are ``(B, H, W, 1)``. Norms run over the spatial positions of
one sample and are divided by their number (a per-position mean), in eq. 2 as
in eq. 3, so both terms have the same scale whatever the map size and eq. 4's
``lambda1`` / ``lambda2`` weigh two comparable numbers (docs/decisions.md,
"Eq. 2 and eq. 3 on one scale"). Every function returns one value per
sample, ``(B,)``, and the caller reduces over the (global) batch, which keeps
the losses correct under ``tf.distribute``.

Eq. 2 has several readings (``--attention-loss``, docs/decisions.md,
"Which attention loss"):

- ``l1``: eq. 2 as printed, ``|| max(M_att, 0) - M_occ ||_1`` against the
  one-cell target. It collapses on the built-in data (the median of a
  one-cell target is 0 and relu passes no gradient below 0).
- ``bce``: a per-position sigmoid cross-entropy of ``M_att`` (logits) against
  the same one-cell target, averaged over positions like eq. 2's norm: the loss
  with which the paper's ref. [7] (A-Fast-RCNN) trains its mask network.
- ``soft``: the same cross-entropy against a graded target that scores
  every cell by how much occluding it lowers the true-class probability
  (:func:`aaa_keras.model.occlusion.occlusion_target`), so the map learns
  the ranking of all 16 cells and not only the hardest one.

The strong recipe (Bag of Tricks, Luo et al. 2019) adds two losses of the
network, also one value per sample: :func:`label_smoothing_cross_entropy`
and :func:`batch_hard_triplet_loss`.
"""

from __future__ import annotations

from keras import ops

from aaa_keras.config import ATTENTION_LOSSES


def _per_position(x):
    """A norm over the positions of one map divided by their number (eq. 2 and eq. 3 alike)."""
    return ops.mean(x, axis=(1, 2, 3))


def attention_l1_loss(attention_map, occlusion_target):
    """Eq. 2 as printed: L_att = || max(M_att, 0) - M_occ ||_1, per position."""
    attention_map = ops.cast(attention_map, "float32")
    occlusion_target = ops.cast(occlusion_target, "float32")
    return _per_position(ops.abs(ops.relu(attention_map) - occlusion_target))


def attention_bce_loss(attention_map, occlusion_target):
    """Eq. 2 read as in ref. [7]: mean over positions of sigmoid CE(M_att, M_occ).

    ``M_att`` are logits; written in the overflow-free form
    ``max(x, 0) - x z + log(1 + exp(-|x|))``.
    """
    logits = ops.cast(attention_map, "float32")
    target = ops.cast(occlusion_target, "float32")
    per_position = ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
    return _per_position(per_position)


def attention_loss(attention_map, occlusion_target, reading: str = "l1"):
    """Eq. 2 in the chosen reading (``l1``, ``bce`` or ``soft``; see the module docstring)."""
    if reading == "l1":
        return attention_l1_loss(attention_map, occlusion_target)
    if reading in ("bce", "soft"):  # ``soft`` differs in its target, not in its loss
        return attention_bce_loss(attention_map, occlusion_target)
    raise ValueError(f"attention loss: got {reading!r}; expected one of {ATTENTION_LOSSES}")


def regularization_loss(attention_map):
    """Eq. 3: L_r = log(1 + exp(-||M_att||_1)), written as a softplus.

    The L1 norm is taken per position (divided by the number of positions):
    summed over a few hundred positions, ``exp(-||M_att||_1)`` is exactly 0
    in float32 and eq. 3 would have neither a value nor a gradient
    (docs/decisions.md, "Eq. 3").
    """
    attention_map = ops.cast(attention_map, "float32")
    return ops.softplus(-_per_position(ops.abs(attention_map)))


def adversarial_loss(attention_map, occlusion_target, reading: str = "l1"):
    """Eq. 1: L_adversarial = L_att + L_r (the stage-2 loss)."""
    return attention_loss(attention_map, occlusion_target, reading) + regularization_loss(attention_map)


def adversarial_gate(p_before, p_after, omega: float = 0.04):
    """The switch of eq. 4: 1 where p_bf - p_af > omega, else 0, with no gradient."""
    gap = ops.stop_gradient(ops.cast(p_before, "float32") - ops.cast(p_after, "float32"))
    return ops.cast(gap > omega, "float32")


def gated_adversarial_loss(attention_map, occlusion_target, p_before, p_after,
                           lambda1: float = 0.3, lambda2: float = 1.7, omega: float = 0.04,
                           reading: str = "l1", target_weight=None):
    """Eq. 4: g * (lambda1 * L_r + lambda2 * L_att), g = [p_bf - p_af > omega].

    ``target_weight`` (per sample, default ``g``) replaces ``g`` in front of ``L_att`` only: stage 3's
    sampled search (``--adversarial-targets sampled``) computes ``M_occ`` for a random subset of the
    open gates and weighs each by 1 / P(drawn), whose expectation is ``g``
    (:func:`aaa_keras.model.occlusion.sample_open_gates`).
    """
    gate = adversarial_gate(p_before, p_after, omega)
    weight = gate if target_weight is None else ops.cast(target_weight, "float32")
    return (gate * lambda1 * regularization_loss(attention_map)
            + weight * lambda2 * attention_loss(attention_map, occlusion_target, reading))


# === The strong recipe's network losses (Bag of Tricks) ===

def label_smoothing_cross_entropy(labels, logits, epsilon: float = 0.1):
    """Softmax cross-entropy against ``q = (1 - epsilon) onehot(y) + epsilon / N``.

    ``= (1 - epsilon) * (-log p_y) + epsilon * mean_k(-log p_k)`` (Szegedy et
    al. 2016; Luo et al. 2019 eq. 2 with ``N`` classes).
    """
    log_probabilities = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    labels = ops.expand_dims(ops.cast(labels, "int32"), -1)
    true_class = -ops.squeeze(ops.take_along_axis(log_probabilities, labels, axis=-1), -1)
    uniform = -ops.mean(log_probabilities, axis=-1)
    return (1.0 - epsilon) * true_class + epsilon * uniform


def pairwise_distances(embeddings):
    """Euclidean distances ``(B, B)``, the diagonal exactly 0.

    ``|a|^2 - 2 a.b + |b|^2`` leaves rounding noise where ``a = b`` (its
    square root ~1e-3 in float32), hence the zeroed diagonal; the ``sqrt`` of at
    least 1e-12 keeps every gradient finite.
    """
    embeddings = ops.cast(embeddings, "float32")
    squared = ops.sum(ops.square(embeddings), axis=-1)
    dot = ops.matmul(embeddings, ops.transpose(embeddings))
    distances = ops.sqrt(ops.maximum(squared[:, None] - 2.0 * dot + squared[None, :], 1e-12))
    return distances * (1.0 - ops.eye(ops.shape(embeddings)[0], dtype="float32"))


def batch_hard_triplet_loss(embeddings, labels, margin: float = 0.3):
    """Batch-hard triplet loss (Hermans et al. 2017): one value per anchor, ``(B,)``.

    ``max(0, margin + max_p d(a, p) - min_n d(a, n))`` over the batch: the
    farthest image of the anchor's identity and the closest of another. An
    anchor with no other image of its identity has ``d(a, a)`` (~0) as its
    hardest positive; one with no negative in the batch gives 0.
    """
    distances = pairwise_distances(embeddings)
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
    hardest_positive = ops.max(distances * same, axis=1)
    largest = ops.stop_gradient(ops.max(distances))
    hardest_negative = ops.min(distances + same * (largest + 1.0), axis=1)
    has_negative = ops.cast(ops.min(same, axis=1) < 1.0, "float32")
    return ops.relu(hardest_positive - hardest_negative + margin) * has_negative
