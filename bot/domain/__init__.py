"""The pure domain: money, billing models, identifiers, the command grammar, findings. Imports no
Slack, HTTP, SQL or OpenAI module."""
