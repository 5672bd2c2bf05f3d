"""Execution kernels for masked layers: CSR and BSR linear layers and the per-layer sparse/dense choice."""
from gsparse.kernels.bsr_linear import BSRStructure, bsr_blocksize, bsr_linear, bsr_supported, check_bsr_supported
from gsparse.kernels.choice import ExecutionChoice, choose_execution, clear_choice_cache
from gsparse.kernels.csr_linear import (CSRStructure, SparseKernelUnavailable, check_csr_supported, csr_linear,
                                        csr_supported)

__all__ = ["BSRStructure", "CSRStructure", "ExecutionChoice", "SparseKernelUnavailable", "bsr_blocksize", "bsr_linear",
           "bsr_supported", "check_bsr_supported", "check_csr_supported", "choose_execution", "clear_choice_cache",
           "csr_linear", "csr_supported"]
