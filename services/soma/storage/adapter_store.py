"""Per-session LoRA adapters in object storage (S3 through the minio SDK) or a local folder.

Layout, identical in both backends:
    {session}/{generation}/adapter_model.safetensors
    {session}/{generation}/adapter_config.json
    {session}/{generation}/manifest.json   (sha256 and size of each file, base model, rank,
                                            training metrics, created; written last = the commit)
Loading verifies every sha256 and accepts safetensors weights only (never pickle). Session ids
are checked before they become part of a key or a path, so `../x` or `a/b` can never address
anything outside the session's own prefix.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from soma.adapter_identity import AdapterCorrupt, check_key, check_safetensors
from soma.errors import FailedPrecondition, NotFound, Unavailable
from soma.ids import is_valid_session_id

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"
FILES = (WEIGHTS, CONFIG)


class AdapterNotFound(NotFound):
    pass


class StoreUnavailable(Unavailable):
    pass


class StoreMisconfigured(FailedPrecondition):
    """The store answers but refuses us (no such bucket, bad credentials): retrying will not help."""


_CONFIG_ERRORS = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


@dataclass(frozen=True)
class AdapterManifest:
    session_id: str
    generation: int
    base_model: str
    rank: int
    files: dict[str, dict[str, Any]]  # name -> {"sha256": ..., "size": ...}
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AdapterManifest:
        try:
            raw = json.loads(data)
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise AdapterCorrupt(f"adapter manifest is not valid: {exc}") from exc


@dataclass(frozen=True)
class StoredAdapter:
    manifest: AdapterManifest
    weights: bytes  # safetensors
    config: bytes  # adapter_config.json

    @property
    def size(self) -> int:
        return len(self.weights) + len(self.config)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(
    session_id: str, generation: int, weights: bytes, config: bytes, *, base_model: str, rank: int, metrics=None
) -> AdapterManifest:
    check_key(session_id, generation)
    check_safetensors(weights)
    return AdapterManifest(
        session_id=session_id,
        generation=generation,
        base_model=base_model,
        rank=rank,
        files={
            WEIGHTS: {"sha256": _sha256(weights), "size": len(weights)},
            CONFIG: {"sha256": _sha256(config), "size": len(config)},
        },
        metrics=dict(metrics or {}),
        created=time.time(),
    )


def verify(manifest: AdapterManifest, weights: bytes, config: bytes) -> StoredAdapter:
    for name, data in ((WEIGHTS, weights), (CONFIG, config)):
        expected = manifest.files.get(name, {}).get("sha256")
        got = _sha256(data)
        if expected != got:
            raise AdapterCorrupt(
                f"adapter {manifest.session_id}/{manifest.generation}: {name} has sha256 {got[:12]}…, manifest says "
                f"{str(expected)[:12]}…; refusing to load it"
            )
    check_safetensors(weights)
    return StoredAdapter(manifest, weights, config)


class AdapterStore(Protocol):
    def uri(self, session_id: str, generation: int) -> str: ...

    def put(self, manifest: AdapterManifest, weights: bytes, config: bytes) -> str: ...

    def get(self, session_id: str, generation: int) -> StoredAdapter: ...

    def generations(self, session_id: str) -> list[int]: ...

    def delete_generation(self, session_id: str, generation: int) -> None: ...

    def delete_session(self, session_id: str) -> int: ...

    def session_ids(self) -> list[str]: ...


class LocalAdapterStore:
    """Embedded mode: a folder; each generation is published with one atomic rename."""

    def __init__(self, root: Path):
        # absolute: a file URI needs it, and a relative root would move with the working directory
        self.root = Path(os.path.abspath(Path(root).expanduser()))

    def uri(self, session_id: str, generation: int) -> str:
        return (self.root / check_key(session_id, generation)).as_uri()

    def put(self, manifest: AdapterManifest, weights: bytes, config: bytes) -> str:
        """Publish a generation with one atomic rename. A generation is written once: when it exists
        already (a redelivered job), the stored one stays and is what readers keep getting."""
        key = check_key(manifest.session_id, manifest.generation)
        verify(manifest, weights, config)
        final = self.root / key
        if (final / MANIFEST).is_file():
            return self.uri(manifest.session_id, manifest.generation)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.generation}-", dir=final.parent))
        try:
            (staging / WEIGHTS).write_bytes(weights)
            (staging / CONFIG).write_bytes(config)
            (staging / MANIFEST).write_bytes(manifest.to_json())
            try:
                os.rename(staging, final)
            except OSError:
                if not (final / MANIFEST).is_file():  # not a concurrent writer that won: a real error
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.uri(manifest.session_id, manifest.generation)

    def get(self, session_id: str, generation: int) -> StoredAdapter:
        folder = self.root / check_key(session_id, generation)
        if not (folder / MANIFEST).is_file():
            raise AdapterNotFound(f"no adapter generation {generation} for session {session_id!r}")
        manifest = AdapterManifest.from_json((folder / MANIFEST).read_bytes())
        try:
            return verify(manifest, (folder / WEIGHTS).read_bytes(), (folder / CONFIG).read_bytes())
        except FileNotFoundError as exc:
            raise AdapterCorrupt(f"adapter {session_id}/{generation} is missing {exc.filename}") from exc

    def generations(self, session_id: str) -> list[int]:
        check_key(session_id, 1)
        folder = self.root / session_id
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())

    def delete_generation(self, session_id: str, generation: int) -> None:
        """Remove one generation: its manifest first, so no reader takes a half-deleted one as whole."""
        folder = self.root / check_key(session_id, generation)
        (folder / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def delete_session(self, session_id: str) -> int:
        check_key(session_id, 1)
        folder = self.root / session_id
        count = len(self.generations(session_id))
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def session_ids(self) -> list[str]:
        """The sessions that have anything stored (for the orphan sweep)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_valid_session_id(p.name))


