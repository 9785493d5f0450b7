"""Credentials out of every text the recipe writes: the run's record, its log and the console.

Two kinds are known here: the `user:password@` of any URL (a tracking URI written with its login),
and the values of this process's environment variables whose names say they are secret (MinIO and
AWS keys, MLflow's password and token, anything named *PASSWORD*, *SECRET*, *TOKEN*, ...). Every
writer of the record (train.tracking.record) and the console tee (train.console) pass their text
through `redact`, so no path of the code can forget to.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Iterable, List, Mapping, Optional

MASK = "***"
# user:password@ in a URL (a tracking URI written with its credentials in it).
# The look-behind anchors the scheme at its start: without it a long run of letters is rescanned from every
# position (quadratic; a 300 kB line of console output took a minute).
# An optional backslash before '://': Hydra's sweepers escape ':' in the overrides they hand each trial
# (`http\://user\:pw@host`), in its tags, its .hydra files and the launcher's console lines.
_URL_CREDENTIALS = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*\\?://)[^/\s]+@")
# Query parameters that are credentials: pre-signed S3 URLs, SAS and token-in-URL schemes.
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|sig|token|"
                           r"access_token|api_key|apikey|password|secret)=)[^&\s#'\"]+", re.I)
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY|AUTH", re.I)
# Shorter values are too likely to be ordinary words ('true', 'admin') that a mask would garble everywhere.
MIN_SECRET_LENGTH = 6


@functools.lru_cache(maxsize=4096)  # every redact reads the environment again: its names are matched once
def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def secret_values(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """The values of secret-named variables, longest first (so a secret containing another is masked whole)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Optional[Iterable[str]] = None) -> str:
    """`text` with URL credentials and every known secret value replaced by ***.

    The environment is read at each call: a secret set after import (a test, a launcher) is still known.
    """
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>{MASK}@", text)
    text = _QUERY_SECRET.sub(rf"\g<key>{MASK}", text)
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def redact_bytes(data: bytes) -> bytes:
    """`redact` for bytes that may not be UTF-8 (a log with binary noise): undecodable bytes pass through."""
    return redact(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def without_credentials(url: str) -> str:
    """`url` with no `user:password@` at all: to keep, where the login will come from the environment again."""
    return _QUERY_SECRET.sub(rf"\g<key>{MASK}", _URL_CREDENTIALS.sub(r"\g<scheme>", url))
