// Drives the qins-web chat page in headless Chromium (playwright-core, no
// test framework): a reply streams and grows, Stop ends it, the stats panel
// names the model and its memory, a short reply completes, a screenshot is
// saved, and a reply's Markdown renders (code block with a working Copy
// button, table) while script in it does not run. run.sh starts qinsd and qins-web and sets the environment:
//
//   QINS_WEB_URL     the bridge, e.g. http://127.0.0.1:7860 (required)
//   QINS_MODEL       the model qinsd serves (optional: checked when given)
//   QINS_SCREENSHOT  where the PNG goes (default: a file in the temp dir)
//   QINS_PROMPT      the short question of the last test
//   QINS_CHROMIUM    the browser (default /usr/bin/chromium)
//
// Every wait has a timeout; the whole file stays well under a minute.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium } from "playwright-core";

const BASE = (process.env.QINS_WEB_URL || "").replace(/\/+$/, "");
const MODEL = process.env.QINS_MODEL || "";
const SHOT = process.env.QINS_SCREENSHOT || join(tmpdir(), `qins-web-${process.pid}.png`);
const PROMPT = process.env.QINS_PROMPT || "What is the capital of France?";
const CHROMIUM = process.env.QINS_CHROMIUM || "/usr/bin/chromium";
// Without these, headless Chromium's background connections (which this
// network refuses) slow it down. playwright-core gives every launch a fresh
// temporary profile (its --user-data-dir).
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const WAIT = 15_000; // the longest single wait
const TEST_TIMEOUT = 40_000;

let browser;
let page;
const pageErrors = [];

// The text of the last assistant bubble without its meta line, whether it
// is still streaming, and whether the page is idle again.
async function lastReply() {
  return page.evaluate(() => {
    const bubbles = document.querySelectorAll("#messages .msg.assistant");
    const b = bubbles[bubbles.length - 1];
    const idle = !document.getElementById("send").disabled && document.getElementById("stop").disabled;
    if (!b) return { text: "", pending: false, meta: "", idle };
    const meta = b.querySelector(".meta");
    const text = Array.from(b.childNodes).filter((n) => n !== meta).map((n) => n.textContent).join("");
    return { text, pending: b.classList.contains("pending"), meta: meta ? meta.textContent : "", idle };
  });
}

// Waits until the last assistant bubble holds more than `n` characters.
async function waitLonger(n, timeout = WAIT) {
  await page.waitForFunction((n) => {
    const bubbles = document.querySelectorAll("#messages .msg.assistant");
    const b = bubbles[bubbles.length - 1];
    return b && b.textContent.length > n;
  }, n, { timeout, polling: 50 });
}

async function waitIdle(timeout = WAIT) {
  await page.waitForFunction(() => {
    const bubbles = document.querySelectorAll("#messages .msg.assistant.pending");
    return bubbles.length === 0 && !document.getElementById("send").disabled &&
      document.getElementById("stop").disabled;
  }, null, { timeout, polling: 50 });
}

async function stats() {
  const r = await fetch(BASE + "/ui/stats", { signal: AbortSignal.timeout(5_000) });
  assert.equal(r.status, 200, "GET /ui/stats");
  return r.json();
}

before(async () => {
  assert.ok(BASE, "QINS_WEB_URL must name the bridge (run qins-web/tests/browser/run.sh)");
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30_000 });
  page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(BASE + "/", { timeout: WAIT });
}, { timeout: 45_000 });

after(async () => {
  if (browser) await browser.close();
});

