"""``export_run``: a trained stage -> SavedModel (TF Serving), TFLite, ONNX, OpenVINO; verified, atomically.

Layout under ``out`` (``M`` = model name, ``V`` = version, an integer)::

    out/M/V/                          SavedModel; TF Serving's --model_base_path is out/M
    out/M/V/assets.extra/parity.json  the parity report of this export (TF Serving ignores it)
    out/tflite/M/V/M_vV_float32.tflite
    out/tflite/M/V/M_vV_float16.tflite
    out/tflite/M/V/M_vV_int8.tflite   uint8 pixel input, int8 un-normalised embedding output
    out/tflite/M/V/parity.json        the same report, beside the .tflite files
    out/onnx/M/V/M_vV.onnx            ONNX (ONNX Runtime, TensorRT), with its parity.json
    out/openvino/M/V/M_vV.xml, .bin   OpenVINO IR, with its parity.json

The version defaults to one more than the highest version under ``out/M``,
``out/tflite/M``, ``out/onnx/M`` and ``out/openvino/M``; an existing version is
never overwritten.

Atomicity (:mod:`aaa_keras.deploy.install`): everything is written into
``_partial_V_<pid>`` directories beside the targets (TF Serving ignores names
that are not integers), verified (the SavedModel is loaded back and compared
with Keras, every .tflite is run with LiteRT, the .onnx with ONNX Runtime, the
IR with OpenVINO, parity thresholds checked: :mod:`aaa_keras.deploy.parity`),
and only then renamed into place with ``os.rename`` (TFLite, ONNX, OpenVINO,
the SavedModel last). An exception or Ctrl-C removes the partial directories;
a killed process leaves only a ``_partial_*`` directory, which the next export
removes. An export that misses parity is moved to ``out/_rejected/`` for
inspection and raises ``UserError``. Each file is written through
:func:`aaa_keras.files.atomic_path`.
"""

from __future__ import annotations

import datetime
import os
import re
import time

import numpy as np

from aaa_keras.deploy import onnx_openvino
from aaa_keras.deploy import parity as parity_lib
from aaa_keras.deploy import tflite as tflite_lib
from aaa_keras.deploy.install import choose_version, versioned_install
from aaa_keras.errors import UserError
from aaa_keras.files import write_bytes_atomically, write_json_atomically
from aaa_keras.vocabulary import EXPORT_FORMATS, QUANTIZATIONS

FORMATS = EXPORT_FORMATS
TFLITE_DIR = "tflite"
ONNX_DIR = "onnx"
OPENVINO_DIR = "openvino"
COMMIT_ORDER = ("tflite", "onnx", "openvino", "saved_model")  # the SavedModel (TF Serving's) last
REJECTED_DIR = "_rejected"
PARITY_FILE = "parity.json"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


# === Arguments ===

def _choices(values, allowed, option: str) -> tuple:
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    if "all" in values:
        return tuple(allowed)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise UserError(f"{option}: got {', '.join(map(repr, unknown)) or 'nothing'}; expected one or more "
                        f"of {', '.join(allowed)} or all")
    return tuple(v for v in allowed if v in values)  # canonical order, no duplicates


def _check_model_name(model_name: str) -> str:
    reserved = (TFLITE_DIR, ONNX_DIR, OPENVINO_DIR, REJECTED_DIR)
    if not _MODEL_NAME.fullmatch(model_name or "") or model_name in reserved:
        raise UserError(f"--model-name: got {model_name!r}; expected letters, digits, '_', '-' or '.' "
                        f"(not starting with one of the last three, not {', '.join(map(repr, reserved))})")
    return model_name


def _check_arguments(run_dir, out, version, representative_count) -> None:
    if version is not None and (isinstance(version, bool) or int(version) != version or version < 1):
        raise UserError(f"--version: expected a positive integer, got {version!r}")
    if representative_count < 1:
        raise UserError(f"--representative-count: expected a positive integer, got {representative_count}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a directory")
    if not os.path.isdir(run_dir):
        raise UserError(f"--run-dir {run_dir}: no such directory; train a stage first with "
                        f"`python cli.py fit --stage baseline --run-dir {run_dir}`")


