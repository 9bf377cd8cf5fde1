"""streamnorm: out-of-core, chunk-invariant score normalization for copy detection."""

from streamnorm.blas_kernels import choose_openblas_kernels

# Before any submodule imports faiss, whose bundled OpenBLAS reads this once.
choose_openblas_kernels()

__version__ = "0.1.0"
