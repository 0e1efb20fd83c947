"""Root conftest: makes this checkout importable as ``dtgen`` (see tests/support/pkg.py), and
checks at the end of the session that no ComfyUI server started by it is still running.

Only ``tests/`` goes on sys.path (as the ``support`` package), never the checkout itself, whose
``nodes`` package would shadow ComfyUI's ``nodes`` module.
"""
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.pkg import load_package  # noqa: E402

load_package()

_BASETEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def _note_basetemp(tmp_path_factory, pytestconfig):
    pytestconfig.stash[_BASETEMP] = tmp_path_factory.getbasetemp()


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of the session fixtures
def pytest_sessionfinish(session):
    """Servers run in sessions of their own and would outlive pytest: stop those still running
    (tied ones, and any ``main.py`` whose base directory lies in this session's temp folder, e.g.
    one a killed demo subprocess left) and fail the session if there were any."""
    from dtgen.runner.local_server import servers_under, stop_tied

    left = [f"{p.pid} {' '.join(map(str, p.args))}" for p in stop_tied()]
    basetemp = session.config.stash.get(_BASETEMP, None)
    for pid, args in servers_under(basetemp) if basetemp else []:
        try:
            kill = os.killpg if os.getpgid(pid) == pid else os.kill  # a LocalServer leads its own group
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        left.append(f"{pid} {args}")
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        write = reporter.write if reporter else (lambda text, **kw: print(text, end="", file=sys.stderr))
        write("\nComfyUI server(s) started by this session were still running at its end (now stopped):\n",
              red=True)
        write("".join(f"  {line}\n" for line in left))
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