def _parents(out: str, model_name: str) -> dict[str, str]:
    """``{format: directory whose integer subdirectories are its versions}``."""
    return {"saved_model": os.path.join(out, model_name), "tflite": os.path.join(out, TFLITE_DIR, model_name),
            "onnx": os.path.join(out, ONNX_DIR, model_name), "openvino": os.path.join(out, OPENVINO_DIR, model_name)}


# === The export ===

def export_run(run_dir: str, out: str, stage: str | None = None, formats=FORMATS,
               quantizations=QUANTIZATIONS, model_name: str = "aaa_net", version: int | None = None,
               representative_count: int = 100, log=print, data: str | None = None,
               parity_max_images: int | None = None, num_threads: int = 2, neck_feature: str | None = None) -> dict:
    """Export the embedder of ``stage`` of ``run_dir`` (default: its latest stage) under ``out``.

    ``formats``: ``saved_model``, ``tflite``, ``onnx``, ``openvino`` (or ``"all"``);
    ``quantizations``: of the TFLite files, ``float32``, ``float16``, ``int8``
    (or ``"all"``). ``representative_count`` training images calibrate int8.
    ``data`` overrides the run's dataset root (for the parity checks and the
    calibration images). ``parity_max_images`` bounds the held set (whole
    test identities) on large datasets; default the whole test split.
    ``neck_feature`` replaces the run's retrieval feature (``after`` / ``before`` the BNNeck).

    Returns ``{"version", "stage", "saved_model", "tflite": {quant: path},
    "onnx", "openvino", "parity_json", "report"}`` (paths; None for formats
    not exported). Raises ``UserError`` for bad arguments and
    when parity is missed (the export is then moved to ``out/_rejected/``).
    """
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.source import resolve_run_data
    from aaa_keras.evaluation.run import extract_embeddings
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.run_dir import load_trained

    started = time.time()
    formats = _choices(formats, FORMATS, "--format")
    quantizations = _choices(quantizations, QUANTIZATIONS, "--quantize") if "tflite" in formats else ()
    model_name = _check_model_name(model_name)
    _check_arguments(run_dir, out, version, representative_count)

    # === The trained stage, the held set and its Keras embeddings ===
    feature_source = "--neck-feature" if neck_feature else "the run's"
    if not neck_feature and "int8" in quantizations:
        neck_feature, feature_source = INT8_NECK_FEATURE, "default where int8 is exported"
    trained = load_trained(run_dir, stage, neck_feature)
    config, parts, stage = trained.config, trained.parts, trained.stage
    embedder = build_embedder(parts)
    image_size = config.image_size
    root = resolve_run_data(data, config.data, run_dir, log)
    dataset = load_dataset(root)
    held = parity_lib.held_set(dataset, parity_max_images)
    parents = _parents(out, model_name)
    version = choose_version(parents.values(), version, model_name, out)

    with versioned_install(version, order=COMMIT_ORDER, clean=parents.values(), log=log) as install:
        log(f"Exporting stage {stage} of {run_dir} as {model_name} version {version} "
            f"({', '.join(formats)}{': ' + ', '.join(quantizations) if quantizations else ''}), "
            f"input {image_size[0]}x{image_size[1]}, embedding {parts.embedding_dim}-d")
        log(f"Parity held set: {len(held.query)} query + {len(held.gallery)} gallery images of {root}")
        if config.bnneck:
            log(f"Retrieval feature, in every format: {config.neck_feature} the BNNeck ({feature_source})")
        reference = parity_lib.Reference(held, extract_embeddings(embedder, held.records, image_size))
        _check_embeddings_usable(reference.embeddings, parts, held.records, image_size, run_dir, stage)
        report = {
            "model_name": model_name, "version": version, "run_dir": os.path.abspath(run_dir), "stage": stage,
            "backbone": config.backbone, "image_size": list(image_size), "embedding_dim": parts.embedding_dim,
            "neck_feature": config.neck_feature if config.bnneck else None,
            "neck_feature_from": feature_source if config.bnneck else None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "data": root,
            "held_set": {"source": "test split (query + gallery)", "num_query": len(held.query),
                         "num_gallery": len(held.gallery), "subset": held.subset},
            "thresholds": parity_lib.thresholds(),
            "keras": reference.retrieval,
        }
        files = {}  # format -> installed file name(s)

        if "int8" in quantizations and "tflite" in formats:
            report["keras"]["pixel_noise"] = _pixel_noise_sensitivity(embedder, reference, image_size)

        # === SavedModel ===
        if "saved_model" in formats:
            report["saved_model"] = _export_saved_model(
                embedder, image_size, install.partial("saved_model", parents["saved_model"]), reference, log)

        # === TFLite variants ===
        if "tflite" in formats:
            report["representative_set"], report["tflite"], files["tflite"] = _export_tflite_variants(
                parts, embedder, image_size, dataset, representative_count, quantizations, model_name, version,
                install.partial("tflite", parents["tflite"]), reference, num_threads, log)
            drop = parity_lib.int8_map_drop(report)
            if drop:
                report["int8_map_drop_points"], report["int8_map_reference"] = drop["points"], drop["reference"]

        # === ONNX and OpenVINO ===
        for kind in ("onnx", "openvino"):
            if kind in formats:
                files[kind] = (onnx_openvino.onnx_file_name if kind == "onnx" else
                               onnx_openvino.openvino_file_name)(model_name, version)
                path = os.path.join(install.partial(kind, parents[kind]), files[kind])
                report[kind] = _export_portable(kind, embedder, path, reference, num_threads, log)

        # === Parity verdict, then the commit (on leaving the block) or the rejection ===
        problems = parity_lib.failures(report)
        report["passed"], report["failures"] = not problems, problems
        report["seconds"] = round(time.time() - started, 1)
        for kind, partial in install.partials.items():
            target = os.path.join(partial, "assets.extra") if kind == "saved_model" else partial
            os.makedirs(target, exist_ok=True)
            write_json_atomically(os.path.join(target, PARITY_FILE), report)
        if problems:
            rejected = install.reject(os.path.join(out, REJECTED_DIR), f"{model_name}_v{version}")
            raise UserError(f"parity missed: {'; '.join(problems)}. The export was not installed; it is in "
                            f"{rejected} with its {PARITY_FILE}")
        finals = {kind: install.final(kind) for kind in formats}
    return _result(finals, files, version, stage, report, model_name, log)


