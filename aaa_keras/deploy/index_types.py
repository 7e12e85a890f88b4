"""The FAISS indexes behind ``index --index-type``: what each one is, how it is trained, searched and merged.

Every type holds L2-normalised embeddings and ranks by cosine. ``exact`` and
``ivf-pq`` search by inner product; the others by squared L2 distance, which on
unit vectors ranks the same (``|q - x|^2 = 2 - 2 cos``) and which PCA needs:
PCA subtracts the mean, which keeps L2 distances but not inner products
(:func:`cosines` turns either back into cosines).

- ``exact``: ``IndexFlatIP``, brute force, 4 x D bytes per image.
- ``ivf-pq``: ``IVF{nlist},PQ{pq_m}x8`` in the full D dimensions; ``pq_m``
  bytes per image. Low recall on re-ID embeddings (docs/benchmarks.md);
  kept so indexes made with it still open.
- ``ivf-sq8``: ``IVF{nlist},SQ8`` in the full D dimensions: D bytes per image.
- ``pca-ivf-sq8``: ``PCAR{pca},IVF{nlist},SQ8``: PCA to ``pca`` dimensions
  (then a random rotation), IVF cells, 8-bit scalar codes; ``pca`` bytes.
- ``pca-ivf-sq8-refine``: ``pca-ivf-sq8`` finds ``k_factor x top``
  candidates, which are re-ranked by their distance in the full D
  dimensions from 8-bit scalar codes (``IndexRefine``); ``pca + D`` bytes.
- ``pca-ivf-sq8-refine-sq6``: the same with 6-bit codes for the re-ranking:
  ``pca + 3 D / 4`` bytes (1792 at 2048-d, PCA 256: under a quarter of
  exact's 8192), which the 8-bit refine stage is not (2304).
- ``opq-ivf-pq-refine``: ``OPQ{pq_m}_{pca},IVF{nlist},PQ{pq_m}`` (OPQ
  rotation to ``pca`` dimensions, product-quantised to ``pq_m`` bytes),
  re-ranked like the above; ``pq_m + D`` bytes.
- ``pca-hnsw``: ``PCAR{pca},HNSW32``: PCA to ``pca`` dimensions, then a
  graph (FAISS ``IndexHNSWFlat``, :data:`HNSW_M` links per vector) over the
  float PCA vectors; ``4 pca + 2 x 4 x HNSW_M`` bytes (1280 at PCA 256).
  ``ef_search`` (FAISS's efSearch) trades speed for recall as ``nprobe``
  does for IVF. No cells: its recall does not depend on how identities
  fall into IVF cells.
- ``pca-hnsw-sq8``: the same graph over 8-bit scalar codes of the PCA
  vectors (``IndexHNSWSQ``); ``pca + 2 x 4 x HNSW_M`` bytes (768 at PCA 512).

FAISS's guidance for these (its wiki, "Guidelines to choose an index"):
HNSW when memory allows it, ``M`` 4 to 64 (here 32), efSearch the speed /
accuracy knob; the graph is built by adding (efConstruction
:data:`HNSW_EF_CONSTRUCTION`), only PCA and the SQ codes are trained. An
append links the new vectors into the graph (:func:`merge_into`).

The IVF types (and the HNSW types' PCA) are trained on a sample of the first ``index`` run's
embeddings (FAISS's guideline: 30 to 256 training points per k-means cell;
here up to :data:`TRAIN_PER_CELL`), never on every vector; appends add to
the trained cells. The default (``search``'s and the benchmark's) comes from
``benchmarks/bench_search.py`` on re-ID-like embeddings (docs/benchmarks.md).

This module needs only NumPy and FAISS.
"""

from __future__ import annotations

import math

import numpy as np

from aaa_keras.errors import UserError
from aaa_keras.vocabulary import INDEX_TYPES

DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 64  # HNSW types: candidates kept in the graph search (FAISS's efSearch; >= top is used)
HNSW_M = 32  # HNSW types: graph links per vector (FAISS: 4 to 64; 2 x M x 4 bytes per vector at level 0)
HNSW_EF_CONSTRUCTION = 80  # HNSW types: candidates kept while linking a new vector (FAISS's default: 40)
DEFAULT_K_FACTOR = 4  # refine types: candidates re-ranked per result
DEFAULT_PCA = 256
PQ_BITS = 8  # bits per sub-quantiser code: 256 centroids each
MIN_TRAIN_PER_CELL = 39  # FAISS's own minimum of training points per k-means centroid
TRAIN_PER_CELL = 40  # training sample per cell (FAISS: 30 to 256, and it warns below 39); see training_sample
MIN_TRAIN = 256  # the scalar / product quantisers' own minimum (256 centroids per PQ sub-space)

