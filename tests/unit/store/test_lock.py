"""DatasetLock: mutual exclusion between processes (fcntl here) and the Windows (msvcrt) code path,
driven through a stand-in ``msvcrt`` that behaves like the real one (LK_LOCK gives up with OSError
after its retries while another handle holds the byte; locks are per byte range from the file
position)."""
import os
import subprocess
import sys
import threading
import time

import pytest
from dtgen.nodes.store import lock as lock_module
from dtgen.nodes.store.lock import DatasetLock


def test_second_process_waits_for_the_first(tmp_path):
    from support.pkg import BOOTSTRAP

    code = BOOTSTRAP + (
        "import sys, time\n"
        "from dtgen.nodes.store.lock import DatasetLock\n"
        "with DatasetLock(sys.argv[1]):\n"
        "    print('got', flush=True)\n"
    )
    with DatasetLock(tmp_path):
        child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert child.poll() is None   # still blocked while we hold the lock
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "got"


class FakeMsvcrt:
    """Byte-range locks keyed by file identity, refusing a second handle like Windows does."""
    LK_LOCK, LK_UNLCK = 1, 0

    def __init__(self):
        self.held = {}                 # (inode, offset) -> fd
        self.calls = []
        self.guard = threading.Lock()

    def locking(self, fd, mode, nbytes):
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        self.calls.append((mode, key[1], nbytes))
        with self.guard:
            if mode == self.LK_LOCK:
                if key in self.held:
                    time.sleep(0.01)   # the real LK_LOCK sleeps 1 s per retry, 10 retries
                    raise OSError(36, "Resource deadlock avoided")
                self.held[key] = fd
            elif self.held.get(key) != fd:
                raise OSError(13, "Permission denied: unlocking a region not locked by this handle")
            else:
                del self.held[key]


@pytest.fixture
def fake_windows(monkeypatch):
    fake = FakeMsvcrt()
    monkeypatch.setattr(lock_module, "fcntl", None)
    monkeypatch.setattr(lock_module, "msvcrt", fake, raising=False)
    return fake


def test_windows_path_excludes_a_second_holder_and_releases(tmp_path, fake_windows):
    order = []

    def second():
        with DatasetLock(tmp_path):
            order.append("second in")

    with DatasetLock(tmp_path):
        order.append("first in")
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        assert order == ["first in"]    # the second holder keeps retrying
        order.append("first out")
    waiter.join(timeout=10)
    assert order == ["first in", "first out", "second in"]
    assert fake_windows.held == {}      # both unlocked
    refused = [c for c in fake_windows.calls if c[0] == FakeMsvcrt.LK_LOCK]
    assert len(refused) > 2 and all(offset == 0 and n == 1 for _, offset, n in fake_windows.calls)


def test_windows_unlock_is_at_byte_zero_even_after_writes(tmp_path, fake_windows):
    with DatasetLock(tmp_path) as held:
        os.write(held._fd, b"pid 123\n")   # moves the file position
    assert fake_windows.held == {}
    assert fake_windows.calls[-1] == (FakeMsvcrt.LK_UNLCK, 0, 1)