def _result(finals: dict, files: dict, version: int, stage: str, report: dict, model_name: str, log) -> dict:
    """What :func:`export_run` returns, and its closing log lines."""
    tflite_files = {quantization: os.path.join(finals["tflite"], name)
                    for quantization, name in files.get("tflite", {}).items()}
    portable = {kind: os.path.join(finals[kind], files[kind]) for kind in ("onnx", "openvino") if kind in files}
    first = "tflite" if tflite_files else next(iter(portable), None)
    result = {
        "version": version, "stage": stage, "saved_model": finals.get("saved_model"), "tflite": tflite_files,
        "onnx": portable.get("onnx"), "openvino": portable.get("openvino"),
        "parity_json": (os.path.join(finals[first], PARITY_FILE) if first else
                        os.path.join(finals["saved_model"], "assets.extra", PARITY_FILE)),
        "report": report,
    }
    log(f"Parity passed; wrote {model_name} version {version} in {report['seconds']:.0f} s:")
    if result["saved_model"]:
        log(f"  SavedModel {result['saved_model']} (signatures serving_default, serving_uint8, serve_bytes)")
    for quantization, path in tflite_files.items():
        log(f"  TFLite {quantization}: {path}")
    for kind, path in portable.items():
        log(f"  {'ONNX' if kind == 'onnx' else 'OpenVINO IR'}: {path}")
    log(f"  {result['parity_json']}")
    return result


