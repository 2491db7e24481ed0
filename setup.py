"""Builds the optional C accelerators router._scan, router._choice and router._prefix;
everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and router/context.py
and router/replicas.py use their pure-Python code (same results, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("router._scan", ["router/_scan.c"], optional=True,
                             extra_compile_args=["-O3", "-ffp-contract=off"]),
                   Extension("router._choice", ["router/_choice.c"], optional=True,
                             depends=["router/_prefix_map.h"],
                             extra_compile_args=["-O3", "-ffp-contract=off"]),
                   Extension("router._prefix", ["router/_prefix.c"], optional=True,
                             extra_compile_args=["-O3"])])
