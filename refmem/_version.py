"""The package version — the one place it is written (``setup.cfg`` reads it from here).

Low-level modules import ``refmem._version`` instead of the package root, so that writing a
file never pulls in the whole package.
"""

__version__ = "0.1.0"
