"""Moved: the ViT forecast model is :class:`turbda_kit.surrogate.forecast_model.SurrogateModel`.

This name stays importable so that code written before the move keeps working.
"""

from ..surrogate.forecast_model import SurrogateModel

__all__ = ["SurrogateModel"]
