"""Pictures of a run: ranked lists, attention maps, grid occlusions, occlusion masks, curves.

Every picture is a PNG drawn with matplotlib's Agg canvas through the
object-oriented API (``matplotlib.figure.Figure``), so importing this module
never changes the pyplot backend of a notebook. Figures have a fixed size in
inches and are saved at :data:`DPI` without ``bbox_inches="tight"``, so a
picture's pixel size depends only on its layout (rows x columns of panels).
Files are written atomically: a crash never leaves half a PNG.

The pictures (``python cli.py visualize --what ...``):

- ``ranks``: ranked lists, query then its top-10 gallery images per row,
  green border = true match (same id, another camera), red = wrong, grey with
  a "junk" label = ignored by the protocol (id -1, or same id and same
  camera), distance under each image;
- ``attention``: ``max(M_att, 0)`` of stage 2 and stage 3 overlaid on the
  image (paper Figure 1), side by side when both stages are trained;
- ``occlusion``: the 16 grid occlusions of the stage-2 search with each
  cell's true-class probability and the hardest cell ``k*`` (paper Figure 2),
  and stage 3's top-third occlusion masks ``B`` in black (paper Figure 4);
- ``curves``: every metric of every stage's ``log.csv``.

Drawing functions take plain arrays (images, maps, probabilities) and need
no TensorFlow; the ``compute_*`` helpers and :func:`visualize_run` produce
those arrays from a trained run directory.
"""

from __future__ import annotations

import csv
import math
import os
import textwrap

import cv2
import numpy as np
from matplotlib import patches
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import FuncFormatter, MaxNLocator

from aaa_keras.errors import RunDirError, UserError
from aaa_keras.run_dir import LOG_FILE, stage_file, stage_is_done

# === Layout (inches at DPI dots per inch) ===
DPI = 100
PICTURES_DIR = "pictures"
WHAT = ("ranks", "attention", "occlusion", "curves", "all")
TITLE_H = 0.6  # band for the figure title (and legend) above the panels

RANK_CELL_W, RANK_CELL_H = 1.1, 2.85  # one image of a ranked list, with its labels
RANK_HEADER_H = 1.15  # two title lines above the ranked lists and the legend below them
MAP_CELL_W, MAP_CELL_H = 1.15, 2.5  # one panel of the attention / mask pictures
MAP_COLUMNS = 8  # images per block of the attention / mask pictures
COLORBAR_W = 0.9  # room for the colour bar of the attention picture
MIN_W = 6.0  # narrowest figure, so that titles fit
GRID_CELL_W, GRID_CELL_H = 0.95, 2.45  # one occluded copy of the grid-occlusion picture
GRID_COLUMNS = 16  # occluded copies per row of the grid-occlusion picture
GRID_MAX_IMAGES = 4  # "a few images": the grid-occlusion picture shows at most this many
CURVE_CELL_W, CURVE_CELL_H = 2.7, 2.2  # one metric of the training-curves picture
CURVE_COLUMNS = 5  # metrics per row of the training-curves picture
CURVE_STAGE_H = 0.45  # band for a stage's heading in the training-curves picture

COLOURS = {
    "query": "#1f5fbf",
    "match": "#2ca02c",
    "wrong": "#d62728",
    "junk": "#a0a0a0",
    "unknown": "#4f5b66",
    "hardest": "#d62728",
    "frame": "#c8c8c8",
}
STAGE_NAMES = {"baseline": "stage 1 (baseline)", "attention": "stage 2 (attention)",
               "adversarial": "stage 3 (adversarial)"}
STAGE_COLOURS = {"baseline": "#1f77b4", "attention": "#ff7f0e", "adversarial": "#2ca02c"}


# === Figures and images ===

def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.get_layout_engine().set(w_pad=0.05, h_pad=0.03, wspace=0.02, hspace=0.02)
    return figure


def _title(figure: Figure, text: str, fontsize: float = 12.5) -> None:
    """A bold figure title, each line wrapped to the figure's width."""
    width_points = figure.get_figwidth() * 72 - 20
    per_line = max(20, int(width_points / (fontsize * 0.64)))  # DejaVu Sans Bold: ~0.64 em a glyph
    lines = [wrapped for line in text.split("\n")
             for wrapped in (textwrap.wrap(line, per_line) or [""])]
    figure.suptitle("\n".join(lines), fontsize=fontsize, fontweight="bold")


def _save(figure: Figure, out_path: str) -> str:
    """Write ``figure`` as PNG at ``out_path`` atomically; returns the path."""
    out_path = os.fspath(out_path)
    directory = os.path.dirname(os.path.abspath(out_path))
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f"_partial_{os.getpid()}_{os.path.basename(out_path)}")
        figure.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, out_path)
    except OSError as error:
        raise UserError(f"{out_path}: cannot write the picture ({error})") from None
    return out_path


