"""SimNets (Cohen & Shashua 2014) in the zoo: the CIFAR-10 patch-labeling SimNet and its two baselines."""
from kernelzoo.zoo.simnet.models import (
    CIFAR10_CLASSES, QuadrantPooling, TriangleCoding, coates_baseline, convnet_baseline, parameter_count,
    simnet_patch_labeling)

__all__ = ["simnet_patch_labeling", "convnet_baseline", "coates_baseline", "QuadrantPooling", "TriangleCoding",
           "CIFAR10_CLASSES", "parameter_count"]
