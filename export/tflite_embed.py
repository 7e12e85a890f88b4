#!/usr/bin/env python
"""A person crop in, an embedding out, with an exported AAA-Net .tflite model (LiteRT).

Meant for an edge camera: it imports nothing but ai-edge-litert, numpy and
OpenCV (``pip install ai-edge-litert numpy opencv-python-headless``).

The three exports (``python cli.py export --format tflite --quantize all``):
  *_float32.tflite  float32 RGB 0-255 input              -> float32 embedding
  *_float16.tflite  the same, weights stored as float16 (half the size)
  *_int8.tflite     uint8 RGB pixels (scale 1, zero point 0) -> int8 embedding, NOT L2-normalised
                    (the graph is integer end to end; the normalisation is done here)
Input and output tensors are (de)quantised here with their own scale and
zero point, whatever the model; the embedding is returned L2-normalised, so
two crops compare by a dot product (cosine) or Euclidean distance.

In camera code: ``embedder = CropEmbedder("aaa_net_v1_int8.tflite")`` once,
then ``embedder.embed(rgb_crop)`` per detection (an ``H x W x 3`` uint8 RGB
array of any size, or float32 on the same 0-255 scale; it is resized bilinearly to the model's input
size). A float crop on another scale (0-1, [-1, 1], mean-subtracted) is refused with a ValueError:
the model normalises the pixels itself.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

EXAMPLES = """
examples:
  python export/tflite_embed.py models/tflite/aaa_net/1/aaa_net_v1_int8.tflite crop.jpg
  python export/tflite_embed.py model.tflite a.jpg b.jpg --threads 2 --out embeddings.npy
"""


class CropEmbedder:
    """One LiteRT interpreter; ``embed(rgb_crop)`` -> L2-normalised float32 ``(D,)``."""

    def __init__(self, model_path: str, num_threads: int = 2):
        self.interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        _, self.height, self.width, _ = (int(v) for v in self.input["shape"])
        if tuple(self.input["shape"][:1]) != (1,):  # batch 1 for a camera loop
            self.interpreter.resize_tensor_input(self.input["index"], [1, self.height, self.width, 3])
            self.interpreter.allocate_tensors()

    def preprocess(self, rgb_crop: np.ndarray) -> np.ndarray:
        """Resize (bilinear, like the training pipeline) and quantise for the input tensor."""
        crop = np.asarray(rgb_crop)
        if crop.ndim != 3 or crop.shape[2] != 3 or min(crop.shape[:2]) < 1:
            raise ValueError(f"expected an H x W x 3 RGB crop, got shape {crop.shape}")
        problem = pixel_range_problem(crop)
        if problem:
            raise ValueError(problem)
        pixels = cv2.resize(crop.astype(np.float32), (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        pixels = np.clip(pixels, 0.0, 255.0)[None]
        dtype = np.dtype(self.input["dtype"])
        if dtype == np.float32:
            return pixels
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(pixels / (scale or 1.0) + zero_point), info.min, info.max).astype(dtype)

    def embed(self, rgb_crop: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], self.preprocess(rgb_crop))
        self.interpreter.invoke()
        values = self.interpreter.get_tensor(self.output["index"])[0]
        if values.dtype != np.float32:
            scale, zero_point = self.output["quantization"]
            values = (values.astype(np.float32) - zero_point) * (scale or 1.0)
        return (values / max(float(np.linalg.norm(values)), 1e-12)).astype(np.float32)


def pixel_range_problem(pixels: np.ndarray) -> str | None:
    """Why ``pixels`` are not RGB 0-255, or None: values below -1 or above 256 (normalised or
    mean-subtracted), or all within [-1, 1] and not all zero (0-1 floats). The project's runners apply
    the same rule (aaa_keras/deploy/contract.py); a uint8 crop always passes."""
    if pixels.dtype == np.uint8 or not pixels.size:
        return None
    low, high = float(np.min(pixels)), float(np.max(pixels))
    if not (np.isfinite(low) and np.isfinite(high)):
        return "the crop holds NaN or inf; expected RGB pixels 0-255"
    if low < -1.0 or high > 256.0:
        return (f"pixel values from {low:.4g} to {high:.4g}; expected RGB 0-255 (the model normalises "
                "them itself, so do not subtract a mean or divide by a standard deviation)")
    if high <= 1.0 and (low != 0.0 or high != 0.0):
        return (f"pixel values from {low:.4g} to {high:.4g}, all within [-1, 1]: these look like normalised "
                "pixels; expected RGB 0-255 (multiply 0-1 floats by 255)")
    return None


def read_rgb(path: str) -> np.ndarray:
    """An image file as an RGB uint8 array; ValueError when OpenCV cannot decode it."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read this image (missing, or not a format OpenCV decodes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported .tflite file")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="person crops (JPEG/PNG)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--out", default=None, help="save the embeddings as a .npy file (N x D)")
    args = parser.parse_args(argv)
    try:
        embedder = CropEmbedder(args.model, args.threads)
    except (ValueError, RuntimeError) as error:
        print(f"Error: {args.model}: cannot load this .tflite model ({error})", file=sys.stderr)
        return 2
    print(f"{args.model}: input {embedder.height}x{embedder.width} {np.dtype(embedder.input['dtype']).name}, "
          f"output {int(embedder.output['shape'][-1])}-d {np.dtype(embedder.output['dtype']).name}")
    embeddings = []
    for path in args.images:
        try:
            embedding = embedder.embed(read_rgb(path))
        except ValueError as error:
            print(f"Error: {error}", file=sys.stderr)
            return 2
        embeddings.append(embedding)
        print(f"{path}: [{' '.join(f'{v:+.4f}' for v in embedding[:4])} ...]")
    if args.out:
        np.save(args.out, np.stack(embeddings))
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
