"""The camera path with its defaults (issue 24.3): a BNNeck model (the strong recipe) exported to int8
TFLite through the CLI, no --neck-feature given, retrieves with the feature before the BNNeck, ends at
the un-normalised embedding, and is judged by the 1st percentile of its cosine and its mAP."""

import json

import pytest

from conftest import TINY, cli, succeeded


@pytest.mark.slow  # a minute; tests/test_export.py checks the same default through export_run in the default set
def test_int8_export_of_a_bnneck_model_passes_with_the_defaults(tiny_data, tmp_path):
    run_dir, models = tmp_path / "run", tmp_path / "models"
    succeeded(cli("fit", "--stage", "baseline", "--data", tiny_data, "--run-dir", run_dir, *TINY,
                  "--recipe", "strong", "--no-evaluate"))  # the later --recipe wins: BNNeck, P x K
    output = succeeded(cli("export", "--run-dir", run_dir, "--out", models, "--format", "tflite",
                           "--quantize", "int8"))
    assert "Parity passed" in output, output[-3000:]
    report = json.loads((models / "tflite" / "aaa_net" / "1" / "parity.json").read_text())
    assert (report["neck_feature"], report["neck_feature_from"]) == ("before", "default where int8 is exported")
    int8 = report["tflite"]["int8"]
    assert int8["output"]["l2_normalized"] is False  # the graph ends before the float L2 normalisation
    assert int8["cosine_min"] <= int8["cosine_p1"] and int8["cosine_p1"] >= 0.98
    assert abs(int8["mAP"] - report["keras"]["mAP"]) <= 1.0  # judged against Keras: no float32 exported
