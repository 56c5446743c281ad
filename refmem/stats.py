"""Streaming sample statistics: centred moments merged exactly (theory §19.2).

A Monte-Carlo run produces its realizations in blocks. Accumulating raw power sums
``Σx, Σx², …`` and forming the variance at the end as ``Σx²/n − (Σx/n)²`` loses every digit
when ``|mean| ≫ sd`` (for ``|mean|/sd = 10⁴`` the two terms agree in their first eight digits,
the variance keeps about eight, its fourth-moment standard error none). :class:`CentralMoments`
instead keeps, per block, the mean and the **centred** sums

    M_k = Σ_i (x_i − x̄)^k,   k = 2 … order,

computed in two passes about the block mean (with one correction pass of the mean), and merges
two blocks ``A`` and ``B`` exactly (Chan, Golub & LeVeque's pairwise update, generalised to any
order by the binomial theorem, as in Pébay's formulas): with ``n = n_A + n_B``,
``δ = x̄_B − x̄_A``, the deviations of ``A`` from the merged mean are shifted by
``a = −δ n_B / n``, those of ``B`` by ``b = δ n_A / n``, hence

    M_p = Σ_{k=0}^{p} C(p, k) (M^A_k a^{p−k} + M^B_k b^{p−k}),   M_0 = n_side, M_1 = 0.

Every term is of the size of the spread, never of the mean, so nothing cancels. With
``cov=True`` the same is done for the mixed sums of every pair of the last axis,
``S_pq[i, j] = Σ (x_i − x̄_i)^p (x_j − x̄_j)^q`` for ``(p, q) = (1, 1), (2, 1), (2, 2)``.

Merging is deterministic: the same blocks merged in the same order give bit-identical
statistics, which is what makes Monte-Carlo results independent of the chunk size and of an
interruption (the state is saved and reloaded bit for bit, :meth:`CentralMoments.state`).

Standard errors use the sample's own moments (no Gaussian assumption): a statistic ``T`` of
the central moments has the influence function ``IF(x) = Σ_k c_k (e^k − μ_k)`` with ``e =
x − μ`` and ``SE(T)² = Var IF / n = Σ_{k,l} c_k c_l (μ_{k+l} − μ_k μ_l) / n``. Hence the SE of
the variance needs ``order ≥ 4``, of the skewness ``order ≥ 6`` and of the kurtosis
``order ≥ 8``; asking for an SE the order does not support raises ``ValueError``.
"""

from __future__ import annotations

from math import comb

import numpy as np

__all__ = ["CentralMoments"]


