"""http(s):// files, with the login a URL may carry sent as basic auth (and never kept).

What identifies the content is the server's ETag, else its Last-Modified and length, asked with a
HEAD (a GET's headers where HEAD is not allowed: a pre-signed URL signs its method); a URL the caller
knows to be immutable (a release asset) is its own identity and needs no request once cached, so it
also works offline after its first use.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Dict
from urllib.parse import unquote, urlparse, urlunparse

from train.errors import SourceError
from train.redact import redact, without_credentials

# Everything a request can fail with besides an HTTP status: no route, refused, reset, a bad URL.
_UNREACHABLE = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


class _LoginStaysHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but never carries the login to another host or from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        before, after = urlparse(req.full_url), urlparse(newurl)
        if new is not None and (before.netloc != after.netloc or (before.scheme, after.scheme) == ("https", "http")):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_LoginStaysHome)


def _request(url: str, method: str) -> urllib.request.Request:
    parsed = urlparse(url)
    bare = urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[-1]))
    headers: Dict[str, str] = {"User-Agent": "yolov5-mlflow"}
    if parsed.username is not None:
        login = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
    return urllib.request.Request(bare, method=method, headers=headers)


def _failure(url: str, error: Exception) -> SourceError:
    shown = redact(without_credentials(url))
    if isinstance(error, urllib.error.HTTPError):
        if error.code in (401, 403):
            return SourceError(f"{shown}: access denied (HTTP {error.code}): check the login the URL carries")
        if error.code == 404:
            return SourceError(f"{shown}: not found (HTTP 404)")
        return SourceError(f"{shown}: HTTP {error.code} {error.reason}")
    reason = getattr(error, "reason", error)
    return SourceError(f"{shown}: cannot download it ({reason})")


def _headers(url: str, method: str, timeout_s: float):
    with _OPENER.open(_request(url, method), timeout=timeout_s) as response:
        return response.headers


def identity(url: str, timeout_s: float) -> str:
    """The URL (without login) and the validators the server gives for its content now."""
    try:
        try:
            headers = _headers(url, "HEAD", timeout_s)
        except urllib.error.HTTPError as error:
            if error.code not in (401, 403, 405, 501):
                raise
            headers = _headers(url, "GET", timeout_s)  # the body is not read: the response is closed at once
    except _UNREACHABLE as error:
        raise _failure(url, error) from None
    validator = headers.get("ETag") or f"{headers.get('Last-Modified', '')} {headers.get('Content-Length', '')}"
    return f"{without_credentials(url)} {validator.strip()}"


def file_name(url: str) -> str:
    return PurePosixPath(urlparse(url).path).name or "download"


def download(url: str, into: Path, timeout_s: float) -> None:
    """into/<the URL's file name>, whole: a body shorter than its Content-Length is a failed download."""
    target = into / file_name(url)
    try:
        with _OPENER.open(_request(url, "GET"), timeout=timeout_s) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
            expected = response.headers.get("Content-Length")
    except _UNREACHABLE as error:
        raise _failure(url, error) from None
    if expected is not None and expected.isdigit() and target.stat().st_size != int(expected):
        raise SourceError(f"{redact(without_credentials(url))}: the download stopped at {target.stat().st_size} of "
                          f"{expected} bytes")