# === One format each: write, load back with its own runtime, score against Keras ===

def _export_saved_model(embedder, image_size, path, reference, log) -> dict:
    """Write the SavedModel to ``path``, load it back, and compare its three signatures with Keras on the
    whole held set (``serving_uint8`` against Keras on the same pixels rounded; ``serve_bytes`` on the files)."""
    from aaa_keras.deploy import saved_model
    from aaa_keras.deploy.runtime import read_images

    started = time.time()
    saved_model.save(embedder, image_size, path)
    signatures, _ = saved_model.load_signatures(path)
    missing = [name for name in saved_model.SIGNATURES if name not in signatures]
    if missing:
        raise UserError(f"{path}: the written SavedModel lacks the signatures {missing}")
    outputs = {"float": [], "uint8": [], "rounded_keras": [], "bytes": []}
    paths = [record.path for record in reference.held.records]
    for start in range(0, len(paths), SAVED_MODEL_BATCH):
        batch = paths[start:start + SAVED_MODEL_BATCH]
        images = read_images(batch, image_size)
        rounded = np.round(images)
        outputs["float"].append(saved_model.embed_images(signatures[saved_model.SIGNATURE_FLOAT], images))
        outputs["uint8"].append(saved_model.embed_images(signatures[saved_model.SIGNATURE_UINT8],
                                                         rounded.astype(np.uint8)))
        outputs["rounded_keras"].append(np.asarray(embedder.predict(rounded, verbose=0)))
        outputs["bytes"].append(saved_model.embed_files(signatures[saved_model.SIGNATURE_BYTES], batch, path))
    outputs = {name: np.concatenate(values) for name, values in outputs.items()}
    entry = reference.compare(outputs["float"])
    entry.update(reference.held.retrieval(outputs["float"]))
    for key, signature, embeddings, keras in (("serving_uint8", "uint8", outputs["uint8"], outputs["rounded_keras"]),
                                              ("serve_bytes", "bytes", outputs["bytes"], None)):
        compared = reference.compare(embeddings, reference=keras)
        entry.update({f"{key}_cosine_min": compared["cosine_min"], f"{key}_cosine_mean": compared["cosine_mean"],
                      f"{key}_worst_image": compared.get("worst_image"),
                      f"{key}_mAP": reference.held.retrieval(embeddings)["mAP"]})
    entry.update({
        "num_images": len(paths), "signatures": list(saved_model.SIGNATURES),
        "bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs),
        "check_seconds": round(time.time() - started, 1),
    })
    log(f"  SavedModel: {entry['bytes'] / 1e6:.1f} MB in {time.time() - started:.0f} s, loaded back: cosine to "
        f"Keras min {entry['cosine_min']:.6f} (serving_uint8 {entry['serving_uint8_cosine_min']:.6f}, "
        f"serve_bytes {entry['serve_bytes_cosine_min']:.6f}), mAP {entry['mAP']:.2f} "
        f"(Keras {reference.retrieval['mAP']:.2f})")
    return entry


SAVED_MODEL_BATCH = 64  # held images read and run through each signature at a time


