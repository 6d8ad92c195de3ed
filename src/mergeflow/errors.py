"""The one exception type for user errors.

A :class:`MergeflowError` is bad input (an unknown task, a params value out of range, a missing or
corrupt file). The CLI prints its message on one line and exits non-zero without a traceback; any other
exception is a bug and keeps its traceback.
"""


class MergeflowError(Exception):
    """Bad input that stops a stage: the message names the file, key or value and what was expected."""
