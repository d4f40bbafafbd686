// End-to-end tests of relais's pages in Debian's chromium (headless), driven
// by playwright-core, against the real server with the demo data. run.sh
// starts the server and passes its address and the demo's credentials.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const base = process.env.RELAIS_URL;
const apiKey = process.env.RELAIS_API_KEY;
const shots = process.env.SCREENSHOTS;
const DEMO_CUSTOMER = 'camille.martin0@example.fr';

let failures = 0;
async function step(name, body) {
  const started = Date.now();
  try {
    await body();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failures += 1;
    console.log(`FAIL ${name}: ${error.stack || error}`);
  }
}

/** Every text shown must exist in the page's language: no `⟦key⟧` marker. */
async function assertComplete(page, lang) {
  assert.equal(await page.getAttribute('html', 'lang'), lang, `${page.url()} speaks ${lang}`);
  const text = await page.evaluate(() => document.body.innerText + ' ' +
    [...document.querySelectorAll('[aria-label],[placeholder],[title]')]
      .map((e) => [e.getAttribute('aria-label'), e.getAttribute('placeholder'), e.getAttribute('title')].join(' ')).join(' '));
  const missing = [...text.matchAll(/⟦([^⟧]*)⟧/g)].map((m) => m[1]);
  assert.deepEqual(missing, [], `${page.url()} in ${lang} lacks messages`);
}

async function api(path, body) {
  const response = await fetch(`${base}${path}`, {
    method: body ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(response.ok, `${path}: ${response.status}`);
  return response.json();
}

async function signIn(page, lang) {
  await page.goto(`${base}/app`);
  assert.match(page.url(), /\/app\/login/);
  await assertComplete(page, lang);
  await page.fill('#email', process.env.RELAIS_EMAIL);
  await page.fill('#password', process.env.RELAIS_PASSWORD);
  await Promise.all([page.waitForURL(/\/app\/room/), page.click('button[type=submit]')]);
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });
const pageErrors = [];
try {
  for (const lang of ['fr', 'en']) {
    const context = await browser.newContext({ locale: lang === 'fr' ? 'fr-FR' : 'en-GB', viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('pageerror', (error) => pageErrors.push(`${lang} ${page.url()}: ${error}`));
    page.on('console', (message) => {
      if (message.type() === 'error') pageErrors.push(`${lang} ${page.url()}: ${message.text()}`);
    });

    await step(`${lang}: sign in and open the customer room`, async () => {
      await signIn(page, lang);
      await page.waitForSelector('#flow svg');
      const heading = await page.textContent('h1');
      assert.equal(heading.trim(), lang === 'fr' ? 'Salle clients' : 'Customer room');
      const rows = await page.locator('section.card table tbody tr').count();
      assert.ok(rows >= 3, `the demo typology shows its segments (${rows} rows)`);
      await assertComplete(page, lang);
      await page.screenshot({ path: `${shots}/room-${lang}.png`, fullPage: true });
    });

    await step(`${lang}: search a customer and open the 360`, async () => {
      await page.click('header.top nav a[href="/app/customers"]');
      await page.fill('#q', DEMO_CUSTOMER);
      await Promise.all([page.waitForURL(/\/app\/customers\/cus_/), page.press('#q', 'Enter')]);
      await page.waitForSelector('#timeline table tbody tr');
      const identifiers = await page.textContent('#identity + p + h3 + ul');
      assert.ok(identifiers.includes(`email:${DEMO_CUSTOMER}`), identifiers);
      await assertComplete(page, lang);
      await page.selectOption('#tl-channel', 'web');
      await Promise.all([
        page.waitForResponse((r) => r.url().includes('/timeline?') && r.url().includes('channel=web')),
        page.click('#timeline form button[type=submit]'),
      ]);
      // The answer replaces the timeline (its select comes back with `web` chosen).
      await page.waitForFunction(() => document.querySelector('#tl-channel option[value="web"]')?.hasAttribute('selected'));
      const channels = await page.locator('#timeline tbody tr td:nth-child(2)').allTextContents();
      assert.ok(channels.length > 0 && channels.every((c) => c.trim() === 'Web'), `only web events: ${channels}`);
      await page.screenshot({ path: `${shots}/customer-${lang}.png`, fullPage: true });
    });

    await step(`${lang}: build a segment and see the API's count`, async () => {
      await page.click('header.top nav a[href="/app/segments"]');
      const source = 'orders_90d >= 1 and last_channel = "store"';
      await page.fill('#seg-source', source);
      await page.waitForSelector('#seg-size');
      const shown = Number(await page.getAttribute('#seg-size', 'data-size'));
      const preview = await api('/api/v1/segments/preview', { source });
      assert.equal(shown, preview.size, 'the builder counts what the API counts');
      await page.fill('#seg-source', 'orders_90d >= ');
      await page.waitForSelector('#seg-count .error');
      const error = await page.textContent('#seg-count .error');
      assert.match(error, lang === 'fr' ? /ligne 1, colonne/ : /line 1, column/);
      await assertComplete(page, lang);
      await page.screenshot({ path: `${shots}/segments-${lang}.png`, fullPage: true });
    });

    await step(`${lang}: journeys, the what-if slider`, async () => {
      await page.click('header.top nav a[href="/app/journeys"]');
      await page.waitForSelector('#whatif table');
      await page.fill('#w-share', '60');
      await page.dispatchEvent('#w-share', 'input');
      await page.waitForFunction(() => document.querySelector('#whatif p')?.textContent.includes('60'));
      const changes = await page.locator('#whatif td[data-change]').allTextContents();
      assert.ok(changes.length === 5, `one change per channel: ${changes}`);
      await assertComplete(page, lang);
      await page.goto(`${base}/app/journeys?source=log&days=800`);
      const title = await page.textContent('#model-title');
      assert.match(title, lang === 'fr' ? /parcours/ : /journeys/);
      await assertComplete(page, lang);
      await page.screenshot({ path: `${shots}/journeys-${lang}.png`, fullPage: true });
    });

    await step(`${lang}: loyalty and privacy pages`, async () => {
      await page.click('header.top nav a[href="/app/loyalty"]');
      await page.waitForSelector('section.card h2');
      await assertComplete(page, lang);
      await page.screenshot({ path: `${shots}/loyalty-${lang}.png`, fullPage: true });
      await page.click('header.top nav a[href="/app/privacy"]');
      await page.click('#audit-title + form button');
      await page.waitForSelector('#audit-title ~ .ok');
      await assertComplete(page, lang);
      await page.screenshot({ path: `${shots}/privacy-${lang}.png`, fullPage: true });
    });

    await step(`${lang}: the language switch`, async () => {
      await page.click('a.lang-switch');
      await page.waitForFunction((l) => document.documentElement.lang === l, lang === 'fr' ? 'en' : 'fr');
      await assertComplete(page, lang === 'fr' ? 'en' : 'fr');
    });

    await step(`${lang}: the room on a phone`, async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      await page.goto(`${base}/lang/${lang}?next=/app/room`);
      await page.waitForSelector('#flow svg');
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `the page fits a phone's width (overflows by ${overflow}px)`);
      await page.screenshot({ path: `${shots}/room-phone-${lang}.png`, fullPage: true });
    });
    await context.close();
  }
  await step('no script error or blocked resource on any page', async () => {
    assert.deepEqual(pageErrors, []);
  });
} finally {
  await browser.close();
}
if (failures > 0) {
  console.log(`${failures} end-to-end step(s) failed`);
  process.exit(1);
}
console.log('every end-to-end step passed');
