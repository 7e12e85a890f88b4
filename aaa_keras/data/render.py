"""The built-in renderer: identities (clothes, body), cameras (scene, light, sensor) and the
drawing of one person image with numpy/OpenCV primitives.

``data/synth.py`` lays these images out as a dataset; ``data/occluders.py`` reuses the
person drawing for a second person in front of the first. Split from ``synth.py`` (which
kept its name and API) so that the occluder generator can draw persons without importing
the dataset writer that uses it.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

_SUPERSAMPLE = 2  # persons are drawn at twice the size, then shrunk (anti-aliasing)

# Purposes mixed into the seeds so that independent draws never share a stream.
(_COLOUR_PAIRS, _TRAIN_TEST, _ID_CAMERAS, _GALLERY_ONLY, _JUNK_SOURCE, _IDENTITY, _CAMERA,
 _IMAGE, _DISTRACTOR, _JUNK) = range(1, 11)

# Clothing palettes in RGB, far apart so that an identity survives lighting changes.
_UPPER_COLOURS = (
    (200, 30, 35), (35, 70, 190), (40, 150, 60), (235, 200, 40), (235, 235, 230),
    (30, 30, 32), (240, 120, 30), (120, 50, 150), (240, 130, 170), (90, 190, 225),
    (128, 128, 128), (110, 40, 40),
)
_LOWER_COLOURS = (
    (25, 25, 28), (50, 75, 125), (125, 125, 130), (195, 175, 130), (225, 225, 220),
    (100, 65, 40), (40, 85, 45), (170, 35, 40),
)
_SKIN_COLOURS = ((240, 200, 170), (225, 180, 140), (190, 140, 100), (140, 95, 65), (95, 65, 45))
_HAIR_COLOURS = ((20, 18, 15), (60, 40, 25), (110, 75, 40), (200, 170, 110), (150, 150, 150))
_SHOE_COLOURS = ((20, 20, 20), (240, 240, 240), (90, 60, 40), (60, 60, 70))
_BAG_COLOURS = ((20, 20, 25), (150, 30, 30), (30, 60, 150), (200, 160, 60), (60, 110, 60),
                (230, 100, 160), (150, 150, 150))

Rgb = tuple[int, int, int]  # a colour in RGB order


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """A Generator that depends only on ``seed`` and the keys, never on call order."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _bgr(rgb: Rgb) -> tuple[int, int, int]:
    return (int(rgb[2]), int(rgb[1]), int(rgb[0]))


def _jitter(rng: np.random.Generator, rgb: Rgb, spread: float = 8.0) -> Rgb:
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.normal(0.0, spread, 3), 0, 255))


# --------------------------------------------------------------------------- identities


@dataclasses.dataclass(frozen=True)
class _Look:
    """What stays the same across cameras: clothes, bag and body."""

    upper: Rgb
    lower: Rgb
    pattern: str  # plain | stripes | checks | logo
    pattern_colour: Rgb
    long_sleeves: bool
    lower_style: str  # trousers | shorts | skirt
    bag: str  # none | backpack | handbag
    bag_colour: Rgb
    bag_side: int  # -1 left, +1 right (image coordinates)
    hat: Rgb | None
    hair: Rgb
    skin: Rgb
    shoes: Rgb
    height: float  # fraction of the tallest person
    build: float  # shoulder width factor


