"""cnncli: a command-line toolkit for convolutional neural networks.

Importing the package is cheap on purpose: torch, torchvision and timm are imported only by
the modules that need them, so that `cnncli --help` and listing hand-built models stay fast.
"""

__version__ = "0.1.0"
