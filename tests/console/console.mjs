// Drives the operator console in a real headless Chromium (the system's /usr/bin/chromium,
// through playwright-core; no browser is downloaded). Started by tests/it/console.rs with:
// BASE (the gateway), TOKEN, DEVICE and SESSION (a device that just spoke, and its
// conversation), PHRASE (Chinese text it said), ARTIFACTS (screenshots), PLAYWRIGHT_DIR.
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = (k) => { if (!process.env[k]) throw new Error(`${k} is not set`); return process.env[k]; };
const [BASE, TOKEN, DEVICE, SESSION, PHRASE, ARTIFACTS] = ["BASE", "TOKEN", "DEVICE", "SESSION", "PHRASE", "ARTIFACTS"].map(env);
const { chromium } = createRequire(join(env("PLAYWRIGHT_DIR"), "/"))("playwright-core");

const profile = mkdtempSync(join(tmpdir(), "xiaozhi-console-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  locale: "zh-CN",
  acceptDownloads: true,
  viewport: { width: 1280, height: 800 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"],
});
const step = (name) => console.log(`console: ${name}`);
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("pageerror", (e) => { console.error("page error:", e.message); process.exitCode = 1; });

  step("sign in (a wrong token first)");
  await page.goto(BASE + "/console/");
  await page.fill("#token", "not-the-token");
  await page.click("#signin-button");
  await page.waitForFunction(() => document.querySelector("#signin-error").textContent.length > 0);
  if ((await page.textContent("#signin-button")) !== "登录") throw new Error("the console is not in Chinese for zh-CN");
  await page.fill("#token", TOKEN);
  await page.click("#signin-button");

  step("the device that just spoke is listed, online");
  const row = page.locator(`tr[data-device="${DEVICE}"]`);
  await row.waitFor();
  if (!(await row.locator(".online").count())) throw new Error("the device is not shown online");
  await page.screenshot({ path: join(ARTIFACTS, "devices.png"), fullPage: true });

  step("open the device, then its conversation");
  await row.locator("a").first().click();
  await page.locator(`tr[data-session="${SESSION}"] a`).click();
  await page.locator("tr[data-message]").first().waitFor();

  step("play a clip: the audio element reports a duration");
  await page.locator('[data-testid="play"]').first().click();
  const duration = await page.waitForFunction(() => {
    const a = document.querySelector('audio[data-testid="clip-audio"]');
    return a && Number.isFinite(a.duration) && a.duration > 0 ? a.duration : null;
  });
  console.log(`console: clip duration ${await duration.jsonValue()} s`);
  await page.screenshot({ path: join(ARTIFACTS, "conversation.png"), fullPage: true });

  step("export the conversation as a .zip");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click('[data-testid="export-zip"]')]);
  const zipPath = join(ARTIFACTS, "conversation.zip");
  await download.saveAs(zipPath);
  const zip = readFileSync(zipPath);
  if (zip.length < 100 || zip.subarray(0, 2).toString() !== "PK") throw new Error("the download is not a zip");

  step("search a Chinese phrase and find it");
  await page.goto(BASE + "/console/#search");
  await page.fill("#search-q", PHRASE);
  await page.click("#search-go");
  const mark = page.locator("#search-results mark").first();
  await mark.waitFor();
  if ((await mark.textContent()) !== PHRASE) throw new Error(`search marked ${await mark.textContent()}`);
  await page.screenshot({ path: join(ARTIFACTS, "search.png"), fullPage: true });

  step("statistics and status render");
  await page.goto(BASE + "/console/#stats");
  await page.locator('[data-metric="turns"]').waitFor();
  await page.screenshot({ path: join(ARTIFACTS, "stats.png"), fullPage: true });
  await page.goto(BASE + "/console/#status");
  await page.locator("main table").waitFor();

  step("delete the conversation");
  await page.goto(BASE + `/console/#conversation/${SESSION}`);
  await page.locator('[data-testid="delete"]').waitFor();
  page.once("dialog", (d) => d.accept());
  await page.click('[data-testid="delete"]');
  await page.waitForFunction(() => location.hash === "#conversations");
  const status = await page.evaluate(async ([id, token]) =>
    (await fetch("/api/conversations/" + id, { headers: { Authorization: "Bearer " + token } })).status, [SESSION, TOKEN]);
  if (status !== 404) throw new Error(`the deleted conversation answers ${status}`);
  step("done");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
