"""``export_run``: a trained stage -> SavedModel (TF Serving), TFLite, ONNX, OpenVINO; verified, atomically.

Layout under ``out`` (``M`` = model name, ``V`` = version, an integer)::

    out/M/V/                          SavedModel; TF Serving's --model_base_path is out/M
    out/M/V/assets.extra/parity.json  the parity report of this export (TF Serving ignores it)
    out/tflite/M/V/M_vV_float32.tflite
    out/tflite/M/V/M_vV_float16.tflite
    out/tflite/M/V/M_vV_int8.tflite   uint8 pixel input, int8 embedding output
    out/tflite/M/V/parity.json        the same report, beside the .tflite files
    out/onnx/M/V/M_vV.onnx            ONNX (ONNX Runtime, TensorRT), with its parity.json
    out/openvino/M/V/M_vV.xml, .bin   OpenVINO IR, with its parity.json

The version defaults to one more than the highest version under ``out/M``,
``out/tflite/M``, ``out/onnx/M`` and ``out/openvino/M``; an existing version is
never overwritten.

Atomicity: everything is written into ``_partial_V_<pid>`` directories beside
the targets (TF Serving ignores names that are not integers), verified (the
SavedModel is loaded back and compared with Keras, every .tflite is run with
LiteRT, the .onnx with ONNX Runtime, the IR with OpenVINO, parity thresholds
checked), and only then renamed into place with ``os.rename`` (TFLite, ONNX,
OpenVINO, the SavedModel last). An exception or
Ctrl-C removes the partial directories; a killed process leaves only a
``_partial_*`` directory, which the next export removes. An export that misses
parity is moved to ``out/_rejected/`` for inspection and raises ``UserError``.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import time

import numpy as np

from aaa_keras.deploy import onnx_openvino
from aaa_keras.deploy import parity as parity_lib
from aaa_keras.deploy import tflite as tflite_lib
from aaa_keras.errors import UserError
from aaa_keras.files import PARTIAL_PREFIX, write_json_atomically
from aaa_keras.run_lock import pid_alive

FORMATS = ("saved_model", "tflite", "onnx", "openvino")
QUANTIZATIONS = tflite_lib.QUANTIZATIONS
TFLITE_DIR = "tflite"
ONNX_DIR = "onnx"
OPENVINO_DIR = "openvino"
COMMIT_ORDER = ("tflite", "onnx", "openvino", "saved_model")  # the SavedModel (TF Serving's) last
REJECTED_DIR = "_rejected"
PARITY_FILE = "parity.json"
SAVED_MODEL_CHECK_IMAGES = 64  # held images the SavedModel's float / uint8 signatures are checked on
SAVED_MODEL_CHECK_FILES = 16  # held files whose encoded bytes go through serve_bytes
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


# === Versions and directories ===

def versions_in(directory: str) -> list[int]:
    """Integer-named subdirectories (TF Serving's versions), sorted."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def remove_stale_partials(directory: str, log=print) -> None:
    """Remove ``_partial_*`` directories left by a killed export (whose process is gone)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        match = re.fullmatch(PARTIAL_PREFIX + r"\d+_(\d+)", name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            log(f"Removed {os.path.join(directory, name)}, left by an interrupted export")


def _partial_dir(parent: str, version: int) -> str:
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f"{PARTIAL_PREFIX}{version}_{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    return path


def _commit(partial: str, final: str) -> None:
    try:
        os.rename(partial, final)
    except OSError as error:
        raise UserError(f"{final}: cannot move the finished export into place ({error}); another export "
                        "may have written this version meanwhile. Nothing was overwritten") from None


# === Data used by the checks ===

def _spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when fewer)."""
    if count >= len(items):
        return list(items)
    indices = np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))
    return [items[i] for i in indices]


