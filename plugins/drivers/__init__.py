"""Built-in device drivers."""
