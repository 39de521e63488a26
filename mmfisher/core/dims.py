"""Dimension arithmetic shared by the tracer, the taps and the cost model."""

__all__ = ['normalize_dim']


def normalize_dim(dim: int, ndim: int) -> int:
    """``dim`` as a non-negative index into a tensor of ``ndim`` dims (``-1`` -> ``ndim - 1``).

    Raises IndexError when ``dim`` is outside ``[-ndim, ndim)``."""
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < max(ndim, 1):
        raise IndexError(f'dimension {dim} is out of range for a tensor of {ndim} dims')
    return d
