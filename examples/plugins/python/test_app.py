"""Native tests of app.py: `python3 -m unittest`, after ./build.sh has
written the bindings. The host's log import is stubbed; everything else is
the plugin's own code and the generated bindings."""

import calendar
import sys
import unittest
from pathlib import Path

BINDINGS = Path(__file__).resolve().parent / "bindings"
if not (BINDINGS / "wit_world").is_dir():
    raise SystemExit(f"{BINDINGS} is missing: run ./build.sh first, it writes the bindings")
sys.path.insert(0, str(BINDINGS))

from componentize_py_types import Err  # noqa: E402
from wit_world.imports import log, types  # noqa: E402

import app  # noqa: E402

# The host's log import: natively it only raises, so keep the lines instead.
LOGGED = []
log.log = lambda level, message: LOGGED.append((level, message))

SUMMARY = types.RequestSummary(types.Method.POST, "http://127.0.0.1:9/hooks", [], 12)


def event(**fields):
    values = dict(
        id="evt-1",
        domain="acme",
        repeater="crm",
        event_type="order.created",
        content_type="application/json",
        payload=b'{"order":42}',
        attempt=1,
        registered_at=1_700_000_000_000,
        ordering_key=None,
        record_id="rec-1",
    )
    values.update(fields)
    return types.Event(**values)


def response(status, headers=(), body=b""):
    headers = [types.Header(name, value) for name, value in headers]
    return types.Reply_Response(types.Response(status, headers, body))


class BuildTest(unittest.TestCase):
    def test_posts_the_payload_with_its_content_type_and_the_record_id(self):
        outcome = app.Plugin().build(
            event(content_type="application/vnd.acme+json", record_id="rec-9"),
            '{"path": "hooks/a"}',
        )
        self.assertIsInstance(outcome, types.BuildOutcome_Send)
        request = outcome.value
        self.assertEqual(request.method, types.Method.POST)
        self.assertEqual(request.path, "hooks/a")
        self.assertEqual(
            [(h.name, h.value) for h in request.headers],
            [("content-type", "application/vnd.acme+json"), ("idempotency-key", "rec-9")],
        )
        self.assertEqual(request.body, b'{"order":42}')

    def test_an_empty_or_null_config_means_no_path(self):
        for config in ("", " null ", "{}"):
            app.Plugin().validate_config(config)
            self.assertIsNone(app.Plugin().build(event(), config).value.path)

    def test_a_bad_config_is_refused_naming_the_key_and_build_waits_on_it(self):
        for config, expected in (
            ('{"pth": "x"}', "unknown key 'pth'"),
            ('{"path": 7}', "path: expected a string"),
            ("[1]", "expected a JSON object"),
        ):
            with self.assertRaises(Err) as refused:
                app.Plugin().validate_config(config)
            self.assertIn(expected, refused.exception.value)
        outcome = app.Plugin().build(event(), "{")
        self.assertIsInstance(outcome, types.BuildOutcome_RetryLater)
        self.assertIn("not JSON", outcome.value)


class ClassifyTest(unittest.TestCase):
    def classify(self, reply):
        return app.Plugin().classify(SUMMARY, reply, "{}")

    def test_replies_follow_the_default_rules(self):
        self.assertEqual(self.classify(response(204)), types.Verdict_Success())
        for status in (408, 409, 425, 429, 500, 503, 599):
            self.assertIsInstance(self.classify(response(status)), types.Verdict_Retry, status)
        self.assertEqual(
            self.classify(response(429, [("Retry-After", "7")])),
            types.Verdict_Retry(types.Retry(7, "HTTP 429")),
        )
        lost = types.Reply_TransportError(
            types.TransportError(types.TransportErrorKind.TIMEOUT, "no answer")
        )
        self.assertEqual(
            self.classify(lost),
            types.Verdict_Retry(types.Retry(None, "transport error (timeout): no answer")),
        )

    def test_a_rejected_reply_quotes_the_body_and_is_logged_through_the_host(self):
        LOGGED.clear()
        verdict = self.classify(response(422, body=b"no such field: sku"))
        self.assertEqual(verdict, types.Verdict_Reject("HTTP 422: no such field: sku"))
        self.assertEqual(
            LOGGED,
            [(log.Level.WARN, "http://127.0.0.1:9/hooks: HTTP 422: no such field: sku")],
        )

    def test_retry_after_takes_seconds_or_an_http_date_clamped_to_6_h(self):
        now = calendar.timegm((2015, 10, 21, 7, 28, 0))

        def header(value):
            return [types.Header("retry-after", value)]

        self.assertEqual(app.retry_after(header("Wed, 21 Oct 2015 07:30:00 GMT"), now), 120)
        self.assertEqual(app.retry_after(header("Tue, 20 Oct 2015 07:28:00 GMT"), now), 0)
        self.assertEqual(app.retry_after(header("999999999"), now), 6 * 60 * 60)
        for value in ("", "soon", "-5", "1.5"):
            self.assertIsNone(app.retry_after(header(value), now), value)


if __name__ == "__main__":
    unittest.main()
