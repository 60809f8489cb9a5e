"""dashboards stage (to come: see README.md)."""