# What each type is, as a FAISS index_factory string (``Refine(SQ8)`` = IndexRefine over an 8-bit SQ of the
# full vectors); the keys are vocabulary.INDEX_TYPES.
FACTORY = {
    "exact": "Flat",
    "ivf-pq": "IVF{nlist},PQ{pq_m}x8",
    "ivf-sq8": "IVF{nlist},SQ8",
    "pca-ivf-sq8": "PCAR{pca},IVF{nlist},SQ8",
    "pca-ivf-sq8-refine": "PCAR{pca},IVF{nlist},SQ8,Refine(SQ8)",
    "pca-ivf-sq8-refine-sq6": "PCAR{pca},IVF{nlist},SQ8,Refine(SQ6)",
    "opq-ivf-pq-refine": "OPQ{pq_m}_{pca},IVF{nlist},PQ{pq_m}x8,Refine(SQ8)",
    "pca-hnsw": "PCAR{pca},HNSW{hnsw_m}",
    "pca-hnsw-sq8": "PCAR{pca},HNSW{hnsw_m}_SQ8",
}
assert tuple(FACTORY) == INDEX_TYPES, "vocabulary.INDEX_TYPES and FACTORY must list the same types"
INNER_PRODUCT_TYPES = ("exact", "ivf-pq")  # the others: L2 (see above)


def _faiss():
    import faiss

    return faiss


def uses(index_type: str, what: str) -> bool:
    """Whether a type has a parameter: ``nlist``, ``pq_m``, ``pca``, ``k_factor`` (the refine stage) or
    ``ef_search`` (an HNSW graph)."""
    template = FACTORY[index_type]
    return {"nlist": "{nlist}" in template, "pq_m": "{pq_m}" in template, "pca": "{pca}" in template,
            "k_factor": "Refine" in template, "ef_search": "HNSW" in template}[what]


