/*
 * upm.js: the upm tracking snippet (no dependencies).
 *
 * Include it with two lines (replace the host and the write key):
 *
 *   <script>window.upm=window.upm||{q:[]};["page","track","identify"].forEach(function(m){window.upm[m]=window.upm[m]||function(){window.upm.q.push([m].concat([].slice.call(arguments)))}});</script>
 *   <script async src="https://collector.example.com/v1/upm.js" data-write-key="WRITE_KEY"></script>
 *
 * It keeps an anonymous id in a first-party cookie (mirrored in localStorage), sends a page view
 * on load (url, path, title, referrer, utm parameters), exposes upm.track(event, properties),
 * upm.identify(userId, traits) and upm.page(name, properties), batches events, and sends them
 * with fetch keepalive, or sendBeacon when the page is being hidden or left, so they survive
 * navigation. Options: data-write-key, data-host (default: where this file came from),
 * data-auto-page="false" to skip the automatic page view, data-flush-ms (default 1000).
 */
(function (w, d) {
  "use strict";
  var VERSION = "1.0.0";
  var COOKIE = "upm_aid";
  var USER_KEY = "upm_uid";
  var MAX_BATCH = 20;
  var MAX_BODY = 60000; // keepalive and sendBeacon bodies are capped at 64 KB by browsers
  var script = d.currentScript || (function () {
    var all = d.getElementsByTagName("script");
    for (var i = all.length - 1; i >= 0; i--) {
      if (/\/v1\/upm\.js(\?|$)/.test(all[i].src)) return all[i];
    }
    return null;
  })();
  var attr = function (name, fallback) {
    var value = script && script.getAttribute(name);
    return value === null || value === undefined || value === "" ? fallback : value;
  };
  var existing = w.upm && w.upm.q ? w.upm.q : [];
  if (w.upm && w.upm.loaded) return;
  var config = w.upmConfig || {};
  var writeKey = config.writeKey || attr("data-write-key", "");
  var host = config.host || attr("data-host", script ? new URL(script.src, d.baseURI).origin : "");
  var flushMs = parseInt(config.flushMs || attr("data-flush-ms", "1000"), 10);
  var autoPage = String(config.autoPage === undefined ? attr("data-auto-page", "true") : config.autoPage) !== "false";

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    var bytes = new Uint8Array(16);
    (w.crypto || w.msCrypto).getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = [];
    for (var i = 0; i < 16; i++) hex.push((bytes[i] + 0x100).toString(16).slice(1));
    return hex.slice(0, 4).join("") + "-" + hex.slice(4, 6).join("") + "-" +
      hex.slice(6, 8).join("") + "-" + hex.slice(8, 10).join("") + "-" + hex.slice(10).join("");
  }

  function readCookie(name) {
    var parts = ("; " + d.cookie).split("; " + name + "=");
    return parts.length === 2 ? decodeURIComponent(parts.pop().split(";").shift()) : null;
  }

  function store(key, value) {
    try { w.localStorage.setItem(key, value); } catch (e) { /* storage may be disabled */ }
  }

  function load(key) {
    try { return w.localStorage.getItem(key); } catch (e) { return null; }
  }

  function anonymousId() {
    var id = readCookie(COOKIE) || load(COOKIE);
    if (!id) id = uuid();
    var secure = w.location.protocol === "https:" ? "; Secure" : "";
    d.cookie = COOKIE + "=" + encodeURIComponent(id) + "; Max-Age=31536000; Path=/; SameSite=Lax" + secure;
    store(COOKIE, id);
    return id;
  }

  function campaign() {
    var params = new URLSearchParams(w.location.search);
    var out = {};
    var names = { utm_campaign: "name", utm_source: "source", utm_medium: "medium", utm_term: "term", utm_content: "content" };
    for (var key in names) {
      if (params.get(key)) out[names[key]] = params.get(key);
    }
    return out;
  }

  function pageInfo() {
    var canonical = d.querySelector("link[rel='canonical']");
    return {
      url: canonical && canonical.href ? canonical.href.split("#")[0] : w.location.href.split("#")[0],
      path: w.location.pathname,
      referrer: d.referrer,
      search: w.location.search,
      title: d.title
    };
  }

  function context() {
    var tz = "";
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { tz = ""; }
    return {
      page: pageInfo(),
      campaign: campaign(),
      userAgent: w.navigator.userAgent,
      locale: w.navigator.language || "",
      timezone: tz,
      library: { name: "upm.js", version: VERSION }
    };
  }

  var queue = [];
  var timer = null;
  var anon = anonymousId();
  var userId = load(USER_KEY);

  function enqueue(event) {
    event.messageId = uuid();
    event.anonymousId = anon;
    if (userId) event.userId = userId;
    event.timestamp = new Date().toISOString();
    event.context = context();
    queue.push(event);
    if (queue.length >= MAX_BATCH) flush(false);
    else if (!timer) timer = w.setTimeout(function () { flush(false); }, flushMs);
  }

  function send(events, leaving, attempt) {
    var body = JSON.stringify({ batch: events, sentAt: new Date().toISOString(), writeKey: writeKey });
    if (body.length > MAX_BODY && events.length > 1) {
      var half = Math.ceil(events.length / 2);
      send(events.slice(0, half), leaving, attempt);
      send(events.slice(half), leaving, attempt);
      return;
    }
    var url = host + "/v1/batch";
    // text/plain is a "simple" content type: no CORS preflight, and sendBeacon accepts it.
    if (leaving && w.navigator.sendBeacon) {
      if (w.navigator.sendBeacon(url, new Blob([body], { type: "text/plain" }))) return;
    }
    if (!w.fetch) return;
    w.fetch(url, {
      method: "POST",
      body: body,
      headers: { "Content-Type": "text/plain" },
      keepalive: true,
      credentials: "omit",
      mode: "cors"
    }).then(function (response) {
      if ((response.status === 429 || response.status >= 500) && attempt < 5) {
        retryLater(events, response.headers.get("Retry-After"), attempt);
      }
    }, function () {
      if (attempt < 5) retryLater(events, null, attempt);
    });
  }

  function retryLater(events, retryAfter, attempt) {
    var delay = retryAfter ? parseInt(retryAfter, 10) * 1000 : Math.pow(2, attempt) * 1000;
    w.setTimeout(function () { send(events, false, attempt + 1); }, delay);
  }

  function flush(leaving) {
    if (timer) { w.clearTimeout(timer); timer = null; }
    if (!queue.length) return;
    var events = queue;
    queue = [];
    send(events, leaving, 0);
  }

  var api = {
    loaded: true,
    version: VERSION,
    page: function (name, properties) {
      if (typeof name === "object" && name !== null) { properties = name; name = ""; }
      var info = pageInfo();
      var props = {};
      for (var k in info) props[k] = info[k];
      for (var p in properties || {}) props[p] = properties[p];
      enqueue({ type: "page", name: name || "", properties: props });
    },
    track: function (event, properties) {
      enqueue({ type: "track", event: String(event), properties: properties || {} });
    },
    identify: function (id, traits) {
      if (typeof id === "object" && id !== null) { traits = id; id = null; }
      if (id !== null && id !== undefined && id !== "") {
        userId = String(id);
        store(USER_KEY, userId);
      }
      enqueue({ type: "identify", traits: traits || {} });
    },
    reset: function () {
      userId = null;
      try { w.localStorage.removeItem(USER_KEY); } catch (e) { /* ignore */ }
      d.cookie = COOKIE + "=; Max-Age=0; Path=/";
      anon = anonymousId();
    },
    anonymousId: function () { return anon; },
    flush: function () { flush(false); }
  };

  w.upm = api;
  w.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") flush(true);
  });
  w.addEventListener("pagehide", function () { flush(true); });
  if (autoPage) api.page();
  for (var i = 0; i < existing.length; i++) {
    var call = existing[i];
    if (api[call[0]]) api[call[0]].apply(api, call.slice(1));
  }
})(window, document);
