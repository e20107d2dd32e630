"""A Discord bot that gives every member a personal coding agent with its own persistent computer."""
