"""Data for ActionFormer on FineAction: annotations, feature streams, the time grid, datasets and batching.

Import the modules themselves (``localization.data.annotations``, ``.features``, ``.dataset``):
this package stays empty so that reading annotations does not import torch.
"""
