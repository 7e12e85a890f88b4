"""``export --for boxmot``: ONNX, OpenVINO and TFLite (float32 / float16 / int8) in BoxMOT's re-ID contract.

Layout under ``out`` (``M`` = model name, ``V`` = version)::

    out/boxmot/M/V/M_vV.onnx                         + M_vV.onnx.metadata.json
    out/boxmot/M/V/M_vV_openvino_model/M_vV.xml, .bin + manifest.json, M_vV.xml.metadata.json
    out/boxmot/M/V/M_vV_float32.tflite               + .metadata.json (and float16, int8)
    out/boxmot/M/V/parity.json

The contract and the graphs: :mod:`aaa_keras.deploy.boxmot`. The same parity
gate as ``export`` (:mod:`aaa_keras.deploy.parity`: per-image cosine min >=
0.999 for float formats; int8 1st percentile >= 0.98 and mAP at most 1 point
below float32's): each file is run with its own runtime on the held set
(the test split), read and resized as BoxMOT does (``cv2``) and normalised
as BoxMOT does, against the Keras embedder on the same resized pixels. The
version is installed atomically (:mod:`aaa_keras.deploy.install`); a miss
moves it to ``out/_rejected/`` and raises ``UserError``.
"""

from __future__ import annotations

import datetime
import os
import time

import numpy as np

from aaa_keras.deploy import boxmot
from aaa_keras.deploy import parity as parity_lib
from aaa_keras.deploy.install import choose_version, versioned_install
from aaa_keras.errors import UserError
from aaa_keras.files import write_bytes_atomically, write_json_atomically

BOXMOT_DIR = "boxmot"
FORMATS = ("onnx", "openvino", "tflite")
PARITY_BATCH = 64


