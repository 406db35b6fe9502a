#!/usr/bin/env bash
# Set up podman as this machine's container engine, with a Docker-compatible API socket.
#
# For a fresh Debian/Ubuntu machine, run as root (CI does this through .ci/run):
#     sudo docker/engine/setup-podman.sh [--with-debootstrap]
# Idempotent: installs only what is missing, rewrites the settings file only when it differs
# and starts the API service only when its socket does not answer. Prints the DOCKER_HOST
# value the docker runner and the tests use.
#
# Why each setting (checked on this kind of machine; see docs/cluster.md):
#   runtime = "runc"              crun (podman's default) refuses the hybrid cgroup layout
#   cgroup_manager = "cgroupfs"   no systemd as PID 1 in CI containers
#   default_ulimits               podman raises nofile/nproc by default; without
#                                 CAP_SYS_RESOURCE that fails with "setrlimit ... Operation
#                                 not permitted". These values are the ones that worked here
#                                 (this shell's own limits did not: rlimit type 6, nproc)
set -euo pipefail

SOCKET="${MASKPIPE_PODMAN_SOCKET:-/run/maskpipe/podman.sock}"
CONF="${CONTAINERS_CONF_FILE:-/etc/containers/containers.conf}"
LOG="${MASKPIPE_PODMAN_LOG:-/var/log/maskpipe-podman-service.log}"
PIDFILE="$(dirname "$SOCKET")/podman-service.pid"
WITH_DEBOOTSTRAP=0
for arg in "$@"; do
    case "$arg" in
        --with-debootstrap) WITH_DEBOOTSTRAP=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "setup-podman.sh: unknown argument $arg (only --with-debootstrap)" >&2; exit 2 ;;
    esac
done

fail() { echo "setup-podman.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root to install packages and start the service: sudo $0 $*"
command -v apt-get >/dev/null || fail "needs apt-get (Debian/Ubuntu); install podman and runc with this system's package manager, then rerun"

packages=()
command -v podman >/dev/null || packages+=(podman)
command -v runc >/dev/null || packages+=(runc)
if [ "$WITH_DEBOOTSTRAP" = 1 ] && ! command -v debootstrap >/dev/null; then packages+=(debootstrap); fi
if [ "${#packages[@]}" -gt 0 ]; then
    echo "setup-podman.sh: installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update failed: check this machine's package sources (/etc/apt/sources.list*)"
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
        || fail "apt-get install ${packages[*]} failed (see above)"
fi

wanted="$(cat <<CONF
# Written by maskpipe docker/engine/setup-podman.sh; reasons in that script.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
)"
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$wanted" ]; then
    if [ -f "$CONF" ] && ! grep -q 'maskpipe docker/engine/setup-podman.sh' "$CONF"; then
        cp -p "$CONF" "$CONF.before-maskpipe"
        echo "setup-podman.sh: kept the previous $CONF as $CONF.before-maskpipe"
    fi
    mkdir -p "$(dirname "$CONF")"
    tmp="$(mktemp "$CONF.XXXXXX")"
    printf '%s\n' "$wanted" > "$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"
    echo "setup-podman.sh: wrote $CONF"
    # A service started before the change still runs with the old settings.
    if [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "setup-podman.sh: stopped the podman API service that ran with the old settings"
        sleep 1
    fi
fi

socket_answers() {
    [ -S "$SOCKET" ] && curl -sf --max-time 3 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1
}

# A service whose working folder was deleted still answers the socket, but every container
# it starts fails ("conmon: Failed to get working directory", "write child: broken pipe"):
# seen when it had been started from a clone that was removed later. Restart it.
if [ -f "$PIDFILE" ] && [ -e "/proc/$(cat "$PIDFILE")" ] \
        && [[ "$(readlink "/proc/$(cat "$PIDFILE")/cwd")" == *" (deleted)" ]]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    for _ in $(seq 50); do [ -e "/proc/$(cat "$PIDFILE")" ] || break; sleep 0.2; done
    echo "setup-podman.sh: stopped the podman API service whose working folder was deleted"
fi
if ! socket_answers; then
    command -v curl >/dev/null || { apt-get install -y -qq curl >/dev/null || fail "could not install curl"; }
    mkdir -p "$(dirname "$SOCKET")" "$(dirname "$LOG")"
    rm -f "$SOCKET"
    # setsid + nohup: the service outlives this script and the shell that ran it; from /, so
    # that removing the folder this ran in (a CI clone) cannot break it.
    (cd / && exec setsid nohup podman system service --time=0 "unix://$SOCKET" >>"$LOG" 2>&1 < /dev/null) &
    echo $! > "$PIDFILE"
    for _ in $(seq 50); do socket_answers && break; sleep 0.2; done
    socket_answers || fail "podman system service did not answer on $SOCKET within 10 s; its log: $LOG"
    echo "setup-podman.sh: podman API service started on $SOCKET (log $LOG)"
fi
echo "DOCKER_HOST=unix://$SOCKET"
