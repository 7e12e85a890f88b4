#!/usr/bin/env python
"""Speed and size of the exported embedder: Keras vs SavedModel, TFLite float32 / float16 / int8, ONNX, OpenVINO.

Measured in one run, on the same CPU threads (default 2):
- per-image latency at batch 1 (median of --repeats calls) and throughput at
  batch --batch (images per second), each as a ratio to Keras (a ``tf.function``
  around the Keras embedder, the reference);
- model sizes on disk;
- ONNX with ONNX Runtime (CPU execution provider) and the OpenVINO IR with the
  OpenVINO CPU plugin at its default precision (bf16 on CPUs with AMX or
  AVX512-BF16) and with ``INFERENCE_PRECISION_HINT=f32``;
- cosine to Keras per image on held synthetic crops (min / mean / centred
  mean), so that a faster variant that is wrong shows up.

Then an investigation of int8 speed (why int8 is not faster than float32 on
this CPU): thread count, XNNPACK on/off (LiteRT's builtin kernels instead),
float vs integer I/O, per-tensor vs per-channel weights, the LiteRT
``CompiledModel`` API (with YNNPACK when the build has it), XNNPACK's
FORCE_FP16 flag on the float32 model, the representative-set size, and the
``REVERSE_V2`` graph the export avoids.

Default: ResNet-50 at 256x128 with random weights (freshly initialised);
``--run-dir`` uses a trained stage instead.

``--backbones`` instead compares backbones for a camera: LiteRT float32 and
int8 latency at batch 1 and throughput at batch --batch of each, as ratios to
the first (ResNet-50), with model sizes and the cosine to Keras. Random
weights, BatchNorm moving statistics set from one batch of synthetic crops
(at initialisation MobileNetV3 embeds at ~1e-10, which is no test of int8).

    python benchmarks/bench_export.py                       # about 8 minutes on 2 cores
    python benchmarks/bench_export.py --run-dir runs/demo --stage adversarial
    python benchmarks/bench_export.py --backbone tiny_resnet --image-size 64x32 --quick
    python benchmarks/bench_export.py --backbones resnet50,mobilenet_v3_large,efficientnet_b0 \
        --repeats 10 --batch-repeats 2 --representative 32    # camera backbones, ~10 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from aaa_keras.config import BACKBONES  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--run-dir", default=None, help="a trained run (default: random ResNet-50 weights)")
    parser.add_argument("--stage", default=None)
    parser.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    parser.add_argument("--backbones", default=None, metavar="A,B,...",
                        help="compare these backbones' LiteRT float32 / int8 speed and size (first = reference)")
    parser.add_argument("--occlude-after", default="conv3", help="split point of --backbones' models")
    parser.add_argument("--image-size", default="256x128", help="HxW (ignored with --run-dir)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every variant")
    parser.add_argument("--batch", type=int, default=32, help="batch of the throughput measurement")
    parser.add_argument("--repeats", type=int, default=20, help="batch-1 calls timed per variant")
    parser.add_argument("--batch-repeats", type=int, default=3, help="large-batch calls timed per variant")
    parser.add_argument("--representative", type=int, default=100, help="int8 calibration images")
    parser.add_argument("--quick", action="store_true", help="no int8 investigation")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser.parse_args()


@contextlib.contextmanager
def quiet_stderr():
    """Silence C++ logging on file descriptor 2 (LiteRT's CompiledModel is chatty)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def time_calls(call, repeats: int) -> list[float]:
    call()  # warm-up (allocation, delegate preparation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure(make_runner, images1, images_batch, repeats, batch_repeats) -> dict:
    """``make_runner(batch) -> call(images)``; latency at batch 1 and throughput at the large batch."""
    run1 = make_runner(1)
    latency = statistics.median(time_calls(lambda: run1(images1), repeats))
    run_batch = make_runner(len(images_batch))
    batch_times = time_calls(lambda: run_batch(images_batch), batch_repeats)
    return {"latency_ms": 1000 * latency, "throughput": len(images_batch) / statistics.median(batch_times)}


# === Runners ===

def interpreter_runner(content, threads, resolver=None, latest=False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"experimental_op_resolver_type": resolver or OpResolverType.AUTO}
    if latest:
        kwargs["experimental_default_delegate_latest_features"] = True

    def make(batch):
        interpreter = Interpreter(model_content=content, num_threads=threads, **kwargs)
        source = interpreter.get_input_details()[0]
        target = interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(source["index"], [batch, *source["shape"][1:]])
        interpreter.allocate_tensors()
        dtype = source["dtype"]

        def run(images):
            values = images if dtype == np.float32 else quantize(images, source)
            interpreter.set_tensor(source["index"], values)
            interpreter.invoke()
            return dequantize(interpreter.get_tensor(target["index"]), target)

        return run

    return make


def compiled_model_runner(content, threads, ynnpack=False, xnnpack_flags=None):
    from ai_edge_litert import compiled_model as cm

    def make(batch):
        options = cm.Options(hardware_accelerators=cm.HardwareAccelerator.CPU,
                             cpu_options=cm.CpuOptions(num_threads=threads, enable_ynnpack=ynnpack,
                                                       xnnpack_flags=xnnpack_flags))
        with quiet_stderr():
            model = cm.CompiledModel.from_buffer(content, options=options)
            details = model.get_input_tensor_details("serving_default")
            name = next(iter(details))
            shape = [batch, *details[name]["shape"][1:]]
            if batch != details[name]["shape"][0]:
                model.resize_input_tensor(0, shape)
            inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
            output = next(iter(model.get_output_tensor_details("serving_default").values()))
        dtype, output_dtype = np.dtype(details[name]["dtype"]), np.dtype(output["dtype"])
        output_size = batch * int(np.prod(output["shape"][1:]))

        def run(images):
            values = images.astype(np.float32) if dtype == np.float32 else np.clip(np.round(images), 0, 255).astype(dtype)
            inputs[0].write(values)
            model.run_by_index(0, inputs, outputs)
            if output_dtype != np.float32:
                return outputs[0]  # quantised: speed only
            return np.asarray(outputs[0].read(output_size, np.float32)).reshape(batch, -1)

        return run

    return make


def openvino_runner(path, threads, precision=None):
    """OpenVINO's CPU plugin, with its default inference precision or the one given (e.g. "f32")."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()

    class Runner:
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

        @staticmethod
        def embed(images):
            request.infer({0: np.ascontiguousarray(images, np.float32)})
            return np.array(request.get_output_tensor(0).data)

    return Runner


def quantize(images, detail):
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def dequantize(values, detail):
    if values.dtype == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


def cosine_stats(reference, values) -> dict:
    from aaa_keras.deploy.parity import compare

    entry = compare(reference, np.asarray(values, np.float32))
    return {"cos_min": entry["cosine_min"], "cos_mean": entry["cosine_mean"],
            "centred_mean": entry.get("centred_cosine_mean", float("nan"))}


def package_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("ai-edge-litert", "tf2onnx", "onnxruntime", "openvino"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# === The benchmark ===

def benchmark_images(data: str, image_size, representative_count: int, batch: int):
    """A tiny built-in dataset at ``data``: (int8 calibration images, 32 held-out images, one batch)."""
    from aaa_keras.data.synth import synthesize_market
    from aaa_keras.deploy.runtime import read_images

    synthesize_market(data, num_ids=8, num_cams=3, seed=0)
    train = sorted(os.path.join(data, "bounding_box_train", f) for f in os.listdir(os.path.join(data, "bounding_box_train")))
    test = sorted(os.path.join(data, d, f) for d in ("query", "bounding_box_test") for f in os.listdir(os.path.join(data, d)))
    representative = read_images(train[:: max(1, len(train) // representative_count)][:representative_count],
                                 image_size)
    held = read_images(test[:: max(1, len(test) // 32)][:32], image_size)
    return representative, held, read_images((test * (batch // len(test) + 1))[:batch], image_size)


def main():
    args = parse_args()
    if args.backbones:
        return compare_backbones(args)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from aaa_keras.deploy import saved_model as saved_model_lib
    from aaa_keras.deploy import tflite as tflite_lib
    from aaa_keras.model.backbone import build_embedder, build_parts

    started = time.time()
    workdir = tempfile.mkdtemp(prefix="bench_export_")
    if args.run_dir:
        from aaa_keras.run_dir import load_trained

        trained = load_trained(args.run_dir, args.stage)
        config, parts, stage = trained.config, trained.parts, trained.stage
        image_size, weights = config.image_size, f"{args.run_dir} stage {stage}"
    else:
        height, width = (int(v) for v in args.image_size.lower().split("x"))
        image_size, weights = (height, width), "random (fresh initialisation, seed 0)"
        keras.utils.set_random_seed(0)
        parts = build_parts(100, image_size, args.backbone)
    embedder = build_embedder(parts)
    data = os.path.join(workdir, "synth")
    representative, held, images_batch = benchmark_images(data, image_size, args.representative, args.batch)
    images1 = images_batch[:1]
    reference = np.asarray(embedder.predict(held, verbose=0))
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"{args.threads} threads per variant; TF {tf.__version__}, Keras {keras.__version__}, "
          f"{package_versions()}")
    print(f"Model: {args.backbone if not args.run_dir else parts.network.name} at {image_size[0]}x{image_size[1]}, "
          f"weights {weights}, {embedder.count_params() / 1e6:.1f} M parameters, "
          f"{parts.embedding_dim}-d embedding", flush=True)

    results, sizes, notes = {}, {}, {}

    def record(name, make_runner, accuracy_of=None):
        try:
            results[name] = measure(make_runner, images1, images_batch, args.repeats, args.batch_repeats)
        except Exception as error:  # a variant this build cannot run: say so, keep going
            notes[name] = f"not run: {type(error).__name__}: {str(error).strip().splitlines()[-1][:160]}"
            print(f"  {name}: {notes[name]}", flush=True)
            return
        if accuracy_of is not None:
            results[name].update(cosine_stats(reference, accuracy_of(held)))
        print(f"  {name}: {results[name]['latency_ms']:.1f} ms at batch 1, "
              f"{results[name]['throughput']:.1f} img/s at batch {args.batch}", flush=True)

    # === Keras (tf.function) ===
    keras_call = tf.function(lambda x: embedder(x, training=False))
    record("Keras (tf.function)", lambda batch: (lambda x: keras_call(tf.constant(x)).numpy()),
           lambda x: keras_call(tf.constant(x)).numpy())
    weights_path = os.path.join(workdir, "embedder.weights.h5")
    embedder.save_weights(weights_path)
    sizes["Keras (tf.function)"] = os.path.getsize(weights_path)

    # === SavedModel ===
    saved_path = os.path.join(workdir, "saved_model")
    saved_model_lib.save(embedder, image_size, saved_path)
    signature = tf.saved_model.load(saved_path).signatures["serving_default"]
    sizes["SavedModel serving_default"] = directory_bytes(saved_path)
    record("SavedModel serving_default", lambda batch: (lambda x: signature(images=tf.constant(x))["embedding"].numpy()),
           lambda x: signature(images=tf.constant(x))["embedding"].numpy())

    # === TFLite ===
    graph = tflite_lib.tflite_graph(parts)
    contents = {}
    for quantization in ("float32", "float16", "int8"):
        tick = time.time()
        contents[quantization] = tflite_lib.convert(graph, quantization, representative)
        name = f"TFLite {quantization}"
        sizes[name] = len(contents[quantization])
        print(f"  converted {quantization} in {time.time() - tick:.0f} s", flush=True)
        runner = interpreter_runner(contents[quantization], args.threads)
        record(name, runner, lambda x, runner=runner: runner(len(x))(x))

    # === ONNX (ONNX Runtime) and OpenVINO ===
    from aaa_keras.deploy import onnx_openvino

    onnx_path = os.path.join(workdir, "embedder.onnx")
    tick = time.time()
    onnx_info = onnx_openvino.save_onnx(embedder, onnx_path)
    print(f"  converted ONNX (opset {onnx_info['opset']}) in {time.time() - tick:.0f} s", flush=True)
    sizes["ONNX (ONNX Runtime)"] = os.path.getsize(onnx_path)
    onnx_model = onnx_openvino.OnnxEmbedder(onnx_path, num_threads=args.threads)
    record("ONNX (ONNX Runtime)", lambda batch: (lambda x: onnx_model.embed(x, batch_size=len(x))),
           lambda x: onnx_model.embed(x))
    openvino_path = os.path.join(workdir, "embedder.xml")
    tick = time.time()
    onnx_openvino.save_openvino(embedder, openvino_path)
    print(f"  converted OpenVINO in {time.time() - tick:.0f} s", flush=True)
    openvino_bytes = os.path.getsize(openvino_path) + os.path.getsize(openvino_path[:-4] + ".bin")
    for precision in (None, "f32"):
        openvino_model = openvino_runner(openvino_path, args.threads, precision)
        name = f"OpenVINO ({openvino_model.precision}{', default' if precision is None else ''})"
        sizes[name] = openvino_bytes
        record(name, lambda batch, m=openvino_model: (lambda x: m.embed(x)), lambda x, m=openvino_model: m.embed(x))

    investigation = {}
    if not args.quick:
        investigation = investigate(args, graph, contents, representative, held, reference, images1, images_batch,
                                    tflite_lib, build_embedder, parts)

    shutil.rmtree(workdir, ignore_errors=True)
    print_report(args, results, sizes, notes, investigation, time.time() - started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "sizes": sizes, "notes": notes, "investigation": investigation}, f,
                      indent=2)


def investigate(args, graph, contents, representative, held, reference, images1, images_batch, tflite_lib,
                build_embedder, parts) -> dict:
    """Variants that explain int8 speed and accuracy on this CPU."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import OpResolverType

    rows = {}

    def run(name, make_runner, accuracy=True, content_bytes=None):
        try:
            entry = measure(make_runner, images1, images_batch, args.repeats, args.batch_repeats)
            if accuracy:
                entry.update(cosine_stats(reference, make_runner(len(held))(held)))
        except Exception as error:
            entry = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:160]}"}
            if "YNNPACK" in name:
                entry["error"] = "not available: this ai-edge-litert build has no YNNPACK (" + entry["error"] + ")"
        if content_bytes:
            entry["bytes"] = content_bytes
        rows[name] = entry
        shown = entry.get("error") or (f"{entry['latency_ms']:.1f} ms, {entry['throughput']:.1f} img/s"
                                       + (f", cos min {entry['cos_min']:.4f}" if "cos_min" in entry else ""))
        print(f"  [int8 investigation] {name}: {shown}", flush=True)

    float32, int8 = contents["float32"], contents["int8"]
    run("float32, 1 thread", interpreter_runner(float32, 1), accuracy=False)
    run("int8, 1 thread", interpreter_runner(int8, 1), accuracy=False)
    run("float32, XNNPACK off (builtin kernels)",
        interpreter_runner(float32, args.threads, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES), accuracy=False)
    run("int8, XNNPACK off (builtin kernels)",
        interpreter_runner(int8, args.threads, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES), accuracy=False)
    run("int8, XNNPACK latest features", interpreter_runner(int8, args.threads, latest=True), accuracy=False)
    run("float32, CompiledModel API (XNNPACK)", compiled_model_runner(float32, args.threads), accuracy=False)
    run("int8, CompiledModel API (XNNPACK)", compiled_model_runner(int8, args.threads), accuracy=False)
    run("int8, CompiledModel API + YNNPACK", compiled_model_runner(int8, args.threads, ynnpack=True), accuracy=False)
    run("float32 model, XNNPACK FORCE_FP16 (CompiledModel)",
        compiled_model_runner(float32, args.threads, xnnpack_flags=1 | 2 | 4), accuracy=True)

    # Converter variants: each is a new int8 calibration.
    def convert_variant(per_tensor=False, float_io=False, model=None, calibration=None):
        with contextlib.redirect_stdout(io.StringIO()):
            converter = tf.lite.TFLiteConverter.from_keras_model(model or graph)
        calibration = tflite_lib.with_range_anchor(representative if calibration is None else calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if not float_io:
            converter.inference_input_type, converter.inference_output_type = tf.uint8, tf.int8
        if per_tensor:
            converter._experimental_disable_per_channel = True
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tflite_lib.widen_embedding_range(converter.convert())  # as the export does

    run("int8 per-channel (the export)", interpreter_runner(int8, args.threads), content_bytes=len(int8))
    for name, options in (("int8 float32 I/O", {"float_io": True}),
                          ("int8 per-tensor weights", {"per_tensor": True}),
                          ("int8, 8 calibration images", {"calibration": representative[:8]}),
                          ("int8 with REVERSE_V2 preprocessing (build_embedder graph)",
                           {"model": build_embedder(parts)})):
        tick = time.time()
        try:
            content = convert_variant(**options)
        except Exception as error:
            rows[name] = {"error": f"conversion failed: {type(error).__name__}: {str(error).splitlines()[-1][:160]}"}
            continue
        print(f"  converted '{name}' in {time.time() - tick:.0f} s", flush=True)
        run(name, interpreter_runner(content, args.threads), content_bytes=len(content))
    return rows


# === Camera backbones: LiteRT float32 / int8 speed and size against ResNet-50 ===

def compare_backbones(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from aaa_keras.deploy import tflite as tflite_lib
    from aaa_keras.model.backbone import build_embedder, build_parts
    from aaa_keras.model.batchnorm import settle_batchnorm

    names = [name.strip() for name in args.backbones.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKBONES]
    if unknown:
        raise SystemExit(f"--backbones: unknown {unknown}; expected names from {BACKBONES}")
    started = time.time()
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    image_size = (height, width)
    workdir = tempfile.mkdtemp(prefix="bench_backbones_")
    data = os.path.join(workdir, "synth")
    representative, held, images_batch = benchmark_images(data, image_size, args.representative, args.batch)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"{args.threads} LiteRT threads; TF {tf.__version__}, {package_versions()}")
    print(f"Backbones {', '.join(names)} at {height}x{width}, split after {args.occlude_after}; random weights "
          f"(seed 0), BatchNorm statistics from {min(16, len(representative))} training crops; int8 calibrated "
          f"on {len(representative)} training crops", flush=True)
    rows = {}
    for backbone in names:
        keras.utils.set_random_seed(0)
        parts = build_parts(100, image_size, backbone, args.occlude_after)
        settle_batchnorm(parts, representative[:16])  # a random network with a trained one's scale
        embedder = build_embedder(parts)
        reference = np.asarray(embedder.predict(held, verbose=0))
        graph = tflite_lib.tflite_graph(parts)
        for quantization in ("float32", "int8"):
            tick = time.time()
            content = tflite_lib.convert(graph, quantization, representative)
            runner = interpreter_runner(content, args.threads)
            entry = measure(runner, held[:1], images_batch, args.repeats, args.batch_repeats)
            entry.update(cosine_stats(reference, runner(len(held))(held)))
            entry.update(bytes=len(content), params=embedder.count_params(), dim=parts.embedding_dim,
                         convert_s=time.time() - tick)
            rows[f"{backbone} {quantization}"] = entry
            print(f"  {backbone} {quantization}: {len(content) / 1e6:.1f} MB, {entry['latency_ms']:.1f} ms at "
                  f"batch 1, {entry['throughput']:.1f} img/s at batch {args.batch}, cos min to Keras "
                  f"{entry['cos_min']:.4f}", flush=True)
    first = names[0]
    print(f"\n## LiteRT speed of the camera backbones, {height}x{width}, {args.threads} threads "
          f"(x {first}: higher is better)\n")
    print(f"| backbone | TFLite | params M | embedding | size MB | batch 1 ms | x {first} | "
          f"batch {args.batch} img/s | x {first} | cos min to Keras |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, entry in rows.items():
        backbone, quantization = name.split()
        base = rows[f"{first} {quantization}"]
        print(f"| {backbone} | {quantization} | {entry['params'] / 1e6:.1f} | {entry['dim']} | "
              f"{entry['bytes'] / 1e6:.1f} | {entry['latency_ms']:.1f} | {base['latency_ms'] / entry['latency_ms']:.2f} | "
              f"{entry['throughput']:.1f} | {entry['throughput'] / base['throughput']:.2f} | {entry['cos_min']:.4f} |")
    print(f"\nTotal benchmark time: {(time.time() - started) / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backbones": rows, "image_size": [height, width], "threads": args.threads}, f, indent=2)


def print_report(args, results, sizes, notes, investigation, seconds):
    reference = results.get("Keras (tf.function)")
    print(f"\n## Exported embedder speed, {args.threads} threads (ratios: x Keras; higher is better)\n")
    print(f"| variant | size MB | batch 1 ms/img | x Keras | batch {args.batch} img/s | x Keras "
          "| cos min | cos mean | centred mean |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, entry in results.items():
        size = sizes.get(name)
        ratio1 = reference["latency_ms"] / entry["latency_ms"] if reference else float("nan")
        ratio_batch = entry["throughput"] / reference["throughput"] if reference else float("nan")
        accuracy = (f"{entry['cos_min']:.4f} | {entry['cos_mean']:.4f} | {entry['centred_mean']:.4f}"
                    if "cos_min" in entry else "| |")
        print(f"| {name} | {size / 1e6:.1f} | {entry['latency_ms']:.1f} | {ratio1:.2f} | {entry['throughput']:.1f} "
              f"| {ratio_batch:.2f} | {accuracy} |")
    for name, note in notes.items():
        print(f"| {name} | | {note} | | | | | | |")
    if investigation:
        print(f"\n## int8 investigation ({args.threads} threads unless stated)\n")
        print(f"| variant | size MB | batch 1 ms/img | batch {args.batch} img/s | cos min | cos mean | centred mean |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, entry in investigation.items():
            if "error" in entry:
                print(f"| {name} | | {entry['error']} | | | | |")
                continue
            size = f"{entry['bytes'] / 1e6:.1f}" if "bytes" in entry else ""
            accuracy = (f"{entry['cos_min']:.4f} | {entry['cos_mean']:.4f} | {entry['centred_mean']:.4f}"
                        if "cos_min" in entry else " | | ")
            print(f"| {name} | {size} | {entry['latency_ms']:.1f} | {entry['throughput']:.1f} | {accuracy} |")
    print(f"\nTotal benchmark time: {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
