"""Evaluation: features, metrics, SYSU-MM01 / RegDB / LLCM protocols, re-ranking and plots."""
