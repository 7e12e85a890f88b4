"""Realistic occluders for person crops: another person in front, or an object, covering a
requested fraction of the image, with the boolean mask of the covered pixels.

Used by ``builtin:occluded`` (``data/synth.py``), by ``evaluate --occlude-queries`` /
``ablate --occlude-queries`` (``evaluation/occluded.py``), and meant for occlusion in pixel
space during training. No TensorFlow: numpy and OpenCV only.

Kinds and where they enter the crop, as in crowded street footage (Occluded-DukeMTMC,
Occluded-REID):

- ``person``: a second person nearer the camera, larger, entering from the left or right
  (drawn with the built-in renderer's person drawing, ``data/render.py``);
- ``car``: a car body (with cabin, windows and wheels) from the bottom;
- ``bin``: a bin or crate with a lid from the bottom;
- ``pole``: a pole, pillar or tree trunk over the full height, at a side;
- ``bag``: a suitcase or large bag from the bottom, at a side;
- ``sign``: a hanging sign board from the top.

Objects are painted with a texture (plain with shading, stripes, checks, grain, a
gradient), an outline and kind-specific details, all inside the mask. The covered
fraction is reached by bisection on each kind's size (or, for a person, on how far it
has walked into the crop) and is measured on the returned mask: within
:data:`TOLERANCE` of the request for images of at least 64 x 32. Every pixel outside the
mask is bit-identical to the input. Deterministic: one seed (or one Generator state)
gives the same occluder; the shape parameters are drawn before the size is searched, so
the random stream does not depend on the search.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from aaa_keras.data.render import _draw_person, _Pose, _random_look
from aaa_keras.errors import UserError

OCCLUDER_KINDS = ("person", "car", "bin", "pole", "bag", "sign")
KIND_WEIGHTS = (0.3, 0.15, 0.15, 0.15, 0.1, 0.15)  # a second person is the most common occluder
TEXTURES = ("plain", "stripes", "checks", "grain", "gradient")
FRACTION_RANGE = (0.2, 0.5)  # Occluded-DukeMTMC-like: a fifth to a half of the crop hidden
TOLERANCE = 0.015  # |measured - requested| covered fraction, images of at least 64 x 32 (measured max 0.008)
_SEARCH_STEPS = 20
_GOOD = 0.01  # a shape this close is kept; else new parameters are drawn (the best is kept)
_ATTEMPTS = 6  # new shape parameters when a drawn shape cannot reach the requested fraction


@dataclasses.dataclass(frozen=True)
class Occlusion:
    """One occluded image: ``image`` (H, W, 3) uint8, ``mask`` (H, W) bool of the covered
    pixels, and what covers them (``fraction`` is ``mask.mean()``)."""

    image: np.ndarray
    mask: np.ndarray
    kind: str
    side: str
    texture: str
    fraction: float
    requested: float


def as_rng(rng) -> np.random.Generator:
    """A Generator from a non-negative int seed or a Generator (used as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise UserError(f"occluder seed: expected a non-negative integer or a numpy Generator, got {rng!r}")


def occlude(image: np.ndarray, rng, fraction: float, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(occluded image, boolean mask of the covered pixels)``: ``image`` (H, W, 3) uint8 with an
    occluder of ``kind`` (drawn from ``rng`` when None) covering ``fraction`` of it."""
    result = occlusion(image, rng, fraction, kind)
    return result.image, result.mask


def random_fraction(rng, low_high: tuple[float, float] = FRACTION_RANGE) -> float:
    """A requested fraction drawn uniformly from ``low_high``."""
    return float(as_rng(rng).uniform(*low_high))


def occlusion(image: np.ndarray, rng, fraction: float, kind: str | None = None) -> Occlusion:
    """:func:`occlude` with what was drawn: kind, side, texture and the measured fraction."""
    image = _check_image(image)
    if not 0.0 < float(fraction) < 1.0:
        raise UserError(f"occluded fraction: expected a value in (0, 1), got {fraction!r}")
    rng = as_rng(rng)
    if kind is None:
        kind = OCCLUDER_KINDS[int(rng.choice(len(OCCLUDER_KINDS), p=KIND_WEIGHTS))]
    if kind not in OCCLUDER_KINDS:
        raise UserError(f"occluder kind: got {kind!r}; expected one of {', '.join(OCCLUDER_KINDS)}")
    height, width = image.shape[:2]
    best = None
    for attempt in range(_ATTEMPTS):
        params = _DRAW_PARAMS[kind](rng, height, width)
        if kind == "person":
            params["scale"] *= 1.12 ** attempt  # nearer to the camera: a larger share reachable
        amount, mask = _fit(lambda a: _SHAPES[kind](params, a, height, width), float(fraction))
        error = abs(mask.mean() - fraction)
        if best is None or error < best[0]:
            best = (error, params, amount, mask)
        if error <= _GOOD:
            break
    _, params, amount, mask = best
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    layer = _PAINT[kind](params, amount, mask, texture, rng, height, width)
    out = image.copy()
    out[mask] = layer[mask]
    return Occlusion(out, mask, kind, params["side"], "clothes" if kind == "person" else texture,
                     float(mask.mean()), float(fraction))


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise UserError(f"occluder: expected an (H, W, 3) uint8 image of at least 8 x 8, got "
                        f"{image.dtype} {image.shape}")
    return image


def _fit(shape, target: float) -> tuple[float, np.ndarray]:
    """The amount in [0, 1] whose mask covers closest to ``target`` (bisection; coverage grows
    with the amount), and that mask."""
    low, high = 0.0, 1.0
    best = None
    for _ in range(_SEARCH_STEPS):
        middle = 0.5 * (low + high)
        mask = shape(middle)
        covered = mask.mean()
        if best is None or abs(covered - target) < abs(best[1].mean() - target):
            best = (middle, mask)
        if abs(covered - target) < 0.004:
            break
        if covered < target:
            low = middle
        else:
            high = middle
    return best


# --------------------------------------------------------------------------- shapes


def _side(rng, choices) -> str:
    return str(choices[int(rng.integers(len(choices)))])


def _person_params(rng, height, width) -> dict:
    look = _random_look(rng)
    return {"side": _side(rng, ("left", "right")), "look": look, "scale": float(rng.uniform(1.15, 1.5)),
            "dy": float(rng.uniform(0.0, 0.12)), "back_view": bool(rng.random() < 0.5),
            "turn": float(rng.uniform(0.85, 1.0)),
            "legs": (float(rng.uniform(-0.25, 0.15)), float(rng.uniform(-0.15, 0.25))),
            "arm_swing": float(rng.uniform(-0.15, 0.15)), "_cache": {}}


def _person_render(params, amount, height, width) -> tuple[np.ndarray, np.ndarray]:
    """The person drawn at twice the size on black and on white, shrunk: ``(layer, mask)``,
    the mask being the pixels where both agree (fully covered, no anti-aliased edge, no shadow)."""
    key = round(amount, 9)
    if key in params["_cache"]:
        return params["_cache"][key]
    offset = -1.0 + amount  # centre from half a width outside the crop to its middle
    dx = offset if params["side"] == "left" else -offset
    pose = _Pose(dx=dx, dy=params["dy"], scale=params["scale"], back_view=params["back_view"],
                 turn=params["turn"], legs=params["legs"], arm_swing=params["arm_swing"])
    renders = []
    for value in (0, 255):
        canvas = np.full((2 * height, 2 * width, 3), value, np.uint8)
        _draw_person(canvas, params["look"], pose)
        renders.append(cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA))
    result = (renders[0], np.all(renders[0] == renders[1], axis=2))
    params["_cache"][key] = result
    return result


def _person_shape(params, amount, height, width) -> np.ndarray:
    return _person_render(params, amount, height, width)[1]


def _car_params(rng, height, width) -> dict:
    length = width * float(rng.uniform(1.3, 2.6))
    return {"side": "bottom", "x0": float(rng.uniform(width - length, 0.0)), "length": length,
            "cabin": (float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.55, 0.8))),
            "cabin_height": float(rng.uniform(0.5, 0.8)), "vivid": True}


def _car_shape(params, amount, height, width) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    body = amount * 0.62 * height  # the body's height; the cabin sits on it
    x0, length = params["x0"], params["length"]
    top = height - body
    cv2.rectangle(mask, (int(round(x0)), int(round(top))), (int(round(x0 + length)), height), 1, -1)
    start, stop = (x0 + f * length for f in params["cabin"])
    cabin_top = top - params["cabin_height"] * body
    slope = 0.25 * (stop - start)
    cabin = np.array([[start, top], [start + slope, cabin_top], [stop - slope, cabin_top], [stop, top]])
    cv2.fillPoly(mask, [np.round(cabin).astype(np.int32)], 1)
    return mask.astype(bool)


def _box_params(rng, height, width, side_choices=("bottom",)) -> dict:
    box_w = width * float(rng.uniform(0.6, 0.95))
    return {"side": _side(rng, side_choices), "x0": float(rng.uniform(-0.25 * box_w, width - 0.75 * box_w)),
            "box_w": box_w, "lift": float(rng.uniform(0.0, 0.04)) * height, "vivid": False}


def _bin_shape(params, amount, height, width) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    bottom = height - params["lift"]
    top = bottom - amount * 0.95 * height
    x0, box_w = params["x0"], params["box_w"]
    taper = 0.06 * box_w
    body = np.array([[x0 + taper, bottom], [x0, top], [x0 + box_w, top], [x0 + box_w - taper, bottom]])
    cv2.fillPoly(mask, [np.round(body).astype(np.int32)], 1)
    lid = max(1, int(round(0.05 * height)))
    cv2.rectangle(mask, (int(round(x0 - 0.04 * box_w)), int(round(top))),
                  (int(round(x0 + 1.04 * box_w)), int(round(top)) + lid), 1, -1)
    return mask.astype(bool)


def _bag_params(rng, height, width) -> dict:
    params = _box_params(rng, height, width)
    params["box_w"] = box_w = width * float(rng.uniform(0.7, 1.0))
    params["side"] = _side(rng, ("bottom-left", "bottom-right"))
    inside = float(rng.uniform(0.85, 1.0)) * box_w  # the part of the bag inside the crop
    params["x0"] = inside - box_w if params["side"] == "bottom-left" else width - inside
    return params


def _bag_shape(params, amount, height, width) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    bottom = height - params["lift"]
    top = bottom - amount * 0.9 * height
    x0, box_w = params["x0"], params["box_w"]
    radius = max(1, int(round(0.12 * min(box_w, bottom - top + 1))))
    left, right = int(round(x0)), int(round(x0 + box_w))
    cv2.rectangle(mask, (left + radius, int(round(top))), (right - radius, int(round(bottom))), 1, -1)
    cv2.rectangle(mask, (left, int(round(top)) + radius), (right, int(round(bottom)) - radius), 1, -1)
    for cx in (left + radius, right - radius):
        for cy in (int(round(top)) + radius, int(round(bottom)) - radius):
            cv2.circle(mask, (cx, cy), radius, 1, -1)
    handle_w = max(1, int(round(0.05 * width)))
    centre = (left + right) // 2
    handle_top = int(round(top - 0.08 * height * min(1.0, 4 * amount)))
    cv2.rectangle(mask, (centre - int(0.2 * box_w), handle_top), (centre + int(0.2 * box_w), int(round(top))),
                  1, handle_w)
    return mask.astype(bool)


def _pole_params(rng, height, width) -> dict:
    side = _side(rng, ("left", "right"))
    return {"side": side, "edge": float(rng.uniform(-0.08, 0.12)) * width, "lean": float(rng.uniform(-0.04, 0.04)),
            "plate": bool(rng.random() < 0.4), "plate_y": float(rng.uniform(0.15, 0.45)), "vivid": False}


def _pole_shape(params, amount, height, width) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    pole_w = amount * 0.75 * width
    lean = params["lean"] * width
    near = params["edge"]
    if params["side"] == "left":
        xs = (near, near + pole_w)
    else:
        xs = (width - near - pole_w, width - near)
    quad = np.array([[xs[0] + lean, 0], [xs[1] + lean, 0], [xs[1] - lean, height], [xs[0] - lean, height]])
    cv2.fillPoly(mask, [np.round(quad).astype(np.int32)], 1)
    if params["plate"] and amount > 0.05:
        plate_h = 0.12 * height * min(1.0, 3 * amount)
        y = params["plate_y"] * height
        reach = 0.25 * width * min(1.0, 3 * amount)
        x_left = xs[0] - reach if params["side"] == "right" else xs[0]
        x_right = xs[1] + reach if params["side"] == "left" else xs[1]
        cv2.rectangle(mask, (int(round(x_left)), int(round(y))), (int(round(x_right)), int(round(y + plate_h))),
                      1, -1)
    return mask.astype(bool)


def _sign_params(rng, height, width) -> dict:
    sign_w = width * float(rng.uniform(0.75, 1.4))
    return {"side": "top", "x0": float(rng.uniform(min(0.0, width - sign_w), max(0.0, width - sign_w))),
            "sign_w": sign_w, "gap": float(rng.uniform(0.0, 0.06)) * height, "vivid": True}


def _sign_shape(params, amount, height, width) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    x0, sign_w = params["x0"], params["sign_w"]
    bottom = params["gap"] + amount * 0.9 * height
    cv2.rectangle(mask, (int(round(x0)), int(round(params["gap"]))), (int(round(x0 + sign_w)), int(round(bottom))),
                  1, -1)
    cord = max(1, int(round(0.03 * width)))
    for x in (x0 + 0.2 * sign_w, x0 + 0.8 * sign_w):
        cv2.rectangle(mask, (int(round(x)), 0), (int(round(x)) + cord, int(round(params["gap"]))), 1, -1)
    return mask.astype(bool)


# --------------------------------------------------------------------------- painting


def _colour(rng, vivid: bool) -> np.ndarray:
    if vivid:
        hue = np.array([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 240)]]], np.uint8)
        return cv2.cvtColor(hue, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    base = rng.uniform(45, 190)
    return np.clip(base + rng.normal(0.0, 22.0, 3), 0, 255).astype(np.float32)


def texture_fill(rng, height: int, width: int, texture: str, vivid: bool = False) -> np.ndarray:
    """An (H, W, 3) uint8 surface of ``texture`` (one of :data:`TEXTURES`) for painting an occluder."""
    base = _colour(rng, vivid)
    other = _colour(rng, not vivid)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    period = float(rng.uniform(0.04, 0.12)) * height
    if texture == "stripes":
        along = ys if rng.random() < 0.5 else xs
        pick = (np.floor(along / period) % 2)[..., None]
        surface = base * (1 - pick) + other * pick
    elif texture == "checks":
        pick = ((np.floor(ys / period) + np.floor(xs / period)) % 2)[..., None]
        surface = base * (1 - pick) + other * pick
    elif texture == "grain":
        surface = base + rng.normal(0.0, float(rng.uniform(12, 30)), (height, width, 1)).astype(np.float32)
    elif texture == "gradient":
        t = (ys / max(height - 1, 1))[..., None]
        surface = base * (1 - t) + other * t
    else:  # plain, with a soft shading
        shade = cv2.resize(rng.uniform(0.85, 1.15, (3, 2)).astype(np.float32), (width, height),
                           interpolation=cv2.INTER_CUBIC)
        surface = base * shade[..., None]
    surface = surface + rng.normal(0.0, 3.0, (height, width, 1)).astype(np.float32)  # sensor noise
    return np.clip(np.rint(surface), 0, 255).astype(np.uint8)


def paint_region(image: np.ndarray, region: np.ndarray, rng, texture: str | None = None,
                 source: np.ndarray | None = None) -> np.ndarray:
    """``image`` with exactly the pixels of ``region`` (H, W bool) covered: by ``source``'s pixels
    there (e.g. another identity's image of the same batch, same size), or else by a textured
    surface (``texture`` from :data:`TEXTURES`, drawn from ``rng`` when None) with an outline.
    Every pixel outside ``region`` is bit-identical. For occlusion in pixel space, where the
    region is given (an upsampled attention mask) rather than drawn."""
    image = _check_image(image)
    region = np.asarray(region, bool)
    if region.shape != image.shape[:2]:
        raise UserError(f"paint_region: region {region.shape} does not match the image {image.shape[:2]}")
    rng = as_rng(rng)
    if source is not None:
        layer = _check_image(source)
        if layer.shape != image.shape:
            raise UserError(f"paint_region: source {layer.shape} does not match the image {image.shape}")
    else:
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))] if texture is None else texture
        if texture not in TEXTURES:
            raise UserError(f"paint_region: texture {texture!r}; expected one of {', '.join(TEXTURES)}")
        layer = texture_fill(rng, image.shape[0], image.shape[1], texture, bool(rng.random() < 0.5))
        _outline(layer, region)
    out = image.copy()
    out[region] = layer[region]
    return out


def _outline(layer: np.ndarray, mask: np.ndarray, factor: float = 0.6) -> None:
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    edge = mask & ~inner
    layer[edge] = (layer[edge] * factor).astype(np.uint8)


def _paint_object(params, amount, mask, texture, rng, height, width) -> np.ndarray:
    layer = texture_fill(rng, height, width, texture, params.get("vivid", False))
    _outline(layer, mask)
    return layer


def _paint_car(params, amount, mask, texture, rng, height, width) -> np.ndarray:
    layer = _paint_object(params, amount, mask, texture, rng, height, width)
    body = amount * 0.62 * height
    top = height - body
    start, stop = (params["x0"] + f * params["length"] for f in params["cabin"])
    cabin_top = top - params["cabin_height"] * body
    glass = np.zeros((height, width), np.uint8)
    inset = 0.15 * (top - cabin_top)
    slope = 0.25 * (stop - start)
    window = np.array([[start + slope * 0.6 + inset, top - inset], [start + slope + inset, cabin_top + inset],
                       [stop - slope - inset, cabin_top + inset], [stop - slope * 0.6 - inset, top - inset]])
    cv2.fillPoly(glass, [np.round(window).astype(np.int32)], 1)
    glass_colour = rng.uniform(40, 90) + rng.normal(0, 8, 3)
    layer[glass.astype(bool) & mask] = np.clip(glass_colour, 0, 255).astype(np.uint8)
    wheels = np.zeros((height, width), np.uint8)
    radius = max(1, int(round(0.35 * body)))
    for f in (0.2, 0.8):
        cv2.circle(wheels, (int(round(params["x0"] + f * params["length"])), height), radius, 1, -1)
    layer[wheels.astype(bool) & mask] = np.array([22, 22, 25], np.uint8)
    return layer


def _paint_sign(params, amount, mask, texture, rng, height, width) -> np.ndarray:
    layer = _paint_object(params, amount, mask, "plain", rng, height, width)
    ink = np.clip(_colour(rng, False) * 0.4, 0, 255).astype(np.uint8)
    bottom = params["gap"] + amount * 0.9 * height
    rows = max(1, int((bottom - params["gap"]) / max(4.0, 0.08 * height)))
    letters = np.zeros((height, width), np.uint8)
    for row in range(rows):
        y = params["gap"] + (row + 0.3) * (bottom - params["gap"]) / rows
        x = params["x0"] + 0.1 * params["sign_w"]
        while x < params["x0"] + 0.9 * params["sign_w"]:
            w = float(rng.uniform(0.03, 0.07)) * width + 1
            cv2.rectangle(letters, (int(x), int(y)), (int(x + w), int(y + 0.4 * (bottom - params["gap"]) / rows)), 1, -1)
            x += w * float(rng.uniform(1.4, 2.2))
    layer[letters.astype(bool) & mask] = ink
    return layer


def _paint_person(params, amount, mask, texture, rng, height, width) -> np.ndarray:
    return _person_render(params, amount, height, width)[0].copy()


_DRAW_PARAMS = {"person": _person_params, "car": _car_params, "bin": _box_params, "pole": _pole_params,
                "bag": _bag_params, "sign": _sign_params}
_SHAPES = {"person": _person_shape, "car": _car_shape, "bin": _bin_shape, "pole": _pole_shape,
           "bag": _bag_shape, "sign": _sign_shape}
_PAINT = {"person": _paint_person, "car": _paint_car, "bin": _paint_object, "pole": _paint_object,
          "bag": _paint_object, "sign": _paint_sign}
