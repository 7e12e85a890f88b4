"""Feature normalisation and squared Euclidean distance matrices (numpy only)."""

from __future__ import annotations

import numpy as np

from aaa_keras.errors import UserError

# Rows of the query matrix handled per matrix product, so the temporaries stay
# at block_rows x num_gallery instead of a second full-size matrix.
DEFAULT_BLOCK_ROWS = 2048


def as_feature_matrix(features, name: str) -> np.ndarray:
    """Return ``features`` as a finite float32 matrix or raise naming ``name``."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise UserError(
            f"{name} must be a 2-D array (num_images, feature_dim); "
            f"received shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise UserError(f"{name} must hold real numbers; received dtype {array.dtype}.")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise UserError(f"{name} contains NaN or infinite values; features must be finite.")
    return array


def as_feature_pair(qf, gf) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery features as float32 matrices of the same width, or a UserError."""
    queries = as_feature_matrix(qf, "qf")
    gallery = as_feature_matrix(gf, "gf")
    if queries.shape[1] != gallery.shape[1]:
        raise UserError(
            f"qf and gf must have the same feature dimension; received "
            f"qf with {queries.shape[1]} and gf with {gallery.shape[1]} columns."
        )
    return queries, gallery


def l2_normalize(x, epsilon: float = 1e-12) -> np.ndarray:
    """Scale every row of ``x`` to unit L2 norm (float32); all-zero rows stay zero."""
    features = as_feature_matrix(x, "x")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, epsilon)


def squared_norms(features: np.ndarray) -> np.ndarray:
    """Row-wise squared L2 norms of a float32 matrix, as float32."""
    return np.einsum("ij,ij->i", features, features)


def squared_distance_rows(
    rows: np.ndarray,
    rows_sq_norms: np.ndarray,
    columns: np.ndarray,
    columns_sq_norms: np.ndarray,
) -> np.ndarray:
    """``|r|^2 + |c|^2 - 2 r.c`` for every row/column pair, clipped at 0 (float32)."""
    block = rows @ columns.T
    block *= -2.0
    block += rows_sq_norms[:, None]
    block += columns_sq_norms[None, :]
    np.maximum(block, 0.0, out=block)
    return block


def euclidean_distance(qf, gf, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """Squared Euclidean distances between query and gallery features.

    Returns a float32 matrix of shape ``(len(qf), len(gf))`` computed as
    ``|q|^2 + |g|^2 - 2 q.g`` and clipped at 0 (rounding can make it slightly
    negative). Query rows are processed ``block_rows`` at a time so the only
    full-size allocation is the result.
    """
    queries, gallery = as_feature_pair(qf, gf)
    if block_rows < 1:
        raise UserError(f"block_rows must be a positive integer; received {block_rows}.")
    query_norms = squared_norms(queries)
    gallery_norms = squared_norms(gallery)
    distances = np.empty((len(queries), len(gallery)), dtype=np.float32)
    for start in range(0, len(queries), block_rows):
        stop = start + block_rows
        distances[start:stop] = squared_distance_rows(
            queries[start:stop], query_norms[start:stop], gallery, gallery_norms
        )
    return distances
