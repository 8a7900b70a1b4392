"""The spatial contrasting family (Hoffer, Hubara & Ailon, "Deep unsupervised learning through spatial
contrasting", ICLR 2017 submission; paper 002).

- `spatial_contrasting_loss`, `sample_patch_positions`, `patch_features`, `spatial_contrasting_from_maps`,
  `spatial_contrasting_from_images` (kernelzoo.zoo.sc.loss): the criterion of Eq. 3-4 / Algorithm 1 and its
  patch sampling (from a feature map, or crops of the images);
- `pretrain(model, layer_name, images, patch_size=...)` and `SpatialContrastingTrainer`
  (kernelzoo.zoo.sc.pretraining): SC pre-training of any Keras conv backbone on unlabelled images,
  before the usual supervised fine-tuning;
- `sc_mnist`, `sc_cifar10`, `sc_stl10` (kernelzoo.zoo.sc.models): the three networks of Table 4, raw
  0-255 pixels in (RandomShiftFlip augmentation and normalisation inside, registered for
  `keras.models.load_model`);
- the presets (sc_mnist, sc_cifar10_4k, sc_stl10 and the no-SC comparisons) and their recipe:
  SC pre-training, then supervised fine-tuning (kernelzoo.zoo.sc.recipe).
"""
from kernelzoo.zoo.sc.loss import (pairwise_distances, patch_features, sample_patch_positions,
                                   spatial_contrasting_from_images, spatial_contrasting_from_maps,
                                   spatial_contrasting_loss)
from kernelzoo.zoo.augment import RandomShiftFlip
from kernelzoo.zoo.sc.models import sc_cifar10, sc_mnist, sc_stl10
from kernelzoo.zoo.sc.pretraining import PlateauDrop, SpatialContrastingTrainer, pretrain

__all__ = ["spatial_contrasting_loss", "spatial_contrasting_from_maps", "spatial_contrasting_from_images",
           "sample_patch_positions", "patch_features",
           "pairwise_distances", "pretrain", "SpatialContrastingTrainer", "PlateauDrop", "RandomShiftFlip",
           "sc_mnist", "sc_cifar10", "sc_stl10"]
