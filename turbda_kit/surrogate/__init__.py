"""The ViT surrogate of SQG turbulence and its distributed trainer."""
