"""Weights in other libraries' names and layouts (`timm`: PyTorch Image Models)."""
