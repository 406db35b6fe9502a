"""KServe's ModelServer as `maskpipe serve` runs it: KServe's own flags, listening on ``--host``.

As KServe's own predictors do, `maskpipe serve` builds its parser on KServe's
(``kserve.model_server.parser``: ``--http_port``, ``--model_name``, ``--workers``, ...;
:func:`kserve_parser`) and hands the values to ``ModelServer`` (:func:`model_server`). This is
also the one module of maskpipe that reaches past KServe's public API, each reach checked
against :data:`KSERVE_CHECKED` (tests/test_serve_app.py fails when the installed kserve is
another release or what a reach relies on has moved):

* ``kserve.model_server`` parses ``sys.argv`` when it is imported, into ``model_server.args``:
  its values are ``ModelServer``'s constructor defaults and what the constructor reads for the
  settings it takes no argument for (logging, the predictor settings). So kserve is imported
  here with the command line hidden (its parser would stop at a bad value with its usage text,
  not maskpipe's one line), the flags are parsed once, by `maskpipe serve`'s parser, and their
  values go to ``ModelServer`` as constructor arguments and into ``model_server.args``.
* 0.21's ``RESTServer`` binds 0.0.0.0 with no setting for the address: :class:`_Server` sets
  it on the server's uvicorn config between its creation and its bind (``setup_event_loop``).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
from typing import Any

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve.model_server as kserve_model_server
    from kserve import ModelServer
finally:
    sys.argv = _argv

# The kserve release the reaches above were checked against.
KSERVE_CHECKED = "0.21.0"


def kserve_parser() -> argparse.ArgumentParser:
    """KServe's flags, to build a parser on with ``parents=[...]``: a copy of
    ``kserve.model_server.parser``, so that defaults set on the child (argparse sets them on
    the parent's shared actions) leave KServe's own parser as it was."""
    return copy.deepcopy(kserve_model_server.parser)


def kserve_values(flags: argparse.Namespace) -> dict[str, Any]:
    """The values of KServe's flags in ``flags`` (a namespace a parser built on
    :func:`kserve_parser` made), by KServe's names for them."""
    return {name: getattr(flags, name) for name in vars(kserve_model_server.parser.parse_args([]))}


def model_server(flags: argparse.Namespace, host: str, **kwargs: Any) -> ModelServer:
    """``ModelServer`` with the values of KServe's flags in ``flags``, listening on ``host``;
    ``kwargs`` go to its constructor as well (``registered_models``)."""
    values = kserve_values(flags)
    vars(kserve_model_server.args).update(values)  # what the constructor reads, not takes
    taken = {name: values[name] for name in inspect.signature(ModelServer).parameters if name in values}
    return _Server(host, **taken, **kwargs)


class _Server(ModelServer):
    """KServe's ModelServer listening on ``host``."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._host = host

    def setup_event_loop(self) -> None:
        rest = getattr(self, "_rest_server", None)
        if rest is None or not hasattr(rest, "config"):
            raise RuntimeError(
                f"kserve's ModelServer no longer has the _rest_server.config this predictor sets the "
                f"listen address on (checked against kserve {KSERVE_CHECKED}); update maskpipe.serve_server._Server"
            )
        rest.config.host = self._host
        super().setup_event_loop()
