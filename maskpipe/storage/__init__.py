"""Local folders and ``s3://bucket/prefix`` (MinIO or any S3 endpoint) behind one small interface.

Every data root in maskpipe is either a local folder or an ``s3://`` URI. Readers ask for
``list_files(root)`` and ``localize(root, rel_paths)`` and get local paths back; for S3 the
objects are downloaded in parallel into a cache folder (``MASKPIPE_CACHE_DIR``, default
``~/.cache/maskpipe/s3``) that a rerun reuses. The endpoint and the credentials come only from
the environment and are never logged (:mod:`~maskpipe.storage.settings` lists the variables).

A wrong setting fails within seconds with a :class:`~maskpipe.errors.StorageError` that says
what to fix; later transient failures are retried with exponential back-off.

The modules, each one job:

* ``operations`` -- the functions callers use (``list_files``, ``localize``, ``read_bytes``,
  ``upload_file``, ``download_file``, ``upload_dir``, ``sync_up``, ``sync_down``);
* ``uri`` -- ``s3://`` parsing and relative-path confinement;
* ``local`` -- local roots;
* ``settings`` -- endpoint, keys and retry budget from the environment;
* ``retry`` -- transient or permanent, back-off, one-line errors;
* ``client`` -- the minio client per process and the bucket preflight;
* ``transfer`` -- single-object stat, download, upload and the thread pool;
* ``cache`` -- the download cache and content checks against ETags.
"""

from __future__ import annotations

from maskpipe.storage.client import _clients, _verified_buckets  # noqa: F401 - tests clear them
from maskpipe.storage.operations import (
    UploadResult,
    download_file,
    list_files,
    localize,
    read_bytes,
    sync_down,
    sync_up,
    upload_dir,
    upload_file,
)
from maskpipe.storage.retry import KFP_BUCKET, KFP_NAMESPACE_PREFIXES
from maskpipe.storage.settings import DEFAULT_REGION, S3Settings, _parse_endpoint  # noqa: F401 - pipeline_cli checks endpoints
from maskpipe.storage.transfer import PART_SIZE
from maskpipe.storage.uri import S3_SCHEME, is_s3, parse_s3_uri

__all__ = [
    "DEFAULT_REGION",
    "KFP_BUCKET",
    "KFP_NAMESPACE_PREFIXES",
    "PART_SIZE",
    "S3_SCHEME",
    "S3Settings",
    "UploadResult",
    "download_file",
    "is_s3",
    "list_files",
    "localize",
    "parse_s3_uri",
    "read_bytes",
    "sync_down",
    "sync_up",
    "upload_dir",
    "upload_file",
]