class CentralMoments:
    """Mean and centred sums of a sample along axis 0, accumulated block by block.

    Parameters
    ----------
    shape : tuple
        Shape of one observation (``()`` for scalars).
    order : int
        Highest central moment kept (≥ 2): 2 gives means with SEs and variances; 4 adds the
        SE of the variance and of the mean square; 6 the SE of the skewness; 8 that of the
        kurtosis.
    cov : bool
        Also keep the mixed sums of every pair ``(i, j)`` of the last axis (covariances and
        their standard errors); needs ``len(shape) ≥ 1``.

    Examples
    --------
    >>> acc = CentralMoments((3,), order=4)
    >>> for block in np.split(np.random.default_rng(0).normal(5e6, 1e-2, (1024, 3)), 4):
    ...     acc.add(block)
    >>> bool(np.allclose(acc.var(), 1e-4, rtol=0.2))
    True
    """

    def __init__(self, shape=(), *, order: int = 4, cov: bool = False):
        order = int(order)
        if order < 2:
            raise ValueError("order must be >= 2")
        self.shape = tuple(int(s) for s in shape)
        if cov and not self.shape:
            raise ValueError("cov=True needs observations with at least one axis")
        self.order = order
        self.cov = bool(cov)
        self.n = 0
        self.mean = np.zeros(self.shape)
        self.M = np.zeros((order - 1,) + self.shape)          # M[k-2] = M_k
        if self.cov:
            full = self.shape + self.shape[-1:]
            self.S11 = np.zeros(full)
            self.S21 = np.zeros(full)                           # S21[i, j] = Σ e_i² e_j
            self.S22 = np.zeros(full)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_sample(cls, x, *, order: int = 4, cov: bool = False) -> "CentralMoments":
        """Statistics of one block ``x`` of shape ``(m, *shape)`` (two-pass, about its mean)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError("a block needs at least one observation along axis 0")
        out = cls(x.shape[1:], order=order, cov=cov)
        m = x.shape[0]
        mean = x.sum(axis=0) / m
        mean = mean + (x - mean).sum(axis=0) / m              # correction pass
        e = x - mean
        out.n = m
        out.mean = mean
        ek = e * e
        out.M[0] = ek.sum(axis=0)
        for k in range(3, order + 1):
            ek = ek * e
            out.M[k - 2] = ek.sum(axis=0)
        if out.cov:
            e2 = e * e
            out.S11 = np.einsum("m...i,m...j->...ij", e, e)
            out.S21 = np.einsum("m...i,m...j->...ij", e2, e)
            out.S22 = np.einsum("m...i,m...j->...ij", e2, e2)
        return out

    def add(self, x) -> None:
        """Add one block ``x`` of shape ``(m, *shape)``: :meth:`from_sample` then :meth:`merge`."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != self.shape:
            raise ValueError(f"block has observations of shape {x.shape[1:]}, expected "
                             f"{self.shape}")
        self.merge(CentralMoments.from_sample(x, order=self.order, cov=self.cov))

    def _Mk(self, k):
        """Central sum ``M_k`` (``M_0 = n``, ``M_1 = 0``)."""
        if k == 0:
            return self.n
        if k == 1:
            return 0.0
        return self.M[k - 2]

    def _S(self, p, q):
        """Mixed central sum ``S_pq`` for ``p, q ≤ 2`` (``S_12`` is the transpose of ``S_21``)."""
        if p < q:
            t = self._S(q, p)
            return t if np.ndim(t) == 0 else np.swapaxes(t, -1, -2)
        if q == 0:
            if p == 0:
                return self.n
            return 0.0 if p == 1 else self.M[p - 2][..., :, None]
        if (p, q) == (1, 1):
            return self.S11
        return self.S21 if (p, q) == (2, 1) else self.S22

    def merge(self, other: "CentralMoments") -> None:
        """Merge ``other`` (the observations that come after this one's) in place, exactly."""
        if (other.shape, other.order, other.cov) != (self.shape, self.order, self.cov):
            raise ValueError("cannot merge statistics of different shape, order or cov")
        if other.n == 0:
            return
        if self.n == 0:
            self.n = other.n
            self.mean = other.mean.copy()
            self.M = other.M.copy()
            if self.cov:
                self.S11, self.S21, self.S22 = other.S11.copy(), other.S21.copy(), other.S22.copy()
            return
        na, nb = self.n, other.n
        n = na + nb
        delta = other.mean - self.mean
        a = -delta * (nb / n)                                  # shift of A's deviations
        b = delta * (na / n)                                   # shift of B's deviations
        newM = np.empty_like(self.M)
        for p in range(2, self.order + 1):
            tot = 0.0
            for k in range(0, p + 1):
                c = comb(p, k)
                tot = tot + c * (self._Mk(k) * a ** (p - k) + other._Mk(k) * b ** (p - k))
            newM[p - 2] = tot
        if self.cov:
            new = {}
            ai, aj = a[..., :, None], a[..., None, :]
            bi, bj = b[..., :, None], b[..., None, :]
            for p, q in ((1, 1), (2, 1), (2, 2)):
                tot = 0.0
                for r in range(p + 1):
                    for s in range(q + 1):
                        c = comb(p, r) * comb(q, s)
                        tot = tot + c * (self._S(r, s) * ai ** (p - r) * aj ** (q - s)
                                         + other._S(r, s) * bi ** (p - r) * bj ** (q - s))
                new[p, q] = tot
            self.S11, self.S21, self.S22 = new[1, 1], new[2, 1], new[2, 2]
        self.mean = self.mean + delta * (nb / n)
        self.M = newM
        self.n = n

    # ------------------------------------------------------------------ persistence
    def state(self, prefix: str = "") -> dict:
        """The exact state as a dict of arrays (for an ``.npz`` checkpoint)."""
        d = {prefix + "n": np.int64(self.n), prefix + "mean": self.mean, prefix + "M": self.M}
        if self.cov:
            d.update({prefix + "S11": self.S11, prefix + "S21": self.S21,
                      prefix + "S22": self.S22})
        return d

    def load(self, prefix: str, z) -> None:
        """Restore a state saved by :meth:`state` (shapes checked; ``ValueError`` if they differ)."""
        names = ["mean", "M"] + (["S11", "S21", "S22"] if self.cov else [])
        arrays = {}
        for k in names:
            a = np.asarray(z[prefix + k])
            if a.shape != np.shape(getattr(self, k)) or a.dtype != np.float64:
                raise ValueError(f"saved statistics {prefix + k} do not match (shape {a.shape})")
            arrays[k] = np.array(a)
        self.n = int(z[prefix + "n"])
        for k, a in arrays.items():
            setattr(self, k, a)

    # ------------------------------------------------------------------ statistics
    def _need(self, order, what):
        if self.order < order:
            raise ValueError(f"{what} needs order >= {order} (this accumulator has "
                             f"order {self.order})")
        if self.n < 2:
            raise ValueError(f"{what} needs at least 2 observations")

    def central(self, k: int) -> np.ndarray:
        """Central moment ``μ_k = M_k / n`` (plug-in, divisor n)."""
        if k > self.order:
            raise ValueError(f"central moment {k} needs order >= {k}")
        return np.broadcast_to(np.asarray(self._Mk(k) / self.n, dtype=np.float64), self.shape)

    def _if_se(self, coeffs):
        """``sqrt(Σ_{k,l} c_k c_l (μ_{k+l} − μ_k μ_l) / n)`` for ``IF = Σ c_k (e^k − μ_k)``."""
        def mu(k):
            return self._Mk(k) / self.n
        var = 0.0
        for k, ck in coeffs.items():
            for l, cl in coeffs.items():
                var = var + ck * cl * (mu(k + l) - mu(k) * mu(l))
        return np.sqrt(np.maximum(var, 0.0) / self.n)

    def var(self, ddof: int = 1) -> np.ndarray:
        """Sample variance ``M_2 / (n − ddof)``."""
        self._need(2, "the variance")
        return self.M[0] / (self.n - ddof)

    def mean_se(self) -> np.ndarray:
        """Standard error of the mean, ``sqrt(s² / n)`` with ``s²`` of ddof 1."""
        return np.sqrt(self.var() / self.n)

    def var_se(self) -> np.ndarray:
        """Standard error of the variance, ``sqrt((μ_4 − μ_2²) / n)``."""
        self._need(4, "the standard error of the variance")
        return self._if_se({2: 1.0})

    def mean_square(self) -> np.ndarray:
        """``mean(x²) = x̄² + μ_2`` (e.g. an MSE when ``x`` is an error)."""
        self._need(2, "the mean square")
        return self.mean * self.mean + self.M[0] / self.n

    def mean_square_se(self) -> np.ndarray:
        """Standard error of :meth:`mean_square`: the sample variance (ddof 1) of ``x²`` over n,
        ``Var x² = μ_4 − μ_2² + 4 x̄ μ_3 + 4 x̄² μ_2``."""
        self._need(4, "the standard error of the mean square")
        m = self.mean
        mu2, mu3, mu4 = (self.M[k - 2] / self.n for k in (2, 3, 4))
        v = mu4 - mu2 * mu2 + 4.0 * m * mu3 + 4.0 * m * m * mu2
        return np.sqrt(np.maximum(v, 0.0) / (self.n - 1))

    def skewness(self) -> np.ndarray:
        """Plug-in skewness ``μ_3 / μ_2^{3/2}`` (NaN where the variance is 0)."""
        self._need(3, "the skewness")
        mu2, mu3 = self.M[0] / self.n, self.M[1] / self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            return mu3 / mu2 ** 1.5

    def kurtosis(self) -> np.ndarray:
        """Plug-in excess kurtosis ``μ_4 / μ_2² − 3`` (NaN where the variance is 0)."""
        self._need(4, "the kurtosis")
        mu2, mu4 = self.M[0] / self.n, self.M[2] / self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            return mu4 / (mu2 * mu2) - 3.0

    def skewness_se(self) -> np.ndarray:
        """Standard error of :meth:`skewness` (delta method, needs ``order ≥ 6``; √(6/n) for a
        Gaussian sample)."""
        self._need(6, "the standard error of the skewness")
        mu2, mu3 = self.M[0] / self.n, self.M[1] / self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._if_se({3: mu2 ** -1.5, 1: -3.0 * mu2 ** -0.5,
                                2: -1.5 * mu3 * mu2 ** -2.5})

    def kurtosis_se(self) -> np.ndarray:
        """Standard error of :meth:`kurtosis` (delta method, needs ``order ≥ 8``; √(24/n) for a
        Gaussian sample)."""
        self._need(8, "the standard error of the kurtosis")
        mu2, mu3, mu4 = (self.M[k - 2] / self.n for k in (2, 3, 4))
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._if_se({4: mu2 ** -2, 1: -4.0 * mu3 * mu2 ** -2,
                                2: -2.0 * mu4 * mu2 ** -3})

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Sample covariance ``S_11 / (n − ddof)`` of every pair of the last axis."""
        if not self.cov:
            raise ValueError("covariances need cov=True")
        self._need(2, "the covariance")
        return self.S11 / (self.n - ddof)

    def covariance_se(self) -> np.ndarray:
        """Standard error of :meth:`covariance`, ``sqrt((E[e_i² e_j²] − c_ij²) / n)`` with
        plug-in moments (on the diagonal this is :meth:`var_se`)."""
        if not self.cov:
            raise ValueError("covariances need cov=True")
        self._need(2, "the standard error of the covariance")
        c = self.S11 / self.n
        return np.sqrt(np.maximum(self.S22 / self.n - c * c, 0.0) / self.n)
