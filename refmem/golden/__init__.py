"""Golden-reference vectors (``refmem golden``) and the conformance check (``refmem check``).

A *golden suite* is one HDF5 file (``refmem-golden-v1.h5``, root attributes
``format="refmem-golden"``, ``version=1``) holding small, self-contained test cases of the
corrected specification (``theory §n``). Other implementations of MemSE-style moment
propagation compute every case their own way, write a *candidate* file and run
``refmem check GOLDEN --candidate CANDIDATE.h5``. The format and an adapter guide are in
``docs/golden.md``; this docstring is the short version.

Golden file
-----------
::

    /                        attrs format, version, case_ids (JSON), quantities (JSON),
                                   tiers (JSON), spec, refmem_version, numpy_version, created_utc
    /<case_id>/              attrs description, config (CrossbarConfig JSON), seed, detects (JSON),
                                   spec_sections (JSON), equations, fused_layers (JSON),
                                   input_random
        model/               a complete model file (docs/model_format.md) as a group
        input/mean           (B, *input_shape)
        input/cov            (B, L, L), only when the input is random
        mapping/NN/          lam, g_u, w_u (n_cols,) of crossbar layer NN (informative, not checked)
        expected/            the result schema of ``refmem moments --cov --per-layer``
                             (docs/result_format.md): mean, var, mse, reference, bias (B, J);
                             cov (B, J, J); power (B,); power_layers, power_mem, power_tia_pos,
                             power_tia_neg (B, n_xb); mse_mean, mse_max (B,);
                             layers/NN/mean, layers/NN/var (B, n_NN) after layer NN of the
                             *fused* network
            each dataset:    attrs spec_sections, equations, scale, rtol_float64, atol_float64,
                             rtol_float32, atol_float32

Candidate file: one group per case id with the same dataset names as ``expected/`` (float32 or
float64). An element passes when ``|c - e| <= atol + rtol |e|`` (tier ``float64`` or
``float32``; ``atol = atol_factor × scale`` with ``scale`` the dataset's max-abs value, see
:data:`TIERS`). Every stored value is a deterministic function of the code: regenerating the
suite on one machine gives bit-identical datasets; only ``created_utc`` (and the version
strings) change, and the check ignores attributes.

Modules: :mod:`refmem.golden.cases` (format constants, case definitions, evaluation with refmem),
:mod:`refmem.golden.suite` (golden and candidate files), :mod:`refmem.golden.compare`
(``check``). The command-line handlers of ``refmem golden`` and ``refmem check`` live in
:mod:`refmem.cli`.
"""

from .cases import (B, CASES, ENTROPY, FILENAME, FORMAT, IGNORED_ATTRS, QUANTITIES, SPEC,  # noqa: F401
                    TIERS, VERSION, CaseDef, build_cases, recompute_case)
from .compare import CheckReport, Row, check, compare  # noqa: F401
from .suite import GoldenCase, GoldenSuite, read_suite, write_candidate, write_suite  # noqa: F401

__all__ = ["FORMAT", "VERSION", "FILENAME", "TIERS", "QUANTITIES", "CASES", "build_cases",
           "write_suite", "read_suite", "GoldenSuite", "GoldenCase", "recompute_case",
           "write_candidate", "check", "CheckReport", "compare"]
