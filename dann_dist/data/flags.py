"""The data flags' names and definitions, under the name evaluate.py and the report import.

They live in dann_dist.data.options (a leaf module); new code imports them from there.
"""

from dann_dist.data.options import (
    DATA_FLAGS,
    DEFAULT_MNISTM_VERSION,
    default_data_dir,
    define_flags,
)

__all__ = ["DATA_FLAGS", "DEFAULT_MNISTM_VERSION", "default_data_dir", "define_flags"]
