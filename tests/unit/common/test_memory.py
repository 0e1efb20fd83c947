"""The one output-memory budget (common/memory.py): estimates by hand, the refusal's wording."""
import pytest
from dtgen.nodes.common.memory import MAX_OUTPUT_BYTES, MemoryBudgetError, check_output_memory, planes_bytes


def test_estimate_is_items_times_planes_of_float32():
    assert planes_bytes(2, 10, 3) == 2 * 10 * 10 * 3 * 4
    assert planes_bytes(4096, 4096, 4) == 1024 * 1024 ** 3   # the mask sampler at its maxima: 1 TiB


def test_inside_the_budget_passes_and_outside_names_the_estimate_and_the_fix():
    check_output_memory("node", 8, 512, 5, "fix")            # the copy-paste template: 40 MB
    n = MAX_OUTPUT_BYTES // planes_bytes(1, 1024, 4)        # exactly at the limit: allowed
    check_output_memory("node", n, 1024, 4, "fix")
    with pytest.raises(MemoryBudgetError, match=r"^node: 513 item\(s\) of 1024x1024 need about 8\.0 GB of memory "
                                                r"for their outputs \(4 float32 planes each\); the limit is 8 GB "
                                                r"\(MAX_OUTPUT_BYTES\); lower count$"):
        check_output_memory("node", n + 1, 1024, 4, "lower count")
