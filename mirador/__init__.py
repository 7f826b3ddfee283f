"""Mirador: the local models of an Ollama server as one personal assistant."""

__version__ = "0.1.0"
