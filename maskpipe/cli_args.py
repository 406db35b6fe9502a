"""Flag types and start-up checks that `maskpipe` and `pipeline.py` share.

A flag's value is checked where argparse reads it (the types here raise
``argparse.ArgumentTypeError``, and argparse names the flag); what needs the machine (can this
address be listened on?) is checked before any work starts and raises MaskpipeError. Either
way the user gets one line that names the value, the problem and the fix. Standard library
only: the slim serving environment imports this before kserve.
"""

from __future__ import annotations

import argparse
import errno
import re
import socket
from typing import Callable, NoReturn

from maskpipe.errors import MaskpipeError

MAX_PORT = 65535
# A model name ends up in URL paths (/v1/models/NAME:predict, /v2/models/NAME/infer).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2): the error
    and where the flags are listed, without the usage text argparse prints above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the flags)\n")


def height_by_width(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` (the order of ``--image-size`` and ``data.input_size``) -> (width, height),
    the order PIL and :func:`maskpipe.data.synth.generate` take."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x384 (HEIGHTxWIDTH), got {text!r}")
    if min(h, w) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} has a side under 1 pixel; give HEIGHTxWIDTH, e.g. 512x384")
    return w, h


def port(text: str) -> int:
    """A TCP port to listen on or connect to: a whole number in 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: use a whole number in 1-{MAX_PORT}, e.g. 8080") from None
    if not 1 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port {value} is out of range: use a port in 1-{MAX_PORT}, e.g. 8080")
    return value


def whole_number(minimum: int) -> Callable[[str], int]:
    """A type for whole numbers of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: use {minimum} or more")
        return value

    return parse


def number(*, above: float | None = None, at_least: float | None = None) -> Callable[[str], float]:
    """A type for finite numbers greater than ``above`` or at least ``at_least``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"{text} is too small: use a number above {above:g}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"{text} is too small: use {at_least:g} or more")
        return value

    return parse


def model_name(text: str) -> str:
    """A served model's name: letters, digits, '.', '_' and '-' (it is part of every URL)."""
    if not _MODEL_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot be a model name in URLs: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, e.g. maskpipe"
        )
    return text


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` the way the server will (asyncio's ``create_server``: every address
    ``host`` resolves to, SO_REUSEADDR, IPv6 sockets v6-only) and let go at once.

    Raises:
        MaskpipeError: the host is unknown or not this machine's, or the port is taken or
            needs privileges, naming the address and what to do.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise MaskpipeError(
            f"--host {host!r} is not an address this machine can listen on ({exc.strerror}): use "
            "0.0.0.0 (every interface), 127.0.0.1 (this machine only) or one of its own addresses"
        ) from None
    for family, kind, proto, _, address in sorted(set(infos), key=str):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise MaskpipeError(_bind_message(host, port, exc)) from None


def _bind_message(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is already in use on {host} (another server, or an earlier `maskpipe "
            f"serve` still running; `ss -ltnp 'sport = :{port}'` shows which): stop it, or choose "
            "a free port with --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"--host {host} is not an address of this machine, so nothing can listen on {where}: "
            "use 0.0.0.0 (every interface), 127.0.0.1 (this machine only) or one of its own addresses"
        )
    if exc.errno == errno.EACCES:
        privileged = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if port < 1024 else ""
        return f"no permission to listen on port {port}{privileged}: choose another --port, e.g. --port 8080"
    return f"cannot listen on {where} ({exc.strerror}): check --host and --port"
