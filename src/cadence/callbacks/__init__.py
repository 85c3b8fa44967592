"""Built-in callbacks, one module each."""