def default_pq_m(dim: int) -> int:
    """Bytes per vector of IVF-PQ: the largest divisor of ``dim`` up to min(64, dim / 2)."""
    limit = max(1, min(64, dim // 2))
    return max(m for m in range(1, limit + 1) if dim % m == 0)


def default_nlist(count: int) -> int:
    """About 4 sqrt(N) cells, with at least 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(count)), count // MIN_TRAIN_PER_CELL))


def default_pca(dim: int) -> int:
    """Dimensions kept by PCA / OPQ: 256, or D when the embedding is smaller."""
    return min(DEFAULT_PCA, dim)


def training_sample(vectors: np.ndarray, nlist: int | None, seed: int = 0) -> np.ndarray:
    """A random sample of ``vectors`` to train on: TRAIN_PER_CELL per cell (at least MIN_TRAIN), not all.

    40 per cell keeps training in minutes at a million 2048-d crops on 2 cores
    (PCA's covariance and k-means both scale with the sample); the recall
    measured with it is in docs/benchmarks.md.
    """
    wanted = max(MIN_TRAIN, TRAIN_PER_CELL * (nlist or 1))
    if len(vectors) <= wanted:
        return np.ascontiguousarray(vectors, np.float32)
    picked = np.sort(np.random.default_rng(seed).choice(len(vectors), wanted, replace=False))
    return np.ascontiguousarray(vectors[picked], np.float32)


def make_faiss_index(dim: int, index_type: str = "exact", nlist: int | None = None, pq_m: int | None = None,
                     train: np.ndarray | None = None, pca: int | None = None):
    """An empty (trained, for the IVF types) FAISS inner-product index. Returns ``(index, params)``.

    ``train`` is the training set (all the first run's embeddings, or a
    sample): the quantisers are trained on :func:`training_sample` of it.
    """
    faiss = _faiss()
    if index_type not in FACTORY:
        raise UserError(f"--index-type: got {index_type!r}; expected one of {', '.join(INDEX_TYPES)}")
    params = {"nlist": None, "pq_m": None, "pca": None}
    if index_type == "exact":
        return faiss.IndexFlatIP(dim), params
    count = 0 if train is None else len(train)
    if count < MIN_TRAIN:
        raise UserError(f"--index-type {index_type}: needs at least {MIN_TRAIN} images to train its quantisers, "
                        f"the gallery has {count}; use --index-type exact (fast enough for small galleries)")
    if uses(index_type, "nlist"):
        nlist = default_nlist(count) if nlist is None else int(nlist)
        if not 1 <= nlist <= count:
            raise UserError(f"--nlist {nlist}: expected 1 to {count} (the number of training images)")
        params["nlist"] = nlist
    if uses(index_type, "pca"):
        pca = default_pca(dim) if pca is None else int(pca)
        if not 1 <= pca <= dim:
            raise UserError(f"--pca {pca}: expected 1 to the embedding size {dim}")
        params["pca"] = pca
    if uses(index_type, "pq_m"):
        space = params["pca"] or dim
        pq_m = default_pq_m(space) if pq_m is None else int(pq_m)
        if pq_m < 1 or space % pq_m:
            raise UserError(f"--pq-m {pq_m}: must divide the {'PCA size' if params['pca'] else 'embedding size'} "
                            f"{space} (e.g. {default_pq_m(space)})")
        params["pq_m"] = pq_m
    metric = faiss.METRIC_INNER_PRODUCT if index_type in INNER_PRODUCT_TYPES else faiss.METRIC_L2
    index = faiss.index_factory(dim, FACTORY[index_type].format(hnsw_m=HNSW_M, **params), metric)
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = DEFAULT_EF_SEARCH
    else:
        ivf = faiss.extract_index_ivf(index)
        if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
            # Polysemous training (on by default) re-orders the PQ codes for Hamming-distance pre-filtering,
            # which is not used here (polysemous_ht = 0); it took 20 of the 26 s of training 3000 64-d vectors.
            faiss.downcast_index(ivf).do_polysemous_training = False
    # HNSW types train only PCA (and the SQ codes): the same sample size as an IVF of default_nlist cells.
    index.train(training_sample(train, params["nlist"] or default_nlist(count)))
    return index, params


def _hnsw(index):
    """The ``IndexHNSW`` inside ``index`` (under a refine stage and a PCA), or None."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexHNSW):
            return index
        if isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        elif isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return None


def cosines(index, scores: np.ndarray) -> np.ndarray:
    """A FAISS search's scores as cosines: inner products as they are, squared L2 distances d as 1 - d / 2."""
    if index.metric_type == _faiss().METRIC_L2:
        return 1.0 - scores / 2.0
    return scores


def set_search_params(index, nprobe: int | None = None, k_factor: float | None = None,
                      ef_search: int | None = None) -> None:
    """Cells searched (IVF types), candidates re-ranked per result (refine types), candidates kept in the
    graph search (HNSW types: efSearch); each ignored where the type has no such parameter."""
    faiss = _faiss()
    hnsw = _hnsw(index)
    if hnsw is not None:
        if ef_search is not None:
            hnsw.hnsw.efSearch = int(ef_search)
    elif nprobe is not None:
        try:
            faiss.extract_index_ivf(index).nprobe = int(nprobe)
        except RuntimeError:  # not an IVF index: nothing to set
            pass
    refine = faiss.downcast_index(index)
    if k_factor is not None and isinstance(refine, faiss.IndexRefine):
        refine.k_factor = float(k_factor)


def set_nprobe(index, nprobe: int) -> None:
    set_search_params(index, nprobe=nprobe)


def empty_like(index):
    """A trained index of the same kind holding no vectors (what a delta file starts from)."""
    faiss = _faiss()
    empty = faiss.clone_index(index)
    empty.reset()
    return empty


def merge_into(target, source) -> None:
    """Append ``source``'s vectors to ``target`` (same type and training), ids continuing ``target``'s.

    FAISS merges inverted lists and flat codes natively; an ``IndexRefine``
    and an ``IndexPreTransform`` are merged part by part (their own
    ``merge_from`` refuses).
    """
    faiss = _faiss()
    # New names: the downcast wrappers do not own the C++ objects, the arguments (kept alive here) do.
    into, other = faiss.downcast_index(target), faiss.downcast_index(source)
    if isinstance(into, faiss.IndexRefine):
        merge_into(into.base_index, other.base_index)
        merge_into(into.refine_index, other.refine_index)
        into.ntotal += other.ntotal
    elif isinstance(into, faiss.IndexPreTransform):
        merge_into(into.index, other.index)
        into.ntotal += other.ntotal
    elif isinstance(into, faiss.IndexHNSW):
        # A graph has no merge_from: the source's stored vectors (in the PCA space; SQ8-decoded for
        # HNSW_SQ8, which re-encodes them to the same codes) are linked into the target's graph.
        if other.ntotal:
            into.add(other.reconstruct_n(0, other.ntotal))
    elif isinstance(into, faiss.IndexIVF):
        into.merge_from(other, into.ntotal)  # inverted lists store ids: shift the source's
    else:
        into.merge_from(other, 0)  # flat codes: positions are the ids
