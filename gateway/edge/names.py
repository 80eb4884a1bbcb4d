"""Validation of model names and versions before they reach MLflow, a path or a process."""

from __future__ import annotations

import re

from gateway.errors import InvalidName

# Letters, digits, '_', '.', '-' and spaces, starting with a letter or digit: every
# name a person gives a model, and nothing that can escape a path or a filter string.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,199}")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


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


def deployment_key(name: str, version: str) -> str:
    """The public key of a deployment, as the original spelled it: `{name}-{version}`."""
    return f"{name}-{version}"
