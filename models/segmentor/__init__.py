"""The segmentor: SAM fine-tuned one-prompt-one-nucleus, official or light encoders."""
from .build import SEGMENTOR_REGISTRY, Segmentor, build_segmentor
from .prompts import assemble_prompts, knn_negatives

__all__ = ["SEGMENTOR_REGISTRY", "Segmentor", "build_segmentor", "assemble_prompts", "knn_negatives"]
