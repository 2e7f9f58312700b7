"""Training one ActionFormer: label assignment, losses, optimiser + schedule + EMA, the loop, checkpoints."""
