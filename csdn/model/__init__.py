"""CSDN model parts: modality prompt learners and SII fusion (heads and the network live beside them)."""
