"""ActionFormer model: backbone, neck, heads and points."""

from localization.model.actionformer import ActionFormer, ModelOutput
from localization.model.points import make_points

__all__ = ["ActionFormer", "ModelOutput", "make_points"]
