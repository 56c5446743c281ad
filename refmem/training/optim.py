"""Optimizers (SGD with momentum, Adam) and the step learning-rate schedule.

Each optimizer updates a dict of named parameter arrays **in place** from a dict of
gradients with the same names, and keeps its per-parameter state in plain dicts of arrays,
so :meth:`state_dict` / :meth:`load_state_dict` give an exact checkpoint.

Weight decay is **coupled** L2 regularisation: ``g <- g + wd * w`` before the update (PyTorch
``weight_decay``), applied to every parameter (weights, biases, batchnorm γ and β).

References
----------
.. [1] D. E. Rumelhart, G. E. Hinton and R. J. Williams, "Learning representations by
   back-propagating errors", Nature 323 (1986) — gradient descent with momentum.
.. [2] I. Sutskever, J. Martens, G. Dahl and G. Hinton, "On the importance of
   initialization and momentum in deep learning", ICML 2013 — the velocity form used here
   (PyTorch ``SGD``: ``v <- μ v + g``, ``w <- w - lr v``, ``v`` starts at 0).
.. [3] D. P. Kingma and J. Ba, "Adam: A method for stochastic optimization", ICLR 2015,
   arXiv:1412.6980, Algorithm 1 (defaults β1 = 0.9, β2 = 0.999, ε = 1e-8).
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import ConfigError, DataError


def _check_positive(name, v, allow_zero=False):
    v = float(v)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


class Optimizer(abc.ABC):
    """Base: ``lr`` (current learning rate), ``t`` (steps taken) and per-parameter ``state``."""

    name = "optimizer"
    _state_keys = ()

    def __init__(self, lr, weight_decay=0.0):
        self.lr = _check_positive("lr", lr)
        self.base_lr = self.lr
        self.weight_decay = _check_positive("weight_decay", weight_decay, allow_zero=True)
        self.t = 0
        self.state = {k: {} for k in self._state_keys}

    def hyperparameters(self) -> dict:
        return {"optimizer": self.name, "lr": self.base_lr, "weight_decay": self.weight_decay}

    def _grad(self, w, g):
        # coupled L2 weight decay: ∇(L + wd/2 ||w||²) = g + wd w
        return g + self.weight_decay * w if self.weight_decay else g

    @abc.abstractmethod
    def step(self, params: dict, grads: dict):
        """Implemented by every concrete subclass."""

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """``{"t": int, "lr": float, "<key>/<param>": array, …}`` (copies)."""
        d = {"t": self.t, "lr": self.lr}
        for key, per in self.state.items():
            for name, a in per.items():
                d[f"{key}/{name}"] = a.copy()
        return d

    def load_state_dict(self, d: dict):
        self.t = int(d["t"])
        self.lr = float(d["lr"])
        self.state = {k: {} for k in self._state_keys}
        for k, v in d.items():
            if "/" in k:
                key, name = k.split("/", 1)
                if key not in self.state:
                    raise DataError(f"optimizer state has unknown entry {k!r} for {self.name}")
                self.state[key][name] = np.array(v, copy=True)


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum and coupled weight decay.

    For each parameter :math:`w` with gradient :math:`g`:

    .. math::
        g \leftarrow g + \lambda_{wd} w,\qquad v \leftarrow \mu v + g,\qquad
        w \leftarrow w - \eta v

    (``v`` starts at 0, so the first step is plain ``w -= lr g``; PyTorch ``SGD`` with
    ``dampening=0``, ``nesterov=False``). ``momentum=0`` is plain SGD.
    """

    name = "sgd"
    _state_keys = ("velocity",)

    def __init__(self, lr=0.1, momentum=0.0, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum}

    def step(self, params, grads):
        self.t += 1
        vel = self.state["velocity"]
        for name, w in params.items():
            g = self._grad(w, grads[name])
            if self.momentum:
                v = vel.get(name)
                if v is None:
                    v = vel[name] = np.zeros_like(w)
                v *= self.momentum                      # v <- μ v + g
                v += g
                g = v
            w -= self.lr * g                            # w <- w - η v


class Adam(Optimizer):
    r"""Adam, Kingma & Ba (2015), Algorithm 1, with optional coupled L2 weight decay.

    .. math::
        t &\leftarrow t + 1,\quad g \leftarrow g + \lambda_{wd} w \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g,\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat m &= m / (1-\beta_1^t),\quad \hat v = v / (1-\beta_2^t) \\
        w &\leftarrow w - \eta\, \hat m / (\sqrt{\hat v} + \epsilon)

    Notes
    -----
    ε = 1e-8 is the paper's default (placed outside the square root as in Algorithm 1).
    """

    name = "adam"
    _state_keys = ("m", "v")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        for nm, b in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"{nm} must be in [0, 1), got {b}")
        self.eps = _check_positive("eps", eps)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps}

    def step(self, params, grads):
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        bc1 = 1.0 - b1 ** t                                  # bias corrections
        bc2 = 1.0 - b2 ** t
        M, V = self.state["m"], self.state["v"]
        for name, w in params.items():
            g = self._grad(w, grads[name])
            if name not in M:
                M[name] = np.zeros_like(w)
                V[name] = np.zeros_like(w)
            m, v = M[name], V[name]
            m *= b1                                          # m <- β1 m + (1-β1) g
            m += (1.0 - b1) * g
            v *= b2                                          # v <- β2 v + (1-β2) g²
            v += (1.0 - b2) * (g * g)
            m_hat = m / bc1
            v_hat = v / bc2
            w -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class StepLR:
    """Learning rate divided by ``factor`` (default 10) at each epoch in ``milestones``.

    ``lr(epoch) = base_lr / factor**k`` where ``k`` counts milestones ``<= epoch`` (epochs are
    0-based: ``milestones=[50]`` gives the base rate for epochs 0–49 and ``base/10`` from
    epoch 50 on, as Kern et al.'s "reduced by a factor of 10 every 50 epochs").
    """

    def __init__(self, milestones=(), factor=10.0):
        self.milestones = sorted(int(m) for m in milestones)
        if any(m < 1 for m in self.milestones):
            raise ConfigError("learning-rate milestones must be epochs >= 1")
        self.factor = _check_positive("lr factor", factor)

    def __call__(self, base_lr, epoch):
        k = sum(1 for m in self.milestones if m <= epoch)
        return base_lr / self.factor ** k

    def to_dict(self):
        return {"milestones": self.milestones, "factor": self.factor}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
