"""The error raised for bad input from a user (a file, a flag, a config), shown as one clear line."""


class UserError(ValueError):
    """Bad input from the user; the command line prints its message alone, without a traceback."""
