"""Hugging Face Hub sync: pull, push, sync and search adapters through huggingface_hub.

- :mod:`~adapterhub.hub.client` is the only module that calls huggingface_hub, and translates
  its errors;
- :mod:`~adapterhub.hub.locations` parses ``OWNER/REPO[@REVISION]`` and ``hf://`` references;
- :mod:`~adapterhub.hub.remotes` keeps what this store last saw at each Hub location;
- :mod:`~adapterhub.hub.pull`, :mod:`~adapterhub.hub.push`, :mod:`~adapterhub.hub.sync` and
  :mod:`~adapterhub.hub.search` implement the commands of the same names.

:class:`adapterhub.library.Library` exposes them as ``pull``, ``push``, ``sync`` and
``search_hub``; docs/hub.md describes what they record and which environment variables apply.
"""
