// A repeaterd plugin in JavaScript: forwards each event's payload as a POST.
//
// Config (every key optional): {"path": "hooks/orders"}, a path appended to
// the repeater's URL. An empty or null config means {}.
//
// - build: POST the payload byte for byte, with the event's content type and
//   an idempotency-key header carrying the record id, so receivers can drop
//   the duplicates an at-least-once delivery may send.
// - classify: the default rules. 2xx succeeds; 408, 409, 425, 429 and 5xx
//   retry, honouring Retry-After; other statuses reject; transport errors
//   retry.
//
// componentize-js turns this module into a component of the `repeater`
// world: the `plugin` export below is the WIT `plugin` interface. WIT
// values arrive as jco maps them: records are objects with camelCase
// fields, variants are {tag, val}, enums are strings, list<u8> is a
// Uint8Array, u64 and s64 are BigInts; a thrown string is the `err` of a
// result.

import { log } from "repeater:plugin/log@0.1.1";

const IDEMPOTENCY_HEADER = "idempotency-key";
const RETRY_STATUSES = new Set([408, 409, 425, 429]);
// Longest delay a Retry-After header may ask for (6 h): an endpoint must not
// park a record for days by mistake.
const MAX_RETRY_AFTER_SECONDS = 6 * 60 * 60;
// How much of a response body a reason quotes.
const REASON_EXCERPT_CHARS = 200;
const CONFIG_KEYS = ["path"];
// IMF-fixdate, the HTTP-date form servers send: "Wed, 21 Oct 2015 07:28:00 GMT".
const HTTP_DATE = /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/;

/** Decodes the plugin config; throws a message naming what is wrong. */
export function parseConfig(text) {
  const trimmed = text.trim();
  if (trimmed === "" || trimmed === "null") {
    return {};
  }
  let config;
  try {
    config = JSON.parse(trimmed);
  } catch (err) {
    throw `invalid plugin config: not JSON: ${err.message}`;
  }
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    throw "invalid plugin config: expected a JSON object";
  }
  for (const key of Object.keys(config)) {
    if (!CONFIG_KEYS.includes(key)) {
      throw `invalid plugin config: unknown key ${JSON.stringify(key)} (known: path)`;
    }
  }
  if (config.path !== undefined && typeof config.path !== "string") {
    throw "invalid plugin config: path: expected a string";
  }
  return config;
}

/** Seconds asked for by the first Retry-After header, clamped; undefined if
 * there is none or it is neither delta-seconds nor an HTTP-date. */
export function retryAfter(headers, nowMs) {
  const header = headers.find((h) => h.name.toLowerCase() === "retry-after");
  if (header === undefined) {
    return undefined;
  }
  const value = header.value.trim();
  if (/^\d+$/.test(value)) {
    return Math.min(Number(value), MAX_RETRY_AFTER_SECONDS);
  }
  if (!HTTP_DATE.test(value)) {
    return undefined;
  }
  const when = Date.parse(value);
  if (Number.isNaN(when)) {
    return undefined;
  }
  // Round up so "at 12:00:00.5" is not retried at 12:00:00.
  const wait = Math.max(0, Math.ceil((when - nowMs) / 1000));
  return Math.min(wait, MAX_RETRY_AFTER_SECONDS);
}

/** A reason naming the status and quoting the start of the body. */
function statusReason(status, body) {
  const text = new TextDecoder().decode(body).trim();
  if (text === "") {
    return `HTTP ${status}`;
  }
  const chars = Array.from(text);
  const excerpt = chars.slice(0, REASON_EXCERPT_CHARS).join("");
  return `HTTP ${status}: ${excerpt}${chars.length > REASON_EXCERPT_CHARS ? "…" : ""}`;
}

/** The default reply rules (see the top of this file). */
export function defaultClassify(reply, nowMs) {
  if (reply.tag === "transport-error") {
    const { kind, message } = reply.val;
    return { tag: "retry", val: { afterSeconds: undefined, reason: `transport error (${kind}): ${message}` } };
  }
  const { status, headers, bodyExcerpt } = reply.val;
  const reason = statusReason(status, bodyExcerpt);
  if (status >= 200 && status <= 299) {
    return { tag: "success" };
  }
  if (RETRY_STATUSES.has(status) || (status >= 500 && status <= 599)) {
    return { tag: "retry", val: { afterSeconds: retryAfter(headers, nowMs), reason } };
  }
  return { tag: "reject", val: reason };
}

/** The `plugin` export. The host makes a fresh instance per call, so
 * nothing is kept between calls. */
export const plugin = {
  validateConfig(config) {
    parseConfig(config);
  },

  build(event, config) {
    let path;
    try {
      path = parseConfig(config).path;
    } catch (message) {
      // A config that stopped decoding is the operator's problem, not the
      // event's: the record waits instead of being rejected.
      return { tag: "retry-later", val: message };
    }
    return {
      tag: "send",
      val: {
        method: "post",
        path,
        query: undefined,
        headers: [
          { name: "content-type", value: event.contentType },
          { name: IDEMPOTENCY_HEADER, value: event.recordId },
        ],
        body: event.payload,
      },
    };
  },

  classify(request, reply, _config) {
    const verdict = defaultClassify(reply, Date.now());
    if (verdict.tag === "reject") {
      log("warn", `${request.url}: ${verdict.val}`);
    }
    return verdict;
  },
};
