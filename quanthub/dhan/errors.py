"""Dhan's answers, typed by what the caller must do next.

Dhan speaks two dialects. The trading API answers an error with
``{"errorType", "errorCode": "DH-9xx", "errorMessage"}`` and an HTTP 4xx/5xx;
the data API (quotes, option chain, market feed) with
``{"data": {"805": "Too many requests …"}, "status": "failed"}`` — sometimes
with HTTP 200. Both become a ``DhanError`` carrying Dhan's code and message,
so a log line or an alert says why, and never a ``{'error_code': None}``.
"""

from __future__ import annotations

AUTH_CODES = frozenset({"DH-901", "807", "808", "809"})  # invalid/expired token, bad client id, auth failed
THROTTLE_CODES = frozenset({"DH-904", "805"})
DATA_PLAN_CODES = frozenset({"806"})
# Server-side failures where Dhan may or may not have acted on an order.
AMBIGUOUS_CODES = frozenset({"DH-908", "DH-909", "DH-910"})

# What Dhan's data-API codes mean, for messages when the envelope carries none.
DATA_CODE_MEANING = {
    "805": "too many requests or connections",
    "806": "data APIs not subscribed",
    "807": "access token expired",
    "808": "invalid client id",
    "809": "authentication failed",
    "810": "invalid client id",
    "811": "invalid expiry date",
    "812": "invalid date format",
    "813": "invalid security id",
    "814": "invalid request",
}


class DhanError(Exception):
    """An answer from Dhan (``code`` set) or a failure to get one (``code`` empty)."""

    def __init__(self, code: str, message: str, *, http_status: int | None = None, retry_after: float | None = None):
        self.code = str(code or "")
        self.message = str(message or "")
        self.http_status = http_status
        self.retry_after = retry_after
        super().__init__(f"{self.code}: {self.message}" if self.code else self.message)


class DhanThrottled(DhanError):
    """805 / DH-904 / HTTP 429: nothing was done; back off (Dhan warns that pressing on may block the user)."""


class DhanAuthError(DhanError):
    """807 / DH-901: the token is expired or invalid; renew it."""


class DhanDataPlan(DhanError):
    """806: the account has no data-API subscription; polling again will not help."""


class DhanRejected(DhanError):
    """A definite refusal: nothing was done."""


class DhanAmbiguous(DhanError):
    """A server-side failure (DH-908/909, or a 5xx without a code): Dhan may or may not have acted."""


class DhanTransport(DhanError):
    """No answer: a timeout, a reset, a reply that was not JSON."""


def classify(code: str, message: str, *, http_status: int | None = None, retry_after: float | None = None) -> DhanError:
    code = str(code or "")
    kwargs = {"http_status": http_status, "retry_after": retry_after}
    if code in THROTTLE_CODES or http_status == 429:
        return DhanThrottled(code or "HTTP-429", message or "rate limited", **kwargs)
    if code in AUTH_CODES or (not code and http_status == 401):
        return DhanAuthError(code or "HTTP-401", message or "not authorised", **kwargs)
    if code in DATA_PLAN_CODES:
        return DhanDataPlan(code, message, **kwargs)
    if code in AMBIGUOUS_CODES or (not code and (http_status or 0) >= 500):
        return DhanAmbiguous(code or f"HTTP-{http_status}", message or "server error", **kwargs)
    if code:
        return DhanRejected(code, message, **kwargs)
    return DhanTransport("", message or "no usable answer", **kwargs)


def envelope_error(body, http_status: int) -> DhanError | None:
    """The error a parsed JSON body carries, whatever the HTTP status; None when it is an answer."""
    if isinstance(body, dict):
        if body.get("errorCode"):
            return classify(
                str(body.get("errorCode")),
                str(body.get("errorMessage") or body.get("errorType") or ""),
                http_status=http_status,
            )
        status = str(body.get("status", "")).lower()
        data = body.get("data")
        if status in ("failed", "failure", "error") and isinstance(data, dict) and data:
            code, message = next(iter(data.items()))
            if str(code).isdigit():
                return classify(
                    str(code), str(message or DATA_CODE_MEANING.get(str(code), "")), http_status=http_status
                )
    if http_status >= 400:
        return classify("", f"HTTP {http_status}", http_status=http_status)
    return None
