"""Numba CUDA kernels, CPU (njit) twins and plain-torch references (installed as ``fastviz.kernels``).

The kernels themselves are a separate piece of work; the methods currently use their
plain-torch paths, which run on whatever device the tensors are on.
"""
