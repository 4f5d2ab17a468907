"""Imports every built-in component module once, so that their ``@register`` calls run.

Importing ``promptcl`` itself registers nothing; the CLI and ``promptcl.run`` import this module.
"""

from promptcl.registry import backbones, datasets, methods

_MODULES = (
    "promptcl.backbones.zoo",
    "promptcl.data.images",
    "promptcl.data.synthetic",
    "promptcl.methods.clip_zeroshot",
    "promptcl.methods.coda_prompt",
    "promptcl.methods.dualprompt",
    "promptcl.methods.finetune",
    "promptcl.methods.hash_prompt",
    "promptcl.methods.hide_prompt",
    "promptcl.methods.joint",
    "promptcl.methods.l2p",
    "promptcl.methods.linear_probe",
    "promptcl.methods.simplecil",
)

for _name in _MODULES:
    __import__(_name)

__all__ = ["backbones", "datasets", "methods"]
