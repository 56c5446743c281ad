"""Regenerate the shipped golden-reference suite (``data/golden/``) with ``refmem golden``.

Usage::

    python scripts/make_golden.py                 # writes data/golden/refmem-golden-v1.h5 + SUMMARY.md
    python scripts/make_golden.py -o OUT_DIR [--only CASE,...]

The suite is a deterministic function of the code (seeded per case id), so on one machine a
rerun rewrites bit-identical datasets; only the ``created_utc`` attribute changes. A change
of the expected values is a deliberate act: review ``git diff data/golden/SUMMARY.md`` and
run ``refmem check data/golden`` before committing. Format: ``docs/golden.md``.
"""

import argparse
import sys
from pathlib import Path

from refmem.errors import RefmemError
from refmem.cli import cmd_golden

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=str(ROOT / "data" / "golden"), metavar="DIR")
    p.add_argument("--only", metavar="CASE,...")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        return cmd_golden(args)                 # exactly what `refmem golden -o DIR` runs
    except RefmemError as e:
        print(f"make_golden: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
