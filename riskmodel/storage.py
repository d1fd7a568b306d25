"""The lake's filesystem: a local folder or any fsspec URL (s3://bucket/prefix through s3fs, file://...).

Options come from `settings.lake_storage_options` (fsspec keyword arguments; for S3 the key
`region` becomes botocore's `region_name`). Their values are secrets: `redact_lake` removes
them, and any password in the URL, from text shown in errors and logs.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from riskmodel.db import redact
from riskmodel.errors import ConfigError
from riskmodel.settings import Settings

S3_PROTOCOLS = frozenset({"s3", "s3a"})


def storage_options(settings: Settings) -> dict[str, object]:
    """fsspec keyword arguments for the lake (secrets unwrapped; `region` mapped for S3)."""
    options: dict[str, object] = {k: v.get_secret_value() for k, v in settings.lake_storage_options.items()}
    protocol = settings.lake.split("://", 1)[0] if "://" in settings.lake else "file"
    if protocol in S3_PROTOCOLS and "region" in options:
        region = options.pop("region")
        client_kwargs = dict(options.get("client_kwargs") or {})  # type: ignore[call-overload]
        client_kwargs.setdefault("region_name", region)
        options["client_kwargs"] = client_kwargs
    return options


def redact_lake(settings: Settings, text: str) -> str:
    """`text` with the lake's storage-option values and any URL password replaced by `***`."""
    for value in settings.lake_storage_options.values():
        secret = value.get_secret_value()
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return redact(text)


def lake_key(settings: Settings) -> str:
    """The lake's name in `extract_watermarks` and in its advisory lock: a local folder as its
    absolute path (symlinks kept), so a relative `RISKFLOW_HOME` (the CLI's default) and an absolute
    one (a worker's) name one lake once; a URL as written, with the password of its user part
    replaced by `***`, so no secret is stored."""
    lake = settings.lake
    if "://" not in lake:
        return os.path.abspath(lake)
    parts = urllib.parse.urlsplit(lake)
    if "@" not in parts.netloc:
        return lake
    user, host = parts.netloc.rsplit("@", 1)
    name = user.split(":", 1)[0]
    masked = f"{name}:***@{host}" if ":" in user else parts.netloc
    return urllib.parse.urlunsplit(parts._replace(netloc=masked))


@dataclass(frozen=True)
class LakeStore:
    """The lake's filesystem and root path in it (no protocol, no trailing slash)."""

    fs: AbstractFileSystem
    root: str
    url: str

    @property
    def local(self) -> bool:
        """True for a folder on this machine, where writes go aside and are renamed into place."""
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The path of `parts` under the lake root, as the filesystem spells it."""
        return "/".join([self.root, *parts])


def lake_store(settings: Settings) -> LakeStore:
    """Open the lake's filesystem from `settings.lake` and the storage options (fsspec)."""
    url = settings.lake
    shown = redact_lake(settings, url)
    if "://" not in url:
        return LakeStore(LocalFileSystem(), str(Path(url).resolve()), shown)
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options(settings))
    except (ImportError, ValueError, TypeError) as exc:
        raise ConfigError(f"lake_url {shown}: cannot open it with fsspec: "
                          f"{redact_lake(settings, str(exc))[:300]}") from None
    if isinstance(fs, LocalFileSystem):
        root = str(Path(root).resolve())
    return LakeStore(fs, root.rstrip("/"), shown)


def check_store_writable(settings: Settings, store: LakeStore) -> None:
    """Create and remove a probe object under the lake root; ConfigError naming the lake if that fails."""
    probe = store.path(f".riskflow-probe-{uuid.uuid4().hex}")
    try:
        if store.local:
            Path(store.root).mkdir(parents=True, exist_ok=True)
        store.fs.pipe_file(probe, b"riskflow")
        store.fs.rm_file(probe)
    except Exception as exc:  # every backend raises its own errors (OSError, botocore, ...)
        raise ConfigError(f"lake {store.url} is not writable: {type(exc).__name__}: "
                          f"{redact_lake(settings, str(exc))[:300]}") from None