def read_image(path: str) -> np.ndarray | None:
    """An image file as RGB uint8 ``(H, W, 3)``, or None when it cannot be read."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _placeholder() -> np.ndarray:
    return np.full((128, 64, 3), 230, np.uint8)


def _show(ax, image: np.ndarray | None, frame: str | None = None, width: float = 1.0) -> None:
    """``image`` at its own aspect ratio, no ticks, a coloured frame (or none)."""
    missing = image is None
    image = _placeholder() if missing else image
    ax.imshow(image, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(width)
    if missing:
        ax.text(0.5, 0.5, "cannot\nread", ha="center", va="center", transform=ax.transAxes,
                fontsize=8, color="#555555")


def _extent(image: np.ndarray) -> tuple[float, float, float, float]:
    """The data extent of ``image`` as imshow draws it, for overlays of any resolution."""
    height, width = image.shape[:2]
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def _as_maps(maps, name: str) -> np.ndarray:
    """``(N, h, w)`` float32 from ``(N, h, w)`` or ``(N, h, w, 1)``."""
    array = np.asarray(maps, np.float32)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise UserError(f"{name}: expected maps of shape (N, H, W) or (N, H, W, 1), got {array.shape}")
    return array


def _images(images) -> list[np.ndarray | None]:
    """Images given as arrays or file paths -> RGB uint8 arrays (None if unreadable)."""
    result = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            result.append(read_image(os.fspath(image)))
        else:
            array = np.asarray(image)
            if array.dtype != np.uint8:
                array = np.clip(array, 0, 255).astype(np.uint8)
            result.append(array)
    return result


def _block_layout(count: int, columns: int) -> tuple[int, int]:
    """``(blocks, columns)`` to lay ``count`` images out ``columns`` per block."""
    columns = max(1, min(count, columns))
    return math.ceil(count / columns), columns


# === Ranked lists ===

def match_kind(query: dict, entry: dict) -> str:
    """``match``, ``wrong``, ``junk`` or ``unknown`` for one gallery entry of a query.

    The standard protocol: junk is id -1 or the query's id seen by the query's
    camera; distractors (id 0) are wrong matches; unknown ids (None) are neither.
    """
    qpid, gpid = query.get("pid"), entry.get("pid")
    if gpid is not None and gpid == -1:
        return "junk"
    if qpid is None or gpid is None:
        return "unknown"
    if gpid == qpid:
        same_camera = query.get("camid") is not None and query.get("camid") == entry.get("camid")
        return "junk" if same_camera else "match"
    return "wrong"


def _identity_label(record: dict) -> str:
    if record.get("pid") is None:
        name = os.path.basename(str(record.get("path", "")))
        return name if len(name) <= 16 else name[:7] + "\u2026" + name[-8:]
    camera = record.get("camid")
    return f"id {record['pid']}" + ("" if camera is None else f"  c{camera}")


def ranked_lists_size(num_queries: int, top: int = 10) -> tuple[float, float]:
    """Figure size in inches of :func:`save_ranked_lists`."""
    return (RANK_CELL_W * (top + 1), RANK_CELL_H * max(num_queries, 1) + RANK_HEADER_H)


def save_ranked_lists(out_path: str, queries: list[dict], rankings: list[list[dict]], top: int = 10,
                      title: str | None = None) -> str:
    """One row per query: the query, then its ``top`` nearest gallery images.

    ``queries``: dicts with ``path, pid, camid``; ``rankings[i]``: the gallery
    of query ``i`` sorted by distance, dicts with ``path, pid, camid,
    distance``. Borders: green = true match (same id, other camera), red =
    wrong, grey with a "junk" label = ignored by the protocol (id -1, or same
    id and camera), dark grey = unknown id (``pid`` None). Returns ``out_path``.
    """
    if len(queries) != len(rankings):
        raise UserError(f"save_ranked_lists: {len(queries)} queries but {len(rankings)} rankings")
    if top < 1:
        raise UserError(f"--top must be a positive integer, got {top}")
    rows = max(len(queries), 1)
    figure = _figure(*ranked_lists_size(len(queries), top))
    axes = figure.subplots(rows, top + 1, squeeze=False)
    _title(figure, title or f"Ranked lists: query, then its top-{top} gallery images by distance")
    kinds = {match_kind(q, e) for q, r in zip(queries, rankings) for e in r[:top]}
    legend = [patches.Patch(facecolor="white", edgecolor=COLOURS[kind], linewidth=3, label=label)
              for kind, label in (("query", "query"), ("match", "true match (same id, other camera)"),
                                  ("wrong", "wrong id"), ("junk", "junk (ignored by the protocol)"),
                                  ("unknown", "id unknown"))
              if kind == "query" or kind in kinds]
    columns = len(legend) if figure.get_figwidth() >= 10 or len(legend) <= 3 else math.ceil(len(legend) / 2)
    figure.legend(handles=legend, loc="outside lower center", ncols=columns, fontsize=9.5, frameon=False)
    for row, (query, ranking) in enumerate(zip(queries, rankings)):
        ax = axes[row, 0]
        _show(ax, read_image(query["path"]), COLOURS["query"], 4)
        ax.set_title("query", fontsize=10, fontweight="bold", color=COLOURS["query"])
        ax.set_xlabel(_identity_label(query), fontsize=8.5 if query.get("pid") is not None else 7.5)
        for column in range(1, top + 1):
            ax = axes[row, column]
            if column > len(ranking):
                ax.axis("off")
                continue
            entry = ranking[column - 1]
            kind = match_kind(query, entry)
            _show(ax, read_image(entry["path"]), COLOURS[kind], 4)
            heading = f"#{column}" + ("  junk" if kind == "junk" else "")
            ax.set_title(heading, fontsize=10, color=COLOURS[kind] if kind != "unknown" else "black",
                         fontweight="bold" if kind in ("match", "junk") else "normal")
            distance = entry.get("distance")
            text = "" if distance is None else f"d = {float(distance):.3f}\n"
            ax.set_xlabel(text + _identity_label(entry),
                          fontsize=8.5 if entry.get("pid") is not None else 7.5)
    if not queries:
        for ax in axes[0]:
            ax.axis("off")
    return _save(figure, out_path)


# === Attention maps (paper Figure 1) ===

def attention_maps_size(num_images: int, num_maps: int, columns: int = MAP_COLUMNS) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_attention_maps`."""
    blocks, columns = _block_layout(num_images, columns)
    return (max(MIN_W, MAP_CELL_W * columns + COLORBAR_W),
            MAP_CELL_H * blocks * (1 + num_maps) + TITLE_H)