def held_set(dataset, max_images: int | None = None) -> tuple[list, list]:
    """Query and gallery records for parity: the test split, or whole identities of it up to ``max_images``."""
    query, gallery = list(dataset.query), list(dataset.gallery)
    total = len(query) + len(gallery)
    if not max_images or total <= max_images:
        return query, gallery
    fraction = max_images / total
    pids = sorted({r.pid for r in query})
    keep = set(_spread(pids, max(1, int(round(len(pids) * fraction)))))
    other = [r for r in gallery if r.pid not in pids]  # distractors, junk, gallery-only ids
    other_kept = set(id(r) for r in _spread(other, int(round(len(other) * fraction))))
    return ([r for r in query if r.pid in keep],
            [r for r in gallery if r.pid in keep or id(r) in other_kept])


def _ids(records):
    return (np.array([r.pid for r in records], np.int64), np.array([r.camid for r in records], np.int64))


# === The export ===

def export_run(run_dir: str, out: str, stage: str | None = None, formats=FORMATS,
               quantizations=QUANTIZATIONS, model_name: str = "aaa_net", version: int | None = None,
               representative_count: int = 100, log=print, data: str | None = None,
               parity_max_images: int | None = None, num_threads: int = 2) -> dict:
    """Export the embedder of ``stage`` of ``run_dir`` (default: its latest stage) under ``out``.

    ``formats``: ``saved_model``, ``tflite``, ``onnx``, ``openvino`` (or ``"all"``);
    ``quantizations``: of the TFLite files, ``float32``, ``float16``, ``int8``
    (or ``"all"``). ``representative_count`` training images calibrate int8.
    ``data`` overrides the run's dataset root (for the parity checks and the
    calibration images). ``parity_max_images`` bounds the held set (whole
    test identities) on large datasets; default the whole test split.

    Returns ``{"version", "stage", "saved_model", "tflite": {quant: path},
    "onnx", "openvino", "parity_json", "report"}`` (paths; None for formats
    not exported). Raises ``UserError`` for bad arguments and
    when parity is missed (the export is then moved to ``out/_rejected/``).
    """
    from aaa_keras.data.names import load_dataset
    from aaa_keras.evaluation.run import extract_embeddings
    from aaa_keras.model.backbone import build_embedder
    from aaa_keras.data.synth import resolve_data
    from aaa_keras.run_dir import load_trained

    started = time.time()
    formats = _choices(formats, FORMATS, "--format")
    quantizations = _choices(quantizations, QUANTIZATIONS, "--quantize") if "tflite" in formats else ()
    model_name = _check_model_name(model_name)
    if version is not None and (isinstance(version, bool) or int(version) != version or version < 1):
        raise UserError(f"--version: expected a positive integer, got {version!r}")
    if representative_count < 1:
        raise UserError(f"--representative-count: expected a positive integer, got {representative_count}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a directory")
    if not os.path.isdir(run_dir):
        raise UserError(f"--run-dir {run_dir}: no such directory; train a stage first with "
                        f"`python cli.py fit --stage baseline --run-dir {run_dir}`")

    # === The trained embedder and the data for the checks ===
    trained = load_trained(run_dir, stage)
    config, parts, stage = trained.config, trained.parts, trained.stage
    embedder = build_embedder(parts)
    image_size = config.image_size
    root = resolve_data(data or config.data, log)
    dataset = load_dataset(root)
    query, gallery = held_set(dataset, parity_max_images)
    held = query + gallery
    q_ids, g_ids = _ids(query), _ids(gallery)

    saved_model_parent = os.path.join(out, model_name)
    tflite_parent = os.path.join(out, TFLITE_DIR, model_name)
    portable_parents = {kind: os.path.join(out, directory, model_name)
                        for kind, directory in (("onnx", ONNX_DIR), ("openvino", OPENVINO_DIR))}
    parents = (saved_model_parent, tflite_parent, *portable_parents.values())
    existing = sorted(set().union(*(versions_in(parent) for parent in parents)))
    if version is None:
        version = (existing[-1] + 1) if existing else 1
    elif version in existing:
        raise UserError(f"--version {version}: {model_name} version {version} already exists under {out} "
                        f"(versions: {', '.join(map(str, existing))}); omit --version to write "
                        f"{existing[-1] + 1}. Nothing was overwritten")
    for parent in parents:
        remove_stale_partials(parent, log)

    log(f"Exporting stage {stage} of {run_dir} as {model_name} version {version} "
        f"({', '.join(formats)}{': ' + ', '.join(quantizations) if quantizations else ''}), "
        f"input {image_size[0]}x{image_size[1]}, embedding {parts.embedding_dim}-d")
    log(f"Parity held set: {len(query)} query + {len(gallery)} gallery images of {root}")
    reference = extract_embeddings(embedder, held, image_size)
    _check_embeddings_usable(reference, parts, held, image_size, run_dir, stage)
    report = {
        "model_name": model_name, "version": version, "run_dir": os.path.abspath(run_dir), "stage": stage,
        "backbone": config.backbone, "image_size": list(image_size), "embedding_dim": parts.embedding_dim,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": root,
        "held_set": {"source": "test split (query + gallery)", "num_query": len(query),
                     "num_gallery": len(gallery),
                     "subset": len(held) < len(dataset.query) + len(dataset.gallery)},
        "thresholds": parity_lib.thresholds(),
        "keras": parity_lib.retrieval(reference[:len(query)], reference[len(query):], q_ids[0], g_ids[0],
                                      q_ids[1], g_ids[1]),
    }
    mean = reference.mean(axis=0)

    partials = []
    try:
        # === SavedModel ===
        if "saved_model" in formats:
            partial = _partial_dir(saved_model_parent, version)
            partials.append(("saved_model", partial, os.path.join(saved_model_parent, str(version))))
            report["saved_model"] = _export_saved_model(embedder, image_size, partial, held, reference, mean, log)

        # === TFLite ===
        tflite_files = {}
        if quantizations:
            partial = _partial_dir(tflite_parent, version)
            os.makedirs(partial)
            partials.insert(0, ("tflite", partial, os.path.join(tflite_parent, str(version))))
            train_records = _spread(list(dataset.train), representative_count)
            from aaa_keras.deploy.runtime import read_images

            representative = read_images([r.path for r in train_records], image_size)
            report["representative_set"] = {"source": "training split", "num_images": len(train_records),
                                            "requested": representative_count}
            graph = tflite_lib.tflite_graph(parts)
            _check_same_outputs(graph, embedder, representative[:8])
            converted = {}
            if "int8" in quantizations:  # before the int8 calibration, which segfaults on overflowing activations
                converted["float32"] = tflite_lib.convert(graph, "float32")
                tflite_lib.check_activation_range(converted["float32"], representative[:8])
            report["tflite"] = {}
            for quantization in quantizations:
                name = tflite_lib.tflite_file_name(model_name, version, quantization)
                entry, content, embeddings = _export_tflite(
                    graph, quantization, representative, held, reference, mean, embedder.count_params(),
                    name, num_threads, converted.get(quantization))
                tflite_lib.write_bytes_atomically(os.path.join(partial, name), content)
                entry.update(parity_lib.retrieval(embeddings[:len(query)], embeddings[len(query):],
                                                  q_ids[0], g_ids[0], q_ids[1], g_ids[1]))
                report["tflite"][quantization] = entry
                tflite_files[quantization] = os.path.join(tflite_parent, str(version), name)
                log(f"  {quantization}: {entry['bytes'] / 1e6:.1f} MB, cosine to Keras min "
                    f"{entry['cosine_min']:.5f} mean {entry['cosine_mean']:.5f} (centred min "
                    f"{entry['centred_cosine_min']:.4f}), mAP {entry['mAP']:.2f} "
                    f"(Keras {report['keras']['mAP']:.2f})")
            if "int8" in report["tflite"] and "float32" in report["tflite"]:
                report["int8_map_drop_points"] = round(
                    report["tflite"]["float32"]["mAP"] - report["tflite"]["int8"]["mAP"], 3)

        # === ONNX and OpenVINO ===
        portable_files = {}
        for kind in ("onnx", "openvino"):
            if kind not in formats:
                continue
            partial = _partial_dir(portable_parents[kind], version)
            os.makedirs(partial)
            partials.append((kind, partial, os.path.join(portable_parents[kind], str(version))))
            name = (onnx_openvino.onnx_file_name if kind == "onnx" else onnx_openvino.openvino_file_name)(
                model_name, version)
            entry, embeddings = _export_portable(kind, embedder, os.path.join(partial, name), held, reference,
                                                 mean, num_threads)
            entry.update(parity_lib.retrieval(embeddings[:len(query)], embeddings[len(query):],
                                              q_ids[0], g_ids[0], q_ids[1], g_ids[1]))
            report[kind] = entry
            portable_files[kind] = os.path.join(portable_parents[kind], str(version), name)
            precision = f", {entry['inference_precision']} inference" if "inference_precision" in entry else ""
            log(f"  {kind}: {entry['bytes'] / 1e6:.1f} MB{precision}, cosine to Keras min {entry['cosine_min']:.6f} "
                f"mean {entry['cosine_mean']:.6f}, mAP {entry['mAP']:.2f} (Keras {report['keras']['mAP']:.2f})")

        # === Parity verdict, then the atomic commit ===
        problems = parity_lib.failures(report)
        report["passed"], report["failures"] = not problems, problems
        report["seconds"] = round(time.time() - started, 1)
        for kind, partial, _ in partials:
            target = os.path.join(partial, "assets.extra") if kind == "saved_model" else partial
            os.makedirs(target, exist_ok=True)
            write_json_atomically(os.path.join(target, PARITY_FILE), report)
        if problems:
            rejected = _reject(out, model_name, version, partials)
            partials = []
            raise UserError(f"parity missed: {'; '.join(problems)}. The export was not installed; it is in "
                            f"{rejected} with its {PARITY_FILE}")
        committed = []
        partials.sort(key=lambda item: COMMIT_ORDER.index(item[0]))
        try:
            for _, partial, final in partials:
                _commit(partial, final)
                committed.append((partial, final))
        except BaseException:
            for partial, final in reversed(committed):  # all or nothing: take back what was moved
                os.rename(final, partial)
            raise
        partials = []
    finally:
        for _, partial, _ in partials:
            shutil.rmtree(partial, ignore_errors=True)

    result = {
        "version": version, "stage": stage,
        "saved_model": os.path.join(saved_model_parent, str(version)) if "saved_model" in formats else None,
        "tflite": tflite_files,
        "onnx": portable_files.get("onnx"), "openvino": portable_files.get("openvino"),
        "parity_json": (os.path.join(tflite_parent, str(version), PARITY_FILE) if tflite_files else
                        os.path.join(os.path.dirname(next(iter(portable_files.values()))), PARITY_FILE)
                        if portable_files else
                        os.path.join(saved_model_parent, str(version), "assets.extra", PARITY_FILE)),
        "report": report,
    }
    log(f"Parity passed; wrote {model_name} version {version} in {report['seconds']:.0f} s:")
    if result["saved_model"]:
        log(f"  SavedModel {result['saved_model']} (signatures serving_default, serving_uint8, serve_bytes)")
    for quantization, path in tflite_files.items():
        log(f"  TFLite {quantization}: {path}")
    for kind, path in portable_files.items():
        log(f"  {'ONNX' if kind == 'onnx' else 'OpenVINO IR'}: {path}")
    log(f"  {result['parity_json']}")
    return result


