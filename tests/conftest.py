import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402

from sim_helpers import BOARDS, require_arm_tools  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SANITIZED_SIM = os.path.join(ROOT, "build", "sim-asan", "tinybridge-sim")


@pytest.fixture(scope="session", autouse=True)
def sanitized_sim():
    """Every test that talks to the sim talks to its AddressSanitizer + UBSan build (through
    $TINYBRIDGE_SIM, which the CLI run in a subprocess inherits too)."""
    from tinybridge import _build_sim

    path = _build_sim.build(SANITIZED_SIM, sanitize=True)
    previous = os.environ.get("TINYBRIDGE_SIM")
    os.environ["TINYBRIDGE_SIM"] = path
    yield path
    if previous is None:
        del os.environ["TINYBRIDGE_SIM"]
    else:
        os.environ["TINYBRIDGE_SIM"] = previous


@pytest.fixture(params=sorted(BOARDS))
def device_url(request):
    """The runtime's end-to-end tests run alike on the sim and on the firmware under QEMU."""
    if request.param == "qemu":
        require_arm_tools()
    return request.param
