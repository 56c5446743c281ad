#!/usr/bin/env python
"""Rewrite citations of the specification into citations of the theory guide.

Every citation of the specification (the word "spec" or "Spec", a space, then ``§N`` or
``§N.M``) in the code, docstrings, docs and README becomes ``theory §N`` / ``Theory §N.M``:
``docs/theory.md`` numbers its sections §0–§19 exactly like the specification, so the rewrite
is mechanical (see the guide's introduction and Appendix A). A chain such as
"spec" ``§4/§5`` keeps its bare ``§5``, which the citation test reads as part of the chain.

Not touched (a published contract): the golden files under ``data/golden/`` and the stored
``spec`` / ``spec_sections`` attribute values written by ``refmem/golden.py`` (those are bare
``§N`` strings and the ``SPEC`` constant, which contain no citation of that form).

Usage (from the repository root)::

    python scripts/sweep_citations.py           # rewrite in place, print a summary
    python scripts/sweep_citations.py --check   # list what would change; exit 1 if anything

After rewriting, the script sets ``SWEEP_DONE = True`` in ``tests/test_theory_doc.py`` so that
the test asserting that no specification citation is left becomes active. It also lists,
without changing them, lines that still point to the unshipped specification file (``equations.md``) so the
prose around them can be edited by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# "spec" + whitespace + "§", written without the literal so this file never matches itself
CITATION = re.compile(r"\b([Ss])pec(\s+)(?=\u00a7)")
SPEC_FILE = re.compile(r"equations\.md|/shared/spec")

SCAN_GLOBS = ("refmem/**/*.py", "scripts/**/*.py", "tests/**/*.py", "docs/**/*.md", "README.md")
EXCLUDED_DIRS = ("data/golden",)
TEST_FILE = ROOT / "tests" / "test_theory_doc.py"


def scanned_files(root: Path = ROOT):
    """The files whose citations are checked and swept (sorted, unique)."""
    seen = set()
    for pattern in SCAN_GLOBS:
        for p in sorted(root.glob(pattern)):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not rel.startswith(EXCLUDED_DIRS) and p not in seen:
                seen.add(p)
                yield p


def find_spec_citations(root: Path = ROOT):
    """``[(relative path, line number, line)]`` of every remaining spec citation."""
    hits = []
    for p in scanned_files(root):
        for k, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if CITATION.search(line):
                hits.append((p.relative_to(root).as_posix(), k, line.strip()))
    return hits


def _replace(m):
    return ("T" if m.group(1) == "S" else "t") + "heory" + m.group(2)


def sweep(root: Path = ROOT, write: bool = True):
    """Rewrite the citations; returns ``{relative path: number of citations rewritten}``."""
    changed = {}
    for p in scanned_files(root):
        text = p.read_text(encoding="utf-8")
        new, n = CITATION.subn(_replace, text)
        if n:
            changed[p.relative_to(root).as_posix()] = n
            if write:
                p.write_text(new, encoding="utf-8")
    return changed


def mark_test_active(root: Path = ROOT) -> bool:
    """Flip ``SWEEP_DONE = False`` to ``True`` in the citation test; True if it changed."""
    t = root / TEST_FILE.relative_to(ROOT)
    if not t.is_file():
        return False
    text = t.read_text(encoding="utf-8")
    new = text.replace("SWEEP_DONE = False", "SWEEP_DONE = True", 1)
    if new != text:
        t.write_text(new, encoding="utf-8")
        return True
    return False


def spec_file_mentions(root: Path = ROOT):
    out = []
    for p in scanned_files(root):
        rel = p.relative_to(root).as_posix()
        if rel in ("scripts/sweep_citations.py", "tests/test_theory_doc.py"):
            continue
        for k, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if SPEC_FILE.search(line):
                out.append((rel, k, line.strip()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="only list; exit 1 if anything would change")
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if args.check:
        hits = find_spec_citations(root)
        for rel, k, line in hits:
            print(f"{rel}:{k}: {line}")
        print(f"{len(hits)} spec citation(s) left")
        return 1 if hits else 0
    changed = sweep(root)
    for rel, n in sorted(changed.items()):
        print(f"{rel}: {n} citation(s)")
    print(f"rewrote {sum(changed.values())} citation(s) in {len(changed)} file(s)")
    if mark_test_active(root):
        print("tests/test_theory_doc.py: SWEEP_DONE = True (the no-spec-citation test is active)")
    mentions = spec_file_mentions(root)
    if mentions:
        print("\nlines that still mention the specification file (edit the prose by hand):")
        for rel, k, line in mentions:
            print(f"  {rel}:{k}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
