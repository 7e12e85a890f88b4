"""The three stage models of the paper, each with its own ``train_step`` / ``test_step``.

(Past 450 lines: the three models share ``_StageModel`` and are read side by side.)

Each step keeps the shape of Keras' default TensorFlow step: forward under a
``tf.GradientTape``, ``optimizer.scale_loss`` before ``tape.gradient``,
``optimizer.apply``, and a dict of ``keras.metrics.Mean`` results.

Per-sample losses are summed and divided by the *global* batch size
(:func:`global_batch_mean`): under ``tf.distribute`` gradients are summed
across replicas, so this gives the same update as one device on the same
global batch. The batch-hard triplet loss of the strong recipe mines its
positives and negatives within each replica's part of the batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from aaa_keras.model.backbone import ReidParts
from aaa_keras.model.batchnorm import batch_statistics_only
from aaa_keras.model.losses import (adversarial_gate, adversarial_loss, attention_loss,
                                    batch_hard_triplet_loss, gated_adversarial_loss,
                                    label_smoothing_cross_entropy, regularization_loss)
from aaa_keras.model.pixel_occlusion import donor_indices, occlude_images
from aaa_keras.model.occlusion import (feature_response, hardest_occlusion, occlusion_target,
                                       occlusion_target_where, random_scores, sample_open_gates,
                                       top_fraction_mask, true_class_probability)

# stage 3: M_occ for the open gates of eq. 4 only, for every sample, or for a random few open gates
ADVERSARIAL_TARGETS = ("gated", "all", "sampled")
OCCLUSION_SPACES = ("feature", "pixel")  # stage 3 occludes f with zeros (paper) or the image (pixel_occlusion.py)



def global_batch_mean(per_sample):
    """Sum over this replica's samples / global batch size."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    per_sample = tf.cast(per_sample, tf.float32)
    return tf.reduce_sum(per_sample) / tf.cast(tf.shape(per_sample)[0] * replicas, tf.float32)


def cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Per-sample softmax cross-entropy, in float32; label-smoothed when ``label_smoothing`` > 0."""
    if label_smoothing:
        return label_smoothing_cross_entropy(labels, logits, label_smoothing)
    return keras.losses.sparse_categorical_crossentropy(
        labels, tf.cast(logits, tf.float32), from_logits=True)


class NetworkLoss:
    """The network's classification loss: cross-entropy (label-smoothed or not) + batch-hard triplet.

    The paper's recipe is the plain cross-entropy; the strong recipe smooths
    the labels and, with ``triplet_margin`` not None, adds the triplet loss on
    the pooled feature before the BNNeck (``ReidParts.training_tail``).
    """

    def __init__(self, label_smoothing: float = 0.0, triplet_margin: float | None = None):
        self.label_smoothing, self.triplet_margin = label_smoothing, triplet_margin

    @property
    def triplet(self) -> bool:
        return self.triplet_margin is not None

    def cross_entropy(self, labels, logits):
        return cross_entropy(labels, logits, self.label_smoothing)

    def triplet_loss(self, triplet_feature, labels):
        return batch_hard_triplet_loss(triplet_feature, labels, self.triplet_margin)


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

    def _update(self, values: dict, weight=None, sample_weights: dict | None = None):
        """Each tracker gets its step mean (weighted by ``weight``), or, for a name in
        ``sample_weights``, its per-sample values with those weights (a mean over some samples)."""
        for name, value in values.items():
            value = tf.cast(value, tf.float32)
            if sample_weights and name in sample_weights:
                self.trackers[name].update_state(value, sample_weight=sample_weights[name])
            else:
                self.trackers[name].update_state(tf.reduce_mean(value), sample_weight=weight)

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
    """Stage 1 (paper 3.1): ``tail(stem(x))`` trained with softmax cross-entropy.

    ``loss`` (a :class:`NetworkLoss`) adds the strong recipe's label smoothing
    and batch-hard triplet term; the default is the paper's plain cross-entropy.
    """

    def __init__(self, parts: ReidParts, loss: NetworkLoss | None = None, **kwargs):
        super().__init__(**kwargs)
        self.parts = parts  # a plain dataclass: not tracked, so no variable is counted twice
        self.stem, self.tail = parts.stem, parts.tail
        self.network_loss = loss or NetworkLoss()
        self.tracker_names = ("loss", "accuracy") + (
            ("cross_entropy", "triplet_loss") if self.network_loss.triplet else ())
        self._make_trackers()

    def call(self, images, training=False):
        return self.tail(self.stem(images, training=training), training=training)[1]

    def _step(self, images, labels, training):
        if self.network_loss.triplet:
            triplet_feature, _, logits = self.parts.training_tail(
                self.stem(images, training=training), training=training)
        else:
            logits = self(images, training=training)
        per_sample = self.network_loss.cross_entropy(labels, logits)
        values = {}
        if self.network_loss.triplet:
            triplet = self.network_loss.triplet_loss(triplet_feature, labels)
            values = {"cross_entropy": per_sample, "triplet_loss": triplet}
            per_sample = per_sample + triplet
        correct = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == tf.cast(labels, tf.int32),
                          tf.float32)
        return per_sample, {"loss": per_sample, "accuracy": correct, **values}


class AttentionAssignmentModel(_StageModel):
    """Stage 2 (paper 3.2, Algorithm 1): only the attention branch trains.

    ``stem`` and ``tail`` are frozen and called with ``training=False``, so
    neither their weights nor their BatchNorm statistics change. The target
    ``M_occ`` comes from the 16 grid occlusions of ``f`` (the hardest cell, or
    every cell graded with ``attention_loss="soft"``).

    Because the network is frozen, the grid search is a function of the input
    image alone. Fed ``((images, views), labels)`` after
    :meth:`set_target_table`, a step looks up each image's 16 cell
    probabilities in the table (row ``views[i]``, filled once per stage by
    ``attention_targets.target_table``) instead of searching again; fed
    ``(images, labels)`` it searches every step (``--attention-targets
    per-step``).
    """

    tracker_names = ("loss", "attention_loss", "regularization_loss", "hardest_cell_probability")

    def __init__(self, parts: ReidParts, attention: keras.Model, grid_size: int = 4,
                 cells_per_call: int = 16, attention_loss: str = "bce", **kwargs):
        super().__init__(**kwargs)
        self.parts = parts
        self.stem, self.tail, self.attention = parts.stem, parts.tail, attention
        self.stem.trainable = False
        self.tail.trainable = False
        self.grid_size, self.cells_per_call = grid_size, cells_per_call
        self.attention_loss_reading = attention_loss
        self.target_table = None
        self._make_trackers()

    def call(self, images, training=False):
        return self.attention(self.stem(images, training=False), training=training)

    def set_target_table(self, table) -> None:
        """The cell probabilities ``(views, K)`` of every training view (None: search every step)."""
        self.target_table = None if table is None else tf.constant(table, tf.float32)
        self.train_function = self.test_function = None  # retrace: the table is captured

    @tf.function
    def cell_probabilities(self, images, labels):
        """The true-class probability of every grid occlusion ``(B, K)`` (Alg. 1, l. 1-3), frozen network."""
        features = self.stem(images, training=False)
        return hardest_occlusion(lambda f: self.tail(f, training=False)[1], features, labels,
                                 self.grid_size, self.cells_per_call)[1]

    def train_step(self, data):
        return super().train_step(self._with_views(data))

    def test_step(self, data):
        return super().test_step(self._with_views(data))

    def _with_views(self, data):
        """``((images, views), labels)`` -> ``((images, views), labels)``; ``(images, labels)`` unchanged."""
        images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(images, (tuple, list)):
            if self.target_table is None:
                raise ValueError("stage 2 was fed view indices but has no target table: "
                                 "call set_target_table first")
            images = tuple(images)
        return keras.utils.pack_x_y_sample_weight(images, labels, weights)

    def _step(self, images, labels, training):
        views = None
        if isinstance(images, tuple):
            images, views = images
        features = self.stem(images, training=False)
        attention_map = self.attention(features, training=training)
        if views is None:
            _, cell_probabilities, hardest_cell = hardest_occlusion(
                lambda f: self.tail(f, training=False)[1], features, labels,
                self.grid_size, self.cells_per_call)
        else:  # the same numbers, searched once per view before the first epoch
            cell_probabilities = tf.gather(self.target_table, tf.cast(views, tf.int32))
            hardest_cell = tf.argmin(cell_probabilities, axis=1, output_type=tf.int32)
        m_occ = occlusion_target(self.attention_loss_reading, cell_probabilities, hardest_cell,
                                 features.shape[1], features.shape[2], self.grid_size)
        per_sample = adversarial_loss(attention_map, m_occ, self.attention_loss_reading)  # eq. 1
        return per_sample, {
            "loss": per_sample,
            "attention_loss": attention_loss(attention_map, m_occ, self.attention_loss_reading),  # eq. 2
            "regularization_loss": regularization_loss(attention_map),  # eq. 3
            "hardest_cell_probability": tf.reduce_min(cell_probabilities, axis=1)}


class AdversarialModel(_StageModel):
    """Stage 3 (paper 3.3, Algorithm 2, eq. 4): the attention-aware adversarial network.

    Two players, as in a Keras GAN ``train_step``:

    - the **network** (stem, tail, classifier; ``optimizer``) minimises the
      cross-entropy on ``tail(f)`` and on ``tail(f * B)`` (``loss``: label-
      smoothed under the strong recipe, plus the batch-hard triplet loss on
      the unoccluded pooled feature);
    - the **attention branch** (``attention_optimizer``) minimises the gated
      adversarial loss of eq. 4. ``M_att`` is computed from
      ``stop_gradient(f)``, so its loss never reaches the stem, and the branch
      does not move at all on steps where its loss is off (unabridged steps,
      or no sample of the batch passes the gate): no momentum drift
      (``_attention_player_step``).

    ``B`` zeros the top ``occluded_fraction`` of positions ranked by
    ``mask``: ``attention`` (``M_att``, AAA-Net), ``response`` (the channel
    mean of ``f``: paper Table 4 "without fine-tuning"; no attention branch,
    no adversarial term) or ``random`` (a random third: the control).

    The clean and the occluded pass share **one dropout mask**, so the gate
    ``p_bf - p_af > omega`` sees the occlusion and not two dropout draws.
    ``occluded_batchnorm``: ``batch`` normalises the occluded pass with its own
    batch statistics (the paper's network in training mode) without writing
    them into the moving averages, which stay those of clean features, the
    only ones inference sees (:func:`batch_statistics_only`); ``moving``
    normalises it with the moving statistics of the clean passes
    (docs/decisions.md).

    The classifier always sees its own input (``ReidParts.training_tail``),
    the BNNeck's output under the strong recipe, whatever ``--neck-feature``
    chooses for retrieval.

    With ``take_turns`` even optimizer steps are unabridged (cross-entropy on
    ``tail(f)`` only) and odd steps occluded (everything).

    ``targets="gated"`` runs the 16-cell grid search for ``M_occ`` only on the
    samples whose gate of eq. 4 is open: the target of a closed gate is
    multiplied by 0, so the loss and every gradient are those of ``"all"``
    (the search on every sample), and the target still comes from the current
    network. The logged ``attention_loss`` is eq. 2 averaged over the samples
    whose target was searched (the open gates, or the drawn ones).

    ``targets="sampled"`` (beyond the paper) searches at most ``target_samples`` of
    the open gates per occluded step (per replica), drawn uniformly, and weighs
    their ``L_att`` by 1 / P(drawn) (:func:`sample_open_gates`): the attention
    player's gradient is that of ``"gated"`` in expectation, from a search of a
    few samples (docs/decisions.md, "Stage 3's sampled search").

    ``occlusion_space="pixel"`` (beyond the paper, ``model/pixel_occlusion.py``): the same mask
    ``B``, upsampled to the image, is covered with the pixels of another identity of the batch,
    and the occluded image goes through stem and tail for ``ce_after`` / ``p_af`` (both under
    :func:`batch_statistics_only` with ``occluded_batchnorm="batch"``). The attention player's
    target ``M_occ`` stays the feature-space grid search (docs/decisions.md, "Occlusion in
    pixel space").
    """

    _adversarial_names = ("adversarial_loss", "attention_loss", "regularization_loss", "gate_rate")

    def __init__(self, parts: ReidParts, attention: keras.Model | None, grid_size: int = 4,
                 cells_per_call: int = 16, occluded_fraction: float = 1.0 / 3.0,
                 lambda1: float = 0.3, lambda2: float = 1.7, omega: float = 0.04,
                 take_turns: bool = True, mask: str = "attention", attention_loss: str = "bce",
                 occluded_batchnorm: str = "batch", seed: int | None = None,
                 loss: NetworkLoss | None = None, targets: str = "gated",
                 occlusion_space: str = "feature", target_samples: int = 4, **kwargs):
        super().__init__(**kwargs)
        if occlusion_space not in OCCLUSION_SPACES:
            raise ValueError(f"occlusion_space must be one of {OCCLUSION_SPACES}, got {occlusion_space!r}")
        self.occlusion_space = occlusion_space
        if mask == "attention" and attention is None:
            raise ValueError("mask='attention' needs an attention branch")
        if targets not in ADVERSARIAL_TARGETS:
            raise ValueError(f"targets must be one of {ADVERSARIAL_TARGETS}, got {targets!r}")
        self.targets = targets
        if targets == "sampled" and target_samples < 1:
            raise ValueError(f"target_samples must be >= 1, got {target_samples}")
        self.target_samples = int(target_samples)
        self.parts = parts
        self.network_loss = loss or NetworkLoss()
        self.stem, self.tail = parts.stem, parts.tail
        self.attention = attention if mask == "attention" else None
        self.grid_size, self.cells_per_call = grid_size, cells_per_call
        self.occluded_fraction = occluded_fraction
        self.lambda1, self.lambda2, self.omega = lambda1, lambda2, omega
        self.take_turns, self.mask = take_turns, mask
        self.attention_loss_reading = attention_loss
        self.occluded_batchnorm = occluded_batchnorm
        self.classifier = parts.tail.get_layer("classifier")
        self.dropout_rate = float(parts.tail.get_layer("dropout").rate)
        self.dropout_seed = keras.random.SeedGenerator(seed, name="shared_dropout_seed")
        self.mask_seed = keras.random.SeedGenerator(None if seed is None else seed + 1,
                                                    name="random_mask_seed")
        if occlusion_space == "pixel":  # only then: the feature-space model keeps its state unchanged
            self.donor_seed = keras.random.SeedGenerator(None if seed is None else seed + 2,
                                                         name="pixel_donor_seed")
        if targets == "sampled" and self.attention is not None:  # only then: other models keep their state
            self.target_draw_seed = keras.random.SeedGenerator(None if seed is None else seed + 3,
                                                               name="target_draw_seed")
        self.occluded_names = ("ce_after", "p_bf", "p_af") + (
            self._adversarial_names if self.attention is not None else ())
        # per-sample values that are not logged: which samples' M_occ was searched (attention_loss' weights)
        self.unlogged_names = ("searched",) if self.attention is not None else ()
        self.tracker_names = ("loss", "accuracy", "ce_before") + (
            ("triplet_loss",) if self.network_loss.triplet else ()) + self.occluded_names
        self.attention_optimizer = None
        self._make_trackers()

    def compile(self, optimizer="sgd", attention_optimizer=None, **kwargs):
        """``optimizer`` trains the network; ``attention_optimizer`` (default: a copy) the branch.

        Under ``mixed_float16`` Keras wraps ``optimizer`` in a ``LossScaleOptimizer``; the second
        player gets its own, else its float16 gradients are never scaled (issue 20.7).
        """
        super().compile(optimizer=optimizer, **kwargs)
        if self.attention is not None:
            if attention_optimizer is None:
                attention_optimizer = self.optimizer.__class__.from_config(self.optimizer.get_config())
            if (self.dtype_policy.name == "mixed_float16"
                    and not isinstance(attention_optimizer, keras.optimizers.LossScaleOptimizer)):
                attention_optimizer = keras.optimizers.LossScaleOptimizer(
                    attention_optimizer, name="attention_loss_scale_optimizer")
            self.attention_optimizer = attention_optimizer
            self.attention_optimizer.build(self.attention.trainable_variables)

    def call(self, images, training=False):
        return self.tail(self.stem(images, training=training), training=training)[1]

    # === Forward pieces ===

    def _dropout_keep(self, embedding, training):
        """One dropout mask (scaled by 1 / keep), shared by the clean and the occluded pass."""
        if not training or self.dropout_rate == 0.0:
            return None
        keep_probability = 1.0 - self.dropout_rate
        draw = keras.random.uniform(tf.shape(embedding), seed=self.dropout_seed)
        return tf.cast(draw < keep_probability, embedding.dtype) / tf.cast(keep_probability, embedding.dtype)

    def _classify(self, embedding, keep):
        return self.classifier(embedding if keep is None else embedding * keep)

    def _mask_scores(self, features, training):
        """The map whose top third is occluded (``M_att``, the feature response, or noise)."""
        if self.mask == "attention":
            return self.attention(tf.stop_gradient(features), training=training)
        if self.mask == "response":
            return feature_response(tf.stop_gradient(features))
        return random_scores(features, self.mask_seed)

    def _occluded_classifier_input(self, images, features, occlusion, labels, training):
        """The classifier's input of the occluded pass: ``tail(f * B)`` (Alg. 2, l. 2), or in pixel
        space ``tail(stem(x occluded where B = 0))``; its BatchNorm statistics are never written."""
        batch_statistics = training and self.occluded_batchnorm == "batch"
        if self.occlusion_space == "pixel":
            occluded_images, _ = occlude_images(images, occlusion, donor_indices(labels, self.donor_seed))
            if batch_statistics:
                with batch_statistics_only(self.parts.stem), batch_statistics_only(self.parts.training_tail):
                    return self.parts.training_tail(self.stem(occluded_images, training=True), training=True)[1]
            return self.parts.training_tail(self.stem(occluded_images, training=False), training=False)[1]
        occluded = features * tf.cast(occlusion, features.dtype)  # Alg. 2, l. 2
        if batch_statistics:
            with batch_statistics_only(self.parts.training_tail):
                return self.parts.training_tail(occluded, training=True)[1]
        return self.parts.training_tail(occluded, training=False)[1]

    def _occluded_terms(self, images, features, logits_before, keep, labels, training):
        """Everything an occluded step adds to the unabridged one, per sample."""
        scores = self._mask_scores(features, training)
        occlusion = top_fraction_mask(scores, self.occluded_fraction)  # Alg. 2, l. 1
        classifier_input_after = self._occluded_classifier_input(images, features, occlusion, labels, training)
        logits_after = self._classify(classifier_input_after, keep)
        p_bf = true_class_probability(logits_before, labels)  # Alg. 2, l. 3
        p_af = true_class_probability(logits_after, labels)
        terms = {"ce_after": self.network_loss.cross_entropy(labels, logits_after), "p_bf": p_bf,
                 "p_af": p_af}
        if self.attention is None:
            return terms
        gate = self._gate(p_bf, p_af)
        if self.targets == "sampled":
            searched, target_weight = sample_open_gates(gate, self.target_samples, self.target_draw_seed)
        else:
            searched, target_weight = gate, None
        m_occ = self._occlusion_target(features, labels, searched)
        reading = self.attention_loss_reading
        terms.update({
            "adversarial_loss": gated_adversarial_loss(  # eq. 4
                scores, m_occ, p_bf, p_af, self.lambda1, self.lambda2, self.omega, reading,
                target_weight=target_weight),
            "attention_loss": attention_loss(scores, m_occ, reading),  # logged over the searched only
            "regularization_loss": regularization_loss(scores),
            "gate_rate": gate,
            "searched": searched,
        })
        return terms

    def _gate(self, p_bf, p_af):
        """The switch of eq. 4 per sample (1 = the attention player learns from this sample)."""
        return adversarial_gate(p_bf, p_af, self.omega)

    def _occlusion_target(self, features, labels, needed):
        """``M_occ`` from the current network (Alg. 1's search, tail in inference mode) where ``needed``
        (the open gates, or the drawn ones) or for every sample (``targets="all"``)."""
        logits_fn = lambda f: self.tail(f, training=False)[1]  # noqa: E731
        if self.targets == "all":
            _, cell_probabilities, hardest_cell = hardest_occlusion(
                logits_fn, features, labels, self.grid_size, self.cells_per_call)
            return occlusion_target(self.attention_loss_reading, cell_probabilities, hardest_cell,
                                    features.shape[1], features.shape[2], self.grid_size)
        return occlusion_target_where(logits_fn, features, labels, needed, self.attention_loss_reading,
                                      self.grid_size, self.cells_per_call)[0]

    def _step(self, images, labels, training, occluded):
        """Per-sample network loss, per-sample attention loss, and metric values.

        ``occluded`` is a scalar bool tensor.
        """
        features = self.stem(images, training=training)
        triplet_feature, classifier_input, _ = self.parts.training_tail(features, training=training)
        keep = self._dropout_keep(classifier_input, training)
        logits_before = self._classify(classifier_input, keep)
        ce_before = self.network_loss.cross_entropy(labels, logits_before)
        zeros = tf.zeros_like(ce_before)
        extra = {}
        if self.network_loss.triplet:  # on the unoccluded feature only
            extra["triplet_loss"] = self.network_loss.triplet_loss(triplet_feature, labels)

        terms = tf.cond(
            occluded,
            lambda: self._occluded_terms(images, features, logits_before, keep, labels, training),
            lambda: {name: zeros for name in self.occluded_names + self.unlogged_names})
        network_loss = ce_before + terms["ce_after"]
        if "triplet_loss" in extra:
            network_loss = network_loss + extra["triplet_loss"]
        attention_player_loss = terms.get("adversarial_loss", zeros)
        correct = tf.cast(
            tf.argmax(logits_before, axis=-1, output_type=tf.int32) == tf.cast(labels, tf.int32),
            tf.float32)
        values = dict(terms, loss=network_loss + attention_player_loss, accuracy=correct,
                      ce_before=ce_before, **extra)
        return network_loss, attention_player_loss, values

    def _is_occluded_step(self):
        if not self.take_turns:
            return tf.constant(True)
        return tf.equal(self.optimizer.iterations % 2, 1)

    # === The two players ===

    def train_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        occluded = self._is_occluded_step()
        with tf.GradientTape(persistent=True) as tape:
            network_loss, attention_loss_value, values = self._step(
                images, labels, training=True, occluded=occluded)
            network_loss = self.optimizer.scale_loss(global_batch_mean(network_loss))
            if self.attention is not None:
                attention_loss_value = self.attention_optimizer.scale_loss(
                    global_batch_mean(attention_loss_value))
        network_variables = self.parts.network.trainable_variables
        self.optimizer.apply(tape.gradient(network_loss, network_variables), network_variables)
        if self.attention is not None:
            self._attention_player_step(tape, attention_loss_value, occluded, values["gate_rate"])
        del tape
        weight = tf.cast(occluded, tf.float32)
        self._update({k: v for k, v in values.items() if k in self.tracker_names and k not in self.occluded_names})
        self._update({k: v for k, v in values.items() if k in self.occluded_names}, weight=weight,
                     sample_weights=self._attention_loss_weights(values, weight))
        return self._results()

    def _attention_loss_weights(self, values, weight):
        """``attention_loss`` is averaged over the samples whose M_occ was searched."""
        if self.attention is None:
            return None
        return {"attention_loss": values["searched"] * weight}

    def _attention_player_step(self, tape, loss, occluded, gate):
        """Update the attention branch only when its loss is on somewhere in the global batch.

        Without a strategy the update is skipped with a ``tf.cond``, so no
        optimizer state (momentum) moves the branch while its loss is off.
        Under any ``tf.distribute`` strategy, also ``MirroredStrategy`` on one
        device, an optimizer cannot update inside a ``tf.cond`` (its
        all-reduce is a ``merge_call``), so the update runs
        with the gradient, which is exactly zero while the loss is off: the
        branch stays bit-identical with the default momentum-free player
        (``adversarial_attention_momentum = 0``); ``config.validate`` refuses
        momentum there.
        """
        variables = self.attention.trainable_variables
        gradients = tape.gradient(loss, variables)
        if tf.distribute.has_strategy():
            self.attention_optimizer.apply(gradients, variables)
            return
        loss_is_on = tf.logical_and(occluded, tf.reduce_sum(gate) > 0)

        def apply():
            self.attention_optimizer.apply(gradients, variables)
            return tf.constant(True)

        tf.cond(loss_is_on, apply, lambda: tf.constant(False))

    def test_step(self, data):
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        _, _, values = self._step(images, labels, training=False, occluded=tf.constant(True))
        self._update({k: v for k, v in values.items() if k in self.tracker_names},
                     sample_weights=self._attention_loss_weights(values, tf.constant(1.0)))
        return self._results()
