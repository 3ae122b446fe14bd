"""Built-in disease modules."""
