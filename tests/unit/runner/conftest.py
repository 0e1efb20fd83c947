import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_comfy import FakeComfy  # noqa: E402  (found through the path above)


@pytest.fixture
def fakes(tmp_path):
    """``make(**kw)`` starts a FakeComfy serving into ``tmp_path/out``; all are stopped afterwards."""
    made = []

    def make(**kw):
        fake = FakeComfy(tmp_path / "out", **kw)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        if fake.alive:
            fake.stop()
