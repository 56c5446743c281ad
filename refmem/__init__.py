"""refmem — reference implementation of noisy memristor-crossbar neural networks.

Analytic propagation of means and covariances (Kern et al., MemSE), power, Monte-Carlo
validation, and the multiplicative-noise / quantization experiments of MohammadiRad &
Sojodishijani. Equations are numbered as in the project's corrected specification
(``theory §n``); see the README's equation index.

Public API (stable names):

- :class:`CrossbarConfig` — the one configuration object for crossbar and noise settings.
- :class:`Network`, :func:`load_model`, :func:`save_model` — explicit-matrix networks and
  the HDF5 model file.
- :func:`map_network` — the crossbar mapping (theory §3).
- :func:`monte_carlo`, :func:`mc_sample_count` — the device-level Monte-Carlo simulator and
  the sample count of Eq. (46).
- :class:`MomentsResult`, :class:`MCResult`, :class:`Sweep` — result objects named like the
  result files; :func:`read_result`, :func:`write_result` — the result files (:mod:`refmem.io`,
  ``docs/result_format.md``); :func:`error_budget` — the per-layer error budget.
- :mod:`refmem.moments` (``propagate``) — the analytic pass; :mod:`refmem.datasets`;
  :mod:`refmem.training` (imported on demand: they load Numba kernels or training code).
"""

from ._version import __version__  # noqa: E402

from .errors import RefmemError, ConfigError, ModelFileError, DataError  # noqa: E402
from .config import CrossbarConfig  # noqa: E402
from .layers import Dense, Conv2d, AvgPool2d, ReLU, Flatten, BatchNorm, Dropout  # noqa: E402
from .network import Network  # noqa: E402
from .modelfile import load_model, save_model  # noqa: E402
from .mapping import map_network  # noqa: E402
from .montecarlo import monte_carlo, mc_sample_count  # noqa: E402
from .results import MCResult, MomentsResult, Sweep  # noqa: E402
from .io import read_result, write_result  # noqa: E402
from .budget import error_budget  # noqa: E402

__all__ = [
    "__version__", "RefmemError", "ConfigError", "ModelFileError", "DataError",
    "CrossbarConfig", "Dense", "Conv2d", "AvgPool2d", "ReLU", "Flatten", "BatchNorm",
    "Dropout", "Network", "load_model", "save_model", "map_network", "monte_carlo",
    "mc_sample_count", "MomentsResult", "MCResult", "Sweep", "read_result", "write_result",
    "error_budget",
]
