"""adapterhub: a content-addressed store, composition engine and Hub sync for LoRA adapters."""

__version__ = "0.1.0"
