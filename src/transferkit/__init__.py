"""transferkit: pretrained ImageNet networks turned into custom image classifiers.

The public API lives in the submodules (``transferkit.backbones``, ``transferkit.data``, ...);
importing this package stays cheap and never imports torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
