#!/usr/bin/env bash
# Build a maskpipe image with whichever engine this machine has (docker, else podman).
#
#     docker/build-image.sh [--tag maskpipe:dev] [--dockerfile docker/Dockerfile.gpu]
#
# `make image` runs it. The image is labelled with the git commit (REVISION). When the
# Dockerfile's base cannot be pulled (no registry reachable), the GPU image is built on a
# stand-in base made from Debian packages and PyPI's CUDA torch (docker/standin-base/),
# which is built once and kept. With podman the host's CA bundle is mounted into the build
# steps (read-only, never copied into a layer), so pip works behind a TLS-inspecting proxy.
# Every failure ends in one line that names the cause and the command that fixes it.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${IMAGE_TAG:-maskpipe:dev}"
DOCKERFILE="${DOCKERFILE:-docker/Dockerfile.gpu}"
CA_BUNDLE="${MASKPIPE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
DEBIAN_IMAGE="localhost/maskpipe-debian-python:bookworm"
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --dockerfile) DOCKERFILE="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1 (--tag TAG, --dockerfile FILE)" >&2; exit 2 ;;
    esac
done
LOG_DIR="build"
mkdir -p "$LOG_DIR"

fail() { echo "build-image.sh: $*" >&2; exit 1; }
say() { echo "build-image.sh: $*"; }

# ---------------------------------------------------------------- the engine
# A docker CLI whose DOCKER_HOST is podman's socket is podman: build with podman itself, for
# --format docker, the CA mount and podman's image names. (The server's version is read into
# a variable first: grep -q closing the pipe early would fail the pipeline under pipefail.)
docker_server=""
if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
    docker_server="$(timeout 10 docker version 2>/dev/null || true)"
fi
engine=""
if [ -n "${ENGINE:-}" ]; then
    engine="$ENGINE"
elif [ -n "$docker_server" ] && ! grep -qi "podman engine" <<< "$docker_server"; then
    engine=docker
elif command -v podman >/dev/null; then
    engine=podman
fi
[ -n "$engine" ] || fail "no container engine: neither a running Docker daemon nor podman. Fix: sudo docker/engine/setup-podman.sh"
command -v "$engine" >/dev/null || fail "ENGINE=$engine is not installed. Fix: unset ENGINE, or sudo docker/engine/setup-podman.sh"

build_flags=()
if [ "$engine" = podman ]; then
    runtime="$(timeout 30 podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null)" \
        || fail "podman is installed but does not work here (podman info failed). Fix: sudo docker/engine/setup-podman.sh"
    # crun, podman's default, refuses this kind of machine's cgroup layout (setup-podman.sh)
    if [ "$runtime" != runc ]; then
        fail "podman is not configured for this machine (runtime $runtime; needs runc, cgroupfs and ulimits it may set). Fix: sudo docker/engine/setup-podman.sh"
    fi
    # --format docker: OCI images drop SHELL, and the Dockerfiles rely on pipefail.
    build_flags+=(--format docker --network host)
    [ -f "$CA_BUNDLE" ] && build_flags+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi

image_exists() {
    if [ "$engine" = podman ]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

# Runs a build, keeping its output in a log; on failure ends with the one-line cause.
run_build() {
    local what="$1" log="$2"; shift 2
    local status=0
    "$engine" build "${build_flags[@]}" "$@" 2>&1 | tee "$log" || status=$?
    [ "$status" = 0 ] && return 0
    local cause
    if grep -qE "setrlimit|setting rlimit|crun: |cgroup.*(not supported|permission denied)" "$log"; then
        cause="the engine cannot start build containers here (rlimits or cgroups: it is not configured for this machine). Fix: sudo docker/engine/setup-podman.sh"
    elif grep -q CERTIFICATE_VERIFY_FAILED "$log"; then
        cause="pip could not verify the package index's TLS certificate. Fix: MASKPIPE_CA_BUNDLE=/path/to/your/ca-bundle.crt make image (podman), or build where the index is reached directly"
    elif cause="$(grep -oE "(No matching distribution found for|Could not find a version that satisfies the requirement) [^ ]+" "$log" | tail -1)" && [ -n "$cause" ]; then
        cause="a dependency is not on the package index: ${cause}. Fix: correct its pin in pyproject.toml (or check the index: pip download ${cause##* } --no-deps)"
    elif cause="$(grep -oE "base image has .* but pyproject.toml pins [^:]*" "$log" | tail -1)" && [ -n "$cause" ]; then
        cause="${cause}. Fix: build with BASE_IMAGE=<an image with the pinned torch> or change the pins"
    elif grep -qiE "(Temporary failure in name resolution|Failed to establish a new connection|Network is unreachable)" "$log"; then
        cause="a build step could not reach the network (see above). Fix: check this machine's proxy/DNS, then rerun make image"
    else
        cause="see the last error above. Fix it, then rerun make image"
    fi
    fail "building $what failed ($engine; full log $log): $cause"
}

# ---------------------------------------------------------------- the base
default_base="$(sed -n 's/^ARG BASE_IMAGE=//p' "$DOCKERFILE" | head -1)"
base="${BASE_IMAGE:-$default_base}"
[ -n "$base" ] || fail "$DOCKERFILE declares no ARG BASE_IMAGE default. Fix: set BASE_IMAGE=<image>"
if [ "$(basename "$DOCKERFILE")" = Dockerfile.serve ] && [ -z "${BASE_IMAGE:-}" ] && image_exists "$DEBIAN_IMAGE" \
        && ! image_exists "$base" && ! timeout 300 "$engine" pull -q "$base" >/dev/null 2>&1; then
    # The serving image needs only a Python 3.11: Debian bookworm's (the GPU stand-in's first layer).
    say "$base cannot be pulled here, so the serving image builds on $DEBIAN_IMAGE (Debian bookworm's python3)"
    base="$DEBIAN_IMAGE"
fi
if ! image_exists "$base" && ! timeout 300 "$engine" pull -q "$base" >/dev/null 2>&1; then
    [ -z "${BASE_IMAGE:-}" ] || fail "base image $base is neither local nor pullable. Fix: $engine pull $base, or unset BASE_IMAGE"
    [ "$(basename "$DOCKERFILE")" = Dockerfile.gpu ] \
        || fail "base image $base cannot be pulled and only docker/Dockerfile.gpu has a stand-in base (docker/Dockerfile.serve uses $DEBIAN_IMAGE when it exists). Fix: $engine pull $base where a registry is reachable, or BASE_IMAGE=<local image>"
    pin() { python3 -c 'import sys, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(next(d.split("==", 1)[1].strip() for d in deps if d.replace(" ", "").startswith(sys.argv[1] + "==")))' "$1"; }
    torch_pin="$(pin torch)"; torchvision_pin="$(pin torchvision)"
    standin="localhost/maskpipe-standin-base:torch${torch_pin}-vision${torchvision_pin}-bookworm"
    say "$base cannot be pulled here, so the image builds on the stand-in base $standin (Debian bookworm + PyPI's CUDA torch==$torch_pin; see docs/cluster.md)"
    if ! image_exists "$standin"; then
        if ! image_exists "$DEBIAN_IMAGE"; then
            [ "$engine" = podman ] || fail "the stand-in base is imported with podman. Fix: sudo docker/engine/setup-podman.sh --with-debootstrap, then ENGINE=podman make image"
            command -v debootstrap >/dev/null || fail "debootstrap is needed for the stand-in base. Fix: sudo docker/engine/setup-podman.sh --with-debootstrap"
            [ "$(id -u)" = 0 ] || fail "debootstrap must run as root. Fix: sudo make image"
            rootfs="$(mktemp -d /var/tmp/maskpipe-debian.XXXXXX)"
            trap 'rm -rf "$rootfs"' EXIT
            say "debootstrap bookworm into $rootfs (about a minute)"
            debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
                bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$LOG_DIR/debootstrap.log" 2>&1 \
                || fail "debootstrap failed (log $LOG_DIR/debootstrap.log). Fix: check that deb.debian.org (or DEBIAN_MIRROR) is reachable, then rerun"
            tar -C "$rootfs" -c . | podman import -q - "$DEBIAN_IMAGE" >/dev/null
            rm -rf "$rootfs"; trap - EXIT
        fi
        run_build "the stand-in base $standin" "$LOG_DIR/standin-base-build.log" \
            -f docker/standin-base/Dockerfile -t "$standin" \
            --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
            --build-arg "TORCH_VERSION=$torch_pin" --build-arg "TORCHVISION_VERSION=$torchvision_pin" \
            docker/standin-base
    fi
    base="$standin"
fi

# ---------------------------------------------------------------- the image
# REVISION from the environment: a build from an exported tree (no .git) can still say its commit.
if [ -n "${REVISION:-}" ]; then
    revision="$REVISION"
else
    revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    if [ "$revision" != unknown ] && [ -n "$(git status --porcelain -- pyproject.toml README.md LICENSE maskpipe 2>/dev/null)" ]; then
        revision="${revision}-dirty"  # the label must not claim a commit the image does not match
    fi
fi
version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
started=$SECONDS
# The labels also as --label: podman reuses a cached LABEL layer when only a build-arg changed,
# which would leave the previous build's commit on a new image.
run_build "$TAG from $DOCKERFILE" "$LOG_DIR/image-build.log" \
    -f "$DOCKERFILE" -t "$TAG" \
    --build-arg "BASE_IMAGE=$base" --build-arg "REVISION=$revision" --build-arg "VERSION=$version" \
    --label "org.opencontainers.image.revision=$revision" --label "org.opencontainers.image.version=$version" .
size="$("$engine" image inspect --format '{{.Size}}' "$TAG")"
say "built $TAG with $engine in $((SECONDS - started)) s: $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }'), revision $revision, base $base"
