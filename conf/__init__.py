"""Hydra config tree; a package only so that it ships inside the wheel as swin_cli.conf."""
