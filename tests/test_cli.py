"""The command line, in-process."""

from __future__ import annotations

import json

import lossplug
import pytest
from lossplug.cli import main

pytestmark = [pytest.mark.usefixtures("toy_plugins"), pytest.mark.backend_independent]


def test_list_json_includes_in_process_plugins(capsys):
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["toy_ce"]["distribution"] == "(in-process)"
    assert rows["toy_ce"]["description"] == "sparse categorical cross-entropy (test plugin)"


def test_info_and_unknown(capsys):
    assert main(["info", "toy_center"]) == 0
    out = capsys.readouterr().out
    assert "num_classes" in out and "features" in out and "embeddings" in out
    assert "(B,)" in out and "(B, D)" in out  # shapes written as Python tuples
    assert "backends: all" in out
    assert main(["info", "toy_centre"]) == 2
    assert "Did you mean 'toy_center'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert f"plugin API {lossplug.API_VERSION}" in capsys.readouterr().out
