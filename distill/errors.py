"""User-facing errors.

Every problem a user can fix (bad file, unknown column, missing teacher...) is raised as a
:class:`DistillError` whose message names the field, file or row and says how to fix it. The CLI
prints the message without a traceback and exits with status 2.
"""


class DistillError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""
