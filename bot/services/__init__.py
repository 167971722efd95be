"""Application services: use cases that combine the domain with ports (providers, storage, LLM)."""
