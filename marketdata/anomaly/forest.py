"""An Isolation Forest scored with bit vectors, exact to scikit-learn's.

``IsolationForest.score_samples`` walks each tree in turn from Python: about
11 ms for 400 rows and 100 trees, far too slow to score every chain snapshot.
``CompiledForest`` evaluates the same trees the QuickScorer way (Lucchese et
al., SIGIR 2015): leaves are numbered left to right, one bit each in a uint64
per tree; every split whose test sends a row right clears the bits of its left
subtree; the leaf reached is the lowest bit left standing. Splits are sorted by
threshold per feature, so the splits a value sends right are a prefix of that
order, and the AND of every prefix is precomputed: scoring a snapshot is one
``searchsorted`` and one table row gather per feature, five ANDs and a popcount.

Trees need at most 64 leaves (``max_samples`` ≤ 64, which also bounds the depth
to 6). The arithmetic follows ``sklearn.ensemble._iforest``: a row's path
length in a tree is the leaf's depth plus the average path length of the
training samples left in it, and the score is ``2 ** (-mean path / c(ψ))``:
about 0.5 for ordinary rows and towards 1 for rows isolated early. Inputs are
rounded to float32 first, as scikit-learn's trees do, so scores agree to
floating-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class CompiledForest:
    n_features: int
    n_trees: int
    max_samples: int
    thresholds: list[np.ndarray]  # per feature: its split thresholds, ascending
    offsets: np.ndarray  # per feature: its first row in ``prefix_and``
    prefix_and: np.ndarray  # (splits + features, trees): per feature, the AND of its first k splits' masks
    leaf_values: np.ndarray  # (trees × leaf bits,): path length of leaf i of tree t at t * bits + i

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
            thresholds.append(np.array([s[0] for s in per_feature], dtype=np.float64))
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

    def path_lengths(self, X: np.ndarray) -> np.ndarray:
        """Mean path length of each row over the trees."""
        # scikit-learn's trees compare float32 inputs with float64 thresholds.
        X = np.asarray(X, dtype=np.float32).astype(np.float64)
        table = self.prefix_and
        bits = None
        for f in range(self.n_features):
            # A split sends a row right when x > threshold: exactly the splits with
            # threshold < x, a prefix of this feature's sorted splits.
            rows = table.take(np.searchsorted(self.thresholds[f], X[:, f], side="left") + self.offsets[f], axis=0)
            bits = rows if bits is None else np.bitwise_and(bits, rows, out=bits)
        # The lowest leaf still standing: count the trailing zeros.
        leaf = np.bitwise_count(~bits & (bits - bits.dtype.type(1))).astype(np.intp)
        leaf += np.arange(self.n_trees, dtype=np.intp) * self.leaf_bits
        return self.leaf_values.take(leaf).mean(axis=1)

    def score(self, X: np.ndarray) -> np.ndarray:
        """The Isolation Forest anomaly score in (0, 1]: higher is more unusual."""
        c = float(average_path_length(self.max_samples))
        if c == 0:
            return np.ones(len(X))
        return np.power(2.0, -self.path_lengths(X) / c)
