"""Errors raised for bad user input: one line naming the file and the key or field."""


class InputError(ValueError):
    """Bad input a user can fix; command-line tools print it alone and exit with status 2."""


class ConfigError(InputError):
    """A bad config value or file (YAML syntax, unknown key, wrong type, out of range)."""


class DataError(InputError):
    """Bad or missing data: annotation JSON, class list, feature files."""
