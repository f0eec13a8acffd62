"""iLRM (Iterative Large 3D Reconstruction Model) as a nerfstudio method plugin."""

__version__ = "0.1.0"

from .published import is_published_checkpoint, load_published_network, published_protocol

__all__ = ["load_published_network", "is_published_checkpoint", "published_protocol"]
