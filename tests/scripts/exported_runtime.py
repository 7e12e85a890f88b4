"""Run exported models the way a deployer does: no aaa_keras, only TensorFlow / LiteRT / ONNX Runtime / OpenVINO.

Used by tests/test_export.py in a subprocess:

    python exported_runtime.py roundtrip SAVED_MODEL_DIR TFLITE_DIR IMAGES.npy OUT_DIR
        serving_default on the float32 images, serving_uint8 on them rounded to
        uint8, and every *.tflite of TFLITE_DIR with LiteRT (quantised input and
        output handled with their scale / zero point); writes OUT_DIR/<name>.npy.
    python exported_runtime.py malformed SAVED_MODEL_DIR GOOD.jpg GOOD.png OUT.json
        serve_bytes on a good image batched with each malformed input; writes
        {case: "ok" | "<ErrorType>: <message>"} to OUT.json.
    python exported_runtime.py portable MODEL.onnx MODEL.xml IMAGES.npy OUT_DIR
        the .onnx with ONNX Runtime and the OpenVINO IR with the OpenVINO runtime
        (CPU, 2 threads, default precision), on the float32 images and on the
        same images rounded and fed as uint8 pixels cast to float32; writes
        OUT_DIR/{onnx,onnx_uint8,openvino,openvino_uint8}.npy. This mode imports
        neither TensorFlow nor Keras.

Every mode fails if anything imported aaa_keras.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def run_tflite(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=2)
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(source["index"], list(images.shape))
    interpreter.allocate_tensors()
    values = images
    if source["dtype"] != np.float32:
        scale, zero_point = source["quantization"]
        info = np.iinfo(source["dtype"])
        values = np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(source["dtype"])
    interpreter.set_tensor(source["index"], values)
    interpreter.invoke()
    output = interpreter.get_tensor(target["index"])
    if output.dtype != np.float32:
        scale, zero_point = target["quantization"]
        output = (output.astype(np.float32) - zero_point) * scale
    return output / np.linalg.norm(output, axis=1, keepdims=True)


def roundtrip(saved_model_dir, tflite_dir, images_path, out_dir):
    import tensorflow as tf

    images = np.load(images_path)
    loaded = tf.saved_model.load(saved_model_dir)
    outputs = {
        "saved_model": loaded.signatures["serving_default"](images=tf.constant(images))["embedding"].numpy(),
        "saved_model_uint8": loaded.signatures["serving_uint8"](
            images=tf.constant(np.round(images).astype(np.uint8)))["embedding"].numpy(),
    }
    for name in sorted(os.listdir(tflite_dir)):
        if name.endswith(".tflite"):
            quantization = name[:-len(".tflite")].rsplit("_", 1)[-1]
            outputs["tflite_" + quantization] = run_tflite(os.path.join(tflite_dir, name), images)
    os.makedirs(out_dir, exist_ok=True)
    for name, values in outputs.items():
        np.save(os.path.join(out_dir, name + ".npy"), values)


def malformed_cases(jpeg, png):
    cut_after_ff = [n for n in range(3, len(jpeg)) if jpeg[n - 1] == 0xFF]
    cases = {
        "garbage": b"this is not an image at all",
        "empty": b"",
        "truncated_jpeg_half": jpeg[: len(jpeg) // 2],
        "truncated_jpeg_soi_ff": jpeg[:3],  # b"\xff\xd8\xff": hangs decode_jpeg(try_recover_truncated=True)
        "truncated_png": png[: len(png) // 2],
        "gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        "corrupt_jpeg_body": jpeg[:200] + b"\x00" * (len(jpeg) - 202) + b"\xff\xd9",
    }
    for n in cut_after_ff:
        cases[f"jpeg_cut_after_ff_{n}"] = jpeg[:n]
    return cases


def malformed(saved_model_dir, jpeg_path, png_path, out_path):
    import tensorflow as tf

    with open(jpeg_path, "rb") as f:
        jpeg = f.read()
    with open(png_path, "rb") as f:
        png = f.read()
    serve_bytes = tf.saved_model.load(saved_model_dir).signatures["serve_bytes"]
    results = {}
    for name, data in malformed_cases(jpeg, png).items():
        try:
            serve_bytes(image_bytes=tf.constant([jpeg, data]))
            results[name] = "ok"
        except tf.errors.OpError as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            detail = next((line for line in lines if "serve_bytes" in line or "Invalid" in line), lines[0])
            results[name] = f"{type(error).__name__}: {detail.strip()}"
    results["good_batch_after_errors"] = str(
        serve_bytes(image_bytes=tf.constant([jpeg, png]))["embedding"].shape.as_list())
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


def portable(onnx_path, openvino_xml, images_path, out_dir):
    import onnxruntime as ort
    import openvino as ov

    images = np.load(images_path).astype(np.float32)
    pixels = np.round(images).astype(np.uint8)  # what a camera has; the models take them as float32
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"], session.get_inputs()
    assert [o.name for o in session.get_outputs()] == ["embedding"], session.get_outputs()
    compiled = ov.Core().compile_model(openvino_xml, "CPU", {"INFERENCE_NUM_THREADS": 2})
    assert compiled.input(0).get_any_name() == "images" and len(compiled.outputs) == 1
    assert compiled.output(0).get_any_name() == "embedding"
    outputs = {
        "onnx": session.run(["embedding"], {"images": images})[0],
        "onnx_uint8": session.run(["embedding"], {"images": pixels.astype(np.float32)})[0],
        "openvino": compiled({"images": images})["embedding"],
        "openvino_uint8": compiled({"images": pixels.astype(np.float32)})["embedding"],
    }
    os.makedirs(out_dir, exist_ok=True)
    for name, values in outputs.items():
        np.save(os.path.join(out_dir, name + ".npy"), values)


if __name__ == "__main__":
    mode, arguments = sys.argv[1], sys.argv[2:]
    {"roundtrip": roundtrip, "malformed": malformed, "portable": portable}[mode](*arguments)
    forbidden = {"aaa_keras"} | ({"tensorflow", "keras"} if mode == "portable" else set())
    imported = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
    if imported:
        sys.exit(f"{', '.join(sorted(forbidden))} must not be imported here, but were: {imported[:10]}")
