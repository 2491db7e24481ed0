"""Builds the optional C accelerator router._scan; everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and router/context.py
uses its pure-Python pass (same results, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("router._scan", ["router/_scan.c"], optional=True,
                             extra_compile_args=["-O3", "-ffp-contract=off"])])
