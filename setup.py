"""Build only: the optional compiled palm-code kernel (vendor_node/hand/_bitkernel.c); the metadata is in setup.cfg.

A failed compile (no gcc or no Python headers: on a Pi ``apt install gcc python3-dev``) never fails the install:
bit_search.py then uses its numpy kernels (slower; ``vendor-node selftest`` says which kernel runs).
In a worktree: ``python setup.py build_ext --inplace``.
"""
import platform

from setuptools import Extension, setup

flags = ["-O3"] + (["-mpopcnt"] if platform.machine() in ("x86_64", "AMD64") else [])  # aarch64: cnt at -O2
setup(ext_modules=[Extension("vendor_node.hand._bitkernel", ["vendor_node/hand/_bitkernel.c"],
                             extra_compile_args=flags, optional=True)])
