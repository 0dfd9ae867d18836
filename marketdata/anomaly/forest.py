"""An Isolation Forest scored with bit vectors, exact to scikit-learn's.

``IsolationForest.score_samples`` walks each tree in turn from Python: about
11 ms for 400 rows and 100 trees, far too slow to score every chain snapshot.
``CompiledForest`` evaluates the same trees the QuickScorer way (Lucchese et
al., SIGIR 2015): leaves are numbered left to right, one bit each in a uint64
per tree; every split whose test sends a row right clears the bits of its left
subtree; the leaf reached is the lowest bit left standing. Splits are sorted by
threshold per feature, so the splits a value sends right are a prefix of that
order, and the AND of every prefix is precomputed: scoring a snapshot is one
``searchsorted`` and one table row gather per feature, five ANDs, and a leaf
look-up.

Trees need at most 64 leaves (``max_samples`` ≤ 64, which also bounds the depth
to 6). The arithmetic follows ``sklearn.ensemble._iforest``: a row's path
length in a tree is the leaf's depth plus the average path length of the
training samples left in it, and the score is ``2 ** (-mean path / c(ψ))``:
about 0.5 for ordinary rows and towards 1 for rows isolated early. scikit-learn's
trees compare float32 inputs with float64 thresholds; here each threshold is
rounded down to float32 once, when the forest is compiled, which sends every
float32 input the same way, so rows are searched as float32 and scores agree to
floating-point rounding (the order in which the trees' path lengths are added).

Scoring a 400-row snapshot touches a dozen arrays of rows × trees words. They
are allocated once per thread and reused: a fresh 150 KB array per step costs
more than the step itself once the allocator hands memory back to the system
between snapshots (page faults on every call).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

MAX_LEAVES = 64
_EULER_GAMMA = 0.5772156649015329


def average_path_length(n: np.ndarray | float) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a BST of n keys."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out = np.where(n == 2, 1.0, out)
    big = n > 2
    safe = np.where(big, n, 3.0)
    return np.where(big, 2.0 * (np.log(safe - 1.0) + _EULER_GAMMA) - 2.0 * (safe - 1.0) / safe, out)


def float32_floor(values: np.ndarray) -> np.ndarray:
    """Each float64 rounded down to the nearest float32, with -0.0 made +0.0.

    For a float32 ``x`` and a float64 threshold ``t``, ``x > t`` exactly when
    ``x > float32_floor(t)``: if ``t`` is a float32 they are equal, and if not,
    no float32 lies between ``t`` and the float32 just below it.
    """
    down = np.asarray(values, dtype=np.float64).astype(np.float32)
    above = down.astype(np.float64) > values
    down[above] = np.nextafter(down[above], np.float32(-np.inf))
    return down + np.float32(0.0)


class _Workspace(threading.local):
    """One thread's scratch arrays, grown to the largest snapshot it has scored."""

    rows = 0
    bits: np.ndarray
    work: np.ndarray
    leaf_base: np.ndarray
    ranks: np.ndarray


