"""Builds the optional C/OpenMP extension through cffi; metadata lives in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["fastrnn/_build_cpu.py:ffibuilder"])
