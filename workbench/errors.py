"""Errors a user can act on.

Anything raised as :class:`WorkbenchError` carries a message that names what was wrong and what is allowed; the
CLI prints it as one line and exits 2, the app shows it with ``st.error``. Other exceptions are bugs.
"""


class WorkbenchError(ValueError):
    """Bad input from a user: an unknown model, a prompt outside the vocabulary, a refused file, ..."""
