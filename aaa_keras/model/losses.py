"""The paper's losses (eq. 1-4), once each, written in ``keras.ops``.

Attention maps are ``(B, H, W, 1)``. Norms run over the spatial positions of
one sample; every function returns one value per sample, ``(B,)``, and the
caller reduces over the (global) batch, which keeps the losses correct under
``tf.distribute``.
"""

from __future__ import annotations

from keras import ops


def _spatial_l1(x):
    return ops.sum(ops.abs(x), axis=(1, 2, 3))


def attention_loss(attention_map, occlusion_target):
    """Eq. 2: L_att = || max(M_att, 0) - M_occ ||_1."""
    attention_map = ops.cast(attention_map, "float32")
    occlusion_target = ops.cast(occlusion_target, "float32")
    return _spatial_l1(ops.relu(attention_map) - occlusion_target)


def regularization_loss(attention_map):
    """Eq. 3: L_r = log(1 + exp(-||M_att||_1)), written as a softplus."""
    return ops.softplus(-_spatial_l1(ops.cast(attention_map, "float32")))


def adversarial_loss(attention_map, occlusion_target):
    """Eq. 1: L_adversarial = L_att + L_r (the stage-2 loss)."""
    return attention_loss(attention_map, occlusion_target) + regularization_loss(attention_map)


def adversarial_gate(p_before, p_after, omega: float = 0.04):
    """The switch of eq. 4: 1 where p_bf - p_af > omega, else 0, with no gradient."""
    gap = ops.stop_gradient(ops.cast(p_before, "float32") - ops.cast(p_after, "float32"))
    return ops.cast(gap > omega, "float32")


def gated_adversarial_loss(attention_map, occlusion_target, p_before, p_after,
                           lambda1: float = 0.3, lambda2: float = 1.7, omega: float = 0.04):
    """Eq. 4: g * (lambda1 * L_r + lambda2 * L_att), g = [p_bf - p_af > omega]."""
    gate = adversarial_gate(p_before, p_after, omega)
    return gate * (lambda1 * regularization_loss(attention_map)
                   + lambda2 * attention_loss(attention_map, occlusion_target))
