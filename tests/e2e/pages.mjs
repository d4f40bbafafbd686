// End-to-end tests of relais's pages in Debian's chromium (headless), driven
// by playwright-core, against the real server with the demo data. run.sh
// starts the server and passes its address and the demo's credentials.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

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

/** The six-digit code of the first sign-in e-mail written after `before`. */
async function waitForCode(outbox, before) {
  for (let attempt = 0; attempt < 100; attempt += 1) {
    const fresh = fs.existsSync(outbox) ? fs.readdirSync(outbox).filter((f) => !before.has(f)) : [];
    for (const file of fresh) {
      const mail = fs.readFileSync(path.join(outbox, file), 'utf8');
      const split = mail.search(/\r?\n\r?\n/);
      const headers = mail.slice(0, split);
      let body = mail.slice(split).replace(/=\r?\n/g, '');
      if (/Content-Transfer-Encoding:\s*base64/i.test(headers)) body = Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8');
      const codes = body.split(/[^0-9]+/).filter((run) => run.length === 6);
      if (codes.length === 1) return codes[0];
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error('no sign-in e-mail reached the outbox folder');
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
      const movements = await page.locator('section[aria-labelledby="loyalty"] table td.num').count();
      assert.ok(movements > 0, 'the 360 shows the member\'s latest points movements');
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
  for (const lang of ['fr', 'en']) {
    const context = await browser.newContext({ locale: lang === 'fr' ? 'fr-FR' : 'en-GB', viewport: { width: 390, height: 844 }, isMobile: true });
    const page = await context.newPage();
    page.on('pageerror', (error) => pageErrors.push(`portal ${lang} ${page.url()}: ${error}`));
    await step(`${lang}: a member signs in to the portal with the code e-mailed to them`, async () => {
      const outbox = path.join(process.env.RELAIS_DATA, 'outbox');
      const before = new Set(fs.existsSync(outbox) ? fs.readdirSync(outbox) : []);
      await page.goto(`${base}/me`);
      assert.match(page.url(), /\/me\/login/);
      await assertComplete(page, lang);
      await page.fill('#identifier', DEMO_CUSTOMER);
      await page.click('main button[type=submit]');
      await page.waitForSelector('#code');
      await assertComplete(page, lang);
      const code = await waitForCode(outbox, before);
      await page.fill('#code', code);
      await Promise.all([page.waitForURL((url) => url.pathname === '/me'), page.click('main button[type=submit]')]);
      await page.waitForSelector('.me-card svg');
      await assertComplete(page, lang);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `the portal fits a phone's width (overflows by ${overflow}px)`);
      const statementRows = await page.locator('section[aria-labelledby^="statement"] tbody tr').count();
      assert.ok(statementRows > 0, 'the statement shows the points earned');
      await page.screenshot({ path: `${shots}/portal-${lang}.png`, fullPage: true });
    });

    await step(`${lang}: redeeming a reward lowers the balance by its cost`, async () => {
      const member = (await page.locator('[id^="balance-"]').first().getAttribute('id')).replace('balance-', '');
      // An agent credits enough points for the dearest reward first.
      const response = await fetch(`${base}/api/v1/loyalty/members/${member}/adjustments`, {
        method: 'POST',
        headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json', 'idempotency-key': `e2e-${lang}` },
        body: JSON.stringify({ points: 2500, reason: 'geste commercial (test de bout en bout)' }),
      });
      assert.ok(response.ok, `the adjustment: ${response.status} ${await response.text()}`);
      await page.reload();
      const before = Number(await page.getAttribute(`#balance-${member}`, 'data-balance'));
      const list = (await api('/api/v1/loyalty/programmes/club-relais/rewards')).rewards.map((r) => r.reward);
      const forms = page.locator('section[aria-labelledby^="rewards"] form');
      let chosen = null;
      for (let i = 0; i < await forms.count(); i += 1) {
        const action = await forms.nth(i).getAttribute('action');
        const id = decodeURIComponent(action.split('/')[3]);
        const reward = list.find((r) => r.id === id);
        const affordable = !(await forms.nth(i).locator('button.secondary').count());
        if (reward && affordable && reward.cost <= before) { chosen = { index: i, reward }; break; }
      }
      assert.ok(chosen, `a reward the demo member can afford with ${before} points`);
      await Promise.all([page.waitForURL(/\/me/), forms.nth(chosen.index).locator('button').click()]);
      await page.waitForSelector('main .ok');
      const after = Number(await page.getAttribute(`#balance-${member}`, 'data-balance'));
      assert.equal(after, before - chosen.reward.cost, 'the balance drops by the reward\'s cost');
      await assertComplete(page, lang);
    });

    await step(`${lang}: the member downloads their data`, async () => {
      await page.goto(`${base}/me/data`);
      await assertComplete(page, lang);
      const [download] = await Promise.all([page.waitForEvent('download'), page.click('a[href="/me/data.json"]')]);
      const text = fs.readFileSync(await download.path(), 'utf8');
      assert.ok(text.includes(DEMO_CUSTOMER), 'the download holds the member\'s e-mail');
      JSON.parse(text);
      await page.goto(`${base}/me/receipts`);
      await assertComplete(page, lang);
      await page.screenshot({ path: `${shots}/portal-receipts-${lang}.png`, fullPage: true });
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
