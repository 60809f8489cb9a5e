"""policies stage (to come: see README.md)."""
