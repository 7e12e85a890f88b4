"""Every fixed choice of the command line is named once (aaa_keras/config.py, aaa_keras/vocabulary.py).

``cli.py`` builds its ``click.Choice`` lists from those tuples; the modules
that act on a choice must accept exactly the same values.
"""

import os
import subprocess
import sys

from click.testing import CliRunner

import cli
from aaa_keras import config, vocabulary

ALL = vocabulary.ALL
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _choices(command, option):
    for param in command.params:
        if param.name == option:
            return list(param.type.choices)
    raise AssertionError(f"{command.name} has no option {option}")


def test_the_cli_choices_are_the_vocabulary():
    commands = cli.cli.commands
    expected = {
        ("fit", "stage"): config.STAGES,
        ("fit", "preset"): tuple(config.PRESETS),
        ("fit", "backbone"): config.BACKBONES,
        ("fit", "occlude_after"): config.OCCLUSION_POINTS,
        ("fit", "attention_loss"): config.ATTENTION_LOSSES,
        ("fit", "mask"): config.MASKS,
        ("fit", "occluded_batchnorm"): config.OCCLUDED_BATCHNORM,
        ("fit", "distribute"): config.DISTRIBUTE_STRATEGIES,
        ("fit", "mixed_precision"): config.MIXED_PRECISIONS,
        ("fit", "recipe"): config.RECIPES,
        ("fit", "optimizer"): config.OPTIMIZERS,
        ("fit", "last_stride"): tuple(str(s) for s in config.LAST_STRIDES),
        ("evaluate", "stage"): config.STAGES,
        ("evaluate", "metric"): (*vocabulary.METRICS, ALL),
        ("evaluate", "distribute"): config.DISTRIBUTE_STRATEGIES,
        ("evaluate", "mixed_precision"): config.MIXED_PRECISIONS,
        ("visualize", "what"): (*vocabulary.VISUALIZATIONS, ALL),
        ("export", "formats"): (*vocabulary.EXPORT_FORMATS, ALL),
        ("export", "quantize"): (*vocabulary.QUANTIZATIONS, ALL),
        ("index", "index_type"): vocabulary.INDEX_TYPES,
        ("ablate", "table"): (*vocabulary.ABLATION_TABLES, ALL),
        ("ablate", "preset"): tuple(config.PRESETS),
        ("ablate", "metric"): (*vocabulary.METRICS, ALL),
        ("ablate", "backbone"): config.BACKBONES,
        ("ablate", "recipe"): config.RECIPES,
    }
    for (command, option), values in expected.items():
        assert _choices(commands[command], option) == list(values), (command, option)


def test_the_modules_accept_the_same_values():
    from aaa_keras import ablate, visualize
    from aaa_keras.deploy import export, gallery, tflite
    from aaa_keras.evaluation import report

    assert set(vocabulary.METRICS) == {"euclidean", *report.LEARNED_METRICS}
    assert ablate.METRICS == report.METRICS == vocabulary.METRICS
    assert tuple(ablate.TABLES) == vocabulary.ABLATION_TABLES
    assert tuple(visualize.WHAT) == (*vocabulary.VISUALIZATIONS, ALL)
    assert tuple(export.FORMATS) == vocabulary.EXPORT_FORMATS
    assert tuple(tflite.QUANTIZATIONS) == tuple(export.QUANTIZATIONS) == vocabulary.QUANTIZATIONS
    assert gallery.INDEX_TYPES == vocabulary.INDEX_TYPES


def test_the_vocabulary_and_the_config_import_without_tensorflow_or_numpy():
    code = ("import sys, aaa_keras.vocabulary, aaa_keras.config; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    assert out.strip() == "[]"


def test_a_value_outside_the_vocabulary_is_refused_by_click():
    result = CliRunner().invoke(cli.cli, ["evaluate", "--run-dir", "x", "--distribute", "tpu"])
    assert result.exit_code == 2 and "'tpu' is not one of 'none', 'mirrored', 'multiworker'" in result.output
