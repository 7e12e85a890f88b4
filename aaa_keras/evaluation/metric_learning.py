"""Metric learning on fixed features: XQDA and KISSME (numpy / scipy only).

Both learn a Mahalanobis-like distance ``d(x, z) = (x - z)^T A (x - z)`` from
labelled training features, after a PCA to ``pca_dim`` dimensions:

- XQDA (Liao et al., "Person Re-identification by Local Maximal Occurrence
  Representation and Metric Learning", CVPR 2015): intra-personal covariance
  ``Sigma_I`` and extra-personal covariance ``Sigma_E`` of pair differences;
  a subspace ``W`` from the generalised eigenproblem ``Sigma_E w = l Sigma_I w``
  keeping eigenvalues > 1 (at most ``max_dim``, at least one); kernel
  ``M = inv(W^T Sigma_I W) - inv(W^T Sigma_E W)``; ``A = W M W^T``.
- KISSME (Koestinger et al., "Large Scale Metric Learning from Equivalence
  Constraints", CVPR 2012): ``M = inv(Sigma_S) - inv(Sigma_D)`` over similar /
  dissimilar pairs, projected onto the positive semi-definite cone by clipping
  negative eigenvalues to zero.

Pairs are all ordered pairs of training images: *similar* = same person id,
*dissimilar* = different person ids. When camera ids are given, only pairs
from different cameras count (the cross-view setting of XQDA). The pair
covariances are computed exactly in closed form from per-group sums, never by
enumerating pairs: for any grouping, the scatter of the differences over the
ordered pairs inside groups is ``2 sum_i n_g(i) x_i x_i^T - 2 sum_g s_g s_g^T``
(``n_g`` the group size, ``s_g`` the group sum), and cross-camera sets follow
by inclusion-exclusion over the (person), (camera), (person, camera) groupings.

The ridge regulariser adds ``ridge * trace(Sigma) / dim`` to each covariance,
so it is relative to the feature scale.

A fitted model is ``mean`` (input_dim,), ``projection`` (input_dim, k) and
``kernel`` (k, k): ``d(x, z) = (y_x - y_z)^T kernel (y_x - y_z)`` with
``y = (x - mean) @ projection``. It saves to and loads from a ``.npz``.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
from typing import ClassVar

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from aaa_keras.errors import UserError
from aaa_keras.evaluation.distance import as_feature_matrix
from aaa_keras.evaluation.rank import _check_positive_int
from aaa_keras.files import atomic_path, read_back

# Query rows per block when a distance matrix is assembled.
_DISTANCE_BLOCK_ROWS = 1024
_FORMAT_VERSION = 1


def training_fingerprint(features, pids, camids=None) -> str:
    """SHA-1 of the training data (as float32 features, int64 ids) to detect stale models."""
    arrays = [as_feature_matrix(features, "train features"), np.asarray(pids, dtype=np.int64)]
    if camids is not None:
        arrays.append(np.asarray(camids, dtype=np.int64))
    digest = hashlib.sha1()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class QuadraticMetric(abc.ABC):
    """Common part of XQDA and KISSME: PCA, pair statistics, distances, files.

    Subclasses define ``kind`` and ``_fit_kernel``.
    """

    kind: ClassVar[str] = ""

    pca_dim: int = 128
    ridge: float = 1e-3
    mean: np.ndarray | None = dataclasses.field(default=None, repr=False)
    projection: np.ndarray | None = dataclasses.field(default=None, repr=False)
    kernel: np.ndarray | None = dataclasses.field(default=None, repr=False)
    fingerprint: str = ""

    # === Fitting ===

    def fit(self, features, pids, camids=None):
        """Fit on training features (n, d), person ids (n,) and optional camera ids."""
        features = as_feature_matrix(features, "train features")
        pids = _labels(pids, "train pids", len(features))
        if camids is not None:
            camids = _labels(camids, "train camids", len(features))
        fingerprint = training_fingerprint(features, pids, camids)
        views = np.arange(len(features)) if camids is None else camids
        _check_positive_int(self.pca_dim, "pca_dim")
        if not self.ridge >= 0:
            raise UserError(f"ridge must be >= 0; received {self.ridge!r}.")

        features = features.astype(np.float64)
        mean, components = _fit_pca(features, self.pca_dim)
        reduced = (features - mean) @ components
        similar, dissimilar = pair_covariances(reduced, pids, views)
        subspace, kernel = self._fit_kernel(
            _with_ridge(similar, self.ridge), _with_ridge(dissimilar, self.ridge)
        )
        self.mean = mean
        self.projection = components @ subspace
        self.kernel = (kernel + kernel.T) / 2.0
        self.fingerprint = fingerprint
        return self

    @abc.abstractmethod
    def _fit_kernel(self, similar: np.ndarray, dissimilar: np.ndarray):
        """Return (subspace (p, k), kernel (k, k)) from the two pair covariances."""

    # === Use ===

    @property
    def input_dim(self) -> int:
        self._check_fitted()
        return len(self.mean)

    def transform(self, features) -> np.ndarray:
        """Project features into the learned subspace: ``y = (x - mean) @ projection``."""
        self._check_fitted()
        features = as_feature_matrix(features, "features")
        if features.shape[1] != self.input_dim:
            raise UserError(
                f"features have {features.shape[1]} dimensions but this {self.kind} model "
                f"was fitted on {self.input_dim}-d features."
            )
        return (features - self.mean) @ self.projection

    def distance(self, qf, gf) -> np.ndarray:
        """(len(qf), len(gf)) float32 matrix of ``(y_q - y_g)^T kernel (y_q - y_g)``."""
        queries = self.transform(qf)
        gallery = self.transform(gf)
        gallery_terms = np.einsum("ij,jk,ik->i", gallery, self.kernel, gallery)
        distances = np.empty((len(queries), len(gallery)), dtype=np.float32)
        for start in range(0, len(queries), _DISTANCE_BLOCK_ROWS):
            block = queries[start : start + _DISTANCE_BLOCK_ROWS] @ self.kernel
            query_terms = np.einsum("ij,ij->i", block, queries[start : start + _DISTANCE_BLOCK_ROWS])
            distances[start : start + _DISTANCE_BLOCK_ROWS] = (
                query_terms[:, None] + gallery_terms[None, :] - 2.0 * (block @ gallery.T)
            )
        return distances

    def embed(self, features) -> np.ndarray:
        """Features whose squared Euclidean distances equal the PSD part of the metric.

        With ``kernel = U diag(l) U^T`` and ``L = U diag(sqrt(max(l, 0)))``,
        ``|L^T y_x - L^T y_z|^2`` is the learned distance when the kernel is
        positive semi-definite (always for KISSME; for XQDA whenever every kept
        eigenvalue exceeds 1) and its PSD-clipped version otherwise. Used to run
        Euclidean-only algorithms such as k-reciprocal re-ranking.
        """
        eigenvalues, eigenvectors = np.linalg.eigh(self.kernel)
        factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
        return (self.transform(features) @ factor).astype(np.float32)

    # === Files ===

    def save(self, path) -> None:
        """Write the fitted model to ``path`` (.npz) atomically (``files.atomic_path``)."""
        self._check_fitted()
        with atomic_path(os.fspath(path)) as temporary, open(temporary, "wb") as handle:
            np.savez(
                handle,
                kind=np.str_(self.kind),
                format_version=np.int64(_FORMAT_VERSION),
                config=np.str_(json.dumps(self._config())),
                mean=self.mean,
                projection=self.projection,
                kernel=self.kernel,
                fingerprint=np.str_(self.fingerprint),
            )

    @classmethod
    def load(cls, path):
        """Read a model written by ``save``; raise UserError if it is another kind or corrupt."""
        path = os.fspath(path)

        def read(path):
            with np.load(path, allow_pickle=False) as stored:
                kind = str(stored["kind"])
                if kind != cls.kind:
                    raise UserError(f"{path} holds a {kind!r} model; expected {cls.kind!r}.")
                model = cls(**json.loads(str(stored["config"])))
                model.mean = stored["mean"]
                model.projection = stored["projection"]
                model.kernel = stored["kernel"]
                model.fingerprint = str(stored["fingerprint"])
            return model

        return read_back(path, read, f"the fitted {cls.kind} model", "delete it; the next evaluation fits the "
                         "model again")

    def _config(self) -> dict:
        return {"pca_dim": int(self.pca_dim), "ridge": float(self.ridge)}

    def _check_fitted(self) -> None:
        if self.kernel is None:
            raise UserError(f"This {self.kind} model is not fitted; call fit() or load() first.")


@dataclasses.dataclass
class XQDA(QuadraticMetric):
    """Cross-view quadratic discriminant analysis; ``max_dim`` caps the subspace (None: no cap)."""

    kind: ClassVar[str] = "xqda"

    max_dim: int | None = None

    def _fit_kernel(self, similar, dissimilar):
        if self.max_dim is not None:
            _check_positive_int(self.max_dim, "max_dim")
        # Generalised eigenproblem Sigma_E w = l Sigma_I w, largest eigenvalues first.
        eigenvalues, eigenvectors = scipy.linalg.eigh(dissimilar, similar)
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
        keep = max(1, int(np.count_nonzero(eigenvalues > 1.0)))
        if self.max_dim is not None:
            keep = min(keep, self.max_dim)
        subspace = eigenvectors[:, :keep]
        kernel = np.linalg.inv(subspace.T @ similar @ subspace) - np.linalg.inv(
            subspace.T @ dissimilar @ subspace
        )
        return subspace, kernel

    def _config(self) -> dict:
        return {**super()._config(), "max_dim": self.max_dim}


@dataclasses.dataclass
class KISSME(QuadraticMetric):
    """Keep-it-simple-and-straightforward metric, clipped to positive semi-definite."""

    kind: ClassVar[str] = "kissme"

    def _fit_kernel(self, similar, dissimilar):
        kernel = np.linalg.inv(similar) - np.linalg.inv(dissimilar)
        kernel = (kernel + kernel.T) / 2.0
        return np.eye(len(kernel)), clip_to_psd(kernel)


def clip_to_psd(matrix: np.ndarray) -> np.ndarray:
    """Nearest positive semi-definite matrix of a symmetric one (negative eigenvalues -> 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.clip(eigenvalues, 0.0, None)) @ eigenvectors.T


