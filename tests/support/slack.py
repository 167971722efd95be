"""Slack test helpers (filled in by the Slack test-infrastructure work)."""
