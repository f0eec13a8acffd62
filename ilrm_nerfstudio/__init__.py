"""iLRM (Iterative Large 3D Reconstruction Model) as a nerfstudio method plugin.

Layout, in one direction of dependence (each imports only those before it):
core (cameras, Gaussians, the network, published checkpoints, errors) -> render (render() and its
backends) -> data (scenes on disk, sources, samplers, the generator) -> metrics -> nerfstudio (the
glue: method configs, models, pipelines, data managers) -> tools (the ilrm-* commands). Only
nerfstudio/ and tools/ import nerfstudio.
"""

__version__ = "0.2.0"

__all__ = ["load_published_network", "is_published_checkpoint", "published_protocol"]


def __getattr__(name: str):
    # Lazy, so that torch-free modules (the data generator) stay importable without torch.
    if name in __all__:
        from ilrm_nerfstudio.core import published

        return getattr(published, name)
    raise AttributeError(f"module 'ilrm_nerfstudio' has no attribute {name!r}")
