"""A Panoptic plugin probing the stand-in modules (tests/test_compat.py)."""

from .probe import ProbePlugin

plugin_class = ProbePlugin
