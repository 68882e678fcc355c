// Drives setgate's status page in a real headless Chromium (Debian's, through playwright-core).
//
// Usage: node status_page.js URL POOL/SERVER SCREENSHOT_DIR
// Prints "UP" once the page shows the server up (green), then waits for the test to kill its
// broker, prints "DOWN" once the page shows it down (red), and saves screenshots of both.
const { chromium } = require("playwright-core");

async function main() {
  const [url, server, dir] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(url);
    const row = `tr[data-server="${server}"]`;
    await page.waitForSelector(`${row}[data-up="true"]`, { timeout: 30000 });
    // The pools table renders names, addresses and the health pill.
    const text = await page.textContent("#pools");
    if (!text.includes(server.split("/")[1])) throw new Error(`pools table does not show ${server}: ${text}`);
    // The drain and ready buttons change the server's admin state through the API.
    await page.click(`${row} button:has-text("drain")`);
    await page.waitForSelector(`${row} .pill.drain`, { timeout: 10000 });
    await page.click(`${row} button:has-text("ready")`);
    await page.waitForSelector(`${row} .pill.ready`, { timeout: 10000 });
    await page.screenshot({ path: `${dir}/status-page-up.png`, fullPage: true });
    console.log("UP");
    await page.waitForSelector(`${row}[data-up="false"]`, { timeout: 60000 });
    const color = await page.$eval(`${row} td`, (td) => getComputedStyle(td).backgroundColor);
    await page.screenshot({ path: `${dir}/status-page.png`, fullPage: true });
    console.log(`DOWN ${color}`);
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  console.error(`status page test failed: ${err.stack || err}`);
  process.exit(1);
});
