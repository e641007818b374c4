"""Errors a user can act on. Stages print them as one message and exit with status 2."""


class Icon2Error(Exception):
    """Base class: the message names the file, key or row and what was expected."""


class ParamsError(Icon2Error):
    """params.yaml is missing a key, has an unknown one, or a value out of range."""


class InputError(Icon2Error):
    """An input file (features, instructions, pairs, prompts) is unusable."""


class ModelError(Icon2Error):
    """The configured model cannot be found, loaded or used as a chat model."""
