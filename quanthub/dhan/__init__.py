"""Dhan connectivity, below both ``marketdata`` and ``trading``.

* ``errors`` — what Dhan's answers mean (trading-API ``DH-9xx`` codes and the
  data-API ``805``/``806``/``807`` envelopes) as typed exceptions;
* ``http`` — dhanhq's HTTP layer with a timeout of a few seconds on every call,
  the HTTP status and ``Retry-After`` kept, and no exception text logged;
* ``session`` — the dhanhq client and the contained Dhan-Tradehull;
* ``tokens`` — where a token lives and how it is renewed (with timeouts);
* ``packets`` and ``streams`` — the Live Market Feed (binary) and Live Order
  Update (JSON) websockets: our own thin clients with reconnect;
* ``preflight`` — the checks an operator runs before a live session.

Nothing here imports Django models; settings are read where a default is needed.
"""