def _make_look(rng: np.random.Generator, upper_index: int, lower_index: int) -> _Look:
    upper = _UPPER_COLOURS[upper_index]
    contrast = [c for c in _UPPER_COLOURS if np.abs(np.subtract(c, upper)).sum() > 250]
    return _Look(
        upper=_jitter(rng, upper),
        lower=_jitter(rng, _LOWER_COLOURS[lower_index]),
        pattern=str(rng.choice(["plain", "plain", "stripes", "checks", "logo"])),
        pattern_colour=_jitter(rng, contrast[rng.integers(len(contrast))]),
        long_sleeves=bool(rng.random() < 0.5),
        lower_style=str(rng.choice(["trousers", "trousers", "shorts", "skirt"])),
        bag=str(rng.choice(["none", "backpack", "handbag"])),
        bag_colour=_jitter(rng, _BAG_COLOURS[rng.integers(len(_BAG_COLOURS))]),
        bag_side=int(rng.choice([-1, 1])),
        hat=_jitter(rng, _BAG_COLOURS[rng.integers(len(_BAG_COLOURS))]) if rng.random() < 0.2
        else None,
        hair=_jitter(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 5.0),
        skin=_jitter(rng, _SKIN_COLOURS[rng.integers(len(_SKIN_COLOURS))], 5.0),
        shoes=_jitter(rng, _SHOE_COLOURS[rng.integers(len(_SHOE_COLOURS))], 5.0),
        height=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.85, 1.15)),
    )


def _random_look(rng: np.random.Generator) -> _Look:
    """A passer-by who is none of the identities (for distractors)."""
    return _make_look(rng, int(rng.integers(len(_UPPER_COLOURS))),
                      int(rng.integers(len(_LOWER_COLOURS))))


def _identity_looks(seed: int, pids: list[int]) -> dict[int, _Look]:
    """One look per pid; the colour pairs are a seeded permutation, so the first
    ``len(_UPPER_COLOURS) * len(_LOWER_COLOURS)`` identities never share both colours."""
    num_pairs = len(_UPPER_COLOURS) * len(_LOWER_COLOURS)
    order = _rng(seed, _COLOUR_PAIRS).permutation(num_pairs)
    looks = {}
    for position, pid in enumerate(pids):
        upper_index, lower_index = divmod(int(order[position % num_pairs]), len(_LOWER_COLOURS))
        looks[pid] = _make_look(_rng(seed, _IDENTITY, pid), upper_index, lower_index)
    return looks


# --------------------------------------------------------------------------- cameras


@dataclasses.dataclass(frozen=True)
class _Camera:
    """What one camera does to every image it takes."""

    background: np.ndarray  # BGR uint8, larger than the supersampled canvas
    gain: float
    cast: np.ndarray  # per-channel (BGR) multipliers
    gradient: tuple[float, float]  # illumination slope along x and y
    blur_sigma: float
    noise_sigma: float
    resolution: float  # 1.0 = sharp, 0.5 = half resolution upsampled
    distance: float  # person scale factor
    back_view_probability: float
    occluder_probability: float


def _muted_colour(rng: np.random.Generator, low: int = 60, high: int = 200) -> np.ndarray:
    base = rng.uniform(low, high)
    return np.clip(base + rng.normal(0.0, 25.0, 3), 0, 255)


