"""No credential values in the repository: only the names of secrets and of their keys.

Scans every file git would commit (tracked, plus untracked files that are not ignored) for:
AWS-style access key ids, private key blocks, GitHub tokens, the well-known MinIO/KFP default
passwords, a credential-named key (password, secret key, access key, token, ...) assigned a
literal value, and Kubernetes Secrets carrying data. Variable names, references (`$VAR`,
`${{ secrets.X }}`, `{{ ... }}`), `<placeholders>` and empty values pass.

Allowed on purpose, and only here: files under tests/ may assign obviously fake credentials
whose value says so (contains "test", "dummy", "fake" or "example", e.g. "maskpipe-test-key",
moto's "testing") or is too short to work anywhere (under 8 characters: MinIO refuses such
secret keys, AWS keys are longer), and AWS's documented example key ids (ending in EXAMPLE),
because the storage tests need *some* keys for their loopback S3 server.
Everywhere, the values `accesskey` / `secretkey` pass: they are the key NAMES of KFP's
`mlpipeline-minio-artifact` Secret (an env-to-key mapping, not a credential). This file itself is skipped: it
holds the detectors' positive examples.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
MAX_BYTES = 2_000_000

# Built from pieces so that this file does not contain what it looks for.
DEFAULT_PASSWORDS = ("minio" + "admin", "minio" + "123")
AWS_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
PRIVATE_KEY = re.compile("-----BEGIN [A-Z ]*" + "PRIVATE KEY-----")
GITHUB_TOKEN = re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")

# Key names that hold a credential (case-insensitive, `_`/`-` optional between words).
_CREDENTIAL_WORDS = r"(?:password|passwd|secret[_-]?(?:access[_-]?)?key|access[_-]?key(?:[_-]?id)?|api[_-]?key|auth[_-]?token|token)"
# Key names that say where a credential lives, not what it is: secretKeyKey, ..._NAME, ..._FILE.
_LOCATOR_SUFFIXES = ("keykey", "name", "ref", "path", "file", "dir", "env", "url", "endpoint", "placeholder", "help")
KEY = rf"[A-Za-z0-9_.-]*{_CREDENTIAL_WORDS}[A-Za-z0-9_.-]*"
# Config-like text (YAML, env files, Dockerfiles, shell, code blocks): KEY: value / KEY=value.
CONFIG_ASSIGNMENT = re.compile(rf"(?i)(?<![\w-])[\"']?({KEY})[\"']?\s*[:=]\s*(\"[^\"]*\"|'[^']*'|[^\s\"'#,}}]+)")
# Python: only string literals count (`secret_key = other` is code, not a value).
PY_ASSIGNMENT = re.compile(rf"(?i)(?<![\w-])[\"']?({KEY})[\"']?\s*(?::\s*[\w\[\], |.]+)?\s*[:=]\s*(\"[^\"]*\"|'[^']*')")
FAKE_MARKERS = ("test", "dummy", "fake", "example")
SHORTEST_REAL_SECRET = 8  # MinIO's minimum secret key length
KFP_SECRET_KEY_NAMES = {"accesskey", "secretkey"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.excerpt}"


def repository_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    )
    return sorted({p for p in result.stdout.decode().split("\0") if p})


def read_text(path: Path) -> str | None:
    """The file's text, or None for binaries, huge files and files deleted but still tracked."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if len(data) > MAX_BYTES or b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def is_reference_or_placeholder(value: str) -> bool:
    value = value.strip().strip("\"'").strip()
    lowered = value.lower()
    return (
        not value
        or value.startswith(("$", "{{", "<", "%(", "os.environ", "env.", "secrets.", "vars."))
        or re.fullmatch(r"[A-Z][A-Z0-9_]*", value) is not None  # a variable's NAME
        or "..." in value
        or value in KFP_SECRET_KEY_NAMES
        or lowered in {"true", "false", "null", "none", "~", "''", '""', "str", "optional[str]"}
    )


def is_marked_fake(value: str) -> bool:
    value = value.strip("\"'")
    return len(value) < SHORTEST_REAL_SECRET or any(marker in value.lower() for marker in FAKE_MARKERS)


def is_locator(key: str) -> bool:
    return re.sub(r"[_.-]", "", key.lower()).endswith(_LOCATOR_SUFFIXES)


def markdown_code(text: str) -> str:
    """Only fenced code blocks of a Markdown file: prose like `TOKEN: the token` is no value."""
    kept, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            kept.append("")
            continue
        kept.append(line if inside else "")
    return "\n".join(kept)


def scan_text(path: str, text: str) -> list[Finding]:
    in_tests = path.startswith("tests/")
    assignment = PY_ASSIGNMENT if path.endswith(".py") else CONFIG_ASSIGNMENT
    if path.endswith(".md"):
        text = markdown_code(text)
    findings = []
    for number, line in enumerate(text.splitlines(), start=1):
        excerpt = line.strip()[:120]
        for match in AWS_KEY_ID.finditer(line):
            if not (in_tests and match.group().endswith("EXAMPLE")):
                findings.append(Finding(path, number, "AWS access key id", excerpt))
        if PRIVATE_KEY.search(line):
            findings.append(Finding(path, number, "private key", excerpt))
        if GITHUB_TOKEN.search(line):
            findings.append(Finding(path, number, "GitHub token", excerpt))
        if any(p in line.lower() for p in DEFAULT_PASSWORDS):
            findings.append(Finding(path, number, "well-known default MinIO password", excerpt))
        for match in assignment.finditer(line):
            key, value = match.group(1), match.group(2)
            if is_locator(key) or is_reference_or_placeholder(value):
                continue
            if in_tests and is_marked_fake(value):
                continue
            findings.append(Finding(path, number, f"literal value for credential {key!r}", excerpt))
    if path.endswith((".yaml", ".yml")):
        findings += scan_secret_manifests(path, text)
    return findings


