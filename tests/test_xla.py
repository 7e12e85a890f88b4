"""``--jit-compile``: the XLA-compiled train steps compute the same numbers."""

import keras
import numpy as np
import pytest

from aaa_keras.model.attention import build_attention_branch
from aaa_keras.model.backbone import build_parts
from aaa_keras.model.stages import AdversarialModel, AttentionAssignmentModel, BaselineModel

MODELS = {
    "baseline": lambda parts, attention: BaselineModel(parts),
    "attention": lambda parts, attention: AttentionAssignmentModel(parts, attention),
    "adversarial": lambda parts, attention: AdversarialModel(parts, attention, omega=-1.0),
}


def _two_steps(stage, jit_compile):
    keras.utils.set_random_seed(0)
    parts = build_parts(4, (64, 32), "tiny_resnet", "conv3", dropout=0.0)
    attention = build_attention_branch(parts.stem.output.shape[1:], filters=8, seed=0)
    model = MODELS[stage](parts, attention)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 64, 32, 3)).astype(np.float32)
    labels = (np.arange(8) % 4).astype(np.int32)
    metrics = [model.train_on_batch(images, labels, return_dict=True) for _ in range(2)]
    return metrics, [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize("stage", list(MODELS))
def test_jit_compiled_steps_match_the_graph_steps(stage):
    metrics_graph, weights_graph = _two_steps(stage, jit_compile=False)
    metrics_xla, weights_xla = _two_steps(stage, jit_compile=True)
    for graph, xla in zip(metrics_graph, metrics_xla):
        for name in graph:
            assert xla[name] == pytest.approx(graph[name], rel=1e-3, abs=1e-4), name
    for graph, xla in zip(weights_graph, weights_xla):
        np.testing.assert_allclose(xla, graph, rtol=1e-3, atol=1e-4)
