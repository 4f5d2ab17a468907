"""Errors meant for people: each message names the problem and the fix."""


class PromptCLError(Exception):
    """Base class of every error promptcl raises on purpose."""


class ConfigError(PromptCLError, ValueError):
    """A run configuration is invalid (unknown key, bad value, unknown component name)."""


class DataError(PromptCLError, FileNotFoundError):
    """A dataset is missing or malformed."""


class WeightsError(PromptCLError, FileNotFoundError):
    """Pretrained weights cannot be found or loaded."""


class CheckpointError(PromptCLError, RuntimeError):
    """A checkpoint is corrupt or belongs to another run."""


class UnsupportedBackboneError(PromptCLError, TypeError):
    """The wrapped model is a variant whose attention the prompted forward cannot drive."""


class UnsupportedPromptError(PromptCLError, ValueError):
    """Prompts of a kind the backbone (or its tower) does not apply: raised, never ignored."""
