"""Execution kernels for masked layers: CSR linear layers and the per-layer sparse/dense choice."""
from gsparse.kernels.choice import ExecutionChoice, choose_execution, clear_choice_cache
from gsparse.kernels.csr_linear import (CSRStructure, SparseKernelUnavailable, check_csr_supported, csr_linear,
                                        csr_supported)

__all__ = ["CSRStructure", "ExecutionChoice", "SparseKernelUnavailable", "check_csr_supported", "choose_execution",
           "clear_choice_cache", "csr_linear", "csr_supported"]