def _draw_wall(rng: np.random.Generator, image: np.ndarray, horizon: int) -> None:
    width = image.shape[1]
    style = rng.choice(["windows", "bricks", "trees", "plain"])
    if style == "windows":
        colour = _muted_colour(rng, 30, 220)
        step_x, step_y = int(rng.integers(30, 60)), int(rng.integers(40, 70))
        for y in range(int(rng.integers(5, 20)), horizon - 20, step_y):
            for x in range(int(rng.integers(0, 20)), width, step_x):
                cv2.rectangle(image, (x, y), (x + step_x // 2, y + step_y // 2),
                              colour.tolist(), -1)
    elif style == "bricks":
        colour = (image[0, 0].astype(float) * rng.uniform(0.6, 0.85)).tolist()
        step = int(rng.integers(10, 18))
        for row, y in enumerate(range(0, horizon, step)):
            cv2.line(image, (0, y), (width, y), colour, 1)
            for x in range((row % 2) * step, width, 2 * step):
                cv2.line(image, (x, y), (x, y + step), colour, 1)
    elif style == "trees":
        for _ in range(int(rng.integers(4, 9))):
            green = (rng.uniform(20, 70), rng.uniform(80, 150), rng.uniform(20, 70))
            centre = (int(rng.integers(0, width)), int(rng.integers(0, max(horizon - 10, 1))))
            cv2.circle(image, centre, int(rng.integers(15, 45)), green, -1, cv2.LINE_AA)


def _draw_floor(rng: np.random.Generator, image: np.ndarray, horizon: int) -> None:
    height, width = image.shape[:2]
    if rng.random() < 0.5:
        colour = (image[-1, 0].astype(float) * rng.uniform(0.7, 0.9)).tolist()
        step = int(rng.integers(20, 40))
        for y in range(horizon, height, step // 2):
            cv2.line(image, (0, y), (width, y), colour, 1)
        for x in range(0, width, step):
            cv2.line(image, (x, horizon), (x + (x - width // 2) // 2, height), colour, 1)


def _camera_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A scene larger than the canvas; each image shows a random crop of it."""
    scene_h, scene_w = int(height * 1.3), int(width * 2.5)
    scene = np.empty((scene_h, scene_w, 3), np.uint8)
    horizon = int(scene_h * rng.uniform(0.45, 0.75))
    scene[:horizon] = _muted_colour(rng)
    scene[horizon:] = _muted_colour(rng)
    _draw_wall(rng, scene, horizon)
    _draw_floor(rng, scene, horizon)
    shading = cv2.resize(rng.uniform(0.8, 1.2, (4, 8)).astype(np.float32), (scene_w, scene_h),
                         interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 6.0, (scene_h, scene_w, 1))
    scene = np.clip(scene * shading[..., None] + grain, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(scene, (0, 0), 1.5)  # out of focus behind the person


def _make_camera(seed: int, cam: int, canvas_size: tuple[int, int]) -> _Camera:
    rng = _rng(seed, _CAMERA, cam)
    return _Camera(
        background=_camera_background(rng, *canvas_size),
        gain=float(rng.uniform(0.7, 1.25)),
        cast=rng.uniform(0.87, 1.13, 3),
        gradient=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.2, 0.2))),
        blur_sigma=float(rng.uniform(0.0, 1.0)),
        noise_sigma=float(rng.uniform(1.5, 5.0)),
        resolution=float(rng.choice([1.0, 0.75, 0.5])),
        distance=float(rng.uniform(0.9, 1.03)),
        back_view_probability=float(rng.uniform(0.15, 0.6)),
        occluder_probability=0.25,
    )


# --------------------------------------------------------------------------- drawing


@dataclasses.dataclass(frozen=True)
class _Pose:
    """What changes from image to image of the same person and camera."""

    dx: float  # horizontal shift, fraction of the width
    dy: float  # vertical shift, fraction of the height
    scale: float
    back_view: bool
    turn: float  # 1 = facing the camera, smaller = turned aside (narrower)
    legs: tuple[float, float]  # ankle offsets, in shoulder widths
    arm_swing: float


def _random_pose(rng: np.random.Generator, camera: _Camera, spread: float = 0.04) -> _Pose:
    return _Pose(
        dx=float(np.clip(rng.normal(0.0, spread), -0.4, 0.4)),
        dy=float(rng.uniform(-0.02, 0.01)),
        scale=camera.distance * float(rng.uniform(0.94, 1.04)),
        back_view=bool(rng.random() < camera.back_view_probability),
        turn=float(rng.uniform(0.78, 1.0)),
        legs=(float(rng.uniform(-0.25, 0.15)), float(rng.uniform(-0.15, 0.25))),
        arm_swing=float(rng.uniform(-0.15, 0.15)),
    )


class _Body:
    """Maps body coordinates to canvas pixels: ``x`` in shoulder widths from the
    body's centre line, ``y`` as a fraction of the person's height from the top."""

    def __init__(self, canvas_h: int, canvas_w: int, look: _Look, pose: _Pose):
        self.height = canvas_h * 0.88 * look.height * pose.scale
        self.bottom = canvas_h * (0.975 + pose.dy)
        self.top = self.bottom - self.height
        self.centre = canvas_w * (0.5 + pose.dx)
        self.shoulders = self.height * 0.25 * look.build * pose.turn

    def pt(self, x: float, y: float) -> tuple[int, int]:
        return (int(round(self.centre + x * self.shoulders)),
                int(round(self.top + y * self.height)))

    def w(self, x: float) -> int:
        """A thickness or radius given in shoulder widths."""
        return max(1, int(round(x * self.shoulders)))

    def h(self, y: float) -> int:
        """A length given as a fraction of the person's height."""
        return max(1, int(round(y * self.height)))


def _polygon(canvas: np.ndarray, body: _Body, points, colour: Rgb) -> None:
    pts = np.array([body.pt(x, y) for x, y in points], np.int32)
    cv2.fillPoly(canvas, [pts], _bgr(colour), cv2.LINE_AA)


def _limb(canvas, body: _Body, start, end, width: float, colour: Rgb) -> None:
    cv2.line(canvas, body.pt(*start), body.pt(*end), _bgr(colour), body.w(width), cv2.LINE_AA)


def _draw_legs(canvas, body: _Body, look: _Look, pose: _Pose) -> None:
    skirt_or_shorts_end = {"trousers": 0.95, "shorts": 0.68, "skirt": 0.0}[look.lower_style]
    for side, offset in zip((-1, 1), pose.legs):
        hip, ankle = (0.2 * side, 0.54), (0.2 * side + offset, 0.94)
        _limb(canvas, body, hip, ankle, 0.34, look.skin)
        if skirt_or_shorts_end > 0.54:
            t = (skirt_or_shorts_end - 0.54) / 0.4
            cloth_end = (hip[0] + t * (ankle[0] - hip[0]), skirt_or_shorts_end)
            _limb(canvas, body, hip, cloth_end, 0.38, look.lower)
        foot = body.pt(ankle[0] + 0.06 * side, 0.965)
        cv2.ellipse(canvas, foot, (body.w(0.2), body.h(0.025)), 0, 0, 360, _bgr(look.shoes), -1,
                    cv2.LINE_AA)
    if look.lower_style == "skirt":
        _polygon(canvas, body, [(-0.42, 0.46), (0.42, 0.46), (0.66, 0.72), (-0.66, 0.72)],
                 look.lower)
    else:
        _polygon(canvas, body, [(-0.42, 0.46), (0.42, 0.46), (0.45, 0.58), (-0.45, 0.58)],
                 look.lower)


def _draw_arms(canvas, body: _Body, look: _Look, pose: _Pose) -> None:
    for side in (-1, 1):
        swing = pose.arm_swing * side
        shoulder, elbow = (0.45 * side, 0.19), (0.58 * side + swing / 2, 0.335)
        hand = (0.56 * side + swing, 0.48)
        _limb(canvas, body, shoulder, elbow, 0.27, look.upper)
        _limb(canvas, body, elbow, hand, 0.23, look.upper if look.long_sleeves else look.skin)
        cv2.circle(canvas, body.pt(*hand), body.w(0.11), _bgr(look.skin), -1, cv2.LINE_AA)


def _torso_points(waist_y: float = 0.48):
    return [(-0.5, 0.17), (-0.3, 0.145), (0.3, 0.145), (0.5, 0.17), (0.43, waist_y),
            (-0.43, waist_y)]


def _draw_torso(canvas, body: _Body, look: _Look, pose: _Pose) -> None:
    _polygon(canvas, body, _torso_points(), look.upper)
    if look.pattern in ("stripes", "checks"):
        mask = np.zeros(canvas.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.array([body.pt(x, y) for x, y in _torso_points()], np.int32)], 1)
        rows, cols = np.nonzero(mask)
        period = body.h(0.045)
        band = ((rows - int(body.top)) // period) % 2 == 1
        if look.pattern == "checks":
            band ^= ((cols - int(body.centre)) // period) % 2 == 1
        canvas[rows[band], cols[band]] = _bgr(look.pattern_colour)
    elif look.pattern == "logo" and not pose.back_view:
        cv2.rectangle(canvas, body.pt(-0.2, 0.24), body.pt(0.2, 0.35), _bgr(look.pattern_colour),
                      -1)


def _draw_bag(canvas, body: _Body, look: _Look, pose: _Pose, behind: bool) -> None:
    """Backpacks peek out behind a person seen from the front; handbags hang at a side."""
    colour, dark = look.bag_colour, tuple(int(c * 0.6) for c in look.bag_colour)
    if look.bag == "backpack":
        if behind and not pose.back_view:
            _polygon(canvas, body, [(-0.62, 0.2), (0.62, 0.2), (0.6, 0.44), (-0.6, 0.44)], colour)
        elif not behind and pose.back_view:
            cv2.rectangle(canvas, body.pt(-0.3, 0.21), body.pt(0.3, 0.43), _bgr(colour), -1)
            cv2.rectangle(canvas, body.pt(-0.3, 0.21), body.pt(0.3, 0.43), _bgr(dark),
                          body.w(0.04))
        elif not behind:
            for side in (-1, 1):
                _limb(canvas, body, (0.3 * side, 0.16), (0.33 * side, 0.4), 0.08, colour)
    elif look.bag == "handbag" and not behind:
        side = look.bag_side * (-1 if pose.back_view else 1)
        _limb(canvas, body, (-0.3 * side, 0.16), (0.68 * side, 0.44), 0.06, dark)
        cv2.rectangle(canvas, body.pt(0.55 * side, 0.43), body.pt(0.95 * side, 0.58),
                      _bgr(colour), -1)


def _draw_head(canvas, body: _Body, look: _Look, pose: _Pose) -> None:
    cv2.rectangle(canvas, body.pt(-0.1, 0.11), body.pt(0.1, 0.16), _bgr(look.skin), -1)
    centre, axes = body.pt(0, 0.075), (body.h(0.052), body.h(0.07))
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, _bgr(look.hair), -1, cv2.LINE_AA)
    if not pose.back_view:
        cv2.ellipse(canvas, body.pt(0, 0.088), (body.h(0.045), body.h(0.055)), 0, 0, 360,
                    _bgr(look.skin), -1, cv2.LINE_AA)
    if look.hat is not None:
        cv2.ellipse(canvas, body.pt(0, 0.045), (body.h(0.056), body.h(0.045)), 0, 180, 360,
                    _bgr(look.hat), -1, cv2.LINE_AA)
        _limb(canvas, body, (-0.25, 0.045), (0.25, 0.045), 0.05, look.hat)


def _draw_person(canvas: np.ndarray, look: _Look, pose: _Pose) -> None:
    body = _Body(canvas.shape[0], canvas.shape[1], look, pose)
    shadow = canvas.copy()
    cv2.ellipse(shadow, body.pt(0, 0.985), (body.w(0.9), body.h(0.025)), 0, 0, 360, (0, 0, 0), -1)
    cv2.addWeighted(shadow, 0.35, canvas, 0.65, 0, dst=canvas)
    _draw_bag(canvas, body, look, pose, behind=True)
    _draw_legs(canvas, body, look, pose)
    _draw_torso(canvas, body, look, pose)
    _draw_arms(canvas, body, look, pose)
    _draw_bag(canvas, body, look, pose, behind=False)
    _draw_head(canvas, body, look, pose)


def _draw_occluder(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """A pole or a box (bench, bin, car) in front of part of the person."""
    height, width = canvas.shape[:2]
    colour = _muted_colour(rng, 40, 180).tolist()
    if rng.random() < 0.5:
        pole_w = int(width * rng.uniform(0.07, 0.14))
        x = int(rng.uniform(0.05, 0.95) * width) - pole_w // 2
        cv2.rectangle(canvas, (x, 0), (x + pole_w, height), colour, -1)
        cv2.line(canvas, (x + pole_w // 3, 0), (x + pole_w // 3, height),
                 [min(c * 1.3, 255) for c in colour], max(1, pole_w // 5))
    else:
        box_h, box_w = int(height * rng.uniform(0.2, 0.42)), int(width * rng.uniform(0.5, 1.1))
        x = int(rng.uniform(-0.3, 0.8) * width)
        cv2.rectangle(canvas, (x, height - box_h), (x + box_w, height), colour, -1)
        cv2.rectangle(canvas, (x, height - box_h), (x + box_w, height),
                      [c * 0.6 for c in colour], max(1, width // 40))


def _background_crop(rng: np.random.Generator, camera: _Camera,
                     size: tuple[int, int]) -> np.ndarray:
    height, width = size
    scene_h, scene_w = camera.background.shape[:2]
    y = int(rng.integers(0, scene_h - height + 1))
    x = int(rng.integers(0, scene_w - width + 1))
    return camera.background[y:y + height, x:x + width].copy()


def _apply_camera(image: np.ndarray, camera: _Camera, rng: np.random.Generator) -> np.ndarray:
    """Lighting, colour cast, resolution, blur and sensor noise of a camera."""
    height, width = image.shape[:2]
    ramp_y, ramp_x = np.mgrid[-0.5:0.5:height * 1j, -0.5:0.5:width * 1j]
    light = camera.gain * rng.uniform(0.92, 1.08) * (
        1.0 + camera.gradient[0] * ramp_x + camera.gradient[1] * ramp_y)
    out = image.astype(np.float32) * light[..., None].astype(np.float32) * camera.cast
    if camera.resolution < 1.0:
        small = (max(1, int(width * camera.resolution)), max(1, int(height * camera.resolution)))
        out = cv2.resize(cv2.resize(out, small, interpolation=cv2.INTER_AREA), (width, height),
                         interpolation=cv2.INTER_LINEAR)
    if camera.blur_sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), camera.blur_sigma)
    out += rng.normal(0.0, camera.noise_sigma, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _render_person(look: _Look | None, camera: _Camera, rng: np.random.Generator,
                   image_size: tuple[int, int], pose_spread: float = 0.04) -> np.ndarray:
    """One camera image of a person (or of the background only when ``look`` is None)."""
    canvas_size = (image_size[0] * _SUPERSAMPLE, image_size[1] * _SUPERSAMPLE)
    canvas = _background_crop(rng, camera, canvas_size)
    if look is not None:
        _draw_person(canvas, look, _random_pose(rng, camera, pose_spread))
    if rng.random() < camera.occluder_probability:
        _draw_occluder(canvas, rng)
    image = cv2.resize(canvas, (image_size[1], image_size[0]), interpolation=cv2.INTER_AREA)
    return _apply_camera(image, camera, rng)


def _render_distractor(camera: _Camera, rng: np.random.Generator,
                       image_size: tuple[int, int]) -> np.ndarray:
    """A false detection: an empty background, or a passer-by who is no identity."""
    look = _random_look(rng) if rng.random() < 0.5 else None
    return _render_person(look, camera, rng, image_size, pose_spread=0.25)


def _render_junk(look: _Look, camera: _Camera, rng: np.random.Generator,
                 image_size: tuple[int, int]) -> np.ndarray:
    """A bad detection: a small part of a person, blown up and heavily blurred."""
    image = _render_person(look, camera, rng, image_size)
    height, width = image_size
    crop_h, crop_w = int(height * rng.uniform(0.2, 0.4)), int(width * rng.uniform(0.4, 0.8))
    y, x = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    part = cv2.resize(image[y:y + crop_h, x:x + crop_w], (width, height),
                      interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(part, (0, 0), float(rng.uniform(2.0, 4.0)))
