"""iLRM (Iterative Large 3D Reconstruction Model) as a nerfstudio method plugin."""

__version__ = "0.1.0"
