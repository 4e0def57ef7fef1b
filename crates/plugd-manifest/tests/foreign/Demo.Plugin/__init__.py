from .demo import Demo

plugin_class = Demo
