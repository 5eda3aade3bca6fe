"""Errors that reach the user as a single `swin-train: error: ...` line and a non-zero exit."""


class SwinCliError(Exception):
    """A problem the user can fix (bad config, missing data, unusable checkpoint)."""


class NonFiniteLoss(SwinCliError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
