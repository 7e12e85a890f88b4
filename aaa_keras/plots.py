"""Drawing pictures from plain arrays: images (or their paths), maps, probabilities, read logs.

matplotlib, numpy and cv2 only, no TensorFlow. Every picture is a PNG drawn on
the Agg canvas through the object-oriented API (``Figure``), so importing this
never changes a notebook's pyplot backend. Figures have a fixed size in inches
(``*_size``) and are saved at :data:`DPI` without ``bbox_inches="tight"``, so a
picture's pixel size depends only on its layout; files are written through
:func:`aaa_keras.files.atomic_path`. :mod:`aaa_keras.visualize` computes the
arrays from a trained run; match / junk colours follow
:func:`aaa_keras.evaluation.rank.match_kind`.

Past 450 lines on purpose: every picture the product draws shares the layout constants and
helpers above its functions; split across modules they would be imported back by each.
"""

from __future__ import annotations

import math
import os
import textwrap

import cv2
import numpy as np
from matplotlib import patches
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import FuncFormatter, MaxNLocator

from aaa_keras.errors import UserError
from aaa_keras.evaluation.rank import match_kind
from aaa_keras.files import atomic_path

# === Layout (inches at DPI dots per inch) ===
DPI = 100
TITLE_H = 0.6  # band for the figure title (and legend) above the panels

RANK_CELL_W, RANK_CELL_H = 1.1, 2.85  # one image of a ranked list, with its labels
RANK_HEADER_H = 1.15  # two title lines above the ranked lists and the legend below them
MAP_CELL_W, MAP_CELL_H = 1.15, 2.5  # one panel of the attention / mask pictures
MAP_COLUMNS = 8  # images per block of the attention / mask pictures
COLORBAR_W = 0.9  # room for the colour bar of the attention picture
MIN_W = 6.0  # narrowest figure, so that titles fit
GRID_CELL_W, GRID_CELL_H = 0.95, 2.45  # one occluded copy of the grid-occlusion picture
GRID_COLUMNS = 16  # occluded copies per row of the grid-occlusion picture
CURVE_CELL_W, CURVE_CELL_H = 2.7, 2.2  # one metric of the training-curves picture
CURVE_COLUMNS = 5  # metrics per row of the training-curves picture
CURVE_STAGE_H = 0.45  # band for a stage's heading in the training-curves picture

