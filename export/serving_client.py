#!/usr/bin/env python
"""Embed person crops with the exported AAA-Net SavedModel: TF Serving (REST or gRPC) or locally.

A deployer copies this one file; it never imports the aaa_keras project.

Signatures of the SavedModel (``python cli.py export``):
  serve_bytes      image_bytes: string [N], encoded JPEG/PNG, any size (decoded and
                   resized inside the model)                     -> embedding [N, D]
  serving_default  images: float32 [N, H, W, 3], RGB 0-255, resized by the caller (0-1 floats or
                   normalised pixels give wrong embeddings: this client refuses them)
  serving_uint8    images: uint8   [N, H, W, 3], the same as bytes of pixels
Embeddings are L2-normalised: compare them with a dot product or Euclidean distance.

Modes:
  --server URL     POST the REST :predict JSON to TF Serving (urllib, no extra package)
  --grpc HOST:PORT send a PredictRequest (needs `pip install tensorflow-serving-api`)
  --model-dir DIR  neither: load the SavedModel here with tf.saved_model.load and run it
  --write-request FILE   only write the REST JSON (for `curl -d @FILE`), send nothing

Dependencies: numpy; TensorFlow only for --model-dir, for the pixel signatures
(decoding and resizing like the training pipeline) and for --grpc.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow, when imported, logs only errors

SIGNATURES = ("serve_bytes", "serving_default", "serving_uint8")
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT = "embedding"

EXAMPLES = """
examples:
  # TF Serving over REST (port 8501), encoded crops sent as base64:
  python export/serving_client.py --server http://localhost:8501 --model-name aaa_net crop1.jpg crop2.jpg
  # the same over gRPC (port 8500):
  python export/serving_client.py --grpc localhost:8500 --model-name aaa_net crop1.jpg
  # pixels instead of bytes (the client resizes to the model's input size):
  python export/serving_client.py --server http://localhost:8501 --signature serving_default crop1.jpg
  # no server: run the SavedModel in this process, save the embeddings:
  python export/serving_client.py --model-dir models/aaa_net/1 crop1.jpg --out embeddings.npy
  # write the REST request for curl:
  python export/serving_client.py --write-request request.json crop1.jpg
  curl -s -d @request.json http://localhost:8501/v1/models/aaa_net:predict
