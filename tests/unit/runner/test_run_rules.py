"""The rules both run loops share (runner/run.py): one answer each."""
from dtgen.runner.run import max_items_budget, writer_quota
from dtgen.runner.scheduler import copy_paste_report


def test_the_writers_safety_quota_sums_the_sources_a_writer_counts():
    assert writer_quota(None, 0, {"a": 5}) is None                 # --items: the graph's own value
    assert writer_quota({"a": 3, "b": 2}, 0, {}) == 3              # the sampler alone: its quota
    assert writer_quota({"a": 3, "b": 2}, 0, {"b": 4}) == 6        # real/other images of b count too
    assert writer_quota({"a": 3}, 2, {}) == 5                      # SD + copy-paste on one writer
    assert writer_quota(None, 2, {"a": 1}) == 3                    # copy-paste only


def test_the_default_budget_is_20_times_the_quotas_plus_20():
    assert max_items_budget([2, 2, 2]) == 140
    assert max_items_budget([]) == 20


def test_copy_paste_progress_from_the_nodes_output():
    made = {"outputs": {"9": {"text": ["3 copy-paste item(s): ..."], "dtgen_copy_paste": [{"made": 3, "done": False}]}}}
    assert copy_paste_report(made, "9") == (3, False)
    assert copy_paste_report({"outputs": {"9": {"dtgen_copy_paste": [{"made": 0, "done": True}]}}}, 9) == (0, True)
    # the canvas text alone is not read any more: only the structured output counts
    assert copy_paste_report({"outputs": {"9": {"text": ["every class of ds has 2 copy-paste images: done"]}}}, "9") == (0, False)
    assert copy_paste_report({}, "9") == (0, False)


def test_the_ray_watchdog_stops_marked_processes_once_the_driver_is_gone(tmp_path):
    """runner/ray/watchdog.py, run by path as runner/ray/cluster.py runs it: stdin closed at once (the
    driver is gone), a process carrying the run's mark is killed and the shim folder removed."""
    import os
    import subprocess
    import sys

    from dtgen.runner.ray.cluster import MARK, WATCHDOG

    shim = tmp_path / "shim"
    shim.mkdir()
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env=dict(os.environ, **{MARK: "tok"}))
    try:
        dog = subprocess.run([sys.executable, "-I", str(WATCHDOG), f"{MARK}=tok", str(os.getpid()), str(shim),
                              "/nowhere/ray"], input=b"", timeout=60, check=False)
        assert dog.returncode == 0
        assert marked.wait(timeout=10) == -9
        assert not shim.exists()
    finally:
        marked.kill()
        marked.wait()
