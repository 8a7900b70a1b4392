"""The SimNet family (Cohen & Shashua 2014): the CIFAR-10 patch-labeling SimNet and its two baselines.

Importing it registers the family's Keras layers (PatchWhitening, BrightnessContrastNormalization,
QuadrantPooling, TriangleCoding), so its saved models load with `keras.models.load_model`.
"""
from kernelzoo.zoo.simnet.models import (
    QuadrantPooling, TriangleCoding, coates_baseline, convnet_baseline, parameter_count, simnet_patch_labeling)
from kernelzoo.zoo.simnet.preprocessing import BrightnessContrastNormalization, PatchWhitening

__all__ = ["simnet_patch_labeling", "convnet_baseline", "coates_baseline", "QuadrantPooling", "TriangleCoding",
           "PatchWhitening", "BrightnessContrastNormalization", "parameter_count"]
