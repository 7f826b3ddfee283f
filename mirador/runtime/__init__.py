"""Speaking to model servers: the Ollama client and the embedded server."""
