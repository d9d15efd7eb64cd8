from setuptools import setup

# Metadata lives in pyproject.toml; this file only wires the cffi extension into the build.
setup(cffi_modules=["host/tinybridge/_build_kernels.py:ffibuilder"])
