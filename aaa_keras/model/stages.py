"""The three stage models of the paper, each with its own ``train_step`` / ``test_step``.

Each step keeps the shape of Keras' default TensorFlow step: forward under a
``tf.GradientTape``, ``optimizer.scale_loss`` before ``tape.gradient``,
``optimizer.apply``, and a dict of ``keras.metrics.Mean`` results.

Per-sample losses are summed and divided by the *global* batch size
(:func:`global_batch_mean`): under ``tf.distribute`` gradients are summed
across replicas, so this gives the same update as one device on the same
global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from aaa_keras.model.backbone import ReidParts
from aaa_keras.model.losses import (adversarial_gate, attention_loss, gated_adversarial_loss,
                                    regularization_loss)
from aaa_keras.model.occlusion import hardest_occlusion, top_fraction_mask, true_class_probability


def global_batch_mean(per_sample):
    """Sum over this replica's samples / global batch size."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    per_sample = tf.cast(per_sample, tf.float32)
    return tf.reduce_sum(per_sample) / tf.cast(tf.shape(per_sample)[0] * replicas, tf.float32)


def cross_entropy(labels, logits):
    """Per-sample softmax cross-entropy, in float32."""
    return keras.losses.sparse_categorical_crossentropy(
        labels, tf.cast(logits, tf.float32), from_logits=True)


class _StageModel(keras.Model):
    """Shared plumbing: metric trackers declared by name, the default train/test step.

    A subclass defines ``_step(images, labels, training)`` returning the
    per-sample loss and a ``{tracker name: per-sample values}`` dict.
    """

    tracker_names: tuple[str, ...] = ()

    def _make_trackers(self):
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.tracker_names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _update(self, values: dict, weight=None):
        for name, value in values.items():
            self.trackers[name].update_state(tf.reduce_mean(tf.cast(value, tf.float32)),
                                             sample_weight=weight)

    def _results(self):
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def _apply_gradients(self, tape, loss):
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply(gradients, variables)

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            per_sample, values = self._step(images, labels, training=True)
            loss = self.optimizer.scale_loss(global_batch_mean(per_sample))
        self._apply_gradients(tape, loss)
        self._update(values)
        return self._results()

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        _, values = self._step(images, labels, training=False)
        self._update(values)
        return self._results()


class BaselineModel(_StageModel):
    """Stage 1 (paper 3.1): ``tail(stem(x))`` trained with softmax cross-entropy."""

    tracker_names = ("loss", "accuracy")

    def __init__(self, parts: ReidParts, **kwargs):
        super().__init__(**kwargs)
        self.parts = parts  # a plain dataclass: not tracked, so no variable is counted twice
        self.stem, self.tail = parts.stem, parts.tail
        self._make_trackers()

    def call(self, images, training=False):
        return self.tail(self.stem(images, training=training), training=training)[1]

    def _step(self, images, labels, training):
        logits = self(images, training=training)
        per_sample = cross_entropy(labels, logits)
        correct = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == tf.cast(labels, tf.int32),
                          tf.float32)
        return per_sample, {"loss": per_sample, "accuracy": correct}


