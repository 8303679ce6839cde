class InfirError(Exception):
    """A failure the user can act on; the CLI prints it as one line, no traceback."""
