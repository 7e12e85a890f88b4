"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017).

Two implementations of the same algorithm:

- ``re_ranking_reference`` follows the structure of the authors' public Python
  code (zhunzhong07/person-re-ranking): full (q+g) x (q+g) matrices, a Python
  loop per image. It is the yardstick for tests and benchmarks. Two deliberate
  differences: it takes *squared* Euclidean distances as they are (the
  authors' ``re_ranking(q_g_dist, q_q_dist, g_g_dist)`` squares its inputs, so
  it expects plain Euclidean distances; their feature-based version squares
  ``cdist`` itself, the same as here), and it sorts with ``kind="stable"`` so
  ties are broken by index and the result is deterministic.
- ``re_ranking`` computes the same result from features without ever holding a
  (q+g)^2 matrix. The distance matrix is symmetric, so one pass over the
  square blocks of its upper triangle (half the matrix products of a pass
  over all rows) gives every row its maximum and its nearest neighbours:
  each row keeps a few more than ``max(k1 + 1, k2)`` candidates as packed
  (distance, index) keys, and a block entry is looked at only when it is not
  above the row's current last candidate. The k-reciprocal sets and the
  encoding ``V`` are scipy sparse matrices whose weights come from the
  candidates' distances, and only the query x gallery block of the Jaccard
  distance is formed, from the inverted index of ``V``. At Market-1501 scale
  (3368 x 15913, 2048-d) it needs about 0.3 GB above the features, where the
  reference needs about 7 GB; the matrix products of the upper triangle are
  about 85 % of its CPU time (``benchmarks/bench_rerank.py``, docs/benchmarks.md).

Notation as in the paper: ``R(p, k)`` the k-reciprocal neighbours of ``p``,
``R*(p, k)`` its expansion with ``R(q, k/2)`` of candidates that share more
than 2/3 of their own set, ``V`` the Gaussian-weighted encoding of ``R*``,
query expansion averages ``V`` over the ``k2`` nearest neighbours, and the
final distance is ``(1 - lambda) * jaccard + lambda * original``, where
``original`` is the squared distance divided by its row maximum.

Past 450 lines on purpose: the reference (the yardstick the tests and the
benchmark compare with) stays beside the implementation it checks.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from aaa_keras.errors import UserError
from aaa_keras.evaluation.distance import (
    as_feature_pair,
    squared_distance_rows,
    squared_norms,
)
from aaa_keras.progress import Progress

# Upper bounds on temporaries of the blocked implementation, in elements.
_DISTANCE_BLOCK_EDGE = 2048  # square float32 distance block (16 MiB)
_CANDIDATE_MARGIN = 12  # neighbours kept per row beyond max(k1 + 1, k2); see _ranked_candidates
_PAIR_CHUNK_ELEMENTS = 1 << 21  # gathered feature values per side for the V weights (8 MiB)
_TRIPLE_CHUNK = 1 << 20  # (query, image, gallery) triples per Jaccard chunk
_JACCARD_ROWS = 256  # query rows per dense Jaccard chunk


# ---------------------------------------------------------------------------
# Reference implementation (full matrices)
# ---------------------------------------------------------------------------


