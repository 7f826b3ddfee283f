"""Memory: embeddings (embed.py; the offline model in minilm.py), the pattern store, the fast-track learner.

Importing this package stays cheap: numpy, tokenizers and chromadb load inside
the functions that need them.
"""
