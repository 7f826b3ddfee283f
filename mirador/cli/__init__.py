"""The `mirador` command: one module per command group; parse, call a service, render."""
