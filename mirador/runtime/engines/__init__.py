"""Engines behind the embedded server: scripted (deterministic) and llama_cpp (real inference)."""
