"""What went wrong talking to the Kubeflow Pipelines API, said in a line or two with the fix.

kfp.Client reacts to a wrong host by retrying its health check five times, five seconds
apart, then raises a TimeoutError that has lost the cause, after three chained tracebacks.
``check_api`` asks the same health endpoint once, with a timeout, before the client exists,
and turns each way it can fail (nothing listening, unknown host, TLS, the auth proxy's
401/403 or login redirect, a URL that is not the API) into a ClusterError. ``explain_api_error``
does the same for errors of the API calls that follow (unknown namespace, no permission).
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Optional

HEALTHZ = "/apis/v2beta1/healthz"
PORT_FORWARD = "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80"
AUTH_FIX = (
    "pass a token (--token, $KF_PIPELINES_TOKEN, e.g. from `kubectl -n NAMESPACE create token "
    "default-editor`) or a browser session cookie (--cookie authservice_session=...)"
)


class ClusterError(Exception):
    """The cluster could not be used; the message names the cause and the fix."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """An auth proxy answers with a redirect to its login page: report it, don't follow it."""

    def redirect_request(self, *args, **kwargs):
        return None


def check_api(
    host: str,
    *,
    token: Optional[str] = None,
    cookie: Optional[str] = None,
    insecure: bool = False,
    timeout: float = 10.0,
) -> None:
    """Ask ``host``'s health endpoint once; raise ClusterError unless the KFP API answers."""
    url = host.rstrip("/") + HEALTHZ
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    handlers = [_NoRedirect()]
    if insecure and url.startswith("https://"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as answer:
            content_type = answer.headers.get("Content-Type", "")
            body = answer.read(4096)
    except urllib.error.HTTPError as exc:
        raise ClusterError(_http_status_message(host, url, exc.code, exc.reason, exc.headers)) from None
    except urllib.error.URLError as exc:
        raise ClusterError(_connection_message(host, exc.reason, timeout)) from None
    except (TimeoutError, socket.timeout):
        raise ClusterError(_connection_message(host, TimeoutError(), timeout)) from None
    except (ConnectionError, ssl.SSLError) as exc:
        raise ClusterError(_connection_message(host, exc, timeout)) from None
    try:
        json.loads(body)
    except ValueError:
        raise ClusterError(
            f"{url} answered with {content_type or 'something'} that is not the KFP API's JSON "
            f"(a login page of an auth proxy?): {AUTH_FIX}; or point --host at the pipelines API, "
            "e.g. https://kubeflow.example.com/pipeline"
        ) from None


def _connection_message(host: str, reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return (
            f"cannot reach the Kubeflow Pipelines API at {host}: connection refused (nothing "
            f"listens there). Port-forward it first: `{PORT_FORWARD}`, then --host http://localhost:8080"
        )
    if isinstance(reason, socket.gaierror):
        return (
            f"cannot resolve the host name of --host {host} ({reason.strerror}): check the "
            f"spelling, or port-forward (`{PORT_FORWARD}`) and use --host http://localhost:8080"
        )
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return (
            f"no answer from {host} within {timeout:.0f} s: check --host and that the cluster is "
            "reachable from here (VPN, firewall, port-forward)"
        )
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {host} could not be verified ({reason.verify_message}): "
            "use the cluster's trusted address, or --insecure to skip verification"
        )
    if isinstance(reason, ssl.SSLError):
        return (
            f"TLS handshake with {host} failed ({reason.reason or reason}): if that port speaks "
            "plain HTTP (a port-forward does), use http:// instead of https://"
        )
    return f"cannot reach the Kubeflow Pipelines API at {host}: {reason}; check --host"


def _http_status_message(host: str, url: str, status: int, reason: str, headers) -> str:
    if status in (301, 302, 303, 307, 308):
        where = headers.get("Location", "another page") if headers else "another page"
        return (
            f"{host} redirects to {where} (the login page of an auth proxy): {AUTH_FIX}"
        )
    if status in (401, 403):
        return f"{host} refused the request: {status} {reason}. {AUTH_FIX[0].upper()}{AUTH_FIX[1:]}"
    if status == 404:
        return (
            f"{url} answered 404: --host is not the Kubeflow Pipelines API; use its base URL, "
            "e.g. https://kubeflow.example.com/pipeline or http://localhost:8080 after a port-forward"
        )
    return (
        f"the Kubeflow Pipelines API at {host} answered {status} {reason}: it is not healthy; "
        "check `kubectl -n kubeflow get pods` (ml-pipeline)"
    )


def explain_api_error(exc: Exception, doing: str, namespace: Optional[str]) -> Optional[str]:
    """One line for a kfp_server_api.ApiException raised while ``doing`` something, else None."""
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        return None
    message = _server_message(getattr(exc, "body", None)) or getattr(exc, "reason", "")
    where = f" in namespace {namespace}" if namespace else ""
    if status == 401:
        return f"the KFP API refused {doing}: 401 Unauthorized ({message}). {AUTH_FIX[0].upper()}{AUTH_FIX[1:]}"
    if status == 403:
        return (
            f"the KFP API refused {doing}{where}: 403 Forbidden ({message}). Check that --namespace "
            "names a profile you belong to (`kubectl get profiles`) and that your token is for it"
        )
    if status == 404:
        return f"the KFP API found nothing for {doing}{where}: 404 ({message}); check --namespace and names"
    return f"the KFP API failed {doing}{where}: {status} ({message})"


def _server_message(body: object) -> str:
    """The ``message`` the KFP API puts in its JSON error bodies, shortened to one line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        found = json.loads(body)
        text = found.get("message") or found.get("error") or body if isinstance(found, dict) else body
    except ValueError:
        text = body
    text = " ".join(str(text).split())
    return text[:200]
