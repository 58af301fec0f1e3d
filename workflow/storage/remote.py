"""Object stores (S3 and S3-compatible servers, GCS, ...) as a store: where their
requests go and where their credentials come from, for messages; reaching the bucket
first; a failure that outlasts the retries, as one message naming the endpoint."""
from __future__ import annotations

from ..errors import StoreError
from ..utils import is_transient

# where an object store's credentials and endpoint come from, for messages (by protocol)
CREDENTIALS = {"s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws, an instance "
               "role, or key and secret in --storage-options",
               "gs": "GOOGLE_APPLICATION_CREDENTIALS, the machine's account, or token in "
               "--storage-options"}
ENDPOINTS = {"s3": "AWS_ENDPOINT_URL, or endpoint_url in --storage-options"}


def protocols(fs) -> tuple:
    p = fs.protocol
    return p if isinstance(p, tuple) else (p,)


def endpoint_of(fs) -> str:
    """Where an object store's requests go, for messages: the S3 client's endpoint (an
    S3-compatible server's address, or AWS's), else the store's protocol."""
    try:
        return fs.s3.meta.endpoint_url
    except Exception:  # noqa: BLE001 - not s3fs, or no client
        return f"the {protocols(fs)[0]}:// service"


def credentials_of(fs) -> str:
    return CREDENTIALS.get(protocols(fs)[0], "--storage-options")


def reason(e: BaseException) -> str:
    """An exception as one line for a message: its kind and what it says."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def open_bucket(fs, root: str, url: str) -> None:
    """Reach the store's bucket before anything else. An endpoint out of reach,
    credentials it refuses and a bucket that does not exist each stop the command here,
    with one message that says which and what to do (a stage would otherwise retry every
    call for minutes, or create a mistyped bucket)."""
    bucket, endpoint = fs.split_path(root)[0], endpoint_of(fs)
    try:  # not retried here: the client has retried a refused connection itself
        fs.info(bucket)  # (botocore: 5 attempts in some 10 s)
    except FileNotFoundError:
        raise StoreError(f"there is no bucket {bucket!r} at {endpoint} (--store {url}): "
                         "create it first, or correct --store (or the endpoint: " +
                         ENDPOINTS.get(protocols(fs)[0], "--storage-options") + ")") from None
    except PermissionError as e:
        raise StoreError(f"{endpoint} refused access to bucket {bucket!r} ({e}): check the "
                         f"credentials ({credentials_of(fs)}) and that they may read and "
                         "write the bucket") from None
    except Exception as e:
        if not isinstance(e, OSError) and not is_transient(e):
            raise
        where = ENDPOINTS.get(protocols(fs)[0])
        raise StoreError(f"cannot reach {endpoint} for --store {url} ({reason(e)}): check "
                         "that the server runs and is reachable from here" +
                         (f", and the endpoint ({where})" if where else "") +
                         "; then re-run") from None


def failure(what: str, e: Exception, fs, is_local: bool, attempts: int) -> StoreError | None:
    """The StoreError for a store call that failed for good (`what`: the call), or None
    where `e` is not an I/O error (a bug: raised as it is)."""
    if isinstance(e, PermissionError):
        if not is_local:
            return StoreError(f"{what}: {endpoint_of(fs)} refused access ({e}). Check the "
                              f"credentials ({credentials_of(fs)}) and that they may read "
                              "and write the bucket; finished work is kept")
        return StoreError(f"{what}: permission denied ({e.filename or e}). Check that the "
                          "store is writable by you (a Drive mounted read-only? a shared "
                          "folder you may only read?); finished work is kept")
    # OSErrors, and the object store client's network errors (not OSErrors)
    if not isinstance(e, OSError) and not is_transient(e):
        return None
    where = ("the store is reachable - e.g. that Drive is still mounted -" if is_local
             else f"{endpoint_of(fs)} is reachable")
    return StoreError(f"{what}: {reason(e)} (still failing after {attempts} attempts; "
                      f"check that {where} and re-run: finished work is kept)")