"""


class ClientError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# === Inputs ===

def read_bytes(paths) -> list[bytes]:
    encoded = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                encoded.append(f.read())
        except OSError as error:
            raise ClientError(f"{path}: cannot read ({error.strerror})") from None
    return encoded


def load_pixels(paths, image_size, dtype: str = "float32") -> np.ndarray:
    """Decode and bilinearly resize like the training pipeline: ``[N, H, W, 3]`` 0-255."""
    import tensorflow as tf

    images = []
    for path, data in zip(paths, read_bytes(paths)):
        try:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            raise ClientError(f"{path}: not a decodable JPEG/PNG image") from None
        image = tf.clip_by_value(tf.image.resize(tf.cast(image, tf.float32), image_size, method="bilinear"),
                                 0.0, 255.0)
        images.append(image.numpy())
    pixels = np.stack(images)
    return np.round(pixels).astype(np.uint8) if dtype == "uint8" else pixels.astype(np.float32)


def checked_pixels(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` if they are RGB 0-255, else ClientError: values below -1 or above 256 (normalised or
    mean-subtracted), or all within [-1, 1] and not all zero (0-1 floats). The SavedModel normalises the
    pixels itself and cannot tell; the project's runners apply the same rule (aaa_keras/deploy/contract.py)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8 or not pixels.size:
        return pixels
    low, high = float(np.min(pixels)), float(np.max(pixels))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ClientError("the pixels hold NaN or inf; expected RGB 0-255")
    if low < -1.0 or high > 256.0:
        raise ClientError(f"pixel values from {low:.4g} to {high:.4g}; expected RGB 0-255 (the model normalises "
                          "them itself, so do not subtract a mean or divide by a standard deviation)")
    if high <= 1.0 and (low != 0.0 or high != 0.0):
        raise ClientError(f"pixel values from {low:.4g} to {high:.4g}, all within [-1, 1]: these look like "
                          "normalised pixels; expected RGB 0-255 (multiply 0-1 floats by 255)")
    return pixels


# === REST ===

def rest_url(server: str, model_name: str, version: int | None = None, verb: str = ":predict") -> str:
    base = server.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "")
    return base + path + verb


def rest_request(signature: str, encoded: list[bytes] | None = None, pixels: np.ndarray | None = None,
                 row_format: bool = False) -> dict:
    """The JSON body of TF Serving's ``:predict`` (columnar ``inputs`` or row ``instances``).

    Binary strings travel as ``{"b64": "..."}`` objects, as the REST API requires.
    """
    if signature == "serve_bytes":
        values = [{"b64": base64.b64encode(data).decode("ascii")} for data in encoded]
        name = BYTES_INPUT
    else:
        values = checked_pixels(pixels).tolist()
        name = IMAGES_INPUT
    if row_format:
        return {"signature_name": signature, "instances": [{name: value} for value in values]}
    return {"signature_name": signature, "inputs": {name: values}}


def parse_rest_response(response: dict) -> np.ndarray:
    """Embeddings from a ``:predict`` response (``outputs`` or ``predictions``)."""
    if "error" in response:
        raise ClientError(f"TF Serving answered an error: {response['error']}")
    body = response.get("outputs", response.get("predictions"))
    if isinstance(body, dict):
        body = body[OUTPUT]
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = [row[OUTPUT] for row in body]
    if body is None:
        raise ClientError(f"unexpected TF Serving response (keys {sorted(response)})")
    return np.asarray(body, np.float32)


def http_json(url: str, payload: dict | None = None, timeout: float = 60.0) -> dict:
    """GET (no payload) or POST JSON; the server's ``{"error": ...}`` becomes a ClientError."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read().decode("utf-8")).get("error", "")
        except ValueError:
            message = ""
        raise ClientError(f"{url}: HTTP {error.code} {error.reason}" + (f": {message}" if message else "")) from None
    except (urllib.error.URLError, OSError) as error:
        raise ClientError(f"{url}: cannot reach the server ({getattr(error, 'reason', error)})") from None


def image_size_from_metadata(metadata: dict, signature: str) -> tuple[int, int]:
    """``(H, W)`` from TF Serving's ``/metadata`` reply."""
    try:
        inputs = metadata["metadata"]["signature_def"]["signature_def"][signature]["inputs"]
        dims = [int(d["size"]) for d in inputs[IMAGES_INPUT]["tensor_shape"]["dim"]]
        return dims[1], dims[2]
    except (KeyError, IndexError, ValueError):
        raise ClientError(f"cannot read the input size of {signature} from the server's metadata; "
                          "pass --image-size HxW") from None


# === gRPC ===

