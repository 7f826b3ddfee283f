"""The deep track: rated history becomes a LoRA adapter for the model the runtime serves.

dataset.py builds chat JSONL from exchanges rated 4–5; gguf_convert.py turns the very GGUF the
runtime serves into a Hugging Face model to train on; trainers/ hold the backends behind one
Trainer interface; export.py writes the adapter back as a GGUF LoRA; deploy.py hands it to the
runtime with /api/create. Heavy libraries (torch, transformers, peft, gguf) load only inside
functions, so `mirador train --dry-run` and the rest of the CLI stay fast.
"""
