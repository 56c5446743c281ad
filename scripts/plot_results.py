"""Plot any refmem result file(s): one quantity against one swept parameter.

Usage::

    python scripts/plot_results.py OUT.h5 [MORE.h5 …] [--y mse_batch] [--x sigma] -o plot.png

Every result file has the same layout (``docs/result_format.md``): the swept parameters are
``axes/sigma``, ``axes/alpha``, ``axes/g_u`` and every quantity has a leading sweep axis, so this
one script reads ``moments``, ``mc`` and ``demo`` files alike (``--group analytic`` /
``--group montecarlo`` for the demo). A quantity with more axes than the sweep axis is averaged
over them; a Monte-Carlo quantity is drawn with ±2 SE bars from ``<name>_se``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def series(path, y="mse_batch", x="sigma", group=""):
    """``(x, y, se or None, label)`` of one result file."""
    from refmem.errors import DataError
    from refmem.io import read_result

    r = read_result(path)
    prefix = f"{group.strip('/')}/" if group else ""
    if f"axes/{x}" not in r:
        raise DataError(f"{path} has no axis {x!r} (axes: "
                        f"{', '.join(k[5:] for k in r.data if k.startswith('axes/'))})")
    if prefix + y not in r:
        raise DataError(f"{path} has no dataset {prefix + y!r}")
    xs = np.asarray(r[f"axes/{x}"], dtype=np.float64)
    ys = np.asarray(r[prefix + y], dtype=np.float64)
    ys = ys.reshape(ys.shape[0], -1).mean(axis=1)
    se = r.data.get(prefix + y + "_se")
    if se is not None:
        se = np.asarray(se, dtype=np.float64).reshape(len(xs), -1).mean(axis=1)
    units = r.meta[prefix + y].get("units", "")
    return xs, ys, se, f"{Path(path).name} [{r.kind}]", units


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", metavar="RESULT.h5")
    p.add_argument("--y", default="mse_batch", help="quantity (default mse_batch)")
    p.add_argument("--x", default="sigma", choices=["sigma", "alpha", "g_u"])
    p.add_argument("--group", default="", help="group inside the files (demo: analytic, montecarlo)")
    p.add_argument("--log", action="store_true", help="log-log axes")
    p.add_argument("-o", "--output", required=True, metavar="PLOT.png")
    args = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from refmem.errors import RefmemError
    from refmem.io import check_output, write_png

    try:
        check_output(args.output, "plot", inputs=list(args.files))
        fig, ax = plt.subplots(figsize=(6, 4))
        units = ""
        for f in args.files:
            xs, ys, se, label, units = series(f, args.y, args.x, args.group)
            if se is None:
                ax.plot(xs, ys, "o-", ms=3, label=label)
            else:
                ax.errorbar(xs, ys, yerr=2 * se, fmt="o-", ms=3, capsize=2, label=label + " ±2 SE")
        if args.log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(args.x)
        ax.set_ylabel(f"{args.y} ({units})" if units else args.y)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        write_png(args.output, "plot", fig, inputs=list(args.files))
        plt.close(fig)
    except RefmemError as e:
        print(f"plot_results: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