def _export_tflite_variants(parts, embedder, image_size, dataset, representative_count, quantizations, model_name,
                            version, partial, reference, num_threads, log) -> tuple[dict, dict, dict]:
    """Convert, check and write each quantization into ``partial``.

    Returns ``(representative set info, {quantization: parity entry}, {quantization: file name})``.
    """
    from aaa_keras.deploy.runtime import read_images

    train_records = parity_lib.spread(list(dataset.train), representative_count)
    representative = read_images([r.path for r in train_records], image_size)
    info = {"source": "training split", "num_images": len(train_records), "requested": representative_count}
    graphs = {"float": tflite_lib.tflite_graph(parts),  # float32 / float16: L2-normalised output
              "int8": tflite_lib.tflite_graph(parts, normalize=tflite_lib.INT8_OUTPUT_L2_NORMALIZED)}
    _check_same_outputs(graphs.values(), embedder, representative[:8])
    graph = graphs["float"]
    converted = {}
    if "int8" in quantizations:  # before the int8 calibration, which segfaults on overflowing activations
        converted["float32"] = tflite_lib.convert(graph, "float32")
        tflite_lib.check_activation_range(converted["float32"], representative[:8])
    entries, names = {}, {}
    for quantization in quantizations:
        name = tflite_lib.tflite_file_name(model_name, version, quantization)
        entry, content = _export_tflite(graphs["int8" if quantization == "int8" else "float"], quantization,
                                        representative, reference, embedder.count_params(), name, num_threads,
                                        converted.get(quantization))
        write_bytes_atomically(os.path.join(partial, name), content)
        entries[quantization], names[quantization] = entry, name
        log(f"  {quantization}: {entry['bytes'] / 1e6:.1f} MB, cosine to Keras min {entry['cosine_min']:.5f} "
            f"1st percentile {entry['cosine_p1']:.5f} mean {entry['cosine_mean']:.5f} (centred min "
            f"{entry['centred_cosine_min']:.4f}), mAP {entry['mAP']:.2f} "
            f"(Keras {reference.retrieval['mAP']:.2f})")
    return info, entries, names


def _check_embeddings_usable(reference, parts, held, image_size, run_dir, stage) -> None:
    """Refuse a network whose embeddings are zero or not finite (nothing to export or compare)."""
    norms = np.linalg.norm(reference, axis=1)
    bad = int(np.sum(~np.isfinite(norms) | (norms < 0.5)))
    if not bad:
        return
    from aaa_keras.deploy.runtime import read_images

    raw, _ = parts.network.predict(read_images([r.path for r in held[:4]], image_size), verbose=0)
    raise UserError(
        f"--run-dir {run_dir} --stage {stage}: the embedder gives a zero or non-finite embedding for {bad} of "
        f"{len(reference)} test images (largest pre-normalisation value {float(np.abs(raw).max()):.3g}: the "
        "activations overflow float32). This is a barely trained network whose BatchNorm statistics have "
        "not settled; train it longer before exporting")


# With a BNNeck, the retrieval feature every format of an export takes when int8 TFLite is among its
# targets and --neck-feature is not given: int8 cannot hold the feature after the BNNeck (its per-dimension
# gain amplifies rounding; docs/decisions.md, "The int8 gate"). One feature per exported model.
INT8_NECK_FEATURE = "before"
PIXEL_NOISE_SIGMA = 2.0  # grey levels


def _pixel_noise_sensitivity(embedder, reference, image_size, sigma: float = PIXEL_NOISE_SIGMA) -> dict:
    """Cosines of the Keras embeddings of the held set under Gaussian pixel noise of ``sigma`` grey levels.

    int8 adds rounding noise at every op; a float network that already moves this much under a
    perturbation far below what a camera sees cannot be expected to keep its embeddings in int8.
    Measured: tiny_resnet (strong recipe, builtin:ablate) min 0.9986; MobileNetV3-Large trained
    from scratch for 10 epochs on the demo data 0.94, whose int8 model missed (cosine min 0.71).
    Reported beside the int8 parity.
    """
    from aaa_keras.deploy.runtime import read_images

    rng = np.random.default_rng(0)
    cosines = []
    records = reference.held.records
    for start in range(0, len(records), 64):
        images = read_images([r.path for r in records[start:start + 64]], image_size)
        noisy = np.clip(images + rng.normal(0.0, sigma, images.shape), 0.0, 255.0).astype(np.float32)
        cosines.append(parity_lib.cosines(np.asarray(embedder.predict(noisy, verbose=0)),
                                          reference.embeddings[start:start + 64]))
    cosines = np.concatenate(cosines)
    return {"sigma": sigma, "cosine_min": round(float(cosines.min()), 6),
            "cosine_mean": round(float(cosines.mean()), 6)}


