"""Interoperability with other libraries' checkpoints: Hugging Face GPT-2 in and out (`interop.hf`).

Imports nothing heavy: transformers is never needed here (only safetensors, and huggingface_hub when a hub
name is fetched); the tests use transformers as the reference.
"""
