"""Version of the lossplug distribution and of the plugin API it implements."""

__version__ = "0.1.0"

#: Version of the plugin contract (hooks, specs, extras). A plugin declares the
#: API version it was built for in its spec; the registry refuses any other.
API_VERSION = 1
