// The web console in a real browser: Debian's chromium, headless, driven by
// puppeteer-core against logkvd processes this test starts on ports the
// kernel picks (loopback only). One node with --auth=on: sign up (a weak
// password refused inline first), create an API key, put a value, browse
// it, watch a change appear, revoke the key and see the API refuse it, sign
// out and in, the API reference, phone width. Then three nodes with auth off
// (--seeds) and one replica per key: the cluster page lists all three, the
// data browser of the third pages through the keys written through the
// first, and a watch on the second sees writes made through the first.
// Screenshots of each page go to the artifacts directory. Every wait is bounded; every process is stopped.
//
//   node console_browser_test.mjs <logkvd> <node_modules dir> <artifacts dir>
// Exit 77 (ctest: skipped) when no chromium is installed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const [logkvd, modules, artifacts] = process.argv.slice(2);
if (!artifacts) {
  console.error('usage: node console_browser_test.mjs <logkvd> <node_modules dir> <artifacts dir>');
  process.exit(2);
}
const chromium = [process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser']
  .find((candidate) => candidate && fs.existsSync(candidate));
if (!chromium) {
  console.log('SKIP: no chromium (tools/setup-deps.sh installs Debian\'s chromium); browser tests not run');
  process.exit(77);
}
const puppeteer = createRequire(path.join(path.resolve(modules), 'noop.js'))('puppeteer-core');
fs.mkdirSync(artifacts, { recursive: true });

const processes = [];
const temporary = fs.mkdtempSync(path.join(os.tmpdir(), 'logkv-console-'));
let browser = null;
let passed = 0;
let failed = 0;

// Stops every logkvd (bounded wait), then removes their data.
async function cleanUp() {
  await Promise.all(processes.map((child) => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve(); }, 10000);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
    child.kill('SIGTERM');
  })));
  processes.length = 0;
  fs.rmSync(temporary, { recursive: true, force: true });
}
process.on('exit', () => { for (const child of processes) child.kill('SIGKILL'); });