@dataclass
class CompiledForest:
    n_features: int
    n_trees: int
    max_samples: int
    thresholds: list[np.ndarray]  # per feature: its split thresholds as float32 (``float32_floor``), ascending
    offsets: np.ndarray  # per feature: its first row in ``prefix_and``
    prefix_and: np.ndarray  # (splits + features, trees): per feature, the AND of its first k splits' masks
    leaf_values: np.ndarray  # (trees × leaf bits,): path length of leaf i of tree t at t * bits + i
    _scale: float = field(init=False, repr=False, compare=False)
    _tree_base: np.ndarray = field(init=False, repr=False, compare=False)
    _space: _Workspace = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = float(average_path_length(self.max_samples))
        # score = 2 ** (-(sum of path lengths) / (trees × c(ψ))); c is 0 for ψ = 1.
        self._scale = -1.0 / (self.n_trees * c) if c else 0.0
        # A leaf's bit 2**i, converted to float64, has the exponent field 1023 + i:
        # tree t's leaf i is ``leaf_values[t * bits + i]`` at exponent + t * bits - 1023.
        self._tree_base = np.arange(self.n_trees, dtype=np.int64) * self.leaf_bits - 1023
        self._space = _Workspace()

    @classmethod
    def from_sklearn(cls, forest) -> CompiledForest:
        n_features = int(forest.n_features_in_)
        trees = forest.estimators_
        if int(forest._max_features) != n_features:
            raise ValueError("CompiledForest needs max_features=1.0 (every tree sees every feature)")
        most_leaves = max(int(e.tree_.n_leaves) for e in trees)
        if most_leaves > MAX_LEAVES:
            raise ValueError(f"a tree has {most_leaves} leaves, more than {MAX_LEAVES}; use max_samples <= 64")
        word = np.uint32 if most_leaves <= 32 else np.uint64
        bits = 32 if word is np.uint32 else 64
        full = (1 << bits) - 1
        splits: list[list[tuple[float, int, int]]] = [[] for _ in range(n_features)]  # (threshold, tree, mask)
        leaf_values = np.zeros((len(trees), bits))
        for t, estimator in enumerate(trees):
            tree = estimator.tree_
            path = tree.compute_node_depths() + average_path_length(tree.n_node_samples) - 1.0
            left, right = tree.children_left, tree.children_right
            # Number the leaves left to right: a pre-order walk, left child first.
            order: list[int] = []
            stack = [0]
            while stack:
                node = stack.pop()
                order.append(node)
                if left[node] != -1:
                    stack.extend((int(right[node]), int(left[node])))
            first_leaf = np.zeros(tree.node_count, dtype=np.int64)
            leaf_count = np.zeros(tree.node_count, dtype=np.int64)
            next_leaf = 0
            for node in order:
                first_leaf[node] = next_leaf
                if left[node] == -1:
                    leaf_values[t, next_leaf] = path[node]
                    leaf_count[node] = 1
                    next_leaf += 1
            for node in reversed(order):
                if left[node] != -1:
                    leaf_count[node] = leaf_count[left[node]] + leaf_count[right[node]]
            for node in order:
                if left[node] == -1:
                    continue
                lo, n = int(first_leaf[left[node]]), int(leaf_count[left[node]])
                splits[int(tree.feature[node])].append((float(tree.threshold[node]), t, full ^ (((1 << n) - 1) << lo)))
        thresholds, tables, offsets, start = [], [], [], 0
        for per_feature in splits:
            per_feature.sort(key=lambda s: s[0])
            table = np.full((len(per_feature) + 1, len(trees)), full, dtype=word)
            row = table[0].copy()
            for k, (_, t, mask) in enumerate(per_feature, start=1):
                row[t] &= word(mask)
                table[k] = row
            # Rounding down keeps the order (it is monotonic), so the tables still match.
            thresholds.append(float32_floor(np.array([s[0] for s in per_feature], dtype=np.float64)))
            tables.append(table)
            offsets.append(start)
            start += len(table)
        return cls(
            n_features,
            len(trees),
            int(forest.max_samples_),
            thresholds,
            np.array(offsets, dtype=np.intp),
            np.concatenate(tables),
            leaf_values.ravel(),
        )

    @property
    def leaf_bits(self) -> int:
        return self.prefix_and.dtype.itemsize * 8

    def _workspace(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        space = self._space
        if space.rows < n:
            rows = max(n, 2 * space.rows)
            shape = (rows, self.n_trees)
            space.bits = np.empty(shape, dtype=self.prefix_and.dtype)
            space.work = np.empty(shape, dtype=self.prefix_and.dtype)
            space.leaf_base = np.ascontiguousarray(np.broadcast_to(self._tree_base, shape))
            space.ranks = np.empty(self.n_features * rows, dtype=np.intp)
            space.rows = rows
        ranks = space.ranks[: self.n_features * n].reshape(self.n_features, n)
        return space.bits[:n], space.work[:n], space.leaf_base[:n], ranks

    def path_length_sums(self, X: np.ndarray) -> np.ndarray:
        """Each row's path lengths added over the trees."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got an array of shape {X.shape}")
        n = len(X)
        bits, work, leaf_base, ranks = self._workspace(n)
        columns = np.ascontiguousarray(X.T, dtype=np.float32)
        table = self.prefix_and
        for f in range(self.n_features):
            # A split sends a row right when x > threshold: exactly the splits with
            # threshold < x, a prefix of this feature's sorted splits.
            np.add(self.thresholds[f].searchsorted(columns[f], side="left"), self.offsets[f], out=ranks[f])
            # Row indices are in range by construction: "clip" skips numpy's buffered bounds check.
            table.take(ranks[f], axis=0, out=bits if f == 0 else work, mode="clip")
            if f:
                np.bitwise_and(bits, work, out=bits)
        # The exit leaf is the lowest bit still standing: isolate it (x & -x), read
        # its position from the exponent of its exact float64 value, and look the
        # leaf up. The scratch words are reused as float64 and int64 in place.
        np.negative(bits, out=work)
        np.bitwise_and(bits, work, out=work)
        exponent = bits.view(np.int64) if bits.itemsize == 8 else np.empty(bits.shape, dtype=np.int64)
        np.copyto(exponent.view(np.float64), work, casting="unsafe")
        np.right_shift(exponent, 52, out=exponent)
        np.add(exponent, leaf_base, out=exponent)
        # Not ``@ ones``: a product this size wakes OpenBLAS's threads, which then spin on the other core.
        return self.leaf_values.take(exponent).sum(axis=1)

    def path_lengths(self, X: np.ndarray) -> np.ndarray:
        """Mean path length of each row over the trees."""
        return self.path_length_sums(X) / self.n_trees

    def score(self, X: np.ndarray) -> np.ndarray:
        """The Isolation Forest anomaly score in (0, 1]: higher is more unusual."""
        if not self._scale:
            return np.ones(len(X))
        return np.power(2.0, self.path_length_sums(X) * self._scale)
