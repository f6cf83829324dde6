"""toydiff: diffusion guidance on 2D Gaussian mixtures with exact ground truth, and a path to ImageNet-64."""
__version__ = "0.1.0"
