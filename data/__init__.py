"""Data shipped with refmem (installed as the package ``refmem._shipped``).

See ``README.md`` in this folder for every file's provenance and licence. Use
:func:`refmem.datasets.shipped_path` to locate a file; it works from a source checkout, an
editable install and a regular install alike.
"""
