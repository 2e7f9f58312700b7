"""ActionFormer model: backbone, neck, heads, points and optimiser groups."""

from localization.model.actionformer import ActionFormer, ModelOutput
from localization.model.optim import param_groups
from localization.model.points import make_points

__all__ = ["ActionFormer", "ModelOutput", "make_points", "param_groups"]
