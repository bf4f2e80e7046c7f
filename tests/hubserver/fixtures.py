"""pytest fixtures that run a loopback HubServer and point huggingface_hub at it.

Register them for the whole suite with `pytest_plugins = ["tests.hubserver.fixtures"]` in the
top-level `tests/conftest.py`.

`hub_env` makes code that calls huggingface_hub without an explicit endpoint, token or cache
reach the loopback server. huggingface_hub 2.4 reads most settings once, when
`huggingface_hub.constants` is imported, and several modules copy them at import time. Setting
environment variables alone therefore only helps subprocesses; in-process code also needs
these attributes patched (all restored by monkeypatch after the test):

- `constants.ENDPOINT`, `HUGGINGFACE_CO_URL_TEMPLATE` (file URLs built by `hf_hub_url`) and
  `HF_URL_HOSTS` (hosts whose URLs `RepoUrl` accepts).
- `utils._http._HUB_ORIGINS`: origins the resolve HEAD follows redirects to and sends the
  token to.
- `hf_api.api.endpoint`: the module-level `HfApi` behind `huggingface_hub.model_info`,
  `list_models`, `upload_folder` and the other top-level functions, built at import.
- `utils._git_credential.ENDPOINT`: the URL that `login(add_to_git_credential=True)` stores.
- `constants.HF_HOME`, `HF_HUB_CACHE`, `HF_ASSETS_CACHE`, `HF_XET_CACHE`, `HF_TOKEN_PATH`,
  `HF_STORED_TOKENS_PATH`, `AGENT_HARNESSES_PATH`, and the copies in `utils._cache_manager`
  (`scan_cache_dir`) and `utils._cache_assets`: a temporary HF home, so no test reads or writes
  the developer's cache or sends the developer's saved token.
- `constants.HF_HUB_DISABLE_XET = True`: hf_xet is installed, and with Xet enabled the client
  uploads LFS files through Xet, which the server does not implement.
- `constants.HF_HUB_DISABLE_TELEMETRY = True`: skips the agent-harness registry request.
- `constants.HF_HUB_OFFLINE = False` and `HF_HUB_DISABLE_IMPLICIT_TOKEN = False`, in case the
  developer's shell sets them.

It also empties fsspec's cache of `HfFileSystem` instances (each remembers its endpoint) and
closes huggingface_hub's shared HTTP client before and after the test, so that the client picks
up `NO_PROXY` and keeps no connection to a stopped server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from .server import WRITE_TOKEN, HubServer

# Variables that would send requests elsewhere, exchange tokens or switch the client offline.
UNSET_VARIABLES = (
    "HF_OIDC_RESOURCE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
)


@dataclass(frozen=True)
class HubEnvironment:
    """What `hub_env` set up: the server, its endpoint, the token in HF_TOKEN and the temporary HF home."""

    server: HubServer
    endpoint: str
    token: str
    hf_home: Path
    cache_dir: Path


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """Run a HubServer on 127.0.0.1 for one test, and fail the test if the server hit an internal error."""
    server = HubServer(tmp_path_factory.mktemp("hub-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
    if server.internal_errors:
        pytest.fail("The test Hub answered 500 (a server bug) to:\n" + "\n".join(server.internal_errors))


@pytest.fixture
def hub_env(
    hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubEnvironment]:
    """Point huggingface_hub, in this process and in subprocesses, at `hub_server` with a write token."""
    import huggingface_hub.utils._cache_assets as cache_assets
    import huggingface_hub.utils._cache_manager as cache_manager
    import huggingface_hub.utils._git_credential as git_credential
    from huggingface_hub import HfFileSystem, constants, hf_api
    from huggingface_hub.utils import _http

    endpoint = hub_server.endpoint
    assert endpoint is not None, "hub_server must be started"
    hf_home = tmp_path_factory.mktemp("hf-home")
    cache_dir = hf_home / "hub"

    for name in UNSET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    environment = {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": WRITE_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache_dir),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    url_template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    endpoint_host = urlsplit(endpoint).hostname or "127.0.0.1"
    constant_values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": url_template,
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {endpoint_host},
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache_dir),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in constant_values.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(cache_assets, "HF_ASSETS_CACHE", str(hf_home / "assets"))
    monkeypatch.setattr(git_credential, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(hf_api.api, "_whoami_cache", {})

    HfFileSystem.clear_instance_cache()
    _http.close_session()
    try:
        yield HubEnvironment(hub_server, endpoint, WRITE_TOKEN, hf_home, cache_dir)
    finally:
        HfFileSystem.clear_instance_cache()
        _http.close_session()
