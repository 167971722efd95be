"""The outside world: billing provider clients, the sandbox, the LLM client, the HTTP policy."""
