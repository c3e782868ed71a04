"""A repeaterd plugin in Python: forwards each event's payload as a POST.

Config (every key optional): {"path": "hooks/orders"}, a path appended to
the repeater's URL. An empty or null config means {}.

- build: POST the payload byte for byte, with the event's content type and
  an idempotency-key header carrying the record id, so receivers can drop
  the duplicates an at-least-once delivery may send.
- classify: the default rules. 2xx succeeds; 408, 409, 425, 429 and 5xx
  retry, honouring Retry-After; other statuses reject; transport errors
  retry.

componentize-py turns this module into a component of the `repeater`
world: the class `Plugin` below is the `plugin` export.
"""

import json
import time
from email.utils import parsedate_to_datetime

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

IDEMPOTENCY_HEADER = "idempotency-key"
RETRY_STATUSES = (408, 409, 425, 429)
# Longest delay a Retry-After header may ask for (6 h): an endpoint must not
# park a record for days by mistake.
MAX_RETRY_AFTER_SECONDS = 6 * 60 * 60
# How much of a response body a reason quotes.
REASON_EXCERPT_CHARS = 200
CONFIG_KEYS = ("path",)


def parse_config(text):
    """Decodes the plugin config; raises ValueError naming what is wrong."""
    text = text.strip()
    if text in ("", "null"):
        return {}
    try:
        config = json.loads(text)
    except ValueError as err:
        raise ValueError(f"invalid plugin config: not JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError("invalid plugin config: expected a JSON object")
    for key in config:
        if key not in CONFIG_KEYS:
            raise ValueError(f"invalid plugin config: unknown key {key!r} (known: path)")
    path = config.get("path")
    if path is not None and not isinstance(path, str):
        raise ValueError("invalid plugin config: path: expected a string")
    return config


def retry_after(headers, now):
    """Seconds asked for by the first Retry-After header, clamped; None if
    there is none or it is neither delta-seconds nor an HTTP-date."""
    value = next((h.value for h in headers if h.name.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(int(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    # Round up so "at 12:00:00.5" is not retried at 12:00:00.
    wait = max(0, when - now)
    return min(int(wait) + (wait > int(wait)), MAX_RETRY_AFTER_SECONDS)


def status_reason(status, body):
    """A reason naming the status and quoting the start of the body."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return f"HTTP {status}"
    excerpt = text[:REASON_EXCERPT_CHARS]
    if len(excerpt) < len(text):
        excerpt += "…"
    return f"HTTP {status}: {excerpt}"


def default_classify(reply, now):
    """The default reply rules (see the module docstring)."""
    if isinstance(reply, types.Reply_TransportError):
        error = reply.value
        return types.Verdict_Retry(
            types.Retry(None, f"transport error ({error.kind.name.lower()}): {error.message}")
        )
    response = reply.value
    status = response.status
    reason = status_reason(status, response.body_excerpt)
    if 200 <= status <= 299:
        return types.Verdict_Success()
    if status in RETRY_STATUSES or 500 <= status <= 599:
        return types.Verdict_Retry(types.Retry(retry_after(response.headers, now), reason))
    return types.Verdict_Reject(reason)


class Plugin(exports.Plugin):
    """The `plugin` export. The host makes a fresh instance per call, so
    nothing is kept between calls."""

    def validate_config(self, config: str) -> None:
        try:
            parse_config(config)
        except ValueError as err:
            raise Err(str(err)) from None

    def build(self, event: types.Event, config: str) -> types.BuildOutcome:
        try:
            path = parse_config(config).get("path")
        except ValueError as err:
            # A config that stopped decoding is the operator's problem, not
            # the event's: the record waits instead of being rejected.
            return types.BuildOutcome_RetryLater(str(err))
        headers = [
            types.Header("content-type", event.content_type),
            types.Header(IDEMPOTENCY_HEADER, event.record_id),
        ]
        request = types.Request(types.Method.POST, path, None, headers, event.payload)
        return types.BuildOutcome_Send(request)

    def classify(
        self, request: types.RequestSummary, reply: types.Reply, config: str
    ) -> types.Verdict:
        verdict = default_classify(reply, time.time())
        if isinstance(verdict, types.Verdict_Reject):
            log.log(log.Level.WARN, f"{request.url}: {verdict.value}")
        return verdict
