"""The local console: `billing-triage shell` and `ask` drive the real Bolt app against the
sandbox's stand-in for Slack's Web API, and render what the bot would post as terminal text."""