def _check_same_outputs(graphs, embedder, images) -> None:
    """Each TFLite graph's output, L2-normalised, equals the embedder's."""
    from aaa_keras.deploy.contract import l2_normalized

    expected = np.asarray(embedder.predict(images, verbose=0))
    for graph in graphs:
        difference = float(np.abs(l2_normalized(graph.predict(images, verbose=0)) - expected).max())
        if difference > 1e-4:
            raise UserError(f"internal: the TFLite graph differs from the embedder by {difference:.2e}")


def _export_tflite(graph, quantization, representative, reference, num_weights, name, num_threads,
                   content=None) -> tuple[dict, bytes]:
    """Convert (unless ``content`` is given), check, run on the held set with LiteRT.

    Returns ``(parity entry, flatbuffer)``.
    """
    from aaa_keras.deploy.runtime import embed_files

    started = time.time()
    if content is None:
        content = tflite_lib.convert(graph, quantization, representative)
    tflite_lib.check_tflite(content, quantization, num_weights, name)
    runner = tflite_lib.TFLiteEmbedder(model_content=content, num_threads=num_threads)
    convert_seconds = time.time() - started
    embeddings = embed_files(runner, [r.path for r in reference.held.records])
    entry = reference.compare(embeddings)
    entry.update({"file": name, "bytes": len(content), **runner.io_details(),
                  "convert_seconds": round(convert_seconds, 1)})
    entry["output"]["l2_normalized"] = quantization != "int8" or tflite_lib.INT8_OUTPUT_L2_NORMALIZED
    if quantization == "int8":
        entry["embedding_range_headroom"] = tflite_lib.EMBEDDING_HEADROOM
    entry.update(reference.held.retrieval(embeddings))
    return entry, content


def _export_portable(kind, embedder, path, reference, num_threads, log) -> dict:
    """Write the ONNX or OpenVINO model to ``path``, load it with its own runtime, score it on the held set."""
    from aaa_keras.deploy.runtime import embed_files

    started = time.time()
    if kind == "onnx":
        info = onnx_openvino.save_onnx(embedder, path)
        runner = onnx_openvino.OnnxEmbedder(path, num_threads=num_threads)
        files = [path]
    else:
        info = onnx_openvino.save_openvino(embedder, path)
        runner = onnx_openvino.OpenVINOEmbedder(path, num_threads=num_threads)
        files = [path, path[:-len(".xml")] + ".bin"]
        info["inference_precision"] = runner.inference_precision
    convert_seconds = time.time() - started
    embeddings = embed_files(runner, [r.path for r in reference.held.records])
    entry = reference.compare(embeddings)
    entry.update({
        "file": os.path.basename(path), "bytes": sum(os.path.getsize(f) for f in files),
        "input": {"name": onnx_openvino.INPUT_NAME, "dtype": "float32", "shape": [-1, *runner.image_size, 3]},
        "output": {"name": onnx_openvino.OUTPUT_NAME, "dtype": "float32", "shape": [-1, runner.embedding_dim]},
        "convert_seconds": round(convert_seconds, 1), "num_threads": num_threads, **info,
    })
    entry.update(reference.held.retrieval(embeddings))
    precision = f", {entry['inference_precision']} inference" if "inference_precision" in entry else ""
    log(f"  {kind}: {entry['bytes'] / 1e6:.1f} MB{precision}, cosine to Keras min {entry['cosine_min']:.6f} "
        f"mean {entry['cosine_mean']:.6f}, mAP {entry['mAP']:.2f} (Keras {reference.retrieval['mAP']:.2f})")
    return entry
