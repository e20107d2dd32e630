"""Slash commands and listeners: thin, they parse, check access and hand over to the core."""
