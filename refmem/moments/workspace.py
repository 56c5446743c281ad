"""Reusable float64 buffers for the large matrices of one analytic pass (theory §15).

The covariance of a CNN's early layers is a few GB. Allocating a fresh array for each of
them costs more than the arithmetic on some systems: the operating system maps and zeroes
every page on first touch (measured on the 2-core benchmark machine: 2.1 GB of fresh pages
take 4.7 s to touch, 0.45 GB/s, against 35 GB/s for a copy into memory already touched).
A :class:`Workspace` keeps the large buffers of a pass and hands them out again once
nothing refers to them, so each page is touched once per pass, not once per layer, and not
at all for the second input of a batch.

Every layer function that allocates a large matrix takes ``work=`` (a :class:`Workspace`
or None for plain ``numpy.empty``). The numbers do not depend on it: buffers are only ever
handed out uninitialised (``empty``) or zero-filled (``zeros``), exactly like numpy's.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["Workspace", "empty", "zeros"]

MIN_BYTES = 32 * 2**20
"""Arrays smaller than this come from ``numpy.empty`` (the C allocator recycles them)."""


class Workspace:
    """A pool of large float64 buffers, reused once no array refers to them.

    A buffer is free when the pool holds the only reference to it: every numpy view keeps
    its owner alive (``view.base``), so a buffer whose views have all been dropped is free
    again without any explicit release. :meth:`empty` returns a view of the smallest free
    buffer that is large enough, or of a new one.

    Parameters
    ----------
    min_bytes : int
        Requests below this size are passed to ``numpy.empty``.
    """

    def __init__(self, min_bytes=MIN_BYTES):
        self.min_bytes = int(min_bytes)
        self._bufs = []
        self.allocated = 0          # bytes ever allocated by the pool
        self.reused = 0             # bytes handed out from buffers already touched

    def empty(self, shape):
        """An uninitialised C-contiguous float64 array of ``shape`` (a view of a buffer)."""
        shape = tuple(int(n) for n in np.atleast_1d(shape)) if np.ndim(shape) else (int(shape),)
        n = int(np.prod(shape))
        if 8 * n < self.min_bytes:
            return np.empty(shape)
        best = -1
        for i in range(len(self._bufs)):
            # free: the only references are the pool's list and getrefcount's argument
            if (self._bufs[i].size >= n and sys.getrefcount(self._bufs[i]) <= 2
                    and (best < 0 or self._bufs[i].size < self._bufs[best].size)):
                best = i
        if best < 0:
            self._bufs.append(np.empty(n))
            self.allocated += 8 * n
        else:
            self.reused += 8 * n
        return self._bufs[best][:n].reshape(shape)

    def zeros(self, shape):
        """Like :meth:`empty`, filled with zeros."""
        out = self.empty(shape)
        out[...] = 0.0
        return out

    @property
    def nbytes(self):
        """Bytes held by the pool."""
        return sum(b.nbytes for b in self._bufs)

    def clear(self):
        """Drop every buffer (arrays handed out stay valid: they keep their buffer alive)."""
        self._bufs = []


def empty(work, shape):
    """``work.empty(shape)``, or ``numpy.empty(shape)`` when ``work`` is None."""
    return np.empty(shape) if work is None else work.empty(shape)


def zeros(work, shape):
    """``work.zeros(shape)``, or ``numpy.zeros(shape)`` when ``work`` is None."""
    return np.zeros(shape) if work is None else work.zeros(shape)
