"""Framework-agnostic Triton kernels and the builders that describe how to launch them.

Installed as `trinix.kernels`. Imports triton and nothing of torch or jax.
"""
