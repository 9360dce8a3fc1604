"""CSDN model parts: modality prompt learners and SII fusion (heads and the network live beside them)."""

from csdn.model.prompts import (
    PAPER_INFRARED,
    PAPER_VISIBLE,
    RELEASED,
    ModalityPrompts,
    PromptLearner,
    PromptTemplate,
    template_for,
)
from csdn.model.sii import SII_KINDS, make_sii, text_prototypes

__all__ = [
    "PAPER_INFRARED",
    "PAPER_VISIBLE",
    "RELEASED",
    "SII_KINDS",
    "ModalityPrompts",
    "PromptLearner",
    "PromptTemplate",
    "make_sii",
    "template_for",
    "text_prototypes",
]
