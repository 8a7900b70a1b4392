"""kernelzoo.layers: Keras 3 layers of the zoo's networks (registered for load_model)."""
from kernelzoo.layers.batch_norm import FusedBatchNormalization
from kernelzoo.layers.ckn import CKNConv2D
from kernelzoo.layers.constraints import MinValue
from kernelzoo.layers.kernel_dense import KernelDense, SparseKernelDense
from kernelzoo.layers.kernels import Grid2D
from kernelzoo.layers.mex import Mex
from kernelzoo.layers.similarity import Similarity
from kernelzoo.layers.sparsify import SparsifyingActivation

__all__ = ["Similarity", "Mex", "MinValue", "KernelDense", "SparseKernelDense", "Grid2D", "SparsifyingActivation",
           "CKNConv2D", "FusedBatchNormalization"]
