"""Billing Triage: the application — settings, the composition root, the CLI, the domain and its
services, and storage."""
