"""The one exception the data package raises for bad or missing input."""


class DataError(Exception):
    """Data could not be obtained or failed a check.

    The message names the file, the problem and what the user can do; the data
    command prints it as is and exits with status 1.
    """