def _export_saved_model(embedder, image_size, path, held, reference, mean, log) -> dict:
    """Write the SavedModel to ``path``, load it back, and compare its three signatures with Keras."""
    import tensorflow as tf

    from aaa_keras.deploy import saved_model
    from aaa_keras.deploy.runtime import read_images

    started = time.time()
    saved_model.save(embedder, image_size, path)
    signatures, _ = saved_model.load_signatures(path)
    missing = [name for name in saved_model.SIGNATURES if name not in signatures]
    if missing:
        raise UserError(f"{path}: the written SavedModel lacks the signatures {missing}")
    check = _spread(list(range(len(held))), SAVED_MODEL_CHECK_IMAGES)
    images = read_images([held[i].path for i in check], image_size)
    entry = parity_lib.compare(reference[check], saved_model.embed_images(
        signatures[saved_model.SIGNATURE_FLOAT], images), mean)
    rounded = np.round(images)
    uint8_entry = parity_lib.compare(
        np.asarray(embedder.predict(rounded, verbose=0)),
        saved_model.embed_images(signatures[saved_model.SIGNATURE_UINT8], rounded.astype(np.uint8)), mean)
    files = _spread(check, SAVED_MODEL_CHECK_FILES)
    encoded = []
    for i in files:
        with open(held[i].path, "rb") as f:
            encoded.append(f.read())
    try:
        from_bytes = saved_model.embed_bytes(signatures[saved_model.SIGNATURE_BYTES], encoded)
    except tf.errors.InvalidArgumentError as error:
        raise UserError(f"{path}: serve_bytes refused the test images ({str(error).splitlines()[0]})") from None
    bytes_entry = parity_lib.compare(reference[files], from_bytes, mean)
    entry.update({
        "num_images": len(check), "serving_uint8_cosine_min": uint8_entry["cosine_min"],
        "serve_bytes_cosine_min": bytes_entry["cosine_min"], "serve_bytes_num_images": len(files),
        "signatures": list(saved_model.SIGNATURES),
        "bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs),
    })
    log(f"  SavedModel: {entry['bytes'] / 1e6:.1f} MB in {time.time() - started:.0f} s, loaded back: cosine to "
        f"Keras min {entry['cosine_min']:.6f} (serving_uint8 {entry['serving_uint8_cosine_min']:.6f}, "
        f"serve_bytes {entry['serve_bytes_cosine_min']:.6f})")
    return entry


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


