"""A protocol-faithful local Ollama double (see tests/fakes/ollama_server.py for the public API)."""
