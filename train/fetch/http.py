"""http(s):// files, with the login a URL may carry sent as basic auth (and never kept).

What identifies the content is the server's ETag, else its Last-Modified and length, asked with a
HEAD; a URL the caller knows to be immutable (a release asset) is its own identity and needs no
request once cached, so it also works offline after its first use.
"""

from __future__ import annotations

import base64
import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Dict, Tuple
from urllib.parse import unquote, urlparse, urlunparse

from train.errors import SourceError
from train.redact import without_credentials


def _request(url: str, method: str) -> urllib.request.Request:
    parsed = urlparse(url)
    bare = urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[-1]))
    headers: Dict[str, str] = {"User-Agent": "yolov5-mlflow"}
    if parsed.username is not None:
        login = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
    return urllib.request.Request(bare, method=method, headers=headers)


def _failure(url: str, error: Exception) -> SourceError:
    shown = without_credentials(url)
    if isinstance(error, urllib.error.HTTPError):
        if error.code in (401, 403):
            return SourceError(f"{shown}: access denied (HTTP {error.code}): check the login the URL carries")
        if error.code == 404:
            return SourceError(f"{shown}: not found (HTTP 404)")
        return SourceError(f"{shown}: HTTP {error.code} {error.reason}")
    reason = getattr(error, "reason", error)
    return SourceError(f"{shown}: cannot download it ({reason})")


def identity(url: str, timeout_s: float) -> str:
    """The URL (without login) and the validators the server gives for its content now."""
    try:
        with urllib.request.urlopen(_request(url, "HEAD"), timeout=timeout_s) as response:
            headers = response.headers
    except urllib.error.HTTPError as error:
        if error.code not in (405, 501):  # HEAD not allowed: the URL alone identifies it
            raise _failure(url, error) from None
        return without_credentials(url)
    except (urllib.error.URLError, OSError) as error:
        raise _failure(url, error) from None
    validator = headers.get("ETag") or f"{headers.get('Last-Modified', '')} {headers.get('Content-Length', '')}"
    return f"{without_credentials(url)} {validator.strip()}"


def file_name(url: str) -> str:
    return PurePosixPath(urlparse(url).path).name or "download"


def download(url: str, into: Path, timeout_s: float) -> Tuple[Path, str]:
    """into/<the URL's file name>, and the response's content type."""
    target = into / file_name(url)
    try:
        with urllib.request.urlopen(_request(url, "GET"), timeout=timeout_s) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
            content_type = response.headers.get("Content-Type", "")
    except (urllib.error.URLError, OSError) as error:
        raise _failure(url, error) from None
    return target, content_type
