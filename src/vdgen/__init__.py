"""vdgen: Video Diffusion Models (Ho et al. 2022) for generating, extending and interpolating video."""

__version__ = "0.1.0"