// Starts logkvd; resolves with its HTTP and binary ports, read from its log.
function startNode(name, flags) {
  return new Promise((resolve, reject) => {
    const child = spawn(logkvd, [`--data-dir=${path.join(temporary, name)}`, '--listen=127.0.0.1:0',
      '--http=127.0.0.1:0', '--threads=1', '--shards=2', '--fsync=never', ...flags],
    { stdio: ['ignore', 'pipe', 'pipe'] });
    processes.push(child);
    const ports = {};
    let log = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not start in 20 s:\n${log}`)), 20000);
    const read = (chunk) => {
      log += chunk;
      for (const match of log.matchAll(/listening on 127\.0\.0\.1:(\d+) \((HTTP|binary protocol)/g)) {
        ports[match[2] === 'HTTP' ? 'http' : 'binary'] = Number(match[1]);
      }
      if (ports.http && ports.binary) {
        clearTimeout(timer);
        child.stdout.off('data', read);
        child.stderr.off('data', read);
        child.stdout.resume();
        child.stderr.resume();
        resolve({ ...ports, url: `http://127.0.0.1:${ports.http}` });
      }
    };
    child.stdout.on('data', read);
    child.stderr.on('data', read);
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code}:\n${log}`)));
  });
}

// One request from outside the browser (as curl would): status and body.
function call(url, method, headers = {}, body = '') {
  return new Promise((resolve, reject) => {
    const request = http.request(url, { method, headers, timeout: 10000 }, (response) => {
      let text = '';
      response.on('data', (chunk) => { text += chunk; });
      response.on('end', () => resolve({ status: response.statusCode, body: text }));
    });
    request.on('error', reject);
    request.on('timeout', () => request.destroy(new Error('timed out')));
    request.end(body);
  });
}

async function step(name, body) {
  try {
    await body();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`FAIL ${name}: ${error.stack ?? error}`);
  }
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

async function textOf(page, selector) {
  return page.$eval(selector, (element) => element.textContent ?? '');
}

// Page errors and refusals by the Content-Security-Policy fail the test.
function watchForProblems(page, problems) {
  page.on('console', (message) => {
    if (message.type() === 'error' && !/Failed to load resource/.test(message.text())) {
      problems.push(message.text());
    }
    if (/Content.Security.Policy/i.test(message.text())) problems.push(message.text());
  });
  page.on('pageerror', (error) => problems.push(String(error)));
}

const wait = { timeout: 15000 };

try {
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });

  // ---- One node, accounts on ----
  // No rate limit: the test makes more requests with its key than a burst allows.
  const node = await startNode('auth', ['--auth=on', '--rate-limit=0',
    '--cluster-secret=operator-secret-for-tests']);
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const problems = [];
  watchForProblems(page, problems);
  const email = 'ada@example.com';
  const password = 'correct horse battery staple';
  let apiKey = '';

  await step('landing page', async () => {
    await page.goto(`${node.url}/`, { waitUntil: 'networkidle0' });
    await page.waitForSelector('h1', wait);
    expect((await textOf(page, 'h1')) === 'logkv', 'landing heading');
    const quickStart = await textOf(page, 'pre');
    expect(quickStart.includes(`export LOGKV=${node.url}`), 'quick start names this node');
    expect(quickStart.includes('X-API-Key'), 'quick start sends the API key');
    await shot(page, '01-landing');
  });

  await step('sign up: a weak password is refused inline', async () => {
    await page.goto(`${node.url}/signup`, { waitUntil: 'networkidle0' });
    await page.type('input[name=email]', email);
    await page.type('input[name=username]', 'ada');
    await page.type('input[name=password]', 'short');
    await page.click('form button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#signup-error')?.textContent?.includes('at least 8'), wait);
    await shot(page, '02-signup-error');
  });

  await step('sign up, signed in, on the keys page', async () => {
    await page.$eval('input[name=password]', (input) => { input.value = ''; });
    await page.type('input[name=password]', password);
    await page.click('form button[type=submit]');
    await page.waitForFunction(() => location.pathname === '/keys', wait);
    await page.waitForFunction(() => document.querySelector('#account')?.textContent?.includes('ada@example.com'), wait);
  });

  await step('sign up again with the same email: inline duplicate error', async () => {
    const other = await browser.newPage();
    watchForProblems(other, problems);
    await other.goto(`${node.url}/signup`, { waitUntil: 'networkidle0' });
    await other.type('input[name=email]', email);
    await other.type('input[name=username]', 'ada2');
    await other.type('input[name=password]', password);
    await other.click('form button[type=submit]');
    await other.waitForFunction(() => document.querySelector('#signup-error')?.textContent?.includes('already exists'), wait);
    await other.close();
  });

  await step('create an API key: shown once, with a copy button', async () => {
    await page.waitForSelector('input[name=name]', wait);
    await page.$eval('input[name=name]', (input) => { input.value = ''; });
    await page.type('input[name=name]', 'browser test');
    await page.click('form.stack button[type=submit]');
    await page.waitForSelector('#new-key', wait);
    apiKey = await textOf(page, '#new-key');
    expect(/^ydht_/.test(apiKey), `a full key: ${apiKey}`);
    expect(await page.$('#copy-key'), 'copy button');
    await page.waitForFunction(() => document.querySelectorAll('tbody tr').length >= 1 &&
      document.querySelector('tbody')?.textContent?.includes('browser test'), wait);
    await shot(page, '03-keys');
  });

  await step('put a value and browse it', async () => {
    await page.click('a[href="/data"]');
    await page.waitForSelector('input[name=key]', wait);
    await page.type('input[name=key]', 'greeting/en');
    await page.type('textarea[name=value]', '{"hello":"world","n":[1,2,3]}');
    await page.type('input[name=ttl]', '1h');
    await page.select('select[name=consistency]', 'strong');
    await page.click('form.stack button[type=submit]');
    await page.waitForFunction(() => document.querySelector('[role=status]')?.textContent?.includes('Stored greeting/en'), wait);
    await page.waitForFunction(() => document.querySelector('#value-view')?.textContent?.includes('world'), wait);
    await page.click('button[data-mode=json]');
    await page.waitForFunction(() => document.querySelector('#value-view')?.textContent?.includes('"hello": "world"'), wait);
    await page.waitForFunction(() => document.querySelector('#versions li'), wait);
    // The API sees it, with the key made in the browser.
    const answer = await call(`${node.url}/v1/kv/greeting/en`, 'GET', { 'X-API-Key': apiKey });
    expect(answer.status === 200 && answer.body.includes('world'), `GET with the key: ${answer.status}`);
    await page.type('input[name=prefix]', 'greet');
    await page.click('form.row button[type=submit]');
    await page.waitForFunction(() => document.querySelector('td.key-cell')?.textContent === 'greeting/en', wait);
    await shot(page, '04-data');
    await page.click('button[data-mode=hex]');
    await page.waitForFunction(() => document.querySelector('#value-view')?.textContent?.startsWith('00000000'), wait);
  });

  await step('a key with ".." in it names itself when shown and deleted', async () => {
    // Stored through the API as "dots/../greeting/en": a browser that
    // resolved its ".." would show, and delete, greeting/en instead.
    const planted = await call(`${node.url}/v1/kv/dots%2F..%2Fgreeting%2Fen`, 'PUT', { 'X-API-Key': apiKey }, 'planted');
    expect(planted.status === 200, `PUT: ${planted.status} ${planted.body}`);
    await page.$eval('input[name=prefix]', (input) => { input.value = ''; });
    await page.type('input[name=prefix]', 'dots/');
    await page.click('form.row button[type=submit]');
    await page.waitForFunction(() => document.querySelector('td.key-cell')?.textContent === 'dots/../greeting/en', wait);
    await page.click('td.key-cell button');
    await page.waitForFunction(() => document.querySelector('#value-view')?.getAttribute('aria-label') === 'Value of dots/../greeting/en', wait);
    await page.click('button[data-mode=text]');
    const shown = await textOf(page, '#value-view');
    expect(shown === 'planted', `the value shown for dots/../greeting/en: ${shown}`);
    await page.click('#delete-key');
    await page.waitForFunction(() => [...document.querySelectorAll('[role=status]')]
      .some((status) => status.textContent?.includes('Deleted dots/../greeting/en')), wait);
    const gone = await call(`${node.url}/v1/kv/dots%2F..%2Fgreeting%2Fen`, 'GET', { 'X-API-Key': apiKey });
    expect(gone.status === 404, `the planted key after its delete: ${gone.status} ${gone.body}`);
    const kept = await call(`${node.url}/v1/kv/greeting/en`, 'GET', { 'X-API-Key': apiKey });
    expect(kept.status === 200 && kept.body.includes('world'), `greeting/en after the delete: ${kept.status} ${kept.body}`);
  });

  await step('watch a change appear', async () => {
    await page.click('a[href="/watch"]');
    await page.waitForSelector('#watch-start', wait);
    await page.type('input[name=prefix]', 'greeting/');
    await page.click('#watch-start');
    await page.waitForFunction(() => document.querySelector('#watch-state')?.textContent?.includes('Watching'), wait);
    const put = await call(`${node.url}/v1/kv/greeting/fr`, 'PUT', { 'X-API-Key': apiKey }, 'bonjour');
    expect(put.status === 200, `PUT: ${put.status} ${put.body}`);
    await call(`${node.url}/v1/kv/other`, 'PUT', { 'X-API-Key': apiKey }, 'not watched');
    await call(`${node.url}/v1/kv/greeting/fr`, 'DELETE', { 'X-API-Key': apiKey });
    await page.waitForFunction(() => document.querySelector('#events')?.textContent?.includes('delete'), wait);
    const events = await textOf(page, '#events');
    expect(events.includes('greeting/fr = bonjour'), `the put: ${events}`);
    expect(!events.includes('not watched'), 'only the prefix');
    await shot(page, '05-watch');
    await page.click('#watch-stop');
  });

  await step('revoke the key and see the API refuse it', async () => {
    await page.click('a[href="/keys"]');
    await page.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => b.textContent === 'Revoke'), wait);
    await page.$$eval('button', (buttons) => buttons.find((b) => b.textContent === 'Revoke')?.click());
    await page.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => b.textContent === 'Confirm revoke'), wait);
    await page.$$eval('button', (buttons) => buttons.find((b) => b.textContent === 'Confirm revoke')?.click());
    await page.waitForFunction(() => document.querySelector('tbody')?.textContent?.includes('revoked'), wait);
    const answer = await call(`${node.url}/v1/kv/greeting/en`, 'GET', { 'X-API-Key': apiKey });
    expect(answer.status === 401, `GET with the revoked key: ${answer.status} ${answer.body}`);
    await shot(page, '06-keys-revoked');
  });

  await step('sign out, a wrong password inline, sign in', async () => {
    await page.click('#sign-out');
    await page.waitForFunction(() => location.pathname === '/login', wait);
    await page.type('input[name=email]', email);
    await page.type('input[name=password]', 'not the password');
    await page.click('form button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#login-error')?.textContent?.includes('Wrong email or password'), wait);
    await shot(page, '07-login-error');
    await page.$eval('input[name=password]', (input) => { input.value = ''; });
    await page.type('input[name=password]', password);
    await page.click('form button[type=submit]');
    await page.waitForFunction(() => location.pathname === '/keys', wait);
    await page.waitForFunction(() => document.querySelector('tbody')?.textContent?.includes('browser test'), wait);
  });

  await step('a page shown while the focus is on the page area itself focuses its heading', async () => {
    // Clicking the page's text focuses <main> (tabindex -1), as clicking a
    // link or button does in some browsers: that is no field being typed in.
    await page.click('a[href="/data"]');
    await page.waitForFunction(() => location.pathname === '/data', wait);
    await page.waitForFunction(() => document.activeElement?.tagName === 'H1', wait);
    await page.focus('main');
    await page.evaluate(() => history.back());
    await page.waitForFunction(() => location.pathname === '/keys', wait);
    await page.waitForFunction(() => document.activeElement?.tagName === 'H1' &&
      document.activeElement.closest('main') !== null, wait);
  });

  await step('cluster page with the operator credential', async () => {
    // The page's first figures are held back while half the credential is
    // typed, then let through: the page must not take the focus from the
    // field when they arrive, or the rest of the typing is lost.
    const secret = 'operator-secret-for-tests';
    let held = null;
    const hold = (request) => {
      if (held === null && new URL(request.url()).pathname === '/health') held = request;
      else void request.continue();
    };
    await page.setRequestInterception(true);
    page.on('request', hold);
    try {
      await page.click('a[href="/cluster"]');
      await page.waitForSelector('input[name=operator]', wait);
      await page.type('input[name=operator]', secret.slice(0, 10));
      for (let i = 0; held === null && i < 150; ++i) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(held !== null, 'the cluster page asked for /health');
      await held.continue();
      await page.waitForFunction(() => document.querySelector('#cluster-error')?.textContent?.includes('operator credential'), wait);
      await page.keyboard.type(secret.slice(10));
    } finally {
      page.off('request', hold);
      await page.setRequestInterception(false);
    }
    const typed = await page.$eval('input[name=operator]', (input) => input.value);
    expect(typed === secret, `the field holds ${typed.length} of ${secret.length} characters: the page took the focus while they were typed`);
    await page.click('form.row button[type=submit]');
    await page.waitForFunction(() => document.querySelectorAll('#members tr').length === 1, wait);
  });

  await step('API reference', async () => {
    await page.goto(`${node.url}/docs`, { waitUntil: 'networkidle0' });
    await page.waitForSelector('.opblock', wait);
    const paths = await page.$$eval('.opblock-summary-path', (elements) => elements.map((e) => e.textContent));
    expect(paths.some((p) => p?.includes('/v1/watch')), 'the watch route is described');
    await shot(page, '08-docs');
  });

  await step('phone width', async () => {
    await page.setViewport({ width: 390, height: 844, isMobile: true });
    await page.goto(`${node.url}/`, { waitUntil: 'networkidle0' });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow <= 1, `the landing page scrolls sideways by ${overflow}px`);
    await shot(page, '09-phone-landing');
    await page.goto(`${node.url}/data`, { waitUntil: 'networkidle0' });
    const dataOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(dataOverflow <= 1, `the data page scrolls sideways by ${dataOverflow}px`);
    await shot(page, '10-phone-data');
  });

  await step('every page: fields labelled, the skip link first, images described', async () => {
    await page.setViewport({ width: 1280, height: 900 });
    for (const target of ['/', '/keys', '/data', '/watch', '/cluster']) {
      await page.goto(`${node.url}${target}`, { waitUntil: 'networkidle0' });
      await page.waitForSelector('main h1', wait);
      const unlabelled = await page.$$eval('input, select, textarea', (fields) => fields
        .filter((f) => f.type !== 'hidden' && f.labels.length === 0 && !f.getAttribute('aria-label'))
        .map((f) => f.outerHTML));
      expect(unlabelled.length === 0, `${target}: fields without a label: ${unlabelled.join(' ')}`);
      const unnamed = await page.$$eval('button, a[href]', (controls) => controls
        .filter((c) => !(c.textContent ?? '').trim() && !c.getAttribute('aria-label')).map((c) => c.outerHTML));
      expect(unnamed.length === 0, `${target}: controls without a name: ${unnamed.join(' ')}`);
      const images = await page.$$eval('img, canvas', (elements) => elements
        .filter((e) => !e.getAttribute('alt') && !e.getAttribute('aria-label') && e.getAttribute('role') !== 'presentation')
        .map((e) => e.outerHTML));
      expect(images.length === 0, `${target}: images without a text: ${images.join(' ')}`);
      // Keyboard: the skip link comes first in the tab order, and Enter on
      // it moves the focus to the content.
      const first = await page.evaluate(() => [...document.querySelectorAll('a[href], button, input, select, textarea, [tabindex]')]
        .find((e) => e.tabIndex >= 0 && !e.disabled)?.className);
      expect(first === 'skip', `${target}: the first control in tab order is "${first}", not the skip link`);
      await page.focus('a.skip');
      await page.keyboard.press('Enter');
      const inMain = await page.waitForFunction(() => document.querySelector('main')?.contains(document.activeElement) ||
        location.hash === '#main', wait).then(() => true, () => false);
      expect(inMain, `${target}: the skip link does not lead into the content`);
      expect(await page.evaluate(() => document.documentElement.lang === 'en'), `${target}: the page's language`);
    }
  });

  await step('signing out forgets the operator credential too', async () => {
    await page.goto(`${node.url}/cluster`, { waitUntil: 'networkidle0' });
    expect(await page.evaluate(() => sessionStorage.getItem('logkv.operator')) !== null, 'the operator credential was kept');
    await page.click('#sign-out');
    await page.waitForSelector('input[name=password]', wait);
    const left = await page.evaluate(() => Object.keys(sessionStorage).filter((name) => name.startsWith('logkv.')));
    expect(left.length === 0, `kept after signing out: ${left.join(', ')}`);
  });

  await step('no script errors and no Content-Security-Policy refusals', async () => {
    expect(problems.length === 0, problems.join('\n'));
  });

  // ---- Three nodes, accounts off ----
  // One replica of each key: the keys are spread over the three nodes, so a
  // node lists and watches the others' too (GET /v1/kv, GET /v1/watch).
  let nodes = [];
  await step('cluster page on three nodes', async () => {
    const first = await startNode('n1', ['--gossip-interval-ms=100', '--replicas=1']);
    const seeds = `--seeds=127.0.0.1:${first.binary}`;
    nodes = [first, await startNode('n2', ['--gossip-interval-ms=100', '--replicas=1', seeds]),
      await startNode('n3', ['--gossip-interval-ms=100', '--replicas=1', seeds])];
    const cluster = await browser.newPage();
    const clusterProblems = [];
    watchForProblems(cluster, clusterProblems);
    await cluster.setViewport({ width: 1280, height: 900 });
    await cluster.goto(`${first.url}/cluster`, { waitUntil: 'networkidle0' });
    await cluster.waitForFunction(() => {
      const rows = [...document.querySelectorAll('#members tr')];
      return rows.length === 3 && rows.every((row) => row.textContent?.includes('alive') && row.textContent?.includes('%')) &&
        rows.filter((row) => /\d+ B|KiB|MiB/.test(row.textContent ?? '')).length === 3;
    }, { timeout: 30000 });
    // Keys written through the first node land on all three.
    for (let i = 0; i < 30; i++) {
      const answer = await call(`${first.url}/v1/kv/fruit/${String(i).padStart(2, '0')}`, 'PUT', {}, `value ${i}`);
      expect(answer.status === 200, `PUT fruit/${i}: ${answer.status} ${answer.body}`);
    }
    // A few samples for the charts.
    await new Promise((resolve) => setTimeout(resolve, 4500));
    await shot(cluster, '11-cluster');
    const landing = await browser.newPage();
    await landing.goto(`${first.url}/signup`, { waitUntil: 'networkidle0' });
    const banner = await textOf(landing, '.banner');
    expect(banner.includes('Accounts are off'), `auth off: ${banner}`);
    await shot(landing, '12-signup-auth-off');
    expect(clusterProblems.length === 0, clusterProblems.join('\n'));
    await cluster.close();
    await landing.close();
  });

  await step('the data browser of the third node pages through every node\'s keys', async () => {
    const data = await browser.newPage();
    const dataProblems = [];
    watchForProblems(data, dataProblems);
    await data.setViewport({ width: 1280, height: 900 });
    await data.goto(`${nodes[2].url}/data`, { waitUntil: 'networkidle0' });
    await data.waitForSelector('input[name=prefix]', wait);
    await data.type('input[name=prefix]', 'fruit/');
    await data.select('select[name=limit]', '10');
    await data.click('form.row button[type=submit]');
    const listed = [];
    for (let page = 1; page <= 5; page++) {
      // The page's own first listing (no prefix, 25 a page) also says
      // "Page 1": wait for the one asked for, at most 10 rows a page.
      await data.waitForFunction((n) => {
        const rows = document.querySelectorAll('td.key-cell').length;
        const numbered = document.querySelector('#pager')?.textContent?.includes(`Page ${n}`) ||
          [...document.querySelectorAll('.muted')].some((e) => e.textContent?.includes(`Page ${n} `));
        return numbered && rows > 0 && rows <= 10;
      }, wait, page);
      listed.push(...await data.$$eval('td.key-cell', (cells) => cells.map((cell) => cell.textContent)));
      if (page === 1) await shot(data, '13-cluster-data');
      if (!await data.$('#next-page')) break;
      await data.click('#next-page');
    }
    const expected = Array.from({ length: 30 }, (_, i) => `fruit/${String(i).padStart(2, '0')}`);
    expect(JSON.stringify(listed) === JSON.stringify(expected), `listed through node 3: ${listed.join(' ')}`);
    expect(dataProblems.length === 0, dataProblems.join('\n'));
    await data.close();
  });

  await step('a watch on the second node sees writes made through the first', async () => {
    const watch = await browser.newPage();
    const watchProblems = [];
    watchForProblems(watch, watchProblems);
    await watch.setViewport({ width: 1280, height: 900 });
    await watch.goto(`${nodes[1].url}/watch`, { waitUntil: 'networkidle0' });
    await watch.waitForSelector('#watch-start', wait);
    await watch.type('input[name=prefix]', 'fruit/');
    await watch.click('#watch-start');
    await watch.waitForFunction(() => document.querySelector('#watch-state')?.textContent?.includes('Watching'), wait);
    // Five keys: with one replica each, some live on other nodes than the second.
    const written = ['apple', 'banana', 'cherry', 'damson', 'elder'];
    for (const name of written) {
      const answer = await call(`${nodes[0].url}/v1/kv/fruit/${name}`, 'PUT', {}, `a ${name}`);
      expect(answer.status === 200, `PUT fruit/${name}: ${answer.status}`);
    }
    await watch.waitForFunction((names) => names.every((name) => document.querySelector('#events')?.textContent?.includes(`fruit/${name} = a ${name}`)),
      wait, written);
    const events = await watch.$$eval('#events li', (items) => items.map((item) => item.textContent));
    expect(events.length === written.length, `each change once: ${events.join(' | ')}`);
    await shot(watch, '14-cluster-watch');
    await watch.click('#watch-stop');
    expect(watchProblems.length === 0, watchProblems.join('\n'));
    await watch.close();
  });
} catch (error) {
  failed += 1;
  console.log(`FAIL setup: ${error.stack ?? error}`);
} finally {
  if (browser) await browser.close();
  await cleanUp();
}
console.log(`screenshots: ${artifacts}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
