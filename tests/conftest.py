"""Shared fixtures: the real adapter corpus, tiny adapters built with PEFT, and a fresh store."""

from __future__ import annotations

from pathlib import Path

import pytest

# The loopback Hub server and the fixtures that point huggingface_hub at it.
pytest_plugins = ["tests.hubserver.fixtures"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT_ROOT.parent / "shared" / "corpus"

# Adapters in the corpus that are LoRA (or AdaLoRA) PEFT folders.
CORPUS_LORA = (
    "bert-lora-multitask", "bert-tiny-adalora-emot", "distilbert-lora-emotion",
    "distilbert-lora-imdb", "distilgpt2-lora-fifo-false", "distilgpt2-lora-r16",
    "flan-t5-base-lora-target-mismatch", "gemma3-270m-lora-qkvo", "gemma3-270m-lora-qv",
    "gpt2-lora-demo-causal", "gpt2-lora-seqcls-head", "gpt2-lora-tigrinya-causal",
    "llama32-1b-lora-qv", "opencalm-1b-lora-r1-fp16", "sd15-peft-unet-adapter",
    "whisper-small-lora-qv",
)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's store."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path_factory.mktemp("default-home")))


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the adapter corpus is not at {CORPUS}")
    return CORPUS


@pytest.fixture
def store_home(tmp_path) -> Path:
    return tmp_path / "store"
