"""Reading records into tables, paired statistics and figures; never runs a model (docs/architecture.md)."""
