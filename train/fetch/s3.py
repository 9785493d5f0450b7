"""s3://bucket/key (an object) and s3://bucket/prefix/ (a folder), read with boto3 as MLflow reads S3.

Credentials and endpoint come from the standard variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
(or any source boto3 knows), MLFLOW_S3_ENDPOINT_URL for MinIO (the pods get all three from the
minio-credentials Secret), MLFLOW_S3_IGNORE_TLS. A folder's objects download concurrently through
boto3's transfer manager, the way `aws s3 sync` does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import List, Tuple
from urllib.parse import urlparse

from train.errors import SourceError

CREDENTIAL_VARIABLES = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "InvalidToken", "ExpiredToken"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise SourceError(f"{uri}: an S3 URI names a bucket: s3://<bucket>/<key or prefix/>")
        return cls(parsed.netloc, parsed.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def endpoint() -> str | None:
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def client(max_concurrency: int, timeout_s: float, location: S3Location):
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=max(10, max_concurrency), connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"max_attempts": 2, "mode": "standard"})  # fail in seconds, not minutes, when down
    verify = False if os.environ.get("MLFLOW_S3_IGNORE_TLS", "").lower() == "true" else None
    try:
        return boto3.client("s3", endpoint_url=endpoint(), config=config, verify=verify)
    except Exception as error:  # noqa: BLE001 - a malformed endpoint URL, an unknown AWS_PROFILE, ...
        raise explain(error, location) from None


def _where() -> str:
    return f" at {endpoint()} (MLFLOW_S3_ENDPOINT_URL)" if endpoint() else ""


def explain(error: Exception, location: S3Location) -> SourceError:
    """boto3's failure as one line that says what to check."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return SourceError(f"{location}: no S3 credentials: set {CREDENTIAL_VARIABLES} (in a Job: the "
                           f"minio-credentials Secret)")
    if isinstance(error, EndpointConnectionError):
        return SourceError(f"{location}: cannot reach the S3 endpoint {endpoint() or 'of AWS'} "
                           f"(MLFLOW_S3_ENDPOINT_URL): {error}")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _DENIED:
            return SourceError(f"{location}: access denied{_where()} ({code}): check {CREDENTIAL_VARIABLES} and "
                               f"that this user may read the bucket")
        if code in ("NoSuchBucket",):
            return SourceError(f"{location}: no bucket {location.bucket!r}{_where()}")
        if code in ("404", "NoSuchKey"):
            return SourceError(f"{location}: no such object or folder{_where()}")
    return SourceError(f"{location}: cannot read it{_where()}: {error}")


def listing(s3, location: S3Location) -> Tuple[List[Tuple[str, int]], str]:
    """([(key, size)], identity): the objects the URI names (one object, or a folder's) and what identifies them now.

    An object's identity is its ETag (and version id, on a versioned bucket); a folder's, every object's key,
    size and ETag. A URI without a trailing slash is an object if one has that key, else a folder.
    """
    from botocore.exceptions import ClientError

    try:
        if location.key and not location.key.endswith("/"):
            try:
                head = s3.head_object(Bucket=location.bucket, Key=location.key)
                identity = f"s3://{location.bucket}/{location.key} {head.get('ETag')} {head.get('VersionId', '')}"
                return [(location.key, int(head["ContentLength"]))], identity
            except ClientError as error:
                if str(error.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey"):
                    raise
        prefix = location.key.rstrip("/") + "/" if location.key else ""
        objects, digest = [], hashlib.sha256()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # "folder" markers some tools create
                    objects.append((item["Key"], int(item["Size"])))
                    digest.update(f"{item['Key']}\0{item['Size']}\0{item.get('ETag')}\n".encode())
    except Exception as error:  # noqa: BLE001 - every boto3 failure becomes one line
        raise explain(error, location) from None
    if not objects:
        raise SourceError(f"{location}: no such object, and no objects under {prefix or '/'}{_where()}")
    return objects, f"s3://{location.bucket}/{prefix} {digest.hexdigest()}"


def _relative(key: str, prefix: str, location: S3Location) -> PurePosixPath:
    """A key's path under the prefix; refused when it would land outside the copy (an empty or '..' part)."""
    parts = key[len(prefix):].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SourceError(f"{location}: the object {key!r} has no path a copy can hold (an empty or '..' part)")
    return PurePosixPath(*parts)


def download(s3, location: S3Location, objects: List[Tuple[str, int]], into: Path, max_concurrency: int) -> None:
    """The object (into/<its name>) or the folder's objects (into/<name>/..., as laid out under the prefix)."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    if len(objects) == 1 and objects[0][0] == location.key:
        target = into / PurePosixPath(location.key).name
        pairs = [(location.key, target)]
    else:
        prefix = location.key.rstrip("/") + "/" if location.key else ""
        target = into / (PurePosixPath(prefix).name or location.bucket)
        pairs = [(key, target / _relative(key, prefix, location)) for key, _ in objects]
    for _, path in pairs:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with create_transfer_manager(s3, TransferConfig(max_concurrency=max_concurrency)) as manager:
            futures = [manager.download(location.bucket, key, str(path)) for key, path in pairs]
            for future in futures:
                future.result()
    except Exception as error:  # noqa: BLE001
        raise explain(error, location) from None