test("the stats panel shows the model and its memory", { timeout: TEST_TIMEOUT }, async () => {
  await page.waitForSelector('#conn[data-state="up"]');
  await page.waitForFunction(() => !["–", "none", ""].includes(document.getElementById("stat-model").textContent));
  const model = await page.textContent("#stat-model");
  if (MODEL) assert.equal(model, MODEL);
  assert.match(await page.textContent("#model-name"), new RegExp("^" + model + " \\("));
  const bytes = /^\d+(\.\d)? (B|KiB|MiB|GiB)$/;
  for (const id of ["#stat-rss", "#stat-resident", "#stat-bf16", "#stat-f32"]) {
    assert.match(await page.textContent(id), bytes, id);
  }
  assert.match(await page.textContent("#stat-ratio"), /^\d+\.\d\d× \/ \d+\.\d\d×$/);
  assert.match(await page.textContent("#stat-device"), /threads$/);
  assert.ok(await page.isVisible("#stats"), "the stats panel is visible");
  // The settings start at the model's chat defaults.
  const defaults = (await stats()).defaults;
  assert.ok(defaults, "Stats carries the model's chat defaults");
  assert.equal(await page.inputValue("#temperature"), String(defaults.temperature));
  assert.equal(await page.textContent("#top-p-value"), String(defaults.top_p));
  assert.equal(await page.inputValue("#max-tokens"), String(defaults.max_tokens));
});

test("a reply streams and grows, and Stop ends it", { timeout: TEST_TIMEOUT }, async () => {
  // Greedy decoding of this prompt does not end before the token limit on
  // the tiny model (about 4 s there); SmolLM2 writes a long story too.
  const prompt = "Tell me a very long story about dragons";
  const limit = 4000;
  await page.fill("#temperature", "0");
  assert.equal(await page.textContent("#temperature-value"), "0");
  await page.fill("#max-tokens", String(limit));
  const before = (await stats()).tokens_generated;
  await page.fill("#input", prompt);
  await page.click("#send");

  await page.waitForFunction(() => !document.getElementById("stop").disabled);
  assert.equal(await page.inputValue("#input"), "", "the input is cleared");
  assert.equal(await page.textContent("#messages .msg.user"), prompt);
  assert.ok(await page.isDisabled("#send"), "Send is disabled while streaming");

  // Two samples while streaming: the bubble grows between them.
  await waitLonger(0);
  const first = await lastReply();
  assert.ok(first.pending, "still streaming at the first sample");
  await waitLonger(first.text.length + 10);
  const second = await lastReply();
  assert.ok(second.pending, "still streaming at the second sample");
  assert.ok(second.text.length > first.text.length, "the reply grows");
  assert.ok(second.text.startsWith(first.text.slice(0, Math.max(0, first.text.length - 20))),
    "the reply is appended to, not replaced");

  await page.click("#stop");
  await waitIdle();
  const stopped = await lastReply();
  assert.ok(stopped.idle && !stopped.pending, "the page is idle again");
  assert.equal(stopped.meta, "stopped");
  assert.ok(stopped.text.length >= second.text.length, "the text shown so far stays");
  assert.ok(await page.isHidden("#error"), "no error shown");
  assert.equal(await page.inputValue("#input"), "");
  await sleep(1_000);
  const later = await lastReply();
  assert.equal(later.text, stopped.text, "the reply no longer grows");

  // qinsd stopped generating too, before the token limit.
  const deadline = Date.now() + WAIT;
  let s = await stats();
  while (s.active_requests !== 0 && Date.now() < deadline) {
    await sleep(100);
    s = await stats();
  }
  assert.equal(s.active_requests, 0, "no reply left running in qinsd");
  const generated = s.tokens_generated - before;
  assert.ok(generated > 0 && generated < limit, `cancelled after ${generated} of ${limit} tokens`);
});

test("a short reply completes, and a screenshot", { timeout: TEST_TIMEOUT }, async () => {
  await page.click("#clear");
  assert.ok(await page.isVisible("#welcome"), "Clear shows the welcome text again");
  await page.fill("#max-tokens", "48");
  await page.fill("#input", PROMPT);
  await page.press("#input", "Enter"); // Enter sends
  await page.waitForSelector("#messages .msg.assistant");
  await waitIdle(30_000);
  const done = await lastReply();
  assert.ok(done.text.length > 0, "a reply arrived");
  assert.match(done.meta, /^\d+ tokens · \d+\.\d tok\/s · (stop|length)$/);
  await page.waitForFunction(() => /tok\/s$/.test(document.getElementById("stat-tps").textContent));
  assert.ok(await page.isHidden("#error"), "no error shown");
  assert.deepEqual(pageErrors, [], "no script errors on the page");
  await page.screenshot({ path: SHOT });
  assert.ok(statSync(SHOT).size > 0);
  console.log("screenshot: " + SHOT);
});

