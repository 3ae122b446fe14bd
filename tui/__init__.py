"""The monitoring nurse's terminal dashboard (Textual). The core never imports this package."""