def re_ranking_reference(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Re-rank with full (q+g)^2 matrices, as in the authors' public code.

    Inputs are squared Euclidean distance blocks (query-gallery, query-query,
    gallery-gallery). Returns the re-ranked query x gallery distances as
    float32. Memory is several (q+g)^2 float32 matrices; use ``re_ranking``
    for real data.
    """
    q_g_dist, q_q_dist, g_g_dist = _validated_blocks(q_g_dist, q_q_dist, g_g_dist)
    query_num = q_g_dist.shape[0]
    all_num = query_num + q_g_dist.shape[1]
    _check_parameters(k1, k2, lambda_value, all_num)

    original_dist = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    ).astype(np.float32)
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros(original_dist.shape, dtype=np.float32)
    initial_rank = np.argsort(original_dist, axis=1, kind="stable").astype(np.int32)

    half_k1 = int(np.around(k1 / 2.0))
    for i in range(all_num):
        k_reciprocal_index = _reference_k_reciprocal(initial_rank, i, k1)
        k_reciprocal_expansion_index = k_reciprocal_index
        for candidate in k_reciprocal_index:
            candidate_index = _reference_k_reciprocal(initial_rank, candidate, half_k1)
            overlap = len(np.intersect1d(candidate_index, k_reciprocal_index))
            if overlap > 2.0 / 3 * len(candidate_index):
                k_reciprocal_expansion_index = np.append(
                    k_reciprocal_expansion_index, candidate_index
                )
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)

    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del initial_rank

    inverted_index = [np.where(V[:, j] != 0)[0] for j in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(all_num, dtype=np.float32)
        for j in np.where(V[i, :] != 0)[0]:
            images = inverted_index[j]
            temp_min[images] += np.minimum(V[i, j], V[images, j])
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)

    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:, query_num:].astype(np.float32)


def _reference_k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k): the top-(k+1) neighbours of ``i`` that have ``i`` in their top-(k+1)."""
    forward_k_neigh_index = initial_rank[i, : k + 1]
    backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k + 1]
    fi = np.where(backward_k_neigh_index == i)[0]
    return forward_k_neigh_index[fi]


# ---------------------------------------------------------------------------
# Memory-bounded implementation (features, blocks, sparse V)
# ---------------------------------------------------------------------------


def re_ranking(qf, gf, k1=20, k2=6, lambda_value=0.3, block_size=None):
    """Re-rank query x gallery squared Euclidean distances of ``qf`` / ``gf``.

    Equal (up to float rounding) to ``re_ranking_reference`` applied to the
    squared Euclidean distance blocks of the same features. The features are
    used as given: pass L2-normalised features for the standard setting, or
    features projected by a learned metric (``x -> L^T x`` with ``M = L L^T``)
    to re-rank under that metric. ``block_size`` is the edge of the square
    blocks of the (q+g)^2 distance matrix computed at once (default
    ``_DISTANCE_BLOCK_EDGE``, 16 MiB of float32). Returns a float32
    (num_query, num_gallery) matrix.
    """
    queries, gallery = as_feature_pair(qf, gf)
    num_query = len(queries)
    features = _StackedRows(queries, gallery)  # rows of [qf; gf] without a copy of both
    all_num = len(features)
    _check_parameters(k1, k2, lambda_value, all_num)
    if block_size is None:
        block_size = _DISTANCE_BLOCK_EDGE
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise UserError(f"block_size must be a positive integer or None; received {block_size!r}.")

    sq_norms = np.concatenate([squared_norms(queries), squared_norms(gallery)])
    num_neighbours = max(k1 + 1, k2)
    keys, row_max, final_dist = _symmetric_neighbour_pass(
        features, sq_norms, min(all_num, num_neighbours + _CANDIDATE_MARGIN), num_query,
        int(block_size),
    )
    divisor = _safe_divisor(row_max)
    final_dist /= divisor[:num_query, None]
    initial_rank, cache = _ranked_candidates(keys, divisor, num_neighbours)
    del keys

    V = _k_reciprocal_encoding(features, sq_norms, divisor, initial_rank, k1, cache)
    del cache
    if k2 != 1:
        V = _query_expansion(V, initial_rank[:, :k2])
    del initial_rank

    # final_dist holds the normalised original distances of the query rows.
    final_dist *= np.float32(lambda_value)
    with Progress("re-ranking queries", num_query, min_total=1000) as progress:
        for rows, sum_of_minimums in _jaccard_overlaps(V, num_query):
            # jaccard = 1 - t / (2 - t), computed in place on t = sum of minimums.
            jaccard = sum_of_minimums
            jaccard /= 2.0 - sum_of_minimums
            np.subtract(1.0, jaccard, out=jaccard)
            jaccard *= 1.0 - lambda_value
            final_dist[rows] += jaccard
            progress.update(rows.stop - rows.start)
    return final_dist


