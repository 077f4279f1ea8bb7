"""What the AWS drivers share about their objects in S3: a backup's bytes read back and hashed."""
from __future__ import annotations

import hashlib

from provisioning.drivers.base import PermanentDriverError
from provisioning.drivers.cloud_retry import CloudNotFoundError, cloud_call

COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


def s3_object_sha256(s3, location: str) -> str:
    """The SHA-256 (hex) of the object at ``s3://bucket/key`` as it is stored now, streamed in 1 MiB chunks.

    Raises ``PermanentDriverError`` when the object is gone, or is in a cold storage class (its bytes cannot be read
    before S3's retrieval of it, which takes hours)."""
    if not location.startswith("s3://"):
        raise PermanentDriverError(f"{location} is not an object in S3")
    bucket, _, key = location.removeprefix("s3://").partition("/")
    try:
        head = cloud_call(f"find {location}", lambda: s3.head_object(Bucket=bucket, Key=key),
                          not_found=("NoSuchKey", "NoSuchBucket", "404"))
    except CloudNotFoundError:
        raise PermanentDriverError(f"backup {location} is missing") from None
    if head.get("StorageClass") in COLD_CLASSES and 'ongoing-request="false"' not in head.get("Restore", ""):
        raise PermanentDriverError(f"{location} is in {head['StorageClass']}: request its retrieval from S3 first")

    def digest() -> str:
        hashing = hashlib.sha256()
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            hashing.update(chunk)
        return hashing.hexdigest()

    return cloud_call(f"read {location}", digest)