def _check_same_outputs(graph, embedder, images) -> None:
    difference = float(np.abs(np.asarray(graph.predict(images, verbose=0))
                              - np.asarray(embedder.predict(images, verbose=0))).max())
    if difference > 1e-4:
        raise UserError(f"internal: the TFLite graph differs from the embedder by {difference:.2e}")


def _export_tflite(graph, quantization, representative, held, reference, mean, num_weights, name,
                   num_threads, content=None) -> tuple[dict, bytes, np.ndarray]:
    """Convert (unless ``content`` is given), check, run on the held set with LiteRT.

    Returns ``(parity entry, flatbuffer, embeddings of the held set)``.
    """
    from aaa_keras.deploy.runtime import embed_files

    started = time.time()
    if content is None:
        content = tflite_lib.convert(graph, quantization, representative)
    tflite_lib.check_tflite(content, quantization, num_weights, name)
    runner = tflite_lib.TFLiteEmbedder(model_content=content, num_threads=num_threads)
    convert_seconds = time.time() - started
    embeddings = embed_files(runner, [r.path for r in held])
    entry = parity_lib.compare(reference, embeddings, mean)
    entry.update({"file": name, "bytes": len(content), **runner.io_details(),
                  "convert_seconds": round(convert_seconds, 1)})
    if quantization == "int8":
        entry["embedding_range_headroom"] = tflite_lib.EMBEDDING_HEADROOM
    return entry, content, embeddings


def _export_portable(kind, embedder, path, held, reference, mean, num_threads) -> tuple[dict, np.ndarray]:
    """Write the ONNX or OpenVINO model to ``path``, load it with its own runtime, run it on the held set.

    Returns ``(parity entry, embeddings of the held set)``.
    """
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
    embeddings = embed_files(runner, [r.path for r in held])
    entry = parity_lib.compare(reference, embeddings, mean)
    entry.update({
        "file": os.path.basename(path), "bytes": sum(os.path.getsize(f) for f in files),
        "input": {"name": onnx_openvino.INPUT_NAME, "dtype": "float32", "shape": [-1, *runner.image_size, 3]},
        "output": {"name": onnx_openvino.OUTPUT_NAME, "dtype": "float32", "shape": [-1, runner.embedding_dim]},
        "convert_seconds": round(convert_seconds, 1), "num_threads": num_threads, **info,
    })
    return entry, embeddings


def _reject(out: str, model_name: str, version: int, partials) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rejected = os.path.join(out, REJECTED_DIR, f"{model_name}_v{version}_{stamp}")
    os.makedirs(rejected, exist_ok=True)
    for kind, partial, _ in partials:
        os.rename(partial, os.path.join(rejected, kind))
    return rejected
