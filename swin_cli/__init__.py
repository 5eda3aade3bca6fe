"""swin-cli: train the Swin Transformer on image classification from the command line."""

__version__ = "0.1.0"
