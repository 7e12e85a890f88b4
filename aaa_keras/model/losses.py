"""The paper's losses (eq. 1-4), once each, written in ``keras.ops``.

Attention maps are ``(B, H, W, 1)``. Norms run over the spatial positions of
one sample; every function returns one value per sample, ``(B,)``, and the
caller reduces over the (global) batch, which keeps the losses correct under
``tf.distribute``.

Eq. 2 has several readings (``--attention-loss``, docs/decisions.md,
"Which attention loss"):

- ``l1``: eq. 2 as printed, ``|| max(M_att, 0) - M_occ ||_1`` against the
  one-cell target. It collapses on the built-in data (the median of a
  one-cell target is 0 and relu passes no gradient below 0).
- ``bce``: a per-position sigmoid cross-entropy of ``M_att`` (logits) against
  the same one-cell target, summed over positions like eq. 2's norm: the loss
  with which the paper's ref. [7] (A-Fast-RCNN) trains its mask network.
- ``soft``: the same cross-entropy against a graded target that scores
  every cell by how much occluding it lowers the true-class probability
  (:func:`aaa_keras.model.occlusion.occlusion_target`), so the map learns
  the ranking of all 16 cells and not only the hardest one.
"""

from __future__ import annotations

from keras import ops

from aaa_keras.config import ATTENTION_LOSSES


def _spatial_sum(x):
    return ops.sum(x, axis=(1, 2, 3))


def attention_l1_loss(attention_map, occlusion_target):
    """Eq. 2 as printed: L_att = || max(M_att, 0) - M_occ ||_1."""
    attention_map = ops.cast(attention_map, "float32")
    occlusion_target = ops.cast(occlusion_target, "float32")
    return _spatial_sum(ops.abs(ops.relu(attention_map) - occlusion_target))


def attention_bce_loss(attention_map, occlusion_target):
    """Eq. 2 read as in ref. [7]: sum over positions of sigmoid CE(M_att, M_occ).

    ``M_att`` are logits; written in the overflow-free form
    ``max(x, 0) - x z + log(1 + exp(-|x|))``.
    """
    logits = ops.cast(attention_map, "float32")
    target = ops.cast(occlusion_target, "float32")
    per_position = ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
    return _spatial_sum(per_position)


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
    return ops.softplus(-ops.mean(ops.abs(attention_map), axis=(1, 2, 3)))


def adversarial_loss(attention_map, occlusion_target, reading: str = "l1"):
    """Eq. 1: L_adversarial = L_att + L_r (the stage-2 loss)."""
    return attention_loss(attention_map, occlusion_target, reading) + regularization_loss(attention_map)


def adversarial_gate(p_before, p_after, omega: float = 0.04):
    """The switch of eq. 4: 1 where p_bf - p_af > omega, else 0, with no gradient."""
    gap = ops.stop_gradient(ops.cast(p_before, "float32") - ops.cast(p_after, "float32"))
    return ops.cast(gap > omega, "float32")


def gated_adversarial_loss(attention_map, occlusion_target, p_before, p_after,
                           lambda1: float = 0.3, lambda2: float = 1.7, omega: float = 0.04,
                           reading: str = "l1"):
    """Eq. 4: g * (lambda1 * L_r + lambda2 * L_att), g = [p_bf - p_af > omega]."""
    gate = adversarial_gate(p_before, p_after, omega)
    return gate * (lambda1 * regularization_loss(attention_map)
                   + lambda2 * attention_loss(attention_map, occlusion_target, reading))
