"""anomaly stage (to come: see README.md)."""
