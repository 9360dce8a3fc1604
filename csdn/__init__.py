"""csdn: CLIP-Driven Semantic Discovery Network for visible-infrared person re-identification."""

__version__ = "0.1.0"
