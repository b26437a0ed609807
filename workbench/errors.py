"""Errors a user can act on.

Anything raised as :class:`WorkbenchError` carries a message that names what was wrong and what is allowed; the
CLI prints it as one line and exits 2, the app shows it with ``st.error``. Other exceptions are bugs.
"""


class WorkbenchError(ValueError):
    """Bad input from a user: an unknown model, a prompt outside the vocabulary, a refused file, ..."""


class NonFiniteLoss(WorkbenchError):
    """A training loss became nan or inf; the message names the step and the last good checkpoint kept."""
