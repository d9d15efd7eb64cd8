import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Metadata lives in pyproject.toml; this file wires the native parts into the build: the cffi
# extension (tinybridge._kernels) and the `sim` device executable (tinybridge/bin/tinybridge-sim).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "host", "tinybridge"))
import _build_sim  # noqa: E402


class BuildExtAndSim(build_ext):
    """build_ext, then the sim executable next to the extension (in the source tree when editable)."""

    def run(self):
        super().run()
        package = os.path.join("host", "tinybridge") if self.inplace else os.path.join(self.build_lib, "tinybridge")
        _build_sim.build(os.path.join(package, "bin", "tinybridge-sim"))


setup(cffi_modules=["host/tinybridge/_build_kernels.py:ffibuilder"], cmdclass={"build_ext": BuildExtAndSim})
