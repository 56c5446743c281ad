"""The per-layer error budget (``refmem budget``): which crossbar layer does the error come from?

For every crossbar layer ``i`` (0..n−1, the one crossbar numbering of ``refmem info``) the output
MSE against the noiseless network (theory §9, Eq. (7), averaged over inputs and outputs:
``mse_batch``) is computed three ways — with device and α noise in layer ``i`` alone
(``mse_alone``), in every layer but ``i`` (``mse_all_but``), and in every layer (``mse_all``) —
together with the layer's expected power (theory §11). The analytic pass is the default; a
Monte-Carlo run per configuration (same seed for every configuration: common random numbers)
adds measured values with standard errors.

Reading the budget: with independent noise in the layers, the MSE contributions add up to first
order, so ``mse_alone`` ranks the layers and ``mse_all − mse_all_but`` is what removing layer
``i``'s noise would save; the two differ where the network is nonlinear in the noise (ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

__all__ = ["BudgetResult", "error_budget", "plot_budget"]


@dataclass
class BudgetResult:
    """The error budget of one configuration (names as in the ``budget`` result file).

    ``crossbar_index`` (n,), ``layer_types`` and ``layer_names`` (model-file layers of each
    crossbar layer), ``mse_alone``, ``mse_all_but`` (n,), ``mse_all`` (float), ``power_layer``
    (n,) — analytic; with Monte-Carlo the ``mc`` dict holds the same MSE names and their ``_se``.
    """

    crossbar_index: np.ndarray
    layer_types: list
    layer_names: list
    mse_alone: np.ndarray
    mse_all_but: np.ndarray
    mse_all: float
    power_layer: np.ndarray
    mc: dict = field(default_factory=dict)
    mc_n: int | None = None
    seed: int | None = None

    @property
    def mse_alone_rel(self):
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.mse_alone / self.mse_all

    def datasets(self) -> dict:
        """Result-file datasets (leading sweep axis P = 1)."""
        d = {"crossbar_index": self.crossbar_index,
             "mse_alone": self.mse_alone[None], "mse_all_but": self.mse_all_but[None],
             "mse_all": np.array([self.mse_all]), "mse_alone_rel": self.mse_alone_rel[None],
             "power_layer": self.power_layer[None]}
        for k, v in self.mc.items():
            d[f"mc/{k}"] = np.asarray(v)[None]
        return d


def _noise_configs(config, n):
    alone = [config.with_(noisy_layers=(i,)) for i in range(n)]
    all_but = [config.with_(noisy_layers=tuple(j for j in range(n) if j != i))
               for i in range(n)]
    return alone + all_but + [config.with_(noisy_layers="all")]


def _analytic_item(item):
    """(mse_batch, power_layers mean over inputs) of one configuration (picklable)."""
    from .mapping import map_network
    from .moments import propagate

    network, config, x, input_cov = item
    res = propagate(map_network(network, config), x, input_cov=input_cov)
    return float(res.mse_batch), res.power_layers.mean(axis=0)


def _mc_item(item):
    from .mapping import map_network
    from .montecarlo import monte_carlo

    network, config, x, input_cov, n, seed = item
    res = monte_carlo(map_network(network, config), x, n=n, seed=seed, input_cov=input_cov)
    return float(res.mse_batch), float(res.mse_batch_se)


def error_budget(network, config, x, *, input_cov=None, mc_n=None, seed=None,
                 map_fn=map) -> BudgetResult:
    """The per-layer error budget of ``network`` under ``config`` for the inputs ``x``.

    ``config.noisy_layers`` must be ``"all"`` (the budget switches the noise per layer itself).
    ``mc_n``/``seed``: also run the Monte-Carlo simulator with ``mc_n`` realizations per
    configuration. ``map_fn`` evaluates the 2n+1 independent configurations (``map`` serially;
    ``Executor.map`` in parallel).
    """
    from .results import layer_table

    if config.noisy_layers != "all":
        raise ConfigError("budget switches the noisy layers itself; leave --noisy-layers at 'all'")
    if (mc_n is None) != (seed is None):
        raise ConfigError("Monte-Carlo in the budget needs both --mc N and --seed S")
    if mc_n is not None and mc_n < 2:
        raise ConfigError("--mc must be at least 2")
    x = network.check_input(x)
    table = [r for r in layer_table(network) if r["crossbar_index"] is not None]
    n = len(table)
    if n == 0:
        raise ConfigError("the model has no crossbar (dense or conv2d) layer")
    configs = _noise_configs(config, n)
    an = list(map_fn(_analytic_item, [(network, c, x, input_cov) for c in configs]))
    mse = np.array([a[0] for a in an])
    res = BudgetResult(
        crossbar_index=np.arange(n), layer_types=[r["type"] for r in table],
        layer_names=[", ".join(r["source_names"]) for r in table],
        mse_alone=mse[:n], mse_all_but=mse[n:2 * n], mse_all=float(mse[2 * n]),
        power_layer=np.asarray(an[2 * n][1], dtype=np.float64))
    if mc_n is not None:
        mc = list(map_fn(_mc_item, [(network, c, x, input_cov, int(mc_n), int(seed))
                                    for c in configs]))
        m = np.array([v[0] for v in mc])
        s = np.array([v[1] for v in mc])
        res.mc = {"mse_alone": m[:n], "mse_alone_se": s[:n], "mse_all_but": m[n:2 * n],
                  "mse_all_but_se": s[n:2 * n], "mse_all": m[2 * n], "mse_all_se": s[2 * n]}
        res.mc_n, res.seed = int(mc_n), int(seed)
    return res


def budget_table(res: BudgetResult) -> list:
    """The printed table (lines): per crossbar layer, the MSE alone / all but / share, power."""
    mc = bool(res.mc)
    head = (f"{'xb':>3} {'type':<8} {'model layers':<28} {'MSE alone (y²)':>16} {'share':>7} "
            f"{'MSE all but (y²)':>18} {'power (g·x²)':>13}")
    if mc:
        head += f"   {'MC alone (y²)':>20} {'MC all but (y²)':>20}"
    lines = [head]
    for i in range(len(res.crossbar_index)):
        share = res.mse_alone_rel[i]
        row = (f"{i:>3} {res.layer_types[i]:<8} {res.layer_names[i][:28]:<28} "
               f"{res.mse_alone[i]:>16.4g} {share:>7.1%} {res.mse_all_but[i]:>18.4g} "
               f"{res.power_layer[i]:>13.4g}")
        if mc:
            row += (f"   {res.mc['mse_alone'][i]:>10.4g} ± {res.mc['mse_alone_se'][i]:<7.2g}"
                    f" {res.mc['mse_all_but'][i]:>10.4g} ± {res.mc['mse_all_but_se'][i]:<7.2g}")
        lines.append(row)
    tail = (f"{'all':>3} {'':<8} {'noise in every crossbar layer':<28} {res.mse_all:>16.4g} "
            f"{'':>7} {'':>18} {float(np.sum(res.power_layer)):>13.4g}")
    if mc:
        tail += f"   {res.mc['mse_all']:>10.4g} ± {res.mc['mse_all_se']:<7.2g}"
    lines.append(tail)
    return lines


def plot_budget(res: BudgetResult, path, *, model_name="", force=False):
    """Bar chart (PNG, written by the one atomic writer): MSE per crossbar layer (alone and all
    but, with ±2 SE Monte-Carlo markers when present; the all-layers MSE as a line) and the
    per-layer power."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import write_png

    n = len(res.crossbar_index)
    idx = np.arange(n)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 0.6 * n + 6), 4))
    w = 0.38
    a1.bar(idx - w / 2, res.mse_alone, w, label="noise in this layer alone", color="C0")
    a1.bar(idx + w / 2, res.mse_all_but, w, label="noise in all but this layer", color="C2")
    a1.axhline(res.mse_all, color="k", ls="--", lw=1, label="noise in every layer")
    if res.mc:
        a1.errorbar(idx - w / 2, res.mc["mse_alone"], yerr=2 * res.mc["mse_alone_se"], fmt="o",
                    color="C1", ms=3, capsize=2, label=f"Monte-Carlo ±2 SE (n={res.mc_n})")
        a1.errorbar(idx + w / 2, res.mc["mse_all_but"], yerr=2 * res.mc["mse_all_but_se"],
                    fmt="o", color="C1", ms=3, capsize=2)
    a1.set_ylim(0, 1.5 * max(res.mse_all, float(np.max(res.mse_all_but)), 1e-300))
    a1.set_xticks(idx, [f"{i}\n{t}" for i, t in zip(idx, res.layer_types)])
    a1.set_xlabel("crossbar layer")
    a1.set_ylabel("output MSE (y²)")
    a1.legend(fontsize=7, loc="upper left", ncol=2)
    a1.grid(True, axis="y", alpha=0.3)
    a2.bar(idx, res.power_layer, color="C3")
    a2.set_xticks(idx, [str(i) for i in idx])
    a2.set_xlabel("crossbar layer")
    a2.set_ylabel("expected power per inference (g·x²)")
    a2.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"error budget {model_name}".strip())
    fig.tight_layout()
    try:
        write_png(path, "budget-figure", fig, force=force)
    finally:
        plt.close(fig)
