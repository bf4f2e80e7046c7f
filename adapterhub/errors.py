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
    └── ExportError                 the export target cannot be written

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
