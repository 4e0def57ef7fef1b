"""panoptic-demo: a Panoptic-style image-tool plugin (`plugin_class` is what Panoptic loads)."""

from .demo import DemoPlugin

plugin_class = DemoPlugin
