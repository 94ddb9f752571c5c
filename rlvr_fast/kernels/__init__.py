"""Triton kernels and their launchers (``rlvr_fast.kernels``).

Nothing here is imported by ``import rlvr_fast``; the dispatch in ``rlvr_fast.ops`` imports a kernel
module the first time the Triton backend is chosen. Set ``TRITON_INTERPRET=1`` before that import to
run the kernels on CPU tensors.
"""
