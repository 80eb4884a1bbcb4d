"""Validation of model names and versions before they reach MLflow, a path or a process."""

from __future__ import annotations

import re

from gateway.errors import InvalidName

# Letters, digits, '_', '.', '-' and spaces, starting with a letter or digit: every
# name a person gives a model, and nothing that can escape a path or a filter string.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,199}")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")
# MLflow's own alias rule (word characters and '-', at most 255), minus its reserved
# names: `latest` and `v<digits>` (which would read as a version).
_ALIAS = re.compile(r"[\w\-]{1,255}", re.ASCII)
_RESERVED_ALIAS = re.compile(r"latest|[vV]\d+", re.IGNORECASE)


def check_model_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.endswith(" ") or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' or spaces,"
            " starting with a letter or digit (at most 200 characters)"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise InvalidName(f"invalid version {version!r}: a version is a positive integer")
    return version


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias) or _RESERVED_ALIAS.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use letters, digits, '_' or '-' (at most 255);"
            " 'latest' and 'v<number>' are reserved by MLflow"
        )
    return alias


def alias_key(name: str, alias: str) -> str:
    """The key of a deployment that follows a registry alias: `{name}@{alias}`."""
    return f"{name}@{alias}"


def deployment_key(name: str, version: str) -> str:
    """The public key of a deployment, as the original spelled it: `{name}-{version}`."""
    return f"{name}-{version}"
