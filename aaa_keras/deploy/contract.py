"""The pixels every exported model takes, checked before they reach it (docs/deployment.md, section 0).

Every format takes RGB pixels on the 0-255 scale, already resized to the
model's input size, ``[N, H, W, 3]`` (NHWC); the normalisation each backbone
needs is inside the graph. A caller who normalises first (the common
``x / 255`` convention, ``[-1, 1]``, ImageNet mean / std, or the caffe
mean subtraction) gets a finite, L2-normalised and wrong embedding: nothing
in the graph can tell. The project's runners (:mod:`aaa_keras.deploy.runtime`,
``tflite``, ``onnx_openvino``) therefore refuse such a batch with one line
(docs/decisions.md, "Input range of the exported models"):

- any value below ``-PIXEL_SLACK`` or above ``255 + PIXEL_SLACK``
  (mean-subtracted or standardised pixels; the slack allows a resampler's
  overshoot, e.g. bicubic, of one grey level);
- a batch whose largest value is at most 1.0 while not all zero (0-1 floats or
  ``[-1, 1]``; an all-black batch is black on either scale, so it passes).

The standalone clients in ``export/`` carry the same rule (they never import
this package).
"""

from __future__ import annotations

import numpy as np

from aaa_keras.errors import UserError

PIXEL_MAX = 255.0
PIXEL_SLACK = 1.0  # grey levels a resampler may overshoot by


def checked_pixels(images, image_size, where: str) -> np.ndarray:
    """``images`` as a contiguous float32 ``[N, H, W, 3]`` array of 0-255 pixels; UserError naming ``where``
    when the shape is not the model's or the values are clearly not on the 0-255 scale."""
    images = np.ascontiguousarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != (*image_size, 3):
        raise UserError(f"{where}: expects images of shape [N, {image_size[0]}, {image_size[1]}, 3], "
                        f"got {list(images.shape)}")
    problem = pixel_range_problem(images)
    if problem:
        raise UserError(f"{where}: {problem}")
    return images


def pixel_range_problem(images: np.ndarray) -> str | None:
    """Why ``images`` are not RGB 0-255 pixels, or None (the rule above)."""
    if not images.size:
        return None
    low, high = float(np.min(images)), float(np.max(images))
    if not (np.isfinite(low) and np.isfinite(high)):
        return "the images hold NaN or inf; expected RGB pixels 0-255"
    if low < -PIXEL_SLACK or high > PIXEL_MAX + PIXEL_SLACK:
        return (f"pixel values from {low:.4g} to {high:.4g}; expected RGB 0-255 (raw pixels as float32: the "
                "model normalises them itself, so do not subtract a mean or divide by a standard deviation)")
    if high <= 1.0 and (low != 0.0 or high != 0.0):
        return (f"pixel values from {low:.4g} to {high:.4g}, all within [-1, 1]: these look like normalised "
                "pixels; expected RGB 0-255 (multiply 0-1 floats by 255)")
    return None


def l2_normalized(values: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    values = np.asarray(values, np.float32)
    return values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
