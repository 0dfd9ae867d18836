"""dhanhq's HTTP layer, contained.

dhanhq's ``DhanHTTP`` waits 60 s for an answer, logs the exception text of a
failed call (a request URL can carry credentials), drops the HTTP status and
``Retry-After`` and reads a data-API error envelope sent with HTTP 200 as a
success. ``ContainedHTTP`` keeps its reply format — ``{"status", "remarks",
"data"}``, so every dhanhq method works unchanged — and adds:

* a timeout on every call (``DHAN_HTTP_TIMEOUT_S``; connect and read);
* ``remarks`` always a dict with Dhan's ``error_code`` and ``error_message``,
  for the trading API's ``DH-9xx`` and the data API's ``805/806/807`` alike;
* ``http_status`` and ``retry_after`` in the reply;
* a base URL from settings, so a session can be pointed at local servers.

``check(reply)`` turns a failed reply into the typed ``DhanError``.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

import requests
from dhanhq.dhan_http import DhanHTTP

from quanthub.dhan.errors import DhanError, DhanTransport, classify, envelope_error

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.dhan.co/v2"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: rare enough that the caller's default back-off does


class SettledSession(requests.Session):
    """requests' session, reading what the environment says for a host (proxies,
    ``no_proxy``, the CA bundle) at its first call instead of at every call.

    requests walks every environment variable twice per request to find the
    proxies; for an API called on every fill that was a third of the call's own
    time. A process's environment is set before it starts, so the answer for a
    scheme and host does not change; a change to the session's own settings is
    part of the key, so it still applies at once."""

    def __init__(self) -> None:
        super().__init__()
        self._settled: dict[tuple, dict] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if not self.trust_env or proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (
            parts.scheme,
            parts.netloc,
            stream,
            verify,
            cert,
            self.stream,
            self.verify,
            self.cert,
            tuple(sorted(self.proxies.items())),
        )
        settled = self._settled.get(key)
        if settled is None:
            settled = self._settled[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        return {**settled, "proxies": dict(settled["proxies"])}


class ContainedHTTP(DhanHTTP):
    def __init__(self, client_id: str, access_token: str, *, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 3.0):
        super().__init__(client_id, access_token)
        self.session = SettledSession()
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout_s

    def set_token(self, access_token: str) -> None:
        """After a renewal: the next call carries the new token."""
        self.access_token = access_token
        self.header["access-token"] = access_token

    def _send_request(self, method, endpoint, payload=None):
        url = self.base_url + endpoint
        if payload:  # as dhanhq does: an empty body (the kill switch) goes without the client id
            payload = dict(payload)
            payload["dhanClientId"] = self.client_id
            payload = json.dumps(payload)
        try:
            response = getattr(self.session, method.value.lower())(
                url, data=payload, headers=self.header, timeout=self.timeout
            )
        except requests.RequestException as exc:
            # The type only: requests' message repeats the URL, which may carry query parameters.
            kind = type(exc).__name__
            log.warning("dhan http call failed", extra={"endpoint": endpoint.split("?")[0], "error": kind})
            return {"status": "failure", "remarks": f"{kind} calling {endpoint.split('?')[0]}", "data": ""}
        return self._parse_response(response)

    def _parse_response(self, response):
        status_code = response.status_code
        retry_after = _retry_after(response)
        try:
            body = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        if body is None and not (200 <= status_code <= 299 and not response.content):
            error = classify("", f"HTTP {status_code}: not JSON", http_status=status_code, retry_after=retry_after)
            if status_code < 400:
                error = DhanTransport("", f"HTTP {status_code}: not JSON", http_status=status_code)
        else:
            error = envelope_error(body, status_code)
        reply = {
            "http_status": status_code,
            "retry_after": retry_after,
            "headers": {"Date": response.headers.get("Date", "")},
        }
        if error is None:
            return {"status": "success", "remarks": "", "data": body, **reply}
        remarks = {
            "error_code": error.code,
            "error_type": type(error).__name__,
            "error_message": error.message,
        }
        return {"status": "failure", "remarks": remarks, "data": "", "error": error, **reply}


def error_of(reply, call: str = "") -> DhanError | None:
    """The typed error of a dhanhq reply, None when it succeeded."""
    if not isinstance(reply, dict):
        return DhanTransport("", f"{call}: unexpected reply {type(reply).__name__}")
    if isinstance(reply.get("error"), DhanError):
        return reply["error"]
    if reply.get("status") == "success":
        # dhanhq's own validation failures come back as status failure; an envelope inside
        # a success (a client not built with ContainedHTTP) is caught here too.
        return envelope_error(reply.get("data"), 200)
    remarks = reply.get("remarks")
    http_status = reply.get("http_status")
    retry_after = reply.get("retry_after")
    if isinstance(remarks, dict):
        code = str(remarks.get("error_code") or "")
        message = str(remarks.get("error_message") or remarks.get("error_type") or "")
        if code or http_status:
            return classify(code, message, http_status=http_status, retry_after=retry_after)
        return DhanTransport("", f"{call}: {message or 'failed'}")
    return DhanTransport("", f"{call}: {remarks}"[:300])


def check(reply, call: str = ""):
    """The payload of a successful reply; raises the typed ``DhanError`` otherwise."""
    error = error_of(reply, call)
    if error is not None:
        raise error
    return reply.get("data")
