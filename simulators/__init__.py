"""simulators stage (to come: see README.md)."""
