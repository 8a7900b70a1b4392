"""kernelzoo.zoo: the papers' networks, their recipes and pretrained weights."""
