"""Models: one encoder family (2D/3D), a registry, heads, and weight files."""

from fewlabel.models.encoder import ConvEncoder, Encoder, create_encoder, encoder_names, register_encoder

__all__ = ["ConvEncoder", "Encoder", "create_encoder", "encoder_names", "register_encoder"]
