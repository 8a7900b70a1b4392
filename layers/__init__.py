"""kernelzoo.layers: Keras 3 layers of the zoo's networks (registered for load_model)."""
from kernelzoo.layers.constraints import MinValue
from kernelzoo.layers.mex import Mex
from kernelzoo.layers.similarity import Similarity

__all__ = ["Similarity", "Mex", "MinValue"]
