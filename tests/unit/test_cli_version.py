"""``proxy-pool --version``: the installed distribution's version, exit 0."""

from __future__ import annotations

import importlib.metadata

import pytest

from gateway.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"proxy-pool {importlib.metadata.version('proxy-pool')}"