COLOURS = {"query": "#1f5fbf", "match": "#2ca02c", "wrong": "#d62728", "junk": "#a0a0a0",
           "unknown": "#4f5b66", "hardest": "#d62728", "frame": "#c8c8c8"}
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
    """Write ``figure`` as PNG at ``out_path`` atomically (``atomic_path``); returns the path."""
    out_path = os.fspath(out_path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with atomic_path(out_path) as tmp:
            figure.savefig(tmp, format="png", dpi=DPI)
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


def _hide_empty(axes) -> None:
    """Turn off every panel nothing was drawn on (the unused cells of a layout)."""
    for ax in np.ravel(axes):
        if not ax.has_data():
            ax.axis("off")


def _block_layout(count: int, columns: int) -> tuple[int, int]:
    """``(blocks, columns)`` to lay ``count`` images out ``columns`` per block."""
    columns = max(1, min(count, columns))
    return math.ceil(count / columns), columns


# === Ranked lists ===

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
        for column, entry in enumerate(ranking[:top], start=1):
            ax = axes[row, column]
            kind = match_kind(query, entry)
            _show(ax, read_image(entry["path"]), COLOURS[kind], 4)
            heading = f"#{column}" + ("  junk" if kind == "junk" else "")
            ax.set_title(heading, fontsize=10, color=COLOURS[kind] if kind != "unknown" else "black",
                         fontweight="bold" if kind in ("match", "junk") else "normal")
            distance = entry.get("distance")
            text = "" if distance is None else f"d = {float(distance):.3f}\n"
            ax.set_xlabel(text + _identity_label(entry),
                          fontsize=8.5 if entry.get("pid") is not None else 7.5)
    _hide_empty(axes)  # short rankings, or no query
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
    _hide_empty(axes)  # unused panels of the last block
    if overlay is not None:
        bar = figure.colorbar(overlay, ax=axes.ravel().tolist(), shrink=0.5, aspect=30, pad=0.02)
        bar.set_label("M_att, min..max of each map -> 0..1", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return _save(figure, out_path)


# === Grid occlusions (paper Figure 2) ===

def cell_boxes(cells, image_shape) -> list[tuple[float, float, float, float] | None]:
    """Image-space ``(x0, y0, x1, y1)`` of each grid cell of the feature map (None if empty).

    ``cells``: the ``(K, h, w)`` indicator maps of the cells on the feature
    map (:func:`aaa_keras.model.occlusion.grid_cells`); ``image_shape``: the
    shape of the image the feature map covers.
    """
    cells = np.asarray(cells)
    height, width = cells.shape[1:3]
    image_height, image_width = image_shape[:2]
    boxes = []
    for cell in cells:
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


def plot_grid_occlusions(out_path: str, images, cell_probabilities, hardest_cells, cells,
                         base_probabilities=None, captions=None, title: str | None = None) -> str:
    """The ``K = grid_size**2`` grid occlusions of each image (paper Figure 2).

    One row per image: the image (with the unoccluded true-class probability
    ``s`` when ``base_probabilities`` is given), then ``fm1..fmK``, the image
    with cell ``k`` blacked out, each with ``s_k``, the true-class probability
    of the feature map with that cell occluded (``cell_probabilities``,
    ``(N, K)``, from :func:`aaa_keras.model.occlusion.hardest_occlusion`). The
    hardest cell ``k*`` (``hardest_cells``, ``(N,)``), the target ``M_occ``, has
    a red frame. ``cells``: the ``(K, h, w)`` cell maps on the occluded feature
    map (:func:`aaa_keras.model.occlusion.grid_cells`), to place the cells on
    the image.
    """
    images = _images(images)
    probabilities = np.asarray(cell_probabilities, np.float64)
    hardest = np.asarray(hardest_cells).astype(int).reshape(-1)
    cell_maps, cells = cells, len(cells)
    if probabilities.shape != (len(images), cells) or hardest.shape != (len(images),):
        raise UserError(f"plot_grid_occlusions: expected ({len(images)}, {cells}) cell probabilities "
                        f"and {len(images)} hardest cells, got {probabilities.shape} and {hardest.shape}")
    rows_per_image = math.ceil(cells / GRID_COLUMNS)
    columns = 1 + min(cells, GRID_COLUMNS)
    figure = _figure(*grid_occlusions_size(len(images), math.isqrt(cells)))
    axes = figure.subplots(max(len(images), 1) * rows_per_image, columns, squeeze=False)
    _title(figure, title or "Grid occlusion search\ns_k = true-class probability with cell k of the "
           "feature map occluded; red = hardest cell k* (the target M_occ)")
    for index, image in enumerate(images):
        shown = image if image is not None else _placeholder()
        boxes = cell_boxes(cell_maps, shown.shape)
        top = index * rows_per_image
        ax = axes[top, 0]
        _show(ax, image, COLOURS["frame"], 1)
        for box in boxes:
            if box is not None:
                x0, y0, x1, y1 = box
                ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                               edgecolor="white", linewidth=0.6, alpha=0.8))
        base = "" if base_probabilities is None else f"\ns = {float(base_probabilities[index]):.3f}"
        ax.set_title("image" + base, fontsize=9, fontweight="bold")
        if captions is not None:
            ax.set_xlabel(captions[index], fontsize=8.5)
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
    _hide_empty(axes)  # rows of cells past the first, or no image
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
    _hide_empty(axes)  # unused panels of the last block
    return _save(figure, out_path)


# === Training curves ===

def metric_names(log: dict[str, np.ndarray]) -> list[str]:
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
    """Figure size in inches of :func:`plot_curves` (metrics per stage)."""
    columns = max([min(n, CURVE_COLUMNS) for n in metric_counts] + [1])
    rows = [max(1, math.ceil(n / CURVE_COLUMNS)) for n in metric_counts]
    return (max(MIN_W, CURVE_CELL_W * columns),
            sum(CURVE_CELL_H * r + CURVE_STAGE_H for r in rows) + TITLE_H)


def plot_curves(out_path: str, logs, run_name: str) -> str:
    """Every metric of every stage's training log, one panel per metric, one band per stage.

    ``logs``: ``(stage, log, done)`` per stage (at least one), ``log`` a
    non-empty ``{column: float array}`` as :func:`aaa_keras.run_dir.read_log`
    reads a ``log.csv``, ``done`` False for a stage still training (marked
    so). Validation metrics (``val_x``) are dashed on the panel of ``x``.
    Returns ``out_path``.
    """
    names = [metric_names(log) for _, log, _ in logs]
    figure = _figure(*training_curves_size([len(n) for n in names]))
    _title(figure, f"Training curves of {run_name}")
    columns = max(min(len(n), CURVE_COLUMNS) for n in names) if any(names) else 1
    heights = [CURVE_CELL_H * max(1, math.ceil(len(n) / CURVE_COLUMNS)) + CURVE_STAGE_H for n in names]
    subfigures = figure.subfigures(len(logs), 1, height_ratios=heights, squeeze=False)[:, 0]
    for subfigure, (stage, log, done), metrics in zip(subfigures, logs, names):
        epochs = log.get("epoch", np.arange(len(next(iter(log.values())))))
        subfigure.suptitle(STAGE_NAMES.get(stage, stage) + ("" if done else "  (in progress)"),
                           fontsize=11.5, fontweight="bold", color=STAGE_COLOURS.get(stage, "black"),
                           x=0.01, ha="left")
        rows = max(1, math.ceil(len(metrics) / CURVE_COLUMNS))
        axes = subfigure.subplots(rows, columns, squeeze=False)
        for ax, name in zip(axes.flat, metrics):
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
        _hide_empty(axes)
    return _save(figure, out_path)
