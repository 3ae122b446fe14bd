"""Built-in export targets."""
