import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture
def num_threads():
    """fastrnn.set_num_threads for one test: the count it had comes back afterwards."""
    import fastrnn
    saved = fastrnn.get_num_threads()
    yield fastrnn.set_num_threads
    fastrnn.set_num_threads(saved)


@pytest.fixture(params=["as chosen", "packed only"])
def both_cpu_paths(request):
    """Run a test twice: with the cpu backend choosing its kernels by size, and with the
    packed ones only. Small training and inference calls read the weights unpacked
    (csrc/direct.inc), so at the small shapes tests use the packed kernels would otherwise
    go untested. Tests marked path_choice (they check which kernel a call takes) run once."""
    if request.param == "as chosen":
        yield
        return
    if request.node.get_closest_marker("path_choice"):
        pytest.skip("checks the path choice itself")
    from fastrnn import backends
    if "cpu" not in backends.available():
        pytest.skip("cpu backend unavailable")
    cpu = backends.get("cpu")
    saved = cpu.DIRECT_MAX_ROWS, cpu.DIRECT_MAX_FROZEN_BATCH
    cpu.DIRECT_MAX_ROWS = cpu.DIRECT_MAX_FROZEN_BATCH = -1   # no call is small enough
    try:
        yield
    finally:
        cpu.DIRECT_MAX_ROWS, cpu.DIRECT_MAX_FROZEN_BATCH = saved
