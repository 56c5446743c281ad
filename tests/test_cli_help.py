"""Every help screen renders: ``refmem --help`` and ``refmem CMD --help`` exit 0 and print the
usage (argparse %-formats help strings, so a bare '%' in one of them used to turn
``refmem --help`` into an internal error)."""

import pytest

from refmem.cli import build_parser, main


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: refmem")
    for cmd in _commands():
        assert cmd in out


@pytest.mark.parametrize("cmd", _commands())
def test_command_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: refmem {cmd}")
