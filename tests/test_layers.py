"""The package layers (scripts/check_layers.py): imports run down, never back up."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

_spec = importlib.util.spec_from_file_location(
    "check_layers", Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py")
check_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_layers)


def test_no_import_runs_back_up_the_layers():
    assert check_layers.violations() == []


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    for package in check_layers.LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "recsys" / "bad.py").write_text(
        "def f():\n    from operators.types import DLQ_TAG\n    return DLQ_TAG\n")
    assert check_layers.violations(tmp_path) == [
        "recsys/bad.py:2  recsys -> operators (layer 1 -> 2)"]