def grpc_request(model_name: str, signature: str, version: int | None = None,
                 encoded: list[bytes] | None = None, pixels: np.ndarray | None = None):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest`` for one batch."""
    try:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
    except ImportError:
        raise ClientError("--grpc needs the optional package tensorflow-serving-api: "
                          "pip install tensorflow-serving-api (or use --server for REST)") from None
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version:
        request.model_spec.version.value = int(version)
    if signature == "serve_bytes":
        request.inputs[BYTES_INPUT].CopyFrom(tf.make_tensor_proto(encoded, dtype=tf.string, shape=[len(encoded)]))
    else:
        request.inputs[IMAGES_INPUT].CopyFrom(tf.make_tensor_proto(checked_pixels(pixels)))
    return request


def predict_grpc(target: str, request, timeout: float = 60.0) -> np.ndarray:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            reply = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            raise ClientError(f"{target}: {error.code().name}: {error.details()}") from None
    return tf.make_ndarray(reply.outputs[OUTPUT]).astype(np.float32)


# === Local SavedModel ===

def load_local(model_dir: str):
    import tensorflow as tf

    if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        raise ClientError(f"--model-dir {model_dir}: no saved_model.pb there; pass a version directory "
                          "such as models/aaa_net/1")
    return tf.saved_model.load(model_dir)


def local_image_size(loaded, signature: str) -> tuple[int, int]:
    shape = loaded.signatures[signature].structured_input_signature[1][IMAGES_INPUT].shape
    return int(shape[1]), int(shape[2])


def predict_local(loaded, signature: str, encoded=None, pixels=None) -> np.ndarray:
    import tensorflow as tf

    if signature not in loaded.signatures:
        raise ClientError(f"the SavedModel has no signature {signature!r} (it has {sorted(loaded.signatures)})")
    function = loaded.signatures[signature]
    try:
        if signature == "serve_bytes":
            result = function(**{BYTES_INPUT: tf.constant(encoded, tf.string)})
        else:
            result = function(**{IMAGES_INPUT: tf.constant(checked_pixels(pixels))})
    except tf.errors.InvalidArgumentError as error:
        detail = next((line for line in str(error).splitlines() if "serve_bytes" in line or "Invalid" in line),
                      str(error).splitlines()[0])
        raise ClientError(f"the model refused the input: {detail.strip()}") from None
    return result[OUTPUT].numpy()


# === Command line ===

def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ClientError(f"--image-size: expected HxW such as 256x128, got {text!r}") from None
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG crops of persons")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", help="TF Serving REST address, e.g. http://localhost:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="TF Serving gRPC address, e.g. localhost:8500")
    where.add_argument("--model-dir", help="run this SavedModel version directory locally (no server)")
    where.add_argument("--write-request", metavar="FILE", help="only write the REST JSON body to FILE")
    parser.add_argument("--model-name", default="aaa_net", help="TF Serving model name (default: aaa_net)")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the latest served)")
    parser.add_argument("--signature", choices=SIGNATURES, default="serve_bytes",
                        help="serve_bytes (default): send the encoded files; serving_default / "
                             "serving_uint8: send float32 / uint8 pixels resized by this client")
    parser.add_argument("--image-size", default=None, metavar="HxW",
                        help="input size for the pixel signatures (default: asked from the model)")
    parser.add_argument("--row-format", action="store_true",
                        help="REST body as 'instances' (row format) instead of 'inputs' (columnar)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default: 60)")
    parser.add_argument("--out", default=None, help="save the embeddings as a .npy file")
    return parser


def run(args) -> np.ndarray | None:
    pixels_dtype = "uint8" if args.signature == "serving_uint8" else "float32"
    encoded = read_bytes(args.images) if args.signature == "serve_bytes" else None
    loaded = load_local(args.model_dir) if args.model_dir else None

    pixels = None
    if args.signature != "serve_bytes":
        if args.image_size:
            size = parse_size(args.image_size)
        elif loaded is not None:
            size = local_image_size(loaded, args.signature)
        elif args.server:
            size = image_size_from_metadata(
                http_json(rest_url(args.server, args.model_name, args.version, "/metadata"), None, args.timeout),
                args.signature)
        else:
            raise ClientError(f"--signature {args.signature} needs --image-size HxW here")
        pixels = load_pixels(args.images, size, pixels_dtype)

    if args.write_request:
        with open(args.write_request, "w") as f:
            json.dump(rest_request(args.signature, encoded, pixels, args.row_format), f)
        print(f"Wrote {args.write_request}; send it with:\n  curl -s -d @{args.write_request} "
              f"{rest_url('http://localhost:8501', args.model_name, args.version)}")
        return None
    if args.server:
        payload = rest_request(args.signature, encoded, pixels, args.row_format)
        embeddings = parse_rest_response(
            http_json(rest_url(args.server, args.model_name, args.version), payload, args.timeout))
    elif args.grpc:
        request = grpc_request(args.model_name, args.signature, args.version, encoded, pixels)
        embeddings = predict_grpc(args.grpc, request, args.timeout)
    else:
        if loaded is None:
            raise ClientError("give --server URL, --grpc HOST:PORT, --model-dir DIR or --write-request FILE")
        embeddings = predict_local(loaded, args.signature, encoded, pixels)

    for path, embedding in zip(args.images, embeddings):
        head = " ".join(f"{v:+.4f}" for v in embedding[:4])
        print(f"{path}: {embedding.shape[0]}-d, norm {np.linalg.norm(embedding):.4f}, [{head} ...]")
    if len(embeddings) > 1:
        print("cosine similarity matrix:")
        print(np.array2string(embeddings @ embeddings.T, precision=3, suppress_small=True))
    if args.out:
        np.save(args.out, embeddings)
        print(f"Wrote {args.out}")
    return embeddings


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ClientError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
