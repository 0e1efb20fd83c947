"""Evaluation fixtures: ``encoder`` (a fresh ``evalkit.FakeEncoder``). The helpers live in
``evalkit.py`` beside this file, registered here as the module ``evalkit`` so the test modules can
import them (tests/ is on sys.path, this folder is not)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if "evalkit" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("evalkit", Path(__file__).with_name("evalkit.py"))
    _kit = importlib.util.module_from_spec(_spec)
    sys.modules["evalkit"] = _kit
    _spec.loader.exec_module(_kit)

from evalkit import FakeEncoder


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()
