"""Base-model names as recorded in adapter configs, and whether the Hub accepts them as ids.

PEFT records ``base_model_name_or_path`` as the name the base model was loaded by: a Hub id
(``meta-llama/Llama-3.2-1B``), a legacy id without owner (``gpt2``), a local folder
(``/data/models/llama-3.2-1b``) or a bare folder name (``gemma3-270m-it``). The Hub accepts
only model ids in a card's ``base_model``, so anything else is left out of the card metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from adapterhub.cards.hub_ids import LEGACY_MODEL_IDS

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class BaseModel:
    """The base model of an adapter: the recorded name and the Hub id the card may use.

    ``hub_id`` is None when nothing usable is recorded. ``problem`` is then the reason the
    recorded name is not a Hub id, or None when no name is recorded at all.
    """

    recorded: str | None
    hub_id: str | None
    problem: str | None


def hub_id_problem(name: str) -> str | None:
    """Return why ``name`` is not a Hub model id, as a phrase, or None when it is one."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", "..") \
            or "\\" in name or _WINDOWS_DRIVE.match(name):
        return "is a local path"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return "is not a valid Hub model id"
    if "/" not in name and name not in LEGACY_MODEL_IDS:
        return "has no owner namespace and is not one of the Hub's legacy model ids"
    return None


def resolve_base_model(recorded: str | None, card_value: object = None) -> BaseModel:
    """Decide the ``base_model`` of a card from the recorded name and an existing card's value.

    The recorded name wins when it is a Hub id, unless the existing card names the same model
    with its owner (``openai-community/gpt2`` for ``gpt2``). When the recorded name is not a
    Hub id, a valid id in the existing card is used, since its author knew the model.
    """
    card_id = card_value if isinstance(card_value, str) and hub_id_problem(card_value) is None else None
    if not recorded:
        return BaseModel(None, card_id, None)

    problem = hub_id_problem(recorded)
    if problem is None:
        if card_id is not None and "/" not in recorded and card_id.rsplit("/", 1)[-1] == recorded:
            return BaseModel(recorded, card_id, None)
        return BaseModel(recorded, recorded, None)
    return BaseModel(recorded, card_id, problem)