# === Pair statistics ===


def pair_covariances(features: np.ndarray, pids: np.ndarray, views: np.ndarray):
    """Covariances of ``x_i - x_j`` over similar and dissimilar cross-view ordered pairs.

    Similar: same pid, different view. Dissimilar: different pid, different
    view. Pass ``views = arange(n)`` to count every pair of distinct images.
    """
    person = _group_statistics(features, pids)
    view = _group_statistics(features, views)
    person_view = _group_statistics(features, _combined_labels(pids, views))
    everything = _group_statistics(features, np.zeros(len(features), dtype=np.int64))

    similar_scatter = person[0] - person_view[0]
    similar_count = person[1] - person_view[1]
    dissimilar_scatter = everything[0] - view[0] - person[0] + person_view[0]
    dissimilar_count = everything[1] - view[1] - person[1] + person_view[1]
    if similar_count == 0:
        raise UserError(
            "No training identity has two images (from different cameras, when camera ids "
            "are given), so there are no similar pairs to learn from; the training set "
            "needs identities seen more than once."
        )
    if dissimilar_count == 0:
        raise UserError("The training set has a single identity; metric learning needs at least two.")
    return similar_scatter / similar_count, dissimilar_scatter / dissimilar_count


def _group_statistics(features: np.ndarray, labels: np.ndarray):
    """(scatter, count) over ordered pairs (i, j) within the groups of ``labels``.

    scatter = sum (x_i - x_j)(x_i - x_j)^T = 2 sum_i n_g(i) x_i x_i^T - 2 sum_g s_g s_g^T,
    count = sum_g n_g^2 (self-pairs add zero scatter and cancel in the differences).
    """
    _, group, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    membership = sp.csr_matrix(
        (np.ones(len(group)), (group, np.arange(len(group)))), shape=(len(sizes), len(group))
    )
    group_sums = membership @ features
    weighted = features * sizes[group][:, None]
    scatter = 2.0 * (features.T @ weighted) - 2.0 * (group_sums.T @ group_sums)
    return scatter, int(np.sum(sizes.astype(np.int64) ** 2))


