"""Prompt templates: plain text files with named placeholders, read by bot/services/wording.py
(a package only so that a regular install ships them next to `bot/`)."""
