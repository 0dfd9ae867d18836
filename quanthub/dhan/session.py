"""The dhanhq client, and Dhan-Tradehull contained.

``dhan_client`` builds dhanhq's client on ``ContainedHTTP``: every call has a
timeout of a few seconds and a typed error. The broker, the feed, the streams
and the pre-flight all use it.

``contained_tradehull`` constructs Dhan-Tradehull for the helpers only it has,
without letting it take over the process: importing it installs a
process-wide ``warnings.filterwarnings("ignore")`` (undone here: the filters
are restored); its constructor prints (captured into our log), calls
``logging.basicConfig`` (our handlers and levels restored), writes files into
``./Dependencies`` (its working directory is switched to ``var/dhan`` under a
lock), and prefers a token it cached on disk earlier in the day over the one
it is given (its cache is deleted before and after, and its client is pointed
at our token and our HTTP layer).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from pathlib import Path

from django.conf import settings

from quanthub.dhan.errors import DhanAuthError
from quanthub.dhan.http import ContainedHTTP

log = logging.getLogger(__name__)
_CWD_LOCK = threading.Lock()


def dhan_client(client_id: str, token: str, *, base_url: str | None = None, timeout_s: float | None = None):
    """dhanhq's client with our HTTP layer (timeouts, typed envelopes, no secrets in logs)."""
    from dhanhq import DhanContext, dhanhq

    context = DhanContext(client_id, token)
    http = ContainedHTTP(
        client_id,
        token,
        base_url=base_url or settings.DHAN_API_BASE_URL,
        timeout_s=float(timeout_s or settings.DHAN_HTTP_TIMEOUT_S),
    )
    context.dhan_http = http
    return contain_client(dhanhq(context), http)


def contain_client(client, http: ContainedHTTP | None = None):
    """Put ``ContainedHTTP`` under an existing dhanhq client (every mixin reads ``self.dhan_http``)."""
    current = client.dhan_http
    if not isinstance(current, ContainedHTTP):
        http = http or ContainedHTTP(
            current.client_id,
            current.access_token,
            base_url=getattr(current, "base_url", None) or settings.DHAN_API_BASE_URL,
            timeout_s=float(settings.DHAN_HTTP_TIMEOUT_S),
        )
    client.dhan_http = http or current
    return client


def _forget_cached_tokens(data_dir: Path) -> None:
    # Tradehull keeps today's token in clear in Dependencies/token_<client>_<date>.txt and
    # reuses it in preference to the one passed in; neither may happen.
    dependencies = data_dir / "Dependencies"
    if dependencies.is_dir():
        for path in dependencies.glob("token_*"):
            path.unlink(missing_ok=True)


def contained_tradehull(client_id: str, token: str, data_dir: Path | None = None):
    data_dir = Path(data_dir or Path(settings.VAR_DIR) / "dhan")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("requests", "urllib3")}
    saved_filters = list(warnings.filters)
    captured = io.StringIO()
    with _CWD_LOCK:
        previous = os.getcwd()
        try:
            os.chdir(data_dir)
            _forget_cached_tokens(data_dir)
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                from Dhan_Tradehull import Tradehull

                tradehull = Tradehull(client_id, token, mode="access_token")
        finally:
            _forget_cached_tokens(data_dir)
            os.chdir(previous)
            warnings.filters[:] = saved_filters
            warnings._filters_mutated()  # noqa: SLF001 (the documented way filters are reset after a change)
            for handler in list(root.handlers):
                if handler not in saved_handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(saved_level)
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
    from quanthub.logging import mask_secrets

    for line in captured.getvalue().splitlines():
        if line.strip():
            log.info("dhan-tradehull says", extra={"line": mask_secrets(line.strip().replace(token, "***"))[:300]})
    if getattr(tradehull, "Dhan", None) is None:
        raise DhanAuthError("", "Dhan-Tradehull could not log in (see the log for what it said)")
    # Whatever token it settled on, its client speaks with ours, through our HTTP layer.
    tradehull.token_id = token
    contain_client(tradehull.Dhan)
    tradehull.Dhan.dhan_http.set_token(token)
    return tradehull
