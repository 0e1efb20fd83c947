"""Copy-paste fixtures: the material of ``synthesis_material`` written once per session, and a
writable copy of the cutout tree for tests that break it."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthesis_material import make_backgrounds, make_cutouts


@pytest.fixture(scope="session")
def material(tmp_path_factory) -> tuple[Path, Path]:
    """(cutout root, background folder)."""
    base = tmp_path_factory.mktemp("copy_paste")
    return make_cutouts(base / "cutouts"), make_backgrounds(base / "backgrounds")


@pytest.fixture
def cutout_copy(material, tmp_path) -> Path:
    """A writable copy of the cutout tree, for tests that break it."""
    return Path(shutil.copytree(material[0], tmp_path / "cutouts"))
