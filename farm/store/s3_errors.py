"""What botocore raises, told apart and turned into store errors that say what to do.

Every failure of an S3 store reaches the caller as E-STORE-UNREACHABLE (credentials, endpoint, bucket, access,
the service), E-STORE-MISSING or E-STORE-CORRUPT, naming ``MANGOS_FARM_STORE`` where a setting is at fault.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from farm.errors import E, StoreError

CONFLICT_RETRIES = 8  # 409 ConditionalRequestConflict: another conditional write to the key was in flight
TRANSIENT = (BotoConnectionError, HTTPClientError)  # refused, reset, timed out: worth another try
ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


def status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    return code(exc) in ("NoSuchKey", "404", "NotFound")


def is_precondition_failed(exc: ClientError) -> bool:
    """412: an If-None-Match or If-Match condition did not hold."""
    return status(exc) == 412 or code(exc) == "PreconditionFailed"


def is_conflict(exc: ClientError) -> bool:
    """409: another conditional write to the same key was in flight; trying again settles it."""
    return status(exc) == 409 or code(exc) == "ConditionalRequestConflict"


def conditional_write(write: Callable[[], object]) -> bool:
    """Run a write made with If-None-Match: *. True if it created the object, False if the object existed.

    A 409 conflict is tried again (up to ``CONFLICT_RETRIES`` times, with jittered exponential backoff).
    """
    for attempt in range(CONFLICT_RETRIES):
        try:
            write()
        except ClientError as exc:
            if is_precondition_failed(exc):
                return False
            if is_conflict(exc) and attempt < CONFLICT_RETRIES - 1:
                time.sleep(random.uniform(0.01, 0.05) * 2**attempt)  # noqa: S311 - jitter, not crypto
                continue
            raise
        return True
    raise AssertionError("unreachable")  # pragma: no cover


def unreachable(message: str, hint: str) -> StoreError:
    """E-STORE-UNREACHABLE, blaming the store setting."""
    return StoreError(E.STORE_UNREACHABLE, message, field="MANGOS_FARM_STORE", hint=hint)


def no_bucket(bucket: str, endpoint: str) -> StoreError:
    return unreachable(
        f"the bucket '{bucket}' does not exist at {endpoint}",
        "create the bucket (for example 'aws s3 mb s3://BUCKET'), or fix the bucket name or the endpoint",
    )


def missing_blob(digest: str, url: str) -> StoreError:
    return StoreError(
        E.STORE_MISSING,
        f"blob {digest} is not in the store {url}",
        hint="the artifact was never stored here; check MANGOS_FARM_STORE",
    )


def corrupt_blob(digest: str, url: str, detail: str) -> StoreError:
    return StoreError(
        E.STORE_CORRUPT,
        f"blob {digest} in {url} is corrupt ({detail})",
        hint="delete the blob object and rebuild with --force; investigate who wrote to the bucket",
    )


def client_error(exc: ClientError, *, url: str, endpoint: str, bucket: str) -> StoreError:
    """The store error for an S3 error response that was not expected (and so not handled) by the caller."""
    error_code, error_status = code(exc), status(exc)
    message = exc.response.get("Error", {}).get("Message", "") or str(exc)
    if error_code == "NoSuchBucket":
        return no_bucket(bucket, endpoint)
    if error_code in ACCESS_CODES or error_status == 403:
        return unreachable(
            f"S3 refused access to the store {url} at {endpoint}: {error_code or error_status}: {message}",
            "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and that they "
            "may read and write the bucket",
        )
    return unreachable(
        f"an S3 request for the store {url} at {endpoint} failed: {error_code or error_status}: {message}",
        "check the S3 service; transient failures were already retried",
    )


@contextmanager
def mapped(*, url: str, endpoint: str, bucket: str, retry_seconds: float) -> Iterator[None]:
    """Turn what boto3 raises inside the block into a store error."""
    try:
        yield
    except ClientError as exc:
        raise client_error(exc, url=url, endpoint=endpoint, bucket=bucket) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise unreachable(
            f"no usable AWS credentials for the store {url}: {exc}",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the S3 store",
        ) from exc
    except TRANSIENT as exc:
        raise unreachable(
            f"cannot reach the S3 endpoint {endpoint} for the store {url}: {exc}",
            f"check that the endpoint is up and reachable (retried for {retry_seconds:g} s); it comes "
            "from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, or is AWS's own when neither is set",
        ) from exc
    except BotoCoreError as exc:
        raise unreachable(
            f"the S3 client failed for the store {url}: {exc}",
            "check the AWS settings (AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, credentials)",
        ) from exc