def plot_attention_maps(out_path: str, images, attention_maps: dict, captions=None,
                        title: str | None = None, columns: int = MAP_COLUMNS) -> str:
    """``M_att`` overlaid on each image, one row per map set (paper Figure 1).

    ``images``: RGB arrays or file paths (shown at their own size and aspect);
    ``attention_maps``: ``{row label: (N, h, w[, 1]) raw M_att}``, e.g. one
    entry per trained stage, drawn as rows under the image row so stages sit
    side by side per image. Each map is scaled to [0, 1] between its own
    minimum and maximum (printed above it; the stage-3 mask ranks positions,
    so the order is what matters, and the ``bce`` reading's logits are
    mostly negative) and upsampled bilinearly onto the image.
    """
    images = _images(images)
    maps = {label: _as_maps(value, f"attention_maps[{label!r}]") for label, value in attention_maps.items()}
    for label, value in maps.items():
        if len(value) != len(images):
            raise UserError(f"attention_maps[{label!r}]: {len(value)} maps for {len(images)} images")
    blocks, columns = _block_layout(len(images), columns)
    per_block = 1 + len(maps)
    figure = _figure(*attention_maps_size(len(images), len(maps), columns))
    axes = figure.subplots(blocks * per_block, columns, squeeze=False)
    _title(figure, title or "Attention maps M_att overlaid on the image")
    overlay = None
    for index, image in enumerate(images):
        block, column = divmod(index, columns)
        ax = axes[block * per_block, column]
        _show(ax, image)
        if captions is not None:
            ax.set_title(captions[index], fontsize=9)
        if column == 0:
            ax.set_ylabel("image", fontsize=10, fontweight="bold")
        for offset, (label, values) in enumerate(maps.items(), start=1):
            ax = axes[block * per_block + offset, column]
            _show(ax, image)
            low, peak = float(values[index].min()), float(values[index].max())
            scaled = (values[index] - low) / (peak - low) if peak > low else np.zeros_like(values[index])
            shown = image if image is not None else _placeholder()
            overlay = ax.imshow(scaled, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                                interpolation="bilinear", extent=_extent(shown))
            ax.set_title(f"{low:.2g} .. {peak:.2g}", fontsize=8, color="#333333")
            if column == 0:
                ax.set_ylabel(label, fontsize=10, fontweight="bold")
    for index in range(len(images), blocks * columns):  # unused panels of the last block
        block, column = divmod(index, columns)
        for offset in range(per_block):
            axes[block * per_block + offset, column].axis("off")
    if overlay is not None:
        bar = figure.colorbar(overlay, ax=axes.ravel().tolist(), shrink=0.5, aspect=30, pad=0.02)
        bar.set_label("M_att, min..max of each map -> 0..1", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return _save(figure, out_path)


# === Grid occlusions (paper Figure 2) ===

def _cell_boxes(feature_shape, grid_size: int, image_shape) -> list[tuple[float, float, float, float] | None]:
    """Image-space ``(x0, y0, x1, y1)`` of each grid cell of the feature map (None if empty)."""
    from aaa_keras.model.occlusion import grid_cells

    height, width = feature_shape
    image_height, image_width = image_shape[:2]
    boxes = []
    for cell in grid_cells(height, width, grid_size):
        rows, cols = np.nonzero(cell.any(axis=1))[0], np.nonzero(cell.any(axis=0))[0]
        if not len(rows) or not len(cols):
            boxes.append(None)
            continue
        sy, sx = image_height / height, image_width / width
        boxes.append((cols[0] * sx - 0.5, rows[0] * sy - 0.5, (cols[-1] + 1) * sx - 0.5,
                      (rows[-1] + 1) * sy - 0.5))
    return boxes


def grid_occlusions_size(num_images: int, grid_size: int = 4) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_grid_occlusions`."""
    cells = grid_size * grid_size
    rows_per_image = math.ceil(cells / GRID_COLUMNS)
    return (GRID_CELL_W * (1 + min(cells, GRID_COLUMNS)),
            GRID_CELL_H * max(num_images, 1) * rows_per_image + TITLE_H)


def plot_grid_occlusions(out_path: str, images, cell_probabilities, hardest_cells, feature_shape,
                         grid_size: int = 4, base_probabilities=None, captions=None,
                         title: str | None = None) -> str:
    """The ``grid_size**2`` grid occlusions of each image (paper Figure 2).

    One row per image: the image (with the unoccluded true-class probability
    ``s`` when ``base_probabilities`` is given), then ``fm1..fmK``, the image
    with cell ``k`` blacked out, each with ``s_k``, the true-class probability
    of the feature map with that cell occluded (``cell_probabilities``,
    ``(N, K)``, from :func:`aaa_keras.model.occlusion.hardest_occlusion`). The
    hardest cell ``k*`` (``hardest_cells``, ``(N,)``), the target ``M_occ``, has
    a red frame. ``feature_shape``: ``(h, w)`` of the occluded feature map, to
    place the cells on the image.
    """
    images = _images(images)
    probabilities = np.asarray(cell_probabilities, np.float64)
    hardest = np.asarray(hardest_cells).astype(int).reshape(-1)
    cells = grid_size * grid_size
    if probabilities.shape != (len(images), cells) or hardest.shape != (len(images),):
        raise UserError(f"plot_grid_occlusions: expected ({len(images)}, {cells}) cell probabilities "
                        f"and {len(images)} hardest cells, got {probabilities.shape} and {hardest.shape}")
    rows_per_image = math.ceil(cells / GRID_COLUMNS)
    columns = 1 + min(cells, GRID_COLUMNS)
    figure = _figure(*grid_occlusions_size(len(images), grid_size))
    axes = figure.subplots(max(len(images), 1) * rows_per_image, columns, squeeze=False)
    _title(figure, title or "Grid occlusion search\ns_k = true-class probability with cell k of the "
           "feature map occluded; red = hardest cell k* (the target M_occ)")
    for index, image in enumerate(images):
        shown = image if image is not None else _placeholder()
        boxes = _cell_boxes(feature_shape, grid_size, shown.shape)
        top = index * rows_per_image
        ax = axes[top, 0]
        _show(ax, image, COLOURS["frame"], 1)
        for box in boxes:
            if box is not None:
                x0, y0, x1, y1 = box
                ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                               edgecolor="white", linewidth=0.6, alpha=0.8))
        heading = "image"
        if base_probabilities is not None:
            heading += f"\ns = {float(base_probabilities[index]):.3f}"
        ax.set_title(heading, fontsize=9, fontweight="bold")
        if captions is not None:
            ax.set_xlabel(captions[index], fontsize=8.5)
        for extra in range(1, rows_per_image):
            axes[top + extra, 0].axis("off")
        for k in range(cells):
            row, column = divmod(k, GRID_COLUMNS)
            ax = axes[top + row, 1 + column]
            is_hardest = k == hardest[index]
            _show(ax, image, COLOURS["hardest"] if is_hardest else COLOURS["frame"],
                  4 if is_hardest else 1)
            if boxes[k] is not None:
                x0, y0, x1, y1 = boxes[k]
                ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="black",
                                               edgecolor="none"))
            ax.set_title(f"fm{k + 1}\ns{k + 1} = {probabilities[index, k]:.3f}", fontsize=8.5,
                         color=COLOURS["hardest"] if is_hardest else "black",
                         fontweight="bold" if is_hardest else "normal")
            if is_hardest:
                ax.set_xlabel("hardest", fontsize=8.5, color=COLOURS["hardest"], fontweight="bold")
        for k in range(cells, rows_per_image * GRID_COLUMNS):
            row, column = divmod(k, GRID_COLUMNS)
            if row < rows_per_image and 1 + column < columns:
                axes[top + row, 1 + column].axis("off")
    if not images:
        for ax in axes.flat:
            ax.axis("off")
    return _save(figure, out_path)


# === Occlusion masks (paper Figure 4) ===

def occlusion_masks_size(num_images: int, columns: int = MAP_COLUMNS) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_occlusion_masks`."""
    blocks, columns = _block_layout(num_images, columns)
    return (max(MIN_W, MAP_CELL_W * columns), MAP_CELL_H * blocks * 2 + TITLE_H)


def plot_occlusion_masks(out_path: str, images, masks, captions=None, title: str | None = None,
                         columns: int = MAP_COLUMNS, hardest_boxes=None) -> str:
    """Each image above the same image with its 0-1 mask ``B`` drawn black where ``B = 0``.

    ``masks``: ``(N, h, w[, 1])`` at feature-map resolution, 0 = occluded (the
    top third of ``M_att`` in stage 3, paper Figure 4); each feature position
    covers its block of image pixels. ``hardest_boxes``: per image the
    image-space ``(x0, y0, x1, y1)`` of the hardest grid cell ``k*``, drawn in
    red on the mask, so a reader sees whether the mask covers it.
    """
    images = _images(images)
    masks = _as_maps(masks, "masks")
    if len(masks) != len(images):
        raise UserError(f"plot_occlusion_masks: {len(masks)} masks for {len(images)} images")
    blocks, columns = _block_layout(len(images), columns)
    figure = _figure(*occlusion_masks_size(len(images), columns))
    axes = figure.subplots(blocks * 2, columns, squeeze=False)
    _title(figure, title or "Occlusion masks B: black = occluded feature positions")
    for index, image in enumerate(images):
        block, column = divmod(index, columns)
        ax = axes[block * 2, column]
        _show(ax, image)
        if captions is not None:
            ax.set_title(captions[index], fontsize=9)
        if column == 0:
            ax.set_ylabel("image", fontsize=10, fontweight="bold")
        ax = axes[block * 2 + 1, column]
        _show(ax, image)
        occluded = masks[index] < 0.5
        black = np.zeros((*occluded.shape, 4), np.float32)
        black[..., 3] = occluded.astype(np.float32)
        shown = image if image is not None else _placeholder()
        ax.imshow(black, interpolation="nearest", extent=_extent(shown))
        ax.set_title(f"{occluded.mean():.0%} occluded", fontsize=8, color="#333333")
        if hardest_boxes is not None and hardest_boxes[index] is not None:
            x0, y0, x1, y1 = hardest_boxes[index]
            ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red",
                                   linewidth=1.6))
        if column == 0:
            ax.set_ylabel("occluded (B = 0)" + (", red = k*" if hardest_boxes is not None else ""),
                          fontsize=10, fontweight="bold")
    for index in range(len(images), blocks * columns):
        block, column = divmod(index, columns)
        axes[block * 2, column].axis("off")
        axes[block * 2 + 1, column].axis("off")
    return _save(figure, out_path)


# === Training curves ===

def read_log(path: str) -> dict[str, np.ndarray]:
    """A Keras ``CSVLogger`` file as ``{column: float array}`` (NA -> NaN), one row per epoch.

    Repeated header lines (a resumed run appending) are skipped and a repeated
    epoch keeps its last row.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as error:
        raise RunDirError(f"{path}: cannot read the training log ({error})") from None
    if not rows:
        return {}
    header = rows[0]
    by_epoch: dict[float, list[float]] = {}
    for row in rows[1:]:
        if not row or row == header or len(row) != len(header):
            continue
        values = []
        for text in row:
            try:
                values.append(float(text))
            except ValueError:
                values.append(math.nan)
        epoch = values[header.index("epoch")] if "epoch" in header else float(len(by_epoch))
        by_epoch[epoch] = values
    table = np.array([by_epoch[e] for e in sorted(by_epoch)], np.float64).reshape(-1, len(header))
    return {name: table[:, i] for i, name in enumerate(header)}


def _stage_logs(run_dir: str, stages=None) -> list[tuple[str, dict[str, np.ndarray]]]:
    from aaa_keras.config import STAGES

    logs = []
    for stage in stages or STAGES:
        path = stage_file(run_dir, stage, LOG_FILE)
        if os.path.isfile(path):
            log = read_log(path)
            if log and len(next(iter(log.values()))):
                logs.append((stage, log))
    return logs


def _metric_names(log: dict[str, np.ndarray]) -> list[str]:
    """Training metric names with at least one finite value (``val_x`` plots with ``x``)."""
    names = []
    for name, values in log.items():
        if name == "epoch" or not np.isfinite(values).any():
            continue
        base = name[4:] if name.startswith("val_") else name
        if base not in names:
            names.append(base)
    order = {"loss": 0, "accuracy": 1}
    return sorted(names, key=lambda n: (order.get(n, 2), names.index(n)))


def training_curves_size(metric_counts: list[int]) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_training_curves` (metrics per stage)."""
    columns = max([min(n, CURVE_COLUMNS) for n in metric_counts] + [1])
    rows = [max(1, math.ceil(n / CURVE_COLUMNS)) for n in metric_counts]
    return (max(MIN_W, CURVE_CELL_W * columns),
            sum(CURVE_CELL_H * r + CURVE_STAGE_H for r in rows) + TITLE_H)


def plot_training_curves(run_dir: str, out_path: str | None = None, stages=None) -> str:
    """Every metric of every stage's ``log.csv``, one panel per metric, one band per stage.

    Writes ``<run_dir>/pictures/training_curves.png`` unless ``out_path`` is
    given; returns the path. Validation metrics (``val_x``) are dashed on the
    panel of ``x``. A stage still training (no ``done.json``) is marked so.
    """
    logs = _stage_logs(run_dir, stages)
    if not logs:
        raise RunDirError(f"--run-dir {run_dir}: no training log (<stage>/log.csv) to plot; train a "
                          f"stage first with `python cli.py fit --stage baseline --run-dir {run_dir}`")
    out_path = out_path or os.path.join(run_dir, PICTURES_DIR, "training_curves.png")
    names = [_metric_names(log) for _, log in logs]
    figure = _figure(*training_curves_size([len(n) for n in names]))
    _title(figure, f"Training curves of {os.path.basename(os.path.normpath(os.path.abspath(run_dir)))}")
    columns = max(min(len(n), CURVE_COLUMNS) for n in names) if any(names) else 1
    heights = [CURVE_CELL_H * max(1, math.ceil(len(n) / CURVE_COLUMNS)) + CURVE_STAGE_H for n in names]
    subfigures = figure.subfigures(len(logs), 1, height_ratios=heights, squeeze=False)[:, 0]
    for subfigure, (stage, log), metrics in zip(subfigures, logs, names):
        done = stage_is_done(run_dir, stage)
        epochs = log.get("epoch", np.arange(len(next(iter(log.values())))))
        subfigure.suptitle(STAGE_NAMES.get(stage, stage) + ("" if done else "  (in progress)"),
                           fontsize=11.5, fontweight="bold", color=STAGE_COLOURS.get(stage, "black"),
                           x=0.01, ha="left")
        rows = max(1, math.ceil(len(metrics) / CURVE_COLUMNS))
        axes = subfigure.subplots(rows, columns, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= len(metrics):
                ax.axis("off")
                continue
            name = metrics[i]
            colour = STAGE_COLOURS.get(stage, "#1f77b4")
            for key, style, label in ((name, "-", "train"), ("val_" + name, "--", "validation")):
                values = log.get(key)
                if values is not None and np.isfinite(values).any():
                    keep = np.isfinite(values)
                    ax.plot(epochs[keep] + 1, values[keep], style, marker="o", markersize=3.5,
                            color=colour, label=label)
            if ("val_" + name) in log and np.isfinite(log["val_" + name]).any():
                ax.legend(fontsize=7, frameon=False)
            ax.set_title(name, fontsize=9.5)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.4g}"))
            ax.grid(True, alpha=0.3)
    return _save(figure, out_path)


# === Network outputs for the pictures (TensorFlow) ===

def load_images(paths: list[str], image_size, batch_size: int = 32) -> np.ndarray:
    """Network inputs: float32 ``(N, H, W, 3)`` in 0-255, as the evaluation pipeline makes them."""
    from aaa_keras.data.pipeline import eval_dataset

    if not paths:
        return np.zeros((0, *image_size, 3), np.float32)
    return np.concatenate([batch.numpy() for batch in eval_dataset(list(paths), image_size, batch_size)])


def compute_attention_maps(parts, attention, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Raw ``M_att`` ``(N, h, w)`` of images (0-255) through the frozen stem and the attention branch."""
    maps = []
    for start in range(0, len(images), batch_size):
        features = parts.stem(images[start:start + batch_size], training=False)
        maps.append(np.asarray(attention(features, training=False), np.float32)[..., 0])
    return np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)


def compute_grid_occlusions(parts, images: np.ndarray, labels=None, grid_size: int = 4,
                            cells_per_call: int | None = None, batch_size: int = 4) -> dict:
    """The stage-2 grid search on the frozen stem/tail (``hardest_occlusion``) for a few images.

    ``labels``: the true classes (training labels of the network's classifier);
    None uses the predicted class of the unoccluded image. Returns
    ``cell_probabilities`` ``(N, K)``, ``hardest_cells`` ``(N,)``,
    ``base_probabilities`` ``(N,)`` (unoccluded), ``labels`` ``(N,)`` and the
    ``feature_shape`` ``(h, w)``.
    """
    import tensorflow as tf

    from aaa_keras.model.occlusion import hardest_occlusion, true_class_probability

    def logits_fn(features):
        return parts.tail(features, training=False)[1]

    out = {"cell_probabilities": [], "hardest_cells": [], "base_probabilities": [], "labels": []}
    feature_shape = tuple(int(d) for d in parts.stem.output.shape[1:3])
    for start in range(0, len(images), batch_size):
        features = parts.stem(images[start:start + batch_size], training=False)
        logits = logits_fn(features)
        if labels is None:
            batch_labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        else:
            batch_labels = tf.constant(np.asarray(labels[start:start + batch_size], np.int32))
        _, probabilities, hardest = hardest_occlusion(logits_fn, features, batch_labels, grid_size,
                                                      cells_per_call)
        out["cell_probabilities"].append(probabilities.numpy())
        out["hardest_cells"].append(hardest.numpy())
        out["base_probabilities"].append(true_class_probability(logits, batch_labels).numpy())
        out["labels"].append(batch_labels.numpy())
    cells = grid_size * grid_size
    empty = {"cell_probabilities": np.zeros((0, cells)), "hardest_cells": np.zeros(0, int),
             "base_probabilities": np.zeros(0), "labels": np.zeros(0, int)}
    result = {k: np.concatenate(v) if v else empty[k] for k, v in out.items()}
    result["feature_shape"] = feature_shape
    return result


def compute_occlusion_masks(parts, attention, images: np.ndarray, fraction: float = 1.0 / 3.0,
                            batch_size: int = 16, mask: str = "attention", seed: int = 0) -> np.ndarray:
    """Stage 3's 0-1 masks ``B`` ``(N, h, w)``: 0 at the top ``fraction`` of the ranked map.

    ``mask``: ``attention`` ranks ``M_att``, ``response`` the channel mean of
    ``f`` (Table 4 without fine-tuning), ``random`` region-shaped noise.
    """
    from aaa_keras.model.occlusion import feature_response, random_scores, top_fraction_mask

    if mask == "attention":
        maps = compute_attention_maps(parts, attention, images, batch_size)[..., None]
    else:
        features = np.concatenate([parts.stem(images[i:i + batch_size], training=False)
                                   for i in range(0, len(images), batch_size)]) if len(images) else None
        if features is None:
            return np.zeros((0, 1, 1), np.float32)
        maps = (feature_response(features) if mask == "response"
                else random_scores(features, seed)).numpy()
    if not len(maps):
        return maps[..., 0]
    return np.asarray(top_fraction_mask(maps, fraction), np.float32)[..., 0]


# === A run directory's pictures ===

def pick_records(records: list, num: int) -> list:
    """``num`` records chosen deterministically, spread over identities and cameras.

    Identities are taken evenly spaced over the sorted person ids, one image
    each; when ``num`` exceeds the number of identities, further rounds take
    each identity's next image. An identity's images are ordered by file name
    within a camera and alternate between its cameras, so repeated rounds show
    the person from other cameras.
    """
    grouped: dict[int, dict[int, list]] = {}
    for record in sorted(records, key=lambda r: (r.pid, r.camid, os.path.basename(r.path))):
        grouped.setdefault(record.pid, {}).setdefault(record.camid, []).append(record)
    by_pid = {}
    for pid, by_camera in grouped.items():
        cameras = list(by_camera.values())
        by_pid[pid] = [cam[i] for i in range(max(map(len, cameras))) for cam in cameras if i < len(cam)]
    pids = sorted(by_pid)
    if not pids or num < 1:
        return []
    if num <= len(pids):
        positions = np.unique(np.round(np.linspace(0, len(pids) - 1, num)).astype(int))
        return [by_pid[pids[p]][0] for p in positions]
    chosen = []
    for round_index in range(max(len(v) for v in by_pid.values())):
        for pid in pids:
            if round_index < len(by_pid[pid]) and len(chosen) < num:
                chosen.append(by_pid[pid][round_index])
    return chosen


def _caption(record) -> str:
    return f"id {record.pid}  c{record.camid}"


def _attention_stages(run_dir: str, done: list[str], stage: str | None, what: str) -> list[str]:
    """Stages whose attention branch the attention/occlusion pictures use, or a RunDirError."""
    if stage == "baseline":
        raise RunDirError(
            f"--stage baseline has no attention branch: the {what} pictures need stage 2 "
            f"(attention) or 3 (adversarial); pass --stage attention or --stage adversarial"
            + ("" if "attention" in done or "adversarial" in done else
               f" after `python cli.py fit --stage attention --run-dir {run_dir}`"))
    if stage is not None:
        return [stage]
    stages = [s for s in ("attention", "adversarial") if s in done]
    if not stages:
        raise RunDirError(
            f"--run-dir {run_dir} has no trained attention stage (trained: {', '.join(done) or 'none'}); "
            f"the {what} pictures need stage 2 (attention) or 3 (adversarial): run "
            f"`python cli.py fit --stage attention --run-dir {run_dir}`")
    return stages


def visualize_run(run_dir: str, stage: str | None = None, data: str | None = None, what: str = "all",
                  num: int = 8, out_dir: str | None = None, log=print) -> list[str]:
    """Write the pictures of a trained run directory; returns their paths (each is logged).

    ``what``: ``ranks`` (stage ``stage`` or the latest trained one),
    ``attention`` (M_att of stages 2 and 3, or ``stage``, and stage 3's masks
    with the hardest cell k* of each image), ``occlusion`` (grid search of
    the latest attention stage or ``stage``; top-third masks of stage 3, or of
    stage 2 when stage 3 is not trained), ``curves`` (every stage), or ``all``
    (those of them the run dir has stages for: the attention and occlusion
    pictures are skipped, with a note, on a baseline-only run). ``data``:
    dataset root, default the run's own. Ranked lists use ``num`` query
    images; attention/occlusion pictures use ``num`` training images (their
    true classes are the network's classes), grid occlusions at most
    :data:`GRID_MAX_IMAGES` of them. Pictures go to ``out_dir`` (default
    ``<run_dir>/pictures``).
    """
    from aaa_keras import run_dir as run_dir_lib
    from aaa_keras.data.synth import resolve_data
    from aaa_keras.config import STAGES, load_config

    # === Arguments and the run dir, checked before any slow work ===
    if what not in WHAT:
        raise UserError(f"--what: got {what!r}; expected one of {', '.join(WHAT)}")
    if not isinstance(num, int) or num < 1:
        raise UserError(f"--num must be a positive integer, got {num!r}")
    if stage is not None and stage not in STAGES:
        raise UserError(f"--stage: got {stage!r}; expected one of {STAGES}")
    config = load_config(run_dir)
    run_dir_lib.require_stage(run_dir, stage)  # the RunDirError naming the stage to train
    done = run_dir_lib.trained_stages(run_dir)
    kinds = ["curves", "ranks", "attention", "occlusion"] if what == "all" else [what]
    attention_stages: list[str] = []
    if "attention" in kinds or "occlusion" in kinds:
        try:
            attention_stages = _attention_stages(
                run_dir, done, stage, "attention and occlusion" if what == "all" else what)
        except RunDirError as error:
            if what != "all":
                raise
            log(f"Skipping the attention and occlusion pictures: {error}")  # the rest still helps
            kinds = [k for k in kinds if k not in ("attention", "occlusion")]
    out_dir = out_dir or os.path.join(run_dir, PICTURES_DIR)
    written: list[str] = []

    def wrote(path: str) -> None:
        written.append(path)
        log(f"Wrote {path}")

    if "curves" in kinds:
        wrote(plot_training_curves(run_dir, os.path.join(out_dir, "training_curves.png")))
    if kinds == ["curves"]:
        return written

    # === Data ===
    from aaa_keras.data.names import dataset_fingerprint, load_dataset

    root = resolve_data(data or config.data, log)
    dataset = load_dataset(root)
    own_data = dataset_fingerprint(dataset) == config.dataset_fingerprint
    data_name = os.path.basename(os.path.normpath(root))
    suffix = "" if own_data else f"_{data_name}"
    models: dict[str, tuple] = {}

    def trained(name: str):
        if name not in models:
            loaded = run_dir_lib.load_trained(run_dir, name)
            models[name] = loaded.parts, loaded.attention
        return models[name]

    # === Ranked lists ===
    if "ranks" in kinds:
        wrote(_ranked_lists_of_run(run_dir, stage or done[-1], config, dataset, data_name, num,
                                   os.path.join(out_dir, f"ranks_{stage or done[-1]}{suffix}.png"),
                                   trained))
    if "attention" not in kinds and "occlusion" not in kinds:
        return written

    # === Training images: their true classes are the classifier's classes ===
    records = dataset.train_identities() or [r for r in dataset.query if r.is_identity] or dataset.query
    chosen = pick_records(records, num)
    images = load_images([r.path for r in chosen], config.image_size)
    captions = [_caption(r) for r in chosen]
    split = "training" if dataset.train_identities() else "query"
    source = f"{len(chosen)} {split} images of {data_name}"

    def has_branch(name: str) -> bool:
        return name == "attention" or config.mask == "attention"

    if "attention" in kinds and not any(has_branch(s) for s in attention_stages):
        log(f"No attention maps to draw: stage 3 ran with --mask {config.mask} (no attention branch)")
    if "attention" in kinds and any(has_branch(s) for s in attention_stages):
        maps = {STAGE_NAMES[s].replace(" (", "\n("): compute_attention_maps(*trained(s), images)
                for s in attention_stages if has_branch(s)}
        names = " and ".join(STAGE_NAMES[s] for s in attention_stages if has_branch(s))
        wrote(plot_attention_maps(
            os.path.join(out_dir, f"attention_maps{suffix}.png"), [r.path for r in chosen], maps,
            captions, title=f"Attention maps M_att of {names}\n{source}"))

    # === The hardest cells k* and stage 3's masks (--what attention and occlusion) ===
    if "attention" in kinds or "occlusion" in kinds:
        search_stage = attention_stages[-1]
        parts, attention = trained(search_stage)
        few = min(len(chosen), GRID_MAX_IMAGES)
        labels = None
        if own_data and split == "training":
            _, pid_to_label = dataset.relabel()
            labels = np.array([pid_to_label[r.pid] for r in chosen], np.int32)
        else:
            log("Grid occlusions: the images are not from the run's training set, so the "
                "predicted class stands in for the true class")
        everything = compute_grid_occlusions(parts, images, labels, config.grid_size,
                                             config.cells_per_call)
        result = {k: v[:few] if k != "feature_shape" else v for k, v in everything.items()}
        class_note = "true class" if labels is not None else "predicted class"
        if "occlusion" in kinds:
            wrote(plot_grid_occlusions(
                os.path.join(out_dir, f"grid_occlusion_{search_stage}{suffix}.png"),
                [r.path for r in chosen[:few]], result["cell_probabilities"], result["hardest_cells"],
                result["feature_shape"], config.grid_size, result["base_probabilities"],
                [f"{c}\nclass {int(k)}" for c, k in zip(captions, result["labels"])],
                title=(f"Grid occlusion search with the {STAGE_NAMES[search_stage]} network, "
                       f"{config.occlude_after} feature map\n"
                       f"s_k = {class_note} probability with cell k of the feature map occluded; "
                       f"red = hardest cell k* (the target M_occ)")))

        mask_stage = "adversarial" if "adversarial" in attention_stages else attention_stages[-1]
        mask_kind = config.mask if mask_stage == "adversarial" else "attention"
        masks = compute_occlusion_masks(*trained(mask_stage), images, config.occluded_fraction,
                                        mask=mask_kind, seed=config.seed)
        boxes = []
        for path, cell in zip([r.path for r in chosen], everything["hardest_cells"]):
            image = read_image(path)
            boxes.append(None if image is None else _cell_boxes(
                everything["feature_shape"], config.grid_size, image.shape)[int(cell)])
        note = "" if mask_stage == "adversarial" else " (the masks stage 3 starts from)"
        ranked = {"attention": "M_att", "response": "the feature response (channel mean of f)",
                  "random": "random noise (the control)"}[mask_kind]
        wrote(plot_occlusion_masks(
            os.path.join(out_dir, f"occlusion_masks_{mask_stage}{suffix}.png"),
            [r.path for r in chosen], masks, captions, hardest_boxes=boxes,
            title=(f"Occlusion masks B of {STAGE_NAMES[mask_stage]}: top {config.occluded_fraction:.0%} "
                   f"of {ranked} in black{note}; red box = hardest grid cell k*")))
    return written


def _ranked_lists_of_run(run_dir, stage, config, dataset, data_name, num, out_path, trained) -> str:
    """Rank the gallery for ``num`` query images with the stage's embedder and draw the lists."""
    from aaa_keras.evaluation.distance import euclidean_distance
    from aaa_keras.evaluation.run import extract_embeddings
    from aaa_keras.model.backbone import build_embedder

    parts, _ = trained(stage)
    embedder = build_embedder(parts)
    queries = pick_records(dataset.query, num)
    query_features = extract_embeddings(embedder, queries, config.image_size)
    gallery_features = extract_embeddings(embedder, dataset.gallery, config.image_size)
    distances = np.sqrt(euclidean_distance(query_features, gallery_features))
    top = min(10, len(dataset.gallery))
    rankings = []
    for row in distances:
        order = np.argsort(row, kind="stable")[:top]
        rankings.append([dict(path=dataset.gallery[g].path, pid=dataset.gallery[g].pid,
                              camid=dataset.gallery[g].camid, distance=float(row[g])) for g in order])
    return save_ranked_lists(
        out_path, [dict(path=q.path, pid=q.pid, camid=q.camid) for q in queries], rankings, top,
        title=(f"Ranked lists of {STAGE_NAMES[stage]} on {data_name}\n"
               f"query, then its top-{top} of {len(dataset.gallery)} gallery images by Euclidean "
               f"distance d of L2-normalised embeddings"))
