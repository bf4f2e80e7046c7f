"""Loopback Hugging Face Hub server for tests that drive the real huggingface_hub client.

See `server.HubServer` for the API, and `fixtures` for the pytest fixtures that point
huggingface_hub at it.
"""

from .server import READ_TOKEN, WRITE_TOKEN, HubServer

__all__ = ["HubServer", "READ_TOKEN", "WRITE_TOKEN"]