class S3AdapterStore:
    """Cluster mode: an S3 bucket (MinIO or any S3 service) through the minio SDK."""

    def __init__(self, client: Any, bucket: str, *, create_bucket: bool = False):
        self.client = client
        self.bucket = bucket
        if create_bucket:
            self._call(lambda: self.client.bucket_exists(bucket) or self.client.make_bucket(bucket))

    @classmethod
    def connect(
        cls,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool,
        region: str | None = None,
        create_bucket: bool = False,
    ) -> S3AdapterStore:
        from minio import Minio
        from urllib3 import PoolManager, Retry, Timeout

        http = PoolManager(timeout=Timeout(connect=2.0, read=30.0), retries=Retry(total=2, backoff_factor=0.2))
        client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http
        )
        return cls(client, bucket, create_bucket=create_bucket)

    def _call(self, fn):
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise
            if exc.code in _CONFIG_ERRORS:
                raise StoreMisconfigured(
                    f"adapter store s3://{self.bucket} refuses access: {exc.code}: {exc.message}; check "
                    "adapters.s3_bucket and the credentials"
                ) from exc
            raise StoreUnavailable(f"adapter store s3://{self.bucket}: {exc.code}: {exc.message}") from exc
        except MinioException as exc:  # ServerError (5xx), InvalidResponseError, ...
            raise StoreUnavailable(f"adapter store s3://{self.bucket}: {type(exc).__name__}: {exc}") from exc
        except (HTTPError, OSError) as exc:
            raise StoreUnavailable(f"adapter store s3://{self.bucket} is unreachable: {exc}") from exc

    def uri(self, session_id: str, generation: int) -> str:
        return f"s3://{self.bucket}/{check_key(session_id, generation)}"

    def _put(self, name: str, data: bytes, content_type: str) -> None:
        self._call(
            lambda: self.client.put_object(self.bucket, name, io.BytesIO(data), len(data), content_type=content_type)
        )

    def _read(self, name: str) -> bytes:
        def read():
            response = self.client.get_object(self.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(read)

    def _exists(self, name: str) -> bool:
        from minio.error import S3Error

        try:
            self._call(lambda: self.client.stat_object(self.bucket, name))
            return True
        except S3Error:
            return False

    def put(self, manifest: AdapterManifest, weights: bytes, config: bytes) -> str:
        """Files first, manifest last (the commit marker). A generation is written once: when its
        manifest exists already (a redelivered job), the stored generation stays as it is."""
        key = check_key(manifest.session_id, manifest.generation)
        verify(manifest, weights, config)
        if self._exists(f"{key}/{MANIFEST}"):
            return self.uri(manifest.session_id, manifest.generation)
        try:
            self._put(f"{key}/{WEIGHTS}", weights, "application/octet-stream")
            self._put(f"{key}/{CONFIG}", config, "application/json")
            self._put(f"{key}/{MANIFEST}", manifest.to_json(), "application/json")  # last: the commit marker
        except Exception:
            self._remove_quietly(key, (WEIGHTS, CONFIG))  # no manifest, so never read; no orphan files either
            raise
        return self.uri(manifest.session_id, manifest.generation)

    def _remove_quietly(self, key: str, names: tuple[str, ...]) -> None:
        for name in names:
            try:
                self._call(lambda name=name: self.client.remove_object(self.bucket, f"{key}/{name}"))
            except Exception as err:  # noqa: BLE001 - the store is failing already; report the first error
                logging.getLogger("soma.storage").warning("could not remove %s/%s: %s", key, name, err)

    def delete_generation(self, session_id: str, generation: int) -> None:
        """Remove one generation, manifest first (the commit marker goes before the files)."""
        key = check_key(session_id, generation)
        self._call(lambda: self.client.remove_object(self.bucket, f"{key}/{MANIFEST}"))
        for name in FILES:
            self._call(lambda name=name: self.client.remove_object(self.bucket, f"{key}/{name}"))

    def get(self, session_id: str, generation: int) -> StoredAdapter:
        from minio.error import S3Error

        key = check_key(session_id, generation)
        try:
            manifest = AdapterManifest.from_json(self._read(f"{key}/{MANIFEST}"))
        except S3Error as exc:
            raise AdapterNotFound(f"no adapter generation {generation} for session {session_id!r}") from exc
        try:
            weights, config = self._read(f"{key}/{WEIGHTS}"), self._read(f"{key}/{CONFIG}")
        except S3Error as exc:
            raise AdapterCorrupt(f"adapter {key} is missing a file: {exc.code}") from exc
        return verify(manifest, weights, config)

    def generations(self, session_id: str) -> list[int]:
        check_key(session_id, 1)
        names = self._call(
            lambda: [
                o.object_name for o in self.client.list_objects(self.bucket, prefix=f"{session_id}/", recursive=True)
            ]
        )
        return sorted({int(n.split("/")[1]) for n in names if n.endswith(f"/{MANIFEST}") and n.split("/")[1].isdigit()})

    def delete_session(self, session_id: str) -> int:
        from minio.deleteobjects import DeleteObject

        count = len(self.generations(session_id))
        names = self._call(
            lambda: [
                o.object_name for o in self.client.list_objects(self.bucket, prefix=f"{session_id}/", recursive=True)
            ]
        )
        if names:
            errors = self._call(lambda: list(self.client.remove_objects(self.bucket, [DeleteObject(n) for n in names])))
            if errors:
                raise StoreUnavailable(f"could not delete {len(errors)} objects of session {session_id!r}: {errors[0]}")
        return count

    def session_ids(self) -> list[str]:
        """The sessions that have anything stored (for the orphan sweep): the bucket's top-level prefixes."""
        names = self._call(lambda: [o.object_name for o in self.client.list_objects(self.bucket, recursive=False)])
        return sorted(n.rstrip("/") for n in names if n.endswith("/") and is_valid_session_id(n.rstrip("/")))


def open_store(settings: Any, *, create_bucket: bool = False) -> AdapterStore:
    """The configured store (soma.config.AdapterStoreSettings); S3 checks its bucket right away."""
    if settings.backend == "local":
        return LocalAdapterStore(settings.local_dir)
    access, secret = settings.credentials()
    store = S3AdapterStore.connect(
        settings.s3_endpoint,
        settings.s3_bucket,
        access,
        secret,
        secure=settings.s3_secure,
        region=settings.s3_region,
        create_bucket=create_bucket,
    )
    try:
        exists = create_bucket or store._call(lambda: store.client.bucket_exists(settings.s3_bucket))
    except StoreUnavailable as err:  # unreachable now: serve anyway; each adapter load reports it
        logging.getLogger("soma.storage").warning("%s; adapter loads will fail until it is back", err)
        return store
    if not exists:
        raise StoreMisconfigured(
            f"adapter store bucket {settings.s3_bucket!r} does not exist at {settings.s3_endpoint}; create it "
            "(the Helm chart's bucket job does) or fix adapters.s3_bucket"
        )
    return store