class AttentionAssignmentModel(_StageModel):
    """Stage 2 (paper 3.2, Algorithm 1): only the attention branch trains.

    ``stem`` and ``tail`` are frozen and called with ``training=False``, so
    neither their weights nor their BatchNorm statistics change. The target
    ``M_occ`` is the hardest of the 16 grid occlusions of ``f``.
    """

    tracker_names = ("loss", "attention_loss", "regularization_loss", "hardest_cell_probability")

    def __init__(self, parts: ReidParts, attention: keras.Model, grid_size: int = 4,
                 cells_per_call: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.parts = parts
        self.stem, self.tail, self.attention = parts.stem, parts.tail, attention
        self.stem.trainable = False
        self.tail.trainable = False
        self.grid_size, self.cells_per_call = grid_size, cells_per_call
        self._make_trackers()

    def call(self, images, training=False):
        return self.attention(self.stem(images, training=False), training=training)

    def _step(self, images, labels, training):
        features = self.stem(images, training=False)
        attention_map = self.attention(features, training=training)
        m_occ, cell_probabilities, _ = hardest_occlusion(
            lambda f: self.tail(f, training=False)[1], features, labels,
            self.grid_size, self.cells_per_call)
        l_att = attention_loss(attention_map, m_occ)  # eq. 2
        l_r = regularization_loss(attention_map)  # eq. 3
        per_sample = l_att + l_r  # eq. 1
        return per_sample, {
            "loss": per_sample, "attention_loss": l_att, "regularization_loss": l_r,
            "hardest_cell_probability": tf.reduce_min(cell_probabilities, axis=1)}


class AdversarialModel(_StageModel):
    """Stage 3 (paper 3.3, Algorithm 2, eq. 4): the attention-aware adversarial network.

    ``f = stem(x)``, ``M_att = att(f)``, ``B`` zeros the top third of
    ``M_att``; cross-entropy on ``tail(f)`` and ``tail(f * B)`` trains stem,
    tail and classifier; the gated adversarial loss trains the attention
    branch (``M_att`` is computed from ``stop_gradient(f)``, so it does not
    reach the stem). With ``take_turns`` even optimizer steps are unabridged
    (cross-entropy on ``tail(f)`` only) and odd steps occluded (everything).
    """

    tracker_names = ("loss", "accuracy", "ce_before", "ce_after", "adversarial_loss",
                     "attention_loss", "regularization_loss", "gate_rate", "p_bf", "p_af")
    _occluded_only = ("ce_after", "adversarial_loss", "attention_loss", "regularization_loss",
                      "gate_rate", "p_bf", "p_af")

    def __init__(self, parts: ReidParts, attention: keras.Model, grid_size: int = 4,
                 cells_per_call: int = 16, occluded_fraction: float = 1.0 / 3.0,
                 lambda1: float = 0.3, lambda2: float = 1.7, omega: float = 0.04,
                 take_turns: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.parts = parts
        self.stem, self.tail, self.attention = parts.stem, parts.tail, attention
        self.grid_size, self.cells_per_call = grid_size, cells_per_call
        self.occluded_fraction = occluded_fraction
        self.lambda1, self.lambda2, self.omega = lambda1, lambda2, omega
        self.take_turns = take_turns
        self._make_trackers()

    def call(self, images, training=False):
        return self.tail(self.stem(images, training=training), training=training)[1]

    def _occluded_terms(self, features, logits_before, labels, training):
        """Everything an occluded step adds to the unabridged one, per sample."""
        attention_map = self.attention(tf.stop_gradient(features), training=training)
        mask = top_fraction_mask(attention_map, self.occluded_fraction)
        _, logits_after = self.tail(features * tf.cast(mask, features.dtype), training=training)
        p_bf = true_class_probability(logits_before, labels)
        p_af = true_class_probability(logits_after, labels)
        m_occ, _, _ = hardest_occlusion(
            lambda f: self.tail(f, training=False)[1], features, labels,
            self.grid_size, self.cells_per_call)
        return {
            "ce_after": cross_entropy(labels, logits_after),
            "adversarial_loss": gated_adversarial_loss(  # eq. 4
                attention_map, m_occ, p_bf, p_af, self.lambda1, self.lambda2, self.omega),
            "attention_loss": attention_loss(attention_map, m_occ),
            "regularization_loss": regularization_loss(attention_map),
            "gate_rate": adversarial_gate(p_bf, p_af, self.omega),
            "p_bf": p_bf,
            "p_af": p_af,
        }

    def _step(self, images, labels, training, occluded):
        """Per-sample loss and metric values; ``occluded`` is a scalar bool tensor."""
        features = self.stem(images, training=training)
        _, logits_before = self.tail(features, training=training)
        ce_before = cross_entropy(labels, logits_before)
        zeros = tf.zeros_like(ce_before)

        terms = tf.cond(
            occluded,
            lambda: self._occluded_terms(features, logits_before, labels, training),
            lambda: {name: zeros for name in self._occluded_only})
        per_sample = ce_before + terms["ce_after"] + terms["adversarial_loss"]
        correct = tf.cast(
            tf.argmax(logits_before, axis=-1, output_type=tf.int32) == tf.cast(labels, tf.int32),
            tf.float32)
        values = dict(terms, loss=per_sample, accuracy=correct, ce_before=ce_before)
        return per_sample, values

    def _is_occluded_step(self):
        if not self.take_turns:
            return tf.constant(True)
        return tf.equal(self.optimizer.iterations % 2, 1)

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        occluded = self._is_occluded_step()
        with tf.GradientTape() as tape:
            per_sample, values = self._step(images, labels, training=True, occluded=occluded)
            loss = self.optimizer.scale_loss(global_batch_mean(per_sample))
        self._apply_gradients(tape, loss)
        weight = tf.cast(occluded, tf.float32)
        self._update({k: v for k, v in values.items() if k not in self._occluded_only})
        self._update({k: v for k, v in values.items() if k in self._occluded_only}, weight=weight)
        return self._results()

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        _, values = self._step(images, labels, training=False, occluded=tf.constant(True))
        self._update(values)
        return self._results()
