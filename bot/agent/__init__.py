"""The agent: an Ollama tool-calling loop acting in the conversation's VM."""
