"""The point prompter: one point prompt (and class) per nucleus."""
from .network import Prompter, PrompterOutput
from .postprocess import select_prompts

__all__ = ["Prompter", "PrompterOutput", "select_prompts"]