// One server-sent event as /ui/chat writes it.
function sse(event, data) {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

test("Markdown renders, code blocks copy, and script in a reply does not run", { timeout: TEST_TIMEOUT }, async () => {
  // A page of its own with the CSP switched off: the page's CSP would block
  // inline handlers anyway, so only without it does this check that the
  // sanitizer (DOMPurify) removes them.
  const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1000, height: 700 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
  const md = await context.newPage();
  md.setDefaultTimeout(WAIT);
  const errors = [];
  md.on("pageerror", (e) => errors.push(String(e)));
  // The tiny model's replies are random text, so this reply is served to the
  // page in /ui/chat's format: it still goes through the page's own request,
  // stream parsing and rendering.
  const reply = [
    "Here is **code**:", "", "```python", "print('hi')", "```", "",
    "| name | value |", "|---|---|", "| a | 1 |", "| b | 2 |", "",
    "<script>window.__pwned = 'script'</script>",
    "<img src=\"/nonexistent.png\" onerror=\"window.__pwned = 'onerror'\">",
    "[click](javascript:window.__pwned='link')",
  ].join("\n");
  await md.route("**/ui/chat", (route) => route.fulfill({
    status: 200,
    contentType: "text/event-stream",
    body: sse("delta", { text: reply.slice(0, 40) }) + sse("delta", { text: reply.slice(40) }) +
      sse("done", { finish_reason: "stop", model: "tiny", usage: { completion_tokens: 42 },
        timings: { tokens_per_second: 50 } }),
  }));
  try {
    await md.goto(BASE + "/");
    await md.fill("#input", "Show me some Markdown");
    await md.click("#send");
    await md.waitForFunction(() => document.querySelector("#messages .msg.assistant .meta"));

    const bubble = md.locator("#messages .msg.assistant").last();
    assert.equal(await bubble.locator("strong").textContent(), "code");
    const code = bubble.locator("pre > code.language-python");
    assert.equal(await code.textContent(), "print('hi')\n");
    assert.deepEqual(await bubble.locator("table th").allTextContents(), ["name", "value"]);
    assert.deepEqual(await bubble.locator("table td").allTextContents(), ["a", "1", "b", "2"]);

    // Sanitized: no script element, no handler, no javascript: link.
    assert.equal(await bubble.locator("script").count(), 0, "no script element");
    for (const img of await bubble.locator("img").all()) {
      assert.equal(await img.getAttribute("onerror"), null, "no onerror");
    }
    const hrefs = await bubble.locator("a").evaluateAll((as) => as.map((a) => a.getAttribute("href") || ""));
    for (const href of hrefs) assert.ok(!/^\s*javascript:/i.test(href), `javascript: link kept: ${href}`);
    for (const a of await bubble.locator("a").all()) await a.click({ noWaitAfter: true }).catch(() => {});
    await sleep(500); // time for an image's error handler to fire, were there one
    assert.equal(await md.evaluate(() => window.__pwned), undefined, "no script from the reply ran");

    // The Copy button copies the code.
    const copy = bubble.locator("pre button.copy");
    assert.equal(await copy.count(), 1);
    await copy.click();
    await md.waitForFunction((button) => button.textContent === "Copied", await copy.elementHandle());
    assert.equal(await md.evaluate(() => navigator.clipboard.readText()), "print('hi')\n");
    assert.match(await bubble.locator(".meta").textContent(), /^42 tokens · 50\.0 tok\/s · stop$/);
    assert.deepEqual(errors, [], "no script errors on the page");
  } finally {
    await context.close();
  }
});