def scan_secret_manifests(path: str, text: str) -> list[Finding]:
    try:
        documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError:
        return []  # not plain YAML (e.g. a template); the line rules above still ran
    findings = []
    for document in documents:
        if document.get("kind") != "Secret":
            continue
        for field in ("data", "stringData"):
            filled = [k for k, v in (document.get(field) or {}).items() if v not in (None, "")]
            if filled:
                name = document.get("metadata", {}).get("name")
                findings.append(Finding(path, 0, f"Secret {name} carries values in {field}", ", ".join(filled)))
    return findings


# ---------------------------------------------------------------- the repository


def test_repository_holds_no_secret_values():
    files = [p for p in repository_files() if p != SELF]
    assert len(files) > 10, "git listed almost nothing: is this a checkout?"
    findings = []
    for relative in files:
        text = read_text(ROOT / relative)
        if text is not None:
            findings += scan_text(relative, text)
    assert not findings, "credential values in the repository (use names, references or <placeholders>):\n" + "\n".join(
        map(str, findings)
    )


# ---------------------------------------------------------------- the detectors


@pytest.mark.parametrize(
    "path, text",
    [
        ("k8s/base/minio.env", "MINIO_SECRET_KEY=hunter2hunter2\n"),
        ("deploy/values.yaml", 'auth:\n  password: "s3cr3t-value"\n'),
        ("docker/Dockerfile.x", "ENV AWS_SECRET_ACCESS_KEY=abcd1234abcd1234\n"),
        ("docs/x.md", "```sh\nexport MINIO_ACCESS_KEY=realkey123\n```\n"),
        ("maskpipe/x.py", 'SECRET_KEY = "abcdef123456"\n'),
        ("maskpipe/x.py", 'client = Minio(endpoint, access_key="realkey", secret_key=secret)\n'),
        ("notes.txt", "key id " + "AKIA" + "Q" * 16 + "\n"),
        ("id_rsa", "-----BEGIN RSA " + "PRIVATE KEY-----\n"),
        ("compose.yml", "MINIO_ROOT_PASSWORD: " + DEFAULT_PASSWORDS[0] + "\n"),
        ("tests/test_x.py", 'SECRET_KEY = "production-key-1"\n'),
        ("maskpipe/x.py", 'SECRET_KEY = "b"\n'),
        ("tests/fixtures/x.txt", "AKIA" + "Z" * 16 + "\n"),
        ("k8s/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  accesskey: bWluaW8=\n"),
    ],
)
def test_detects(path, text):
    assert scan_text(path, text), f"missed a secret in {path}: {text!r}"


@pytest.mark.parametrize(
    "path, text",
    [
        ("k8s/base/minio.env.example", "MINIO_ACCESS_KEY=\nMINIO_SECRET_KEY=\n"),
        ("k8s/kfp-launcher.yaml", "accessKeyKey: MINIO_ACCESS_KEY\nsecretKeyKey: MINIO_SECRET_KEY\nsecretName: maskpipe-minio\n"),
        ("k8s/job.yaml", "- name: MINIO_SECRET_KEY\n  valueFrom:\n    secretKeyRef: {name: maskpipe-minio, key: MINIO_SECRET_KEY}\n"),
        (".github/workflows/images.yml", "password: ${{ secrets.REGISTRY_PASSWORD || secrets.GITHUB_TOKEN }}\n"),
        ("docs/cluster.md", '```sh\nkubectl create secret generic s --from-literal=MINIO_SECRET_KEY="$MINIO_SECRET_KEY"\n```\n'),
        ("docs/cluster.md", "MINIO_SECRET_KEY: the secret key, from your admin\n"),
        ("docs/cluster.md", "```sh\nexport MINIO_SECRET_KEY=<your secret key>\n```\n"),
        ("maskpipe/storage.py", 'secret_key = os.environ.get("MINIO_SECRET_KEY")\nMinio(e, access_key=access_key, secret_key=secret_key)\n'),
        ("pipeline.py", 'secret_key_key: str = "secretkey"\nTOKEN_ENV = "KF_PIPELINES_TOKEN"\n'),
        ("tests/conftest.py", 'env = {"MINIO_ACCESS_KEY": "maskpipe-test-key", "AWS_SECRET_ACCESS_KEY": "testing"}\n'),
        ("tests/test_x.py", 'key = "AKIAIOSFODNN7EXAMPLE"\n'),
        ("tests/test_storage.py", '{"MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"}\n'),
        ("tests/test_pipeline_spec.py", 'env == {"MINIO_ACCESS_KEY": "accesskey", "MINIO_SECRET_KEY": "secretkey"}\n'),
        ("k8s/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  accesskey: ''\n"),
    ],
)
def test_passes_names_references_and_marked_fixtures(path, text):
    assert scan_text(path, text) == []
