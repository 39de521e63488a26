"""A growable union-find over integer elements (one element per channel of a traced tensor)."""
from typing import Dict, List

import numpy as np


class UnionFind:
    """Disjoint sets over ``0..n-1`` that grow with :meth:`make`.

    Elements are channel identities created by the tracer. ``flag`` attaches a reason that makes the element's
    whole set unprunable; reasons survive unions.
    """

    def __init__(self) -> None:
        self._parent: List[int] = []
        self.reasons: Dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._parent)

    def make(self, n: int) -> np.ndarray:
        """Create ``n`` new singleton elements and return their ids (int64 array of shape ``(n,)``)."""
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self._parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:  # the smaller id stays root: deterministic
                self._parent[rb] = ra
            else:
                self._parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union ``a[i]`` with ``b[i]`` for every position where both are valid (>= 0)."""
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        ok = (a >= 0) & (b >= 0) & (a != b)
        if not ok.any():
            return
        pairs = np.unique(np.stack([a[ok], b[ok]], axis=1), axis=0)
        for x, y in pairs.tolist():
            self.union(x, y)

    def union_all(self, elems: np.ndarray) -> None:
        """Put every valid element of ``elems`` in one set."""
        valid = np.unique(np.asarray(elems, dtype=np.int64).ravel())
        valid = valid[valid >= 0]
        for x in valid[1:].tolist():
            self.union(int(valid[0]), x)

    def flag(self, elems: np.ndarray, reason: str) -> None:
        """Mark the sets of ``elems`` unprunable because of ``reason`` (first reason per element wins)."""
        for x in np.unique(np.asarray(elems, dtype=np.int64).ravel()).tolist():
            if x >= 0 and x not in self.reasons:
                self.reasons[x] = reason

    def roots(self) -> np.ndarray:
        """Root of every element, as an int64 array of shape ``(len(self),)``."""
        return np.fromiter((self.find(i) for i in range(len(self._parent))), dtype=np.int64,
                           count=len(self._parent))
