"""Ways to give the shared encoder its first weights before fine-tuning on a few labels.

``prepare_encoder(method, images, masks, encoder_config=..., config=PretrainConfig(...),
cache_dir=...)`` -> path of an encoder file, cached by (data, method, config). The methods:
``scratch`` (seeded random init), ``imagenet`` (MobileNetV2 weights), ``gan`` (TOP-GAN: DCGAN
discriminator body), ``segmentation`` (U-Net down path) and ``ssl`` (SimCLR). Each trainer is also
callable on arrays: ``gan.pretrain_gan``, ``segmentation.pretrain_segmentation``, ``ssl.pretrain_ssl``.
"""

from fewlabel.pretrain.common import METHODS, PretrainConfig, cache_key, prepare_encoder
from fewlabel.pretrain.leakage import exclude_groups, leak_free_ids

__all__ = ["METHODS", "PretrainConfig", "cache_key", "exclude_groups", "leak_free_ids", "prepare_encoder"]
