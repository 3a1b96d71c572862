"""The accuracy probe (docs/probe.md)."""