def _combined_labels(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One integer label per distinct (first, second) pair."""
    _, combined = np.unique(np.stack([first, second], axis=1), axis=0, return_inverse=True)
    return combined.ravel()


def _with_ridge(covariance: np.ndarray, ridge: float) -> np.ndarray:
    scale = np.trace(covariance) / len(covariance)
    return covariance + ridge * max(scale, np.finfo(np.float64).tiny) * np.eye(len(covariance))


def _fit_pca(features: np.ndarray, requested_dim: int):
    """Mean and top principal directions (d, k), k = min(requested, n - 1, d)."""
    num_samples, feature_dim = features.shape
    dim = min(requested_dim, num_samples - 1, feature_dim)
    if dim < 1:
        raise UserError(f"Metric learning needs at least 2 training images; received {num_samples}.")
    mean = features.mean(axis=0)
    centred = features - mean
    covariance = centred.T @ centred / (num_samples - 1)
    _, components = scipy.linalg.eigh(
        covariance, subset_by_index=(feature_dim - dim, feature_dim - 1)
    )
    return mean, components[:, ::-1]


def _labels(values, name: str, expected_length: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or len(array) != expected_length:
        raise UserError(
            f"{name} must be a 1-D array with one entry per training image "
            f"({expected_length}); received shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{name} must hold integer ids; received dtype {array.dtype}.")
    return array.astype(np.int64)
