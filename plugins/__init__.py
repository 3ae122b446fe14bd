"""Built-in plugins, registered through the `telemon` entry-point group like any other."""
