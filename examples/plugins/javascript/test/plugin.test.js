// Native tests of src/plugin.js: `node --test`. The WIT log import is
// stubbed (see stubs/wit-imports.mjs); everything else is the plugin's own code.
import { register } from "node:module";
import assert from "node:assert/strict";
import { test } from "node:test";

register("../stubs/wit-imports.mjs", import.meta.url);
const { plugin, retryAfter } = await import("../src/plugin.js");
const { lines } = await import("../stubs/log.mjs");

function event(fields = {}) {
  return {
    id: "evt-1",
    domain: "acme",
    repeater: "crm",
    eventType: "order.created",
    contentType: "application/json",
    payload: new TextEncoder().encode('{"order":42}'),
    attempt: 1,
    registeredAt: 1700000000000n,
    orderingKey: undefined,
    recordId: "rec-1",
    ...fields,
  };
}

function response(status, headers = [], body = "") {
  return { tag: "response", val: { status, headers, bodyExcerpt: new TextEncoder().encode(body) } };
}

const summary = { method: "post", url: "http://127.0.0.1:9/hooks", headers: [], bodySize: 12n };

test("build posts the payload with its content type and the record id", () => {
  const outcome = plugin.build(event({ contentType: "application/vnd.acme+json", recordId: "rec-9" }), '{"path": "hooks/a"}');
  assert.equal(outcome.tag, "send");
  const request = outcome.val;
  assert.equal(request.method, "post");
  assert.equal(request.path, "hooks/a");
  assert.deepEqual(request.headers, [
    { name: "content-type", value: "application/vnd.acme+json" },
    { name: "idempotency-key", value: "rec-9" },
  ]);
  assert.equal(new TextDecoder().decode(request.body), '{"order":42}');
});

test("an empty or null config means no path", () => {
  for (const config of ["", " null ", "{}"]) {
    plugin.validateConfig(config);
    assert.equal(plugin.build(event(), config).val.path, undefined);
  }
});

test("a bad config is refused naming the key, and build waits on it", () => {
  assert.throws(() => plugin.validateConfig('{"pth": "x"}'), /unknown key "pth"/);
  assert.throws(() => plugin.validateConfig('{"path": 7}'), /path: expected a string/);
  assert.throws(() => plugin.validateConfig("[1]"), /expected a JSON object/);
  const outcome = plugin.build(event(), "{");
  assert.equal(outcome.tag, "retry-later");
  assert.match(outcome.val, /not JSON/);
});

test("replies follow the default rules", () => {
  assert.deepEqual(plugin.classify(summary, response(204), "{}"), { tag: "success" });
  for (const status of [408, 409, 425, 429, 500, 503, 599]) {
    assert.equal(plugin.classify(summary, response(status), "{}").tag, "retry", `status ${status}`);
  }
  const limited = plugin.classify(summary, response(429, [{ name: "Retry-After", value: "7" }]), "{}");
  assert.deepEqual(limited, { tag: "retry", val: { afterSeconds: 7, reason: "HTTP 429" } });
  const lost = plugin.classify(summary, { tag: "transport-error", val: { kind: "timeout", message: "no answer" } }, "{}");
  assert.deepEqual(lost, { tag: "retry", val: { afterSeconds: undefined, reason: "transport error (timeout): no answer" } });
});

test("a rejected reply quotes the body and is logged through the host", () => {
  lines.length = 0;
  const verdict = plugin.classify(summary, response(422, [], "no such field: sku"), "{}");
  assert.deepEqual(verdict, { tag: "reject", val: "HTTP 422: no such field: sku" });
  assert.deepEqual(lines, [{ level: "warn", message: "http://127.0.0.1:9/hooks: HTTP 422: no such field: sku" }]);
});

test("Retry-After takes seconds or an HTTP-date, clamped to 6 h", () => {
  const now = Date.UTC(2015, 9, 21, 7, 28, 0);
  const header = (value) => [{ name: "retry-after", value }];
  assert.equal(retryAfter(header("Wed, 21 Oct 2015 07:30:00 GMT"), now), 120);
  assert.equal(retryAfter(header("Tue, 20 Oct 2015 07:28:00 GMT"), now), 0);
  assert.equal(retryAfter(header("999999999"), now), 21600);
  for (const value of ["", "soon", "-5", "1.5"]) {
    assert.equal(retryAfter(header(value), now), undefined, value);
  }
});
