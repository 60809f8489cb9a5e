"""energy stage (to come: see README.md)."""
