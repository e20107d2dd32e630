"""The VMs: containers run by the manager, reached through a persistent exec channel."""