class _StackedRows:
    """Rows of ``[top; bottom]`` by slice or index array, copying only what is asked for."""

    def __init__(self, top: np.ndarray, bottom: np.ndarray):
        self.top, self.bottom, self.split = top, bottom, len(top)
        self.shape = (len(top) + len(bottom), top.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self))
            if stop <= self.split:
                return self.top[start:stop]
            if start >= self.split:
                return self.bottom[start - self.split : stop - self.split]
            return np.concatenate([self.top[start:], self.bottom[: stop - self.split]])
        index = np.asarray(index)
        in_top = index < self.split
        rows = np.empty((len(index), self.shape[1]), dtype=self.top.dtype)
        rows[in_top] = self.top[index[in_top]]
        rows[~in_top] = self.bottom[index[~in_top] - self.split]
        return rows


# A candidate is one (distance, column) pair packed into a uint64 key: the bits
# of a non-negative float32 order as the float does, so keys order by
# (distance, column), which is the order of a stable argsort of the row.
_NO_KEY = np.uint64(np.iinfo(np.uint64).max)


def _pack_keys(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    bits = (values + np.float32(0.0)).astype(np.float32).view(np.uint32)  # -0.0 -> +0.0
    return (bits.astype(np.uint64) << np.uint64(32)) | columns.astype(np.uint64)


def _key_values(keys: np.ndarray) -> np.ndarray:
    return (keys >> np.uint64(32)).astype(np.uint32).view(np.float32)


def _key_columns(keys: np.ndarray) -> np.ndarray:
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _symmetric_neighbour_pass(features, sq_norms, num_candidates, num_query, block):
    """One pass over the upper triangle of the (q+g)^2 squared distance matrix.

    The matrix is symmetric, so each off-diagonal square block ``(I, J)``,
    ``I < J``, is computed once and serves the rows of ``I`` (as rows) and
    the rows of ``J`` (as columns): half the matrix products of a row-wise
    pass. Every row keeps its ``num_candidates`` smallest (distance, column)
    keys; a block entry is looked at only when it is not above the row's
    current ``num_candidates``-th smallest distance (a threshold that only
    falls), so the selection costs one comparison per entry.

    Returns the candidate keys (unordered within a row), every row's maximum
    distance, and the raw query x gallery block of the distances.
    """
    all_num = len(features)
    keys = np.full((all_num, num_candidates), _NO_KEY, dtype=np.uint64)
    threshold = np.full(all_num, np.inf, dtype=np.float32)
    row_max = np.zeros(all_num, dtype=np.float32)
    query_gallery = np.empty((num_query, all_num - num_query), dtype=np.float32)
    starts = range(0, all_num, block)
    for row_start in starts:
        row_stop = min(row_start + block, all_num)
        rows = features[row_start:row_stop]
        row_norms = sq_norms[row_start:row_stop]
        for col_start in starts[row_start // block :]:
            col_stop = min(col_start + block, all_num)
            distances = squared_distance_rows(
                rows, row_norms, features[col_start:col_stop], sq_norms[col_start:col_stop]
            )
            np.maximum(row_max[row_start:row_stop], distances.max(axis=1),
                       out=row_max[row_start:row_stop])
            _merge_candidates(keys, threshold, distances, row_start, col_start)
            if col_start != row_start:
                np.maximum(row_max[col_start:col_stop], distances.max(axis=0),
                           out=row_max[col_start:col_stop])
                _merge_candidates(keys, threshold, distances, col_start, row_start, transposed=True)
            if row_start < num_query and col_stop > num_query:
                first_col = max(col_start, num_query)
                query_gallery[row_start : min(row_stop, num_query),
                              first_col - num_query : col_stop - num_query] = distances[
                    : num_query - row_start, first_col - col_start :
                ]
    return keys, row_max, query_gallery


def _merge_candidates(keys, threshold, distances, row_start, col_start, transposed=False):
    """Merge the entries of a block into the candidate keys of its rows (from ``row_start``).

    With ``transposed`` the block's columns are the rows (the lower triangle
    seen through the upper one). Rows seen for the first time get their
    threshold from this block by a partial sort, so that only a few entries
    per row pass the comparison afterwards.
    """
    axis = 0 if transposed else 1
    num_rows, num_cols = distances.shape[1 - axis], distances.shape[axis]
    num_candidates = keys.shape[1]
    row_threshold = threshold[row_start : row_start + num_rows]
    fresh = np.isinf(row_threshold)
    if num_cols >= num_candidates and fresh.any():
        # The num_candidates-th smallest of this block bounds the row's final one.
        fresh_part = np.ascontiguousarray(distances[:, fresh].T) if transposed else distances[fresh]
        row_threshold[fresh] = np.partition(fresh_part, num_candidates - 1, axis=1)[
            :, num_candidates - 1
        ]
    # flatnonzero of the C-ordered mask is several times faster than a 2-D nonzero.
    if transposed:
        flat = np.flatnonzero(distances <= row_threshold[None, :])
        local_cols, local_rows = np.divmod(flat, num_rows)
    else:
        flat = np.flatnonzero(distances <= row_threshold[:, None])
        local_rows, local_cols = np.divmod(flat, num_cols)
    if len(flat) == 0:
        return
    values = distances.ravel()[flat]
    new_keys = _pack_keys(values, local_cols + col_start)
    order = np.argsort(local_rows, kind="stable")
    local_rows, new_keys = local_rows[order], new_keys[order]
    counts = np.bincount(local_rows, minlength=num_rows)
    touched = np.flatnonzero(counts)
    slot_of_row = np.zeros(num_rows, dtype=np.int64)
    slot_of_row[touched] = np.arange(len(touched))
    row_starts = np.cumsum(counts) - counts
    padded = np.full((len(touched), num_candidates + counts.max()), _NO_KEY, dtype=np.uint64)
    padded[:, :num_candidates] = keys[row_start + touched]
    position = np.arange(len(local_rows)) - row_starts[local_rows]
    padded[slot_of_row[local_rows], num_candidates + position] = new_keys
    kept = np.partition(padded, num_candidates - 1, axis=1)[:, :num_candidates]
    keys[row_start + touched] = kept
    largest = kept.max(axis=1)
    row_threshold[touched] = np.where(largest == _NO_KEY, np.float32(np.inf), _key_values(largest))


def _ranked_candidates(keys, divisor, num_neighbours):
    """``initial_rank`` from the candidate keys, and a lookup of the cached distances.

    Candidates are ordered by (distance / row maximum, column), as the
    reference's stable argsort of the normalised matrix orders them (a
    division can round two distances to one value; the extra candidates
    kept beyond ``num_neighbours`` cover that). The cache maps the pair
    ``i * (q+g) + j`` of every candidate to its normalised distance.
    """
    all_num = len(keys)
    valid = keys != _NO_KEY
    columns = np.where(valid, _key_columns(keys), all_num)
    normalised = np.where(valid, _key_values(keys) / divisor[:, None], np.float32(np.inf))
    order = np.lexsort((columns, normalised), axis=1)
    initial_rank = np.take_along_axis(columns, order[:, :num_neighbours], axis=1).astype(np.int32)
    pairs = (np.arange(all_num, dtype=np.int64)[:, None] * all_num + columns)[valid]
    values = normalised[valid]
    sort = np.argsort(pairs)
    return initial_rank, (pairs[sort], values[sort].astype(np.float32))


def _safe_divisor(values: np.ndarray) -> np.ndarray:
    """Row maxima to divide by; a row of all-zero distances is left unscaled."""
    return np.where(values > 0, values, np.float32(1.0))


def _k_reciprocal_sets(initial_rank: np.ndarray, k: int) -> sp.csr_matrix:
    """Sparse 0/1 matrix whose row ``i`` marks R(i, k)."""
    all_num = len(initial_rank)
    forward = initial_rank[:, : k + 1]
    backward = forward[forward]  # (all_num, k+1, k+1): neighbours of each neighbour
    is_reciprocal = (backward == np.arange(all_num)[:, None, None]).any(axis=2)
    rows = np.broadcast_to(np.arange(all_num)[:, None], forward.shape)[is_reciprocal]
    data = np.ones(len(rows), dtype=np.int32)
    return sp.csr_matrix((data, (rows, forward[is_reciprocal])), shape=(all_num, all_num))


def _expanded_sets(initial_rank: np.ndarray, k1: int) -> sp.csr_matrix:
    """Sparse 0/1 matrix whose row ``i`` marks R*(i, k1), the expanded set.

    A candidate ``c`` in R(i, k1) adds R(c, k1/2) when more than 2/3 of that
    set lies in R(i, k1); the overlaps of all (i, c) pairs come from one
    sparse product.
    """
    reciprocal = _k_reciprocal_sets(initial_rank, k1)
    half = _k_reciprocal_sets(initial_rank, int(np.around(k1 / 2.0)))
    half_sizes = np.diff(half.indptr)
    overlaps = (reciprocal @ half.T).multiply(reciprocal).tocoo()
    # Same float comparison as the reference: overlap > 2/3 * |R(c, k1/2)|.
    selected = overlaps.data > 2.0 / 3 * half_sizes[overlaps.col]
    chosen = sp.csr_matrix(
        (np.ones(int(selected.sum()), dtype=np.int32), (overlaps.row[selected], overlaps.col[selected])),
        shape=reciprocal.shape,
    )
    expanded = (reciprocal + chosen @ half).tocsr()
    expanded.sum_duplicates()
    expanded.sort_indices()
    expanded.data[:] = 1
    return expanded


def _k_reciprocal_encoding(features, sq_norms, divisor, initial_rank, k1, cache) -> sp.csr_matrix:
    """V: row ``i`` holds exp(-d(i, j)) over j in R*(i, k1), normalised to sum 1.

    ``d`` is the normalised distance; pairs among the rows' candidates come
    from ``cache`` (most of R*), the others are computed from the features.
    """
    expanded = _expanded_sets(initial_rank, k1)
    all_num = expanded.shape[0]
    rows = np.repeat(np.arange(all_num), np.diff(expanded.indptr))
    cols = expanded.indices
    cached_pairs, cached_values = cache
    pairs = rows.astype(np.int64) * all_num + cols
    where = np.minimum(np.searchsorted(cached_pairs, pairs), len(cached_pairs) - 1)
    found = cached_pairs[where] == pairs
    distances = np.empty(len(pairs), dtype=np.float32)
    distances[found] = cached_values[where[found]]
    missing = ~found
    if missing.any():
        computed = _pair_distances(features, sq_norms, rows[missing], cols[missing])
        distances[missing] = computed / divisor[rows[missing]]
    weights = np.exp(-distances).astype(np.float64)
    row_sums = np.bincount(rows, weights=weights, minlength=all_num)
    return sp.csr_matrix(
        (weights / row_sums[rows], cols, expanded.indptr), shape=expanded.shape
    )


def _pair_distances(features, sq_norms, rows, cols) -> np.ndarray:
    """Squared distances (float32, clipped at 0) of the feature pairs (rows[t], cols[t])."""
    distances = np.empty(len(rows), dtype=np.float32)
    chunk = max(1, _PAIR_CHUNK_ELEMENTS // features.shape[1])
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        c = cols[start : start + chunk]
        dots = np.einsum("ij,ij->i", features[r], features[c])
        distances[start : start + chunk] = sq_norms[r] + sq_norms[c] - 2.0 * dots
    return np.maximum(distances, 0.0)


def _query_expansion(V: sp.csr_matrix, nearest: np.ndarray) -> sp.csr_matrix:
    """Replace each row of V by the mean of the rows of its k2 nearest images."""
    all_num, k2 = nearest.shape
    averaging = sp.csr_matrix(
        (np.full(nearest.size, 1.0 / k2), nearest.ravel(), np.arange(0, nearest.size + 1, k2)),
        shape=(all_num, all_num),
    )
    expanded = (averaging @ V).tocsr()
    expanded.sort_indices()
    return expanded


def _jaccard_overlaps(V: sp.csr_matrix, num_query: int):
    """Yield (query row slice, sum_j min(V[q, j], V[g, j]) for every gallery g).

    The sum of minimums over shared non-zeros is built from (query, image,
    gallery) triples found through the gallery part of V stored by column
    (the inverted index of the reference), in chunks of query rows bounded by
    ``_TRIPLE_CHUNK`` triples and ``_JACCARD_ROWS`` rows.
    """
    gallery_by_image = V[num_query:].tocsc()
    gallery_by_image.sort_indices()
    num_gallery = gallery_by_image.shape[0]
    column_counts = np.diff(gallery_by_image.indptr)
    query_part = V[:num_query]
    query_of_nonzero = np.repeat(np.arange(num_query), np.diff(query_part.indptr))
    triples_per_query = np.bincount(
        query_of_nonzero, weights=column_counts[query_part.indices], minlength=num_query
    )

    start = 0
    while start < num_query:
        stop = _chunk_end(triples_per_query, start, _TRIPLE_CHUNK, _JACCARD_ROWS)
        yield slice(start, stop), _sum_of_minimums(
            query_part[start:stop], gallery_by_image, num_gallery
        )
        start = stop


def _chunk_end(costs: np.ndarray, start: int, budget: int, max_rows: int) -> int:
    """End of a chunk from ``start`` whose summed cost fits ``budget`` (at least one row)."""
    cumulative = np.cumsum(costs[start : start + max_rows])
    return start + max(1, int(np.searchsorted(cumulative, budget, side="right")))


def _sum_of_minimums(query_rows: sp.csr_matrix, gallery_by_image: sp.csc_matrix, num_gallery: int):
    """Dense (len(query_rows), num_gallery) array of sum_j min(V[q, j], V[g, j])."""
    query_rows = query_rows.tocoo()
    starts = gallery_by_image.indptr[query_rows.col]
    counts = gallery_by_image.indptr[query_rows.col + 1] - starts
    offsets = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    minimums = np.minimum(np.repeat(query_rows.data, counts), gallery_by_image.data[offsets])
    flat_index = np.repeat(query_rows.row.astype(np.int64), counts) * num_gallery
    flat_index += gallery_by_image.indices[offsets]
    num_rows = query_rows.shape[0]
    sums = np.bincount(flat_index, weights=minimums, minlength=num_rows * num_gallery)
    return sums.reshape(num_rows, num_gallery)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _validated_blocks(q_g_dist, q_q_dist, g_g_dist):
    blocks = []
    for name, block in (("q_g_dist", q_g_dist), ("q_q_dist", q_q_dist), ("g_g_dist", g_g_dist)):
        array = np.asarray(block)
        if array.ndim != 2:
            raise UserError(f"{name} must be a 2-D distance matrix; received shape {array.shape}.")
        blocks.append(array)
    q_g_dist, q_q_dist, g_g_dist = blocks
    num_query, num_gallery = q_g_dist.shape
    if q_q_dist.shape != (num_query, num_query):
        raise UserError(
            f"q_q_dist must have shape ({num_query}, {num_query}) to match q_g_dist "
            f"{q_g_dist.shape}; received {q_q_dist.shape}."
        )
    if g_g_dist.shape != (num_gallery, num_gallery):
        raise UserError(
            f"g_g_dist must have shape ({num_gallery}, {num_gallery}) to match q_g_dist "
            f"{q_g_dist.shape}; received {g_g_dist.shape}."
        )
    return q_g_dist, q_q_dist, g_g_dist


def _check_parameters(k1, k2, lambda_value, all_num: int) -> None:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be a positive integer; received {value!r}.")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise UserError(f"lambda_value must be in [0, 1]; received {lambda_value!r}.")
    if max(k1 + 1, k2) > all_num:
        raise UserError(
            f"re-ranking with k1={k1}, k2={k2} needs at least {max(k1 + 1, k2)} images "
            f"(queries + gallery); received {all_num}. Lower k1/k2."
        )
