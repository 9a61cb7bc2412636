"""promptnucseg: whole-slide nucleus segmentation with PromptNucSeg (prompter + SAM)."""
__version__ = "0.1.0"