def _formats(formats) -> tuple:
    """``export``'s --format values, as the BoxMOT formats (the SavedModel is not one of them)."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    if "all" in formats:
        return FORMATS
    chosen = tuple(f for f in FORMATS if f in formats)
    if not chosen:
        raise UserError(f"--for boxmot: --format {', '.join(formats)} has no BoxMOT format; BoxMOT loads "
                        f"{', '.join(FORMATS)} (leave out --format for all three)")
    return chosen


def export_boxmot(run_dir: str, out: str, stage: str | None = None, formats=FORMATS, quantizations=("all",),
                  model_name: str = "aaa_net", version: int | None = None, representative_count: int = 100,
                  log=print, data: str | None = None, parity_max_images: int | None = None,
                  num_threads: int = 2, neck_feature: str | None = None) -> dict:
    """Export the embedder of ``stage`` of ``run_dir`` for BoxMOT under ``out/boxmot/<model_name>/<version>/``.

    Returns ``{"version", "stage", "dir", "onnx", "openvino", "tflite": {quant: path}, "parity_json",
    "report"}``. Raises ``UserError`` on bad arguments or a missed parity threshold.
    """
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.source import resolve_run_data
    from aaa_keras.deploy import export as export_lib
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import load_trained
    from aaa_keras.vocabulary import QUANTIZATIONS

    started = time.time()
    formats = _formats(formats)
    quantizations = export_lib._choices(quantizations, QUANTIZATIONS, "--quantize") if "tflite" in formats else ()
    model_name = export_lib._check_model_name(model_name)
    export_lib._check_arguments(run_dir, out, version, representative_count)
    feature_source = "--neck-feature" if neck_feature else "the run's"
    if not neck_feature and "int8" in quantizations:
        neck_feature, feature_source = export_lib.INT8_NECK_FEATURE, "default where int8 is exported"
    trained = load_trained(run_dir, stage, neck_feature)
    config, parts, stage = trained.config, trained.parts, trained.stage
    embedder = build_embedder(parts)
    image_size = tuple(config.image_size)
    root = resolve_run_data(data, config.data, run_dir, log)
    dataset = load_dataset(root)
    held = parity_lib.held_set(dataset, parity_max_images)
    parent = os.path.join(out, BOXMOT_DIR, model_name)
    version = choose_version([parent], version, model_name, out, " for BoxMOT")

    with versioned_install(version, order=(BOXMOT_DIR,), clean=[parent], log=log) as install:
        partial = install.partial(BOXMOT_DIR, parent)
        log(f"Exporting stage {stage} of {run_dir} for BoxMOT as {model_name} version {version} "
            f"({', '.join(formats)}{': ' + ', '.join(quantizations) if quantizations else ''}), input "
            f"normalised RGB NCHW {image_size[0]}x{image_size[1]}, "
            f"embedding {parts.embedding_dim}-d")
        paths = [r.path for r in held.records]
        log(f"Parity held set: {len(held.query)} query + {len(held.gallery)} gallery images of {root}, read and "
            "resized with OpenCV as BoxMOT does")
        keras_embeddings = _keras_embeddings(embedder, paths, image_size)
        reference = parity_lib.Reference(held, keras_embeddings)
        report = {
            "target": boxmot.TARGET, "boxmot_version_read": boxmot.BOXMOT_VERSION_READ,
            "model_name": model_name, "version": version, "run_dir": os.path.abspath(run_dir), "stage": stage,
            "backbone": config.backbone, "image_size": list(image_size), "embedding_dim": parts.embedding_dim,
            "neck_feature": config.neck_feature if config.bnneck else None,
            "neck_feature_from": feature_source if config.bnneck else None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "data": root, "held_set": {"source": "test split (query + gallery)", "num_query": len(held.query),
                                       "num_gallery": len(held.gallery), "subset": held.subset,
                                       "reader": "cv2.imread + cv2.resize INTER_LINEAR (BoxMOT's)"},
            "thresholds": parity_lib.thresholds(), "keras": reference.retrieval,
        }
        meta = dict(model_name=model_name, image_size=image_size, embedding_dim=parts.embedding_dim)
        extra = {"producer": "aaa-keras export --for boxmot", "run_dir": os.path.abspath(run_dir), "stage": stage,
                 "version": version}
        files = {}
        for kind in ("onnx", "openvino"):
            if kind in formats:
                files[kind], report[kind] = _export_nchw(kind, embedder, image_size, partial, model_name, version,
                                                         reference, paths, num_threads, meta, extra, log)
        if quantizations:
            files["tflite"], report["tflite"], report["representative_set"] = _export_tflite(
                parts, image_size, dataset, representative_count, quantizations, partial, model_name, version,
                reference, paths, num_threads, meta, extra, embedder.count_params(), log)
            drop = parity_lib.int8_map_drop(report)
            if drop:
                report["int8_map_drop_points"], report["int8_map_reference"] = drop["points"], drop["reference"]
        problems = parity_lib.failures(report)
        report["passed"], report["failures"] = not problems, problems
        report["seconds"] = round(time.time() - started, 1)
        write_json_atomically(os.path.join(partial, export_lib.PARITY_FILE), report)
        if problems:
            rejected = install.reject(os.path.join(out, export_lib.REJECTED_DIR),
                                      f"{model_name}_boxmot_v{version}")
            raise UserError(f"parity missed: {'; '.join(problems)}. The BoxMOT export was not installed; it is in "
                            f"{rejected} with its {export_lib.PARITY_FILE}")
    final = os.path.join(parent, str(version))
    result = {"version": version, "stage": stage, "dir": final, "report": report,
              "parity_json": os.path.join(final, export_lib.PARITY_FILE),
              "onnx": os.path.join(final, files["onnx"]) if "onnx" in files else None,
              "openvino": os.path.join(final, files["openvino"]) if "openvino" in files else None,
              "tflite": {q: os.path.join(final, name) for q, name in files.get("tflite", {}).items()}}
    log(f"Parity passed; wrote {model_name} version {version} for BoxMOT in {report['seconds']:.0f} s:")
    for label, path in (("ONNX", result["onnx"]), ("OpenVINO", result["openvino"])):
        if path:
            log(f"  {label}: {path}")
    for quantization, path in result["tflite"].items():
        log(f"  TFLite {quantization}: {path}")
    log(f"  {result['parity_json']}")
    example = result["onnx"] or result["openvino"] or next(iter(result["tflite"].values()), "")
    log(f"  In BoxMOT: a tracker's reid_weights=Path('{example}') (docs/deployment.md, section 9)")
    return result


def _keras_embeddings(embedder, paths, image_size) -> np.ndarray:
    chunks = [np.asarray(embedder.predict(boxmot.read_crops(paths[s:s + PARITY_BATCH], image_size), verbose=0))
              for s in range(0, len(paths), PARITY_BATCH)]
    return np.concatenate(chunks).astype(np.float32)


def _score(runner, reference, paths, image_size) -> dict:
    """Run a BoxMOT-contract file on the held set (BoxMOT's reading, normalisation, layout) and compare."""
    started = time.time()
    chunks = [runner.embed(boxmot.read_crops(paths[s:s + PARITY_BATCH], image_size), PARITY_BATCH)
              for s in range(0, len(paths), PARITY_BATCH)]
    embeddings = np.concatenate(chunks)
    entry = reference.compare(embeddings)
    entry.update(reference.held.retrieval(embeddings))
    entry["check_seconds"] = round(time.time() - started, 1)
    return entry


def _export_nchw(kind, embedder, image_size, partial, model_name, version, reference, paths, num_threads, meta,
                 extra, log) -> tuple[str, dict]:
    from aaa_keras.deploy import onnx_openvino

    started = time.time()
    model = boxmot.nchw_model(embedder, image_size)
    if kind == "onnx":
        name = boxmot.onnx_file_name(model_name, version)
        artifact = os.path.join(partial, name)
        info = onnx_openvino.save_onnx(model, artifact)
        size = os.path.getsize(artifact)
    else:
        name = boxmot.openvino_dir_name(model_name, version)
        artifact = os.path.join(partial, name)
        os.makedirs(artifact)
        xml = os.path.join(artifact, f"{model_name}_v{version}.xml")
        info = onnx_openvino.save_openvino(model, xml)
        size = sum(os.path.getsize(os.path.join(artifact, f)) for f in os.listdir(artifact))
    height, width = image_size
    boxmot.write_sidecars(artifact, boxmot.sidecar(
        **meta, kind=kind, precision="float32", layout="NCHW",
        extra={**extra, "input_name": onnx_openvino.INPUT_NAME, "input_shape": [-1, 3, height, width]}))
    runner = boxmot.BoxmotEmbedder(artifact, num_threads)
    entry = _score(runner, reference, paths, image_size)
    entry.update({"file": name, "bytes": size, "convert_seconds": round(time.time() - started, 1), **info,
                  "input": {"name": onnx_openvino.INPUT_NAME, "dtype": "float32", "layout": "NCHW",
                            "shape": [-1, 3, height, width]}})
    log(f"  {kind}: {size / 1e6:.1f} MB, cosine to Keras min {entry['cosine_min']:.6f} mean "
        f"{entry['cosine_mean']:.6f}, mAP {entry['mAP']:.2f} (Keras {reference.retrieval['mAP']:.2f})")
    return name, entry


def _export_tflite(parts, image_size, dataset, representative_count, quantizations, partial, model_name, version,
                   reference, paths, num_threads, meta, extra, num_weights, log) -> tuple[dict, dict, dict]:
    from aaa_keras.deploy import tflite as tflite_lib

    train = parity_lib.spread(list(dataset.train), representative_count)
    representative = np.ascontiguousarray(np.transpose(
        boxmot.normalize(boxmot.read_crops([r.path for r in train], image_size)), (0, 3, 1, 2)))
    graphs = {"float": boxmot.nchw_model(tflite_lib.tflite_graph(parts), image_size),
              "int8": boxmot.nchw_model(tflite_lib.tflite_graph(parts, normalize=tflite_lib.INT8_OUTPUT_L2_NORMALIZED),
                                        image_size)}
    names, entries = {}, {}
    float32 = None
    if "int8" in quantizations:  # the int8 calibration segfaults on overflowing activations: check first
        float32 = tflite_lib.convert(graphs["float"], "float32")
        tflite_lib.check_activation_range(float32, representative[:8])
    for quantization in quantizations:
        started = time.time()
        if quantization == "int8":
            content = convert_int8(graphs["int8"], representative)
        elif quantization == "float32" and float32 is not None:
            content = float32
        else:
            content = tflite_lib.convert(graphs["float"], quantization)
        name = boxmot.tflite_file_name(model_name, version, quantization)
        tflite_lib.check_tflite(content, quantization, num_weights, name)
        artifact = os.path.join(partial, name)
        write_bytes_atomically(artifact, content)
        boxmot.write_sidecars(artifact, boxmot.sidecar(**meta, kind="tflite", precision=quantization,
                                                       layout="NCHW", extra=extra))
        runner = boxmot.BoxmotEmbedder(artifact, num_threads)
        entry = _score(runner, reference, paths, image_size)
        entry.update({"file": name, "bytes": len(content), "convert_seconds": round(time.time() - started, 1),
                      "input": _io(runner._input), "output": _io(runner._output)})
        entry["output"]["l2_normalized"] = quantization != "int8" or tflite_lib.INT8_OUTPUT_L2_NORMALIZED
        names[quantization], entries[quantization] = name, entry
        log(f"  tflite {quantization}: {len(content) / 1e6:.1f} MB, cosine to Keras min {entry['cosine_min']:.5f} "
            f"1st percentile {entry['cosine_p1']:.5f} mean {entry['cosine_mean']:.5f}, mAP {entry['mAP']:.2f} "
            f"(Keras {reference.retrieval['mAP']:.2f})")
    info = {"source": "training split", "num_images": len(train), "requested": representative_count}
    return names, entries, info


def _io(detail: dict) -> dict:
    return {"dtype": np.dtype(detail["dtype"]).name, "shape": [-1, *(int(v) for v in detail["shape"][1:])],
            "quantization": [float(v) for v in detail["quantization"]]}


def convert_int8(model, representative: np.ndarray) -> bytes:
    """Full-integer TFLite of ``model`` with an **int8 normalised input** (BoxMOT quantises its float crops with
    the input's scale / zero point) and an int8 un-normalised embedding output (BoxMOT dequantises and
    L2-normalises). Calibrated on normalised training crops, the first anchored to black and white so the
    input's range is exactly BoxMOT's (about [-2.12, 2.64]: 0.0187 per step, about one grey level)."""
    import contextlib
    import io

    import tensorflow as tf

    from aaa_keras.deploy import tflite as tflite_lib

    calibration = np.array(representative, np.float32, copy=True)
    low, high = boxmot.normalized_range()
    calibration[0, :, 0, 0], calibration[0, :, 0, -1] = low, high  # NCHW
    with contextlib.redirect_stdout(io.StringIO()):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return tflite_lib.convert_integer(converter, calibration, tf.int8)
