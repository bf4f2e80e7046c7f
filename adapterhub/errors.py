"""The exception tree of the adapterhub package.

Every error that adapterhub raises on purpose derives from :class:`AdapterHubError`; the store
layer has its own root, :class:`store.errors.StoreError`. The CLI turns both into
``Error: <message>`` and exit code 1.

    AdapterHubError
    ├── AdapterFormatError          files that cannot be read as an adapter
    │   └── UnsupportedAdapterError the files are readable but not an adapter kind we handle
    ├── CompositionError            inputs that cannot be composed as asked
    │   ├── BaseModelMismatchError  adapters trained on different base models
    │   ├── ShapeMismatchError      one module with different shapes in two adapters
    │   ├── UnsupportedCompositionError  adapter kinds whose update is not B·A (DoRA, lora_bias)
    │   └── HeadConflictError       different ``modules_to_save`` tensors for one head
    ├── InvalidOptionError          an option value that is out of range or malformed
    ├── ExportError                 the export target cannot be written
    ├── CardError                   a model card that cannot be rendered or that the Hub would reject
    └── HubError                    a Hugging Face Hub operation that failed
        ├── HubAuthError            no token, an invalid token or one without write access
        ├── HubNotFoundError        the repo, revision or file does not exist (or is private)
        ├── GatedRepoError          the repo is gated and this account has no access yet
        ├── RemoteMovedError        the remote branch moved since this store last saw it
        ├── NotAnAdapterError       the repo contains no PEFT adapter where one was expected
        ├── UnsafeRemotePathError   the repo lists a file path that leaves its folder
        ├── DownloadError           a download was cut off or its bytes do not match the Hub
        └── OfflineError            HF_HUB_OFFLINE is set and the store has no copy

Messages name the offending value, what was expected and what to do about it.
"""

from __future__ import annotations


class AdapterHubError(Exception):
    """Root of the errors adapterhub raises on purpose."""


class AdapterFormatError(AdapterHubError):
    """Adapter files are missing, truncated or inconsistent."""


class UnsupportedAdapterError(AdapterFormatError):
    """The files are readable but hold no adapter kind that adapterhub supports."""


class CompositionError(AdapterHubError):
    """The inputs cannot be composed as requested."""


class BaseModelMismatchError(CompositionError):
    """Adapters were trained on different base models."""


class ShapeMismatchError(CompositionError):
    """One module has different shapes in two adapters."""


class UnsupportedCompositionError(CompositionError):
    """An adapter's update is not a sum of low-rank products, so it cannot be composed."""


class HeadConflictError(CompositionError):
    """Two adapters save different tensors for the same ``modules_to_save`` head."""


class InvalidOptionError(AdapterHubError):
    """An option value is malformed or out of range."""


class ExportError(AdapterHubError):
    """The export target cannot be written."""


class CardError(AdapterHubError):
    """A model card cannot be rendered, or its metadata would be rejected by the Hub.

    ``fields`` names the offending card fields (``license``, ``model-index[0].name``) or
    template variables, in the order the message lists them.
    """

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class HubError(AdapterHubError):
    """A Hugging Face Hub operation failed."""


class HubAuthError(HubError):
    """The Hub needs a token, or a token with write access, for the operation."""


class HubNotFoundError(HubError):
    """The repo, revision or file does not exist on the Hub, or the token cannot see it."""


class GatedRepoError(HubError):
    """The repo is gated, and the account of the token has not been granted access."""


class RemoteMovedError(HubError):
    """The remote branch has commits that this store has not seen."""


class NotAnAdapterError(HubError):
    """The repo (or its requested folder), or the artifact to push, is not a PEFT adapter."""


class UnsafeRemotePathError(HubError):
    """A file path listed by the Hub is absolute or climbs out of its folder with ``..``."""


class DownloadError(HubError):
    """A download did not complete, or the bytes differ from the hash the Hub lists."""


class OfflineError(HubError):
    """``HF_HUB_OFFLINE`` is set and the store has no copy of what was requested."""
