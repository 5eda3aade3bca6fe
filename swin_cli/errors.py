"""The one exception type that reaches the user as a single `swin-train: error: ...` line."""


class SwinCliError(Exception):
    """A problem the user can fix (bad config, missing data, unusable checkpoint)."""
