// Drives the Portcullis console in headless Chromium (Debian's, through playwright-core) the way an
// operator would, and saves a screenshot of each view.
//
//   node console_browser.mjs --url http://127.0.0.1:PORT/console/ --token TOKEN --out DIR \
//        --agent AGENT --revoke SESSION_ID
//
// Half way, on the snapshots view, it prints `WAITING snapshot` and reads one line from stdin: the test
// approves a new snapshot meanwhile, and the page must show it without a reload. Prints one JSON line
// `{"ok": true, ...}` at the end; any page error, CSP violation or failed check exits non-zero.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
for (const k of ["url", "token", "out", "agent", "revoke"]) {
  if (!args[k]) { console.error(`missing --${k}`); process.exit(2); }
}
mkdirSync(args.out, { recursive: true });

const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

const problems = [];
const shots = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container has no user namespaces for the sandbox.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(15000);
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
});

async function shot(name) {
  const path = `${args.out}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  shots.push(path);
}

async function drawn(view) {
  await page.waitForFunction((v) => document.body.dataset.drawn === v, view);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

try {
  await page.goto(args.url);
  await page.waitForSelector("#login:not([hidden])");
  // A wrong token is refused, and says so.
  await page.fill("#token", "not-the-token");
  await page.click("#login-button");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("not the admin token"));
  await shot("01-login-refused");
  await page.fill("#token", args.token);
  await page.click("#login-button");
  await page.waitForSelector("#app:not([hidden])");
  await drawn("health");
  await page.waitForFunction(() => document.querySelector("#ready").textContent === "ready");
  // The upstream's first active check lands within a second or two.
  await page.waitForFunction(() => [...document.querySelectorAll("#health-upstreams td")].some((td) => td.textContent === "reachable"));
  const health = await page.textContent("#health-cards");
  check(/v1/.test(health), `health shows snapshot v1: ${health}`);
  check(/io_uring|epoll/.test(await page.textContent("#health-cores")), "health shows the cores' driver");
  await shot("02-health");

  await page.click('nav a[data-view="traffic"]');
  await drawn("traffic");
  // The test keeps calls flowing: the live rate and latency lines rise above zero.
  await page.waitForFunction(() => {
    const key = document.querySelector("#chart-rate .legend .key.s1");
    const line = document.querySelector("#chart-rate path.line.s1");
    return key && /requests\/s: [1-9]/.test(key.textContent) && line && (line.getAttribute("d").match(/L/g) || []).length >= 2;
  }, null, { timeout: 30000 });
  await page.waitForFunction(() => /p99: [1-9]/.test(document.querySelector("#chart-latency .legend").textContent), null, { timeout: 30000 });
  const agents = await page.textContent("#traffic-agents");
  check(agents.includes(args.agent), `top agents list ${args.agent}: ${agents}`);
  await shot("03-traffic");

  await page.click('nav a[data-view="sessions"]');
  await drawn("sessions");
  const revoke = `button[data-session="${args.revoke}"]`;
  await page.waitForSelector(revoke);
  await shot("04-sessions");
  await page.click(revoke);
  await page.waitForSelector(revoke, { state: "detached" });
  await page.waitForFunction(() => document.querySelector("#notice").textContent.includes("Revoked 1 session"));
  await shot("05-session-revoked");

  await page.click('nav a[data-view="audit"]');
  await drawn("audit");
  await page.fill("#audit-agent", args.agent);
  await page.click("#audit-search");
  await page.waitForFunction(() => /records? shown/.test(document.querySelector("#audit-status").textContent));
  const agentsShown = await page.$$eval("#audit-table tbody tr", (trs) => trs.map((tr) => tr.dataset.agent));
  check(agentsShown.length > 0 && agentsShown.every((a) => a === args.agent), `audit filtered to ${args.agent}: ${agentsShown}`);
  const exportHref = await page.getAttribute("#audit-export", "href");
  check(exportHref.includes(`agent=${encodeURIComponent(args.agent)}`), `export link carries the filter: ${exportHref}`);
  await page.click("#audit-verify");
  await page.waitForFunction(() => document.querySelector("#audit-verified").textContent.startsWith("Verified"));
  await shot("06-audit");
  // The export link downloads with the login's cookie.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#audit-export")]);
  const path = await download.path();
  const { readFileSync } = await import("node:fs");
  const exported = readFileSync(path, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  check(exported.length >= agentsShown.length && exported.every((e) => e.agent === args.agent), `export has the filtered records (${exported.length})`);

  await page.click('nav a[data-view="snapshots"]');
  await drawn("snapshots");
  await page.waitForSelector("#snapshots-table tbody tr");
  console.log("WAITING snapshot");
  await nextLine();
  // The console notices the new snapshot by itself.
  await page.waitForFunction(() => document.querySelector("#notice").textContent.includes("v1 → v2"), null, { timeout: 20000 });
  await page.waitForFunction(() => document.querySelector("#snapshots-table tbody tr td").textContent === "v2");
  await page.waitForFunction(() => document.querySelector("#snapshot-label").textContent === "snapshot v2");
  await page.selectOption("#diff-a", "1");
  await page.selectOption("#diff-b", "2");
  await page.click("#diff-run");
  await page.waitForSelector("#diff-out .diff li.added");
  await shot("07-snapshots");

  await page.click('nav a[data-view="bench"]');
  await drawn("bench");
  await page.waitForSelector(".bench-card svg rect");
  check((await page.$$(".bench-card")).length >= 1, "benchmark cards");
  await shot("08-bench");

  await page.click("#logout");
  await page.waitForSelector("#login:not([hidden])");
  // Logged out: the API refuses the old cookie.
  const status = await page.evaluate(async () => (await fetch("/admin/v1/health")).status);
  check(status === 401, `after logout the API answers 401, not ${status}`);
} catch (e) {
  problems.push(String(e && e.stack ? e.stack : e));
  try { await shot("99-failure"); } catch { /* best effort */ }
}
await browser.close();
lines.close();
const ok = problems.length === 0;
console.log(JSON.stringify({ ok, problems, screenshots: shots }));
process.exit(ok ? 0 : 1);
