// The logkv console: one document whose script draws the page the path
// names. It calls logkvd's JSON routes with credentials in headers only
// (Authorization for the account routes and the operator's figures,
// X-API-Key for data), kept in this tab's sessionStorage: never in a URL or
// a cookie, so no other site can make the browser send them (CSRF).
// Every string from the server reaches the page as text (textContent),
// never as markup.

export {};

interface Info {
  auth: boolean;
  version: string;
}

interface ApiKey {
  id: number;
  name: string;
  key_prefix: string;
  scopes: string[];
  is_active: boolean;
  last_used_at: string | null;
  expires_at: string | null;
  created_at: string;
}

interface ScanPage {
  keys: { key: string; key_encoding?: string; version: number; timestamp: string; expires_at: string | null; size: number }[];
  count: number;
  next_cursor: string | null;
  unreachable?: string[];  // cluster members that did not answer
}

type Child = Node | string | null | undefined | false;
type Attributes = Record<string, string | boolean | number | ((event: Event) => void) | undefined>;

// ---- DOM helpers ---------------------------------------------------------------

function h(tag: string, attributes: Attributes = {}, ...children: Child[]): HTMLElement {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue;
    if (typeof value === 'function') {
      element.addEventListener(name.replace(/^on/, ''), value);
    } else if (value === true) {
      element.setAttribute(name, '');
    } else {
      element.setAttribute(name, String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child);
  }
  return element;
}

function main(): HTMLElement {
  return document.getElementById('main') as HTMLElement;
}

function field(label: string, input: HTMLElement, hint?: string): HTMLElement {
  return h('label', {}, label, input, hint ? h('span', { class: 'muted' }, hint) : null);
}

function errorBox(id: string): HTMLElement {
  return h('p', { class: 'error', id, role: 'alert' });
}

function show(element: HTMLElement, text: string): void {
  element.textContent = text;
}

// ---- Session -------------------------------------------------------------------

const session = {
  get(name: string): string | null {
    return sessionStorage.getItem(`logkv.${name}`);
  },
  set(name: string, value: string | null): void {
    if (value === null) sessionStorage.removeItem(`logkv.${name}`);
    else sessionStorage.setItem(`logkv.${name}`, value);
  },
};

let info: Info = { auth: false, version: '' };
let refreshTimer: number | undefined;

function signedIn(): boolean {
  return session.get('access') !== null;
}

function storeTokens(tokens: { access_token: string; refresh_token: string; expires_in: number; user?: { email: string } }): void {
  session.set('access', tokens.access_token);
  session.set('refresh', tokens.refresh_token);
  if (tokens.user) session.set('email', tokens.user.email);
  scheduleRefresh(tokens.expires_in);
}

// The access token is renewed before it expires (at four fifths of its life).
function scheduleRefresh(expiresInSeconds: number): void {
  if (refreshTimer !== undefined) clearTimeout(refreshTimer);
  if (!expiresInSeconds || expiresInSeconds <= 0) return;
  refreshTimer = window.setTimeout(() => void refreshTokens(), expiresInSeconds * 800);
}

async function refreshTokens(): Promise<boolean> {
  const refresh = session.get('refresh');
  if (refresh === null) return false;
  const response = await fetch('/refresh', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ refresh_token: refresh }),
  });
  if (!response.ok) return false;
  storeTokens(await response.json());
  return true;
}

function signOut(): void {
  for (const name of ['access', 'refresh', 'email', 'apikey', 'operator']) session.set(name, null);
  if (refreshTimer !== undefined) clearTimeout(refreshTimer);
  navigate('/login');
}

// ---- Requests ------------------------------------------------------------------

type Credential = 'none' | 'account' | 'apikey' | 'operator';

class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly retryAfter: string | null) {
    super(message);
  }
}

function headersFor(credential: Credential): Record<string, string> {
  const headers: Record<string, string> = {};
  if (credential === 'account' && session.get('access')) {
    headers['Authorization'] = `Bearer ${session.get('access')}`;
  } else if (credential === 'apikey' && info.auth && session.get('apikey')) {
    headers['X-API-Key'] = session.get('apikey') as string;
  } else if (credential === 'operator' && info.auth && session.get('operator')) {
    headers['Authorization'] = `Bearer ${session.get('operator')}`;
  }
  return headers;
}

async function request(method: string, path: string, credential: Credential,
  options: { body?: BodyInit; json?: unknown; headers?: Record<string, string> } = {}): Promise<Response> {
  const send = () => {
    const headers = { ...headersFor(credential), ...(options.headers ?? {}) };
    let body = options.body;
    if (options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.json);
    }
    return fetch(path, { method, headers, body, cache: 'no-store' });
  };
  let response = await send();
  // An expired access token is renewed once, then the request tried again.
  if (response.status === 401 && credential === 'account' && (await refreshTokens())) {
    response = await send();
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === 'string') message = body.error;
    } catch {
      // Not JSON: the status says enough.
    }
    throw new ApiError(response.status, message, response.headers.get('Retry-After'));
  }
  return response;
}

async function json<T>(method: string, path: string, credential: Credential,
  options: { json?: unknown; headers?: Record<string, string> } = {}): Promise<T> {
  return (await request(method, path, credential, options)).json() as Promise<T>;
}

function describe(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 429) {
      return `Too many attempts: try again in ${error.retryAfter ?? 'a few'} seconds. (${error.message})`;
    }
    if (error.status === 401 && !info.auth) return error.message;
    return error.message;
  }
  return error instanceof Error ? error.message : String(error);
}

// A key as the last part of a URL's path: the whole key percent-encoded,
// its slashes too (the routes decode them), so that a key holding "." or
// ".." segments names itself and not the key or route the browser would
// make of it. A key that is only "." or ".." cannot be named in a path
// (a URL treats it, however encoded, as a step): said as an error.
function keyPath(key: string): string {
  if (key === '.' || key === '..') {
    throw new Error(`The key "${key}" cannot be named in a URL path; read or change it with the logkv CLI or PUT/GET/DELETE /kv?key=.`);
  }
  return encodeURIComponent(key);
}

// ---- Navigation ----------------------------------------------------------------

const pages: Record<string, { title: string; render: () => void | Promise<void> }> = {
  '/': { title: 'logkv', render: renderHome },
  '/signup': { title: 'Sign up', render: renderSignup },
  '/login': { title: 'Sign in', render: renderLogin },
  '/keys': { title: 'API keys', render: renderKeys },
  '/data': { title: 'Data', render: renderData },
  '/watch': { title: 'Watch', render: renderWatch },
  '/cluster': { title: 'Cluster', render: renderCluster },
};

let leavePage: (() => void) | null = null;

function navigate(path: string): void {
  history.pushState(null, '', path);
  void render();
}

async function render(): Promise<void> {
  if (leavePage) {
    leavePage();
    leavePage = null;
  }
  const page = pages[location.pathname] ?? pages['/'];
  document.title = `${page.title} · logkv console`;
  for (const link of document.querySelectorAll<HTMLAnchorElement>('#nav a')) {
    if (link.getAttribute('href') === location.pathname) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  renderAccount();
  main().replaceChildren();
  await page.render();
  // Keyboard and screen-reader users land on the new page's content, unless
  // they already moved into it while its data loaded (typing in a field):
  // taking the focus then would send the rest of their keystrokes nowhere.
  const heading = main().querySelector('h1');
  // (main itself takes the focus when a user clicks its text, and in some
  // browsers when a link or button in it is clicked: that is no field.)
  const focused = document.activeElement;
  if (heading && (focused === main() || !main().contains(focused))) {
    heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
}

function renderAccount(): void {
  const account = document.getElementById('account') as HTMLElement;
  account.replaceChildren();
  if (!info.auth) {
    account.append(h('span', {}, 'Accounts off on this node'));
  } else if (signedIn()) {
    account.append(h('span', {}, session.get('email') ?? 'signed in'),
      h('button', { type: 'button', id: 'sign-out', onclick: signOut }, 'Sign out'));
  } else {
    account.append(h('a', { href: '/login' }, 'Sign in'), h('a', { href: '/signup' }, 'Sign up'));
  }
}

function authOffBanner(): HTMLElement {
  return h('p', { class: 'banner', role: 'status' },
    'Accounts are off on this node (logkvd --auth=off): there is nothing to sign up or in to, ' +
    'every key is global and the data pages need no API key.');
}

// ---- Landing -------------------------------------------------------------------

function quickStart(): string {
  const url = location.origin;
  const key = session.get('apikey');
  const lines = [`export LOGKV=${url}`];
  let auth = '';
  if (info.auth) {
    lines.push(
      '',
      '# An account, a session and an API key (or use the console\'s pages)',
      `curl -s -X POST $LOGKV/signup -H 'Content-Type: application/json' \\`,
      `  -d '{"email":"you@example.com","username":"you","password":"a long passphrase"}'`,
      `TOKEN=$(curl -s -X POST $LOGKV/login -H 'Content-Type: application/json' \\`,
      `  -d '{"email":"you@example.com","password":"a long passphrase"}' | jq -r .access_token)`,
      `curl -s -X POST $LOGKV/apikeys -H "Authorization: Bearer $TOKEN" \\`,
      `  -H 'Content-Type: application/json' -d '{"name":"laptop","scopes":["read","write"]}'`,
      key ? `export LOGKV_KEY=${key.slice(0, 9)}…   # the key you created, shown once` :
        'export LOGKV_KEY=ydht_…   # the "key" of that answer, shown once',
    );
    auth = ' -H "X-API-Key: $LOGKV_KEY"';
  }
  lines.push(
    '',
    '# Write, read, list and delete',
    `curl -X PUT "$LOGKV/v1/kv/greeting?ttl=1h"${auth} --data-binary 'hello'`,
    `curl $LOGKV/v1/kv/greeting${auth}`,
    `curl "$LOGKV/v1/kv?prefix=gr&limit=10"${auth}`,
    `curl -X DELETE $LOGKV/v1/kv/greeting${auth}`,
    '',
    '# Follow changes under a prefix (Server-Sent Events)',
    `curl -N "$LOGKV/v1/watch?prefix=gr"${auth}`,
  );
  return lines.join('\n');
}

function renderHome(): void {
  main().append(
    h('section', { class: 'hero' },
      h('h1', {}, 'logkv'),
      h('p', {}, 'logkv is a clustered, log-structured key-value store. Every write is appended to a ' +
        'log and indexed in memory; keys are spread over the nodes of a cluster by a hash ring and ' +
        'replicated, with eventual or strong consistency per request. It speaks a binary protocol ' +
        'and five REST dialects over HTTP, and serves this console and its API reference itself.'),
      info.auth ? h('p', {}, signedIn() ? 'You are signed in: create an API key, then browse your data.' :
        'Sign up for an account, create an API key and start storing data.')
        : authOffBanner()),
    h('div', { class: 'grid' },
      h('section', { class: 'card' }, h('h2', {}, 'Get started'),
        h('ul', {},
          info.auth ? h('li', {}, h('a', { href: '/signup' }, 'Create an account')) : null,
          info.auth ? h('li', {}, h('a', { href: '/keys' }, 'Manage API keys')) : null,
          h('li', {}, h('a', { href: '/data' }, 'Browse and edit data')),
          h('li', {}, h('a', { href: '/watch' }, 'Watch changes live')),
          h('li', {}, h('a', { href: '/cluster' }, 'Cluster and health')),
          h('li', {}, h('a', { href: '/docs' }, 'API reference'), ' (', h('a', { href: '/openapi.json' }, 'openapi.json'), ')'))),
      h('section', { class: 'card' }, h('h2', {}, 'This node'),
        h('p', {}, `Version ${info.version}`),
        h('p', {}, info.auth ? 'Accounts and API keys are on.' : 'Accounts are off: keys are global.'))),
    h('section', { class: 'card' }, h('h2', { id: 'quick-start' }, 'Quick start with curl'),
      h('pre', { 'aria-labelledby': 'quick-start', tabindex: 0 }, quickStart())),
  );
}

// ---- Sign up and sign in -------------------------------------------------------

function renderSignup(): void {
  main().append(h('h1', {}, 'Create an account'));
  if (!info.auth) {
    main().append(authOffBanner());
    return;
  }
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'email', required: true, 'aria-describedby': 'signup-error' }) as HTMLInputElement;
  const username = h('input', { type: 'text', name: 'username', autocomplete: 'username', required: true, 'aria-describedby': 'signup-error' }) as HTMLInputElement;
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'new-password', required: true, 'aria-describedby': 'signup-error password-hint' }) as HTMLInputElement;
  const error = errorBox('signup-error');
  const submit = h('button', { type: 'submit' }, 'Sign up') as HTMLButtonElement;
  const form = h('form', { class: 'stack card', novalidate: true },
    field('Email', email), field('Username', username),
    h('label', {}, 'Password', password, h('span', { class: 'muted', id: 'password-hint' }, 'At least 8 characters.')),
    error, h('div', { class: 'row' }, submit),
    h('p', {}, 'Already have an account? ', h('a', { href: '/login' }, 'Sign in')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    show(error, '');
    for (const input of [email, username, password]) input.removeAttribute('aria-invalid');
    submit.disabled = true;
    try {
      await json('POST', '/signup', 'none', { json: { email: email.value, username: username.value, password: password.value } });
      storeTokens(await json('POST', '/login', 'none', { json: { email: email.value, password: password.value } }));
      navigate('/keys');
    } catch (caught) {
      let message = describe(caught);
      if (caught instanceof ApiError && caught.status === 409) {
        message = `An account with this email or username already exists. (${caught.message})`;
        email.setAttribute('aria-invalid', 'true');
      } else if (caught instanceof ApiError && /password/i.test(caught.message)) {
        password.setAttribute('aria-invalid', 'true');
      }
      show(error, message);
    } finally {
      submit.disabled = false;
    }
  });
  main().append(form);
}

function renderLogin(): void {
  main().append(h('h1', {}, 'Sign in'));
  if (!info.auth) {
    main().append(authOffBanner());
    return;
  }
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'email', required: true, 'aria-describedby': 'login-error' }) as HTMLInputElement;
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true, 'aria-describedby': 'login-error' }) as HTMLInputElement;
  const error = errorBox('login-error');
  const submit = h('button', { type: 'submit' }, 'Sign in') as HTMLButtonElement;
  const form = h('form', { class: 'stack card', novalidate: true },
    field('Email', email), field('Password', password), error,
    h('div', { class: 'row' }, submit),
    h('p', {}, 'No account yet? ', h('a', { href: '/signup' }, 'Sign up')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    show(error, '');
    submit.disabled = true;
    try {
      storeTokens(await json('POST', '/login', 'none', { json: { email: email.value, password: password.value } }));
      navigate('/keys');
    } catch (caught) {
      show(error, caught instanceof ApiError && caught.status === 401
        ? `Wrong email or password. (${caught.message})` : describe(caught));
    } finally {
      submit.disabled = false;
    }
  });
  main().append(form);
}

function needAccount(): boolean {
  if (!info.auth) {
    main().append(authOffBanner());
    return false;
  }
  if (!signedIn()) {
    main().append(h('p', { class: 'banner' }, 'Sign in to manage your API keys. ',
      h('a', { href: '/login' }, 'Sign in'), ' or ', h('a', { href: '/signup' }, 'sign up'), '.'));
    return false;
  }
  return true;
}

// ---- API keys ------------------------------------------------------------------

function when(time: string | null, never: string): string {
  return time === null ? never : new Date(time).toLocaleString();
}

async function renderKeys(): Promise<void> {
  main().append(h('h1', {}, 'API keys'));
  if (!needAccount()) return;
  const created = h('div', { 'aria-live': 'polite' });
  const listError = errorBox('keys-error');
  const tbody = h('tbody');
  const name = h('input', { type: 'text', name: 'name', required: true, value: 'console' }) as HTMLInputElement;
  const read = h('input', { type: 'checkbox', name: 'read', checked: true }) as HTMLInputElement;
  const write = h('input', { type: 'checkbox', name: 'write', checked: true }) as HTMLInputElement;
  const days = h('input', { type: 'number', name: 'expires', min: 1, inputmode: 'numeric' }) as HTMLInputElement;
  const createError = errorBox('create-error');

  async function load(): Promise<void> {
    show(listError, '');
    try {
      const answer = await json<{ api_keys: ApiKey[] }>('GET', '/apikeys', 'account');
      tbody.replaceChildren(...answer.api_keys.map((key) => {
        const actions = h('td');
        if (key.is_active) {
          const revoke = h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke key ${key.name} (${key.key_prefix})` }, 'Revoke');
          revoke.addEventListener('click', () => {
            const confirm = h('button', { type: 'button', class: 'danger', 'aria-label': `Confirm revoking key ${key.name}` }, 'Confirm revoke');
            const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
            confirm.addEventListener('click', async () => {
              try {
                await json('DELETE', `/apikeys/${key.id}`, 'account');
                if (session.get('apikey')?.startsWith(key.key_prefix)) session.set('apikey', null);
                await load();
              } catch (caught) {
                show(listError, describe(caught));
              }
            });
            cancel.addEventListener('click', () => void load());
            actions.replaceChildren(confirm, ' ', cancel);
            confirm.focus();
          });
          actions.append(revoke);
        }
        return h('tr', {},
          h('td', {}, key.name), h('td', { class: 'mono' }, `${key.key_prefix}…`),
          h('td', {}, key.scopes.join(', ')), h('td', {}, when(key.last_used_at, 'never')),
          h('td', {}, when(key.expires_at, 'never')), h('td', {}, key.is_active ? 'active' : 'revoked'),
          actions);
      }));
      if (answer.api_keys.length === 0) {
        tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No API keys yet: create one below.')));
      }
    } catch (caught) {
      if (caught instanceof ApiError && caught.status === 401) return signOut();
      show(listError, describe(caught));
    }
  }

  const form = h('form', { class: 'stack' },
    field('Name', name),
    h('fieldset', {}, h('legend', {}, 'Scopes'),
      h('label', { class: 'inline' }, read, 'read'), h('label', { class: 'inline' }, write, 'write')),
    field('Expires after (days)', days, 'Empty: never expires.'),
    createError, h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Create key')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    show(createError, '');
    const scopes = [read.checked ? 'read' : '', write.checked ? 'write' : ''].filter(Boolean);
    const body: Record<string, unknown> = { name: name.value, scopes };
    if (days.value) body.expires_in_days = Number(days.value);
    try {
      const key = await json<ApiKey & { key: string }>('POST', '/apikeys', 'account', { json: body });
      const code = h('code', { id: 'new-key' }, key.key);
      const copied = h('span', { class: 'notice', role: 'status' });
      created.replaceChildren(h('div', { class: 'card' },
        h('h2', {}, `Key "${key.name}" created`),
        h('p', {}, 'Copy it now: it is shown only this once (the server keeps only its hash).'),
        h('div', { class: 'secret' }, code,
          h('button', { type: 'button', id: 'copy-key', onclick: async () => {
            try {
              await navigator.clipboard.writeText(key.key);
              show(copied, 'Copied.');
            } catch {
              const range = document.createRange();
              range.selectNodeContents(code);
              getSelection()?.removeAllRanges();
              getSelection()?.addRange(range);
              show(copied, 'Selected: press Ctrl+C to copy.');
            }
          } }, 'Copy'),
          h('button', { type: 'button', class: 'secondary', id: 'use-key', onclick: () => {
            session.set('apikey', key.key);
            show(copied, 'The data pages of this tab now use this key.');
          } }, 'Use in the data browser'), copied)));
      // A new key is used by this tab's data pages at once.
      session.set('apikey', key.key);
      await load();
    } catch (caught) {
      show(createError, describe(caught));
    }
  });

  main().append(created,
    h('section', { class: 'card' }, h('h2', {}, 'Your keys'), listError,
      h('div', { class: 'table-wrap' }, h('table', {},
        h('caption', { class: 'muted' }, 'Keys are shown by their first characters only.'),
        h('thead', {}, h('tr', {}, ...['Name', 'Prefix', 'Scopes', 'Last used', 'Expires', 'Status', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
        tbody))),
    h('section', { class: 'card' }, h('h2', {}, 'Create a key'), form));
  await load();
}

// ---- Data ------------------------------------------------------------------------

// Auth on: the data pages need an API key of this tab (created on the keys
// page, or pasted here).
function apiKeyCard(onChange: () => void): HTMLElement | null {
  if (!info.auth) return null;
  const card = h('section', { class: 'card' });
  const draw = () => {
    const key = session.get('apikey');
    if (key) {
      card.replaceChildren(h('p', {}, 'Data requests use the API key ', h('code', {}, `${key.slice(0, 9)}…`), ' ',
        h('button', { type: 'button', class: 'secondary', onclick: () => { session.set('apikey', null); draw(); onChange(); } }, 'Use another key')));
      return;
    }
    const input = h('input', { type: 'password', name: 'apikey', autocomplete: 'off', required: true }) as HTMLInputElement;
    const form = h('form', { class: 'row' }, field('API key (X-API-Key)', input, 'Create one on the API keys page; it stays in this tab only.'),
      h('button', { type: 'submit' }, 'Use key'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      session.set('apikey', input.value.trim());
      draw();
      onChange();
    });
    card.replaceChildren(form);
  };
  draw();
  return card;
}

function toHex(bytes: Uint8Array): string {
  const lines: string[] = [];
  for (let offset = 0; offset < bytes.length; offset += 16) {
    const row = Array.from(bytes.slice(offset, offset + 16));
    lines.push(`${offset.toString(16).padStart(8, '0')}  ${row.map((b) => b.toString(16).padStart(2, '0')).join(' ')}`);
  }
  return lines.join('\n');
}

function toBase64(bytes: Uint8Array): string {
  let text = '';
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

function renderData(): void {
  main().append(h('h1', {}, 'Data'));
  const status = h('p', { class: 'notice', role: 'status' });
  const listError = errorBox('list-error');
  const prefix = h('input', { type: 'search', name: 'prefix', placeholder: 'e.g. user/' }) as HTMLInputElement;
  const limit = h('select', { name: 'limit' }, ...[10, 25, 100].map((n) => h('option', { value: n, selected: n === 25 }, String(n)))) as HTMLSelectElement;
  const tbody = h('tbody');
  const pager = h('div', { class: 'row' });
  let cursors: (string | null)[] = [null];  // the cursor of each page shown so far
  let latest = 0;  // the last listing asked for: an answer to an earlier one is dropped

  async function list(page: number): Promise<void> {
    show(listError, '');
    const query = new URLSearchParams({ prefix: prefix.value, limit: limit.value });
    const cursor = cursors[page];
    if (cursor) query.set('cursor', cursor);
    const asked = ++latest;
    try {
      const answer = await json<ScanPage>('GET', `/v1/kv?${query}`, 'apikey');
      // A slower answer to an earlier listing (the first one on opening the
      // page, a page clicked past) must not replace this one's rows.
      if (asked !== latest) return;
      cursors = cursors.slice(0, page + 1);
      cursors.push(answer.next_cursor);
      tbody.replaceChildren(...answer.keys.map((item) => h('tr', {},
        h('td', { class: 'key-cell' }, item.key_encoding ? h('span', { class: 'mono' }, `base64:${item.key}`)
          : h('button', { type: 'button', onclick: () => void view(item.key) }, item.key)),
        h('td', {}, String(item.version)), h('td', {}, String(item.size)), h('td', {}, new Date(item.timestamp).toLocaleString()),
        h('td', {}, item.expires_at ? new Date(item.expires_at).toLocaleString() : 'never'))));
      if (answer.keys.length === 0) tbody.append(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No keys under this prefix.')));
      pager.replaceChildren(h('span', { class: 'muted' }, `Page ${page + 1} · ${answer.count} keys`));
      if (page > 0) pager.append(h('button', { type: 'button', class: 'secondary', onclick: () => void list(page - 1) }, 'Previous page'));
      if (answer.next_cursor) pager.append(h('button', { type: 'button', class: 'secondary', id: 'next-page', onclick: () => void list(page + 1) }, 'Next page'));
      if (answer.unreachable?.length) {
        pager.append(h('span', { class: 'error', role: 'alert' },
          `Not answering: ${answer.unreachable.join(', ')}; keys held only there are missing from this page.`));
      }
    } catch (caught) {
      if (asked === latest) show(listError, describe(caught));
    }
  }

  // The value panel: one key's bytes in the chosen form, its versions.
  const valuePanel = h('section', { class: 'card', 'aria-live': 'polite' }, h('h2', {}, 'Value'),
    h('p', { class: 'muted' }, 'Choose a key to see its value.'));
  let mode = 'text';

  async function view(key: string): Promise<void> {
    const error = errorBox('value-error');
    valuePanel.replaceChildren(h('h2', {}, 'Value of ', h('code', {}, key)), error);
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(await (await request('GET', `/v1/kv/${keyPath(key)}`, 'apikey')).arrayBuffer());
    } catch (caught) {
      show(error, describe(caught));
      return;
    }
    const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
    const pre = h('pre', { id: 'value-view', tabindex: 0, 'aria-label': `Value of ${key}` });
    const draw = () => {
      if (mode === 'json') {
        try {
          pre.textContent = JSON.stringify(JSON.parse(text), null, 2);
        } catch {
          pre.textContent = '(not JSON) ' + text;
        }
      } else if (mode === 'hex') {
        pre.textContent = toHex(bytes);
      } else if (mode === 'base64') {
        pre.textContent = toBase64(bytes);
      } else {
        pre.textContent = text;
      }
      for (const button of tabs.querySelectorAll('button')) {
        button.setAttribute('aria-pressed', String(button.dataset.mode === mode));
      }
    };
    const tabs = h('div', { class: 'tabs', role: 'group', 'aria-label': 'Show the value as' },
      ...[['text', 'Text'], ['json', 'JSON'], ['hex', 'Hex'], ['base64', 'Base64']].map(([value, label]) => {
        const button = h('button', { type: 'button', 'data-mode': value, 'aria-pressed': 'false' }, label);
        button.addEventListener('click', () => { mode = value; draw(); });
        return button;
      }));
    const versions = h('ul', { id: 'versions' });
    const remove = h('button', { type: 'button', class: 'danger', id: 'delete-key' }, 'Delete key');
    remove.addEventListener('click', async () => {
      try {
        await request('DELETE', `/v1/kv/${keyPath(key)}`, 'apikey', { headers: consistencyHeader() });
        valuePanel.replaceChildren(h('h2', {}, 'Value'), h('p', { class: 'notice', role: 'status' }, `Deleted ${key}.`));
        await list(cursors.length > 1 ? cursors.length - 2 : 0);
      } catch (caught) {
        show(error, describe(caught));
      }
    });
    valuePanel.append(h('p', { class: 'muted' }, `${bytes.length} bytes`), tabs, pre,
      h('div', { class: 'row' }, remove, h('button', { type: 'button', class: 'secondary', onclick: () => {
        putKey.value = key;
        putValue.value = text;
        putValue.focus();
      } }, 'Edit')),
      h('h3', {}, 'Versions'), versions);
    if (mode === 'text' && bytes.some((b) => b < 9 || (b > 13 && b < 32))) mode = 'hex';
    draw();
    await loadVersions(key, versions);
  }

  // Older versions while the node keeps them (--versions), read through
  // GET /get/{key}?version=N.
  async function loadVersions(key: string, list: HTMLElement): Promise<void> {
    try {
      const current = await json<{ version: number; timestamp: string }>('GET', `/get/${keyPath(key)}`, 'apikey');
      const items: HTMLElement[] = [];
      for (let version = current.version; version >= 1 && version > current.version - 10; --version) {
        try {
          const answer = await json<{ version: number; timestamp: string; value: unknown }>('GET', `/get/${keyPath(key)}?version=${version}`, 'apikey');
          const value = typeof answer.value === 'string' ? answer.value : JSON.stringify(answer.value);
          items.push(h('li', {}, h('strong', {}, `v${answer.version}`), ` ${new Date(answer.timestamp).toLocaleString()}: `,
            h('code', {}, value.length > 80 ? `${value.slice(0, 80)}…` : value)));
        } catch {
          break;  // older versions are gone
        }
      }
      list.replaceChildren(...items);
    } catch (caught) {
      list.replaceChildren(h('li', { class: 'muted' }, describe(caught)));
    }
  }

  const putKey = h('input', { type: 'text', name: 'key', required: true }) as HTMLInputElement;
  const putValue = h('textarea', { name: 'value' }) as HTMLTextAreaElement;
  const ttl = h('input', { type: 'text', name: 'ttl', placeholder: 'e.g. 30m, 1h, 3600' }) as HTMLInputElement;
  const consistency = h('select', { name: 'consistency' },
    h('option', { value: '' }, 'node default'), h('option', { value: 'eventual' }, 'eventual'),
    h('option', { value: 'strong' }, 'strong')) as HTMLSelectElement;
  const putError = errorBox('put-error');
  function consistencyHeader(): Record<string, string> {
    return consistency.value ? { 'X-Consistency': consistency.value } : {};
  }
  const putForm = h('form', { class: 'stack' }, field('Key', putKey), field('Value', putValue),
    h('div', { class: 'row' }, field('TTL', ttl, 'Empty: kept until deleted.'), field('Consistency', consistency)),
    putError, h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Put')));

  const listForm = h('form', { class: 'row' }, field('Prefix', prefix), field('Page size', limit),
    h('button', { type: 'submit' }, 'List keys'));
  listForm.addEventListener('submit', (event) => {
    event.preventDefault();
    cursors = [null];
    void list(0);
  });

  main().append(
    apiKeyCard(() => { cursors = [null]; void list(0); }) ?? authOffNote(),
    status,
    h('div', { class: 'split' },
      h('div', {},
        h('section', { class: 'card' }, h('h2', {}, 'Keys'), listForm, listError,
          h('div', { class: 'table-wrap' }, h('table', {},
            h('thead', {}, h('tr', {}, ...['Key', 'Version', 'Bytes', 'Written', 'Expires'].map((t) => h('th', { scope: 'col' }, t)))),
            tbody)), pager),
        h('section', { class: 'card' }, h('h2', {}, 'Put a value'), putForm)),
      valuePanel));
  // The value goes as the raw body (PUT /v1/kv/{key}).
  putForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    show(putError, '');
    show(status, '');
    const query = ttl.value.trim() ? `?ttl=${encodeURIComponent(ttl.value.trim())}` : '';
    const key = putKey.value;
    try {
      const answer = await (await request('PUT', `/v1/kv/${keyPath(key)}${query}`, 'apikey',
        { headers: consistencyHeader(), body: putValue.value })).json() as { primary_node?: string; replicas?: number };
      show(status, `Stored ${key}${answer.primary_node ? ` (primary ${answer.primary_node}, ${answer.replicas ?? 0} replicas)` : ''}.`);
      await list(0);
      await view(key);
    } catch (caught) {
      show(putError, describe(caught));
    }
  });
  if (!info.auth || session.get('apikey')) void list(0);
}

function authOffNote(): HTMLElement {
  return h('p', { class: 'muted' }, 'Accounts are off on this node: keys are global and need no API key.');
}

// ---- Watch -------------------------------------------------------------------------

// One Server-Sent Event: its type, data and id ("" when it has none).
interface SseEvent {
  event: string;
  data: string;
  id: string;
}

// Reads GET /v1/watch's stream with fetch (EventSource cannot send the
// X-API-Key header), calling onEvent for each event until aborted.
async function readEvents(response: Response, onEvent: (event: SseEvent) => void): Promise<void> {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event: SseEvent = { event: 'message', data: '', id: '' };
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event.event = line.slice(6).trim();
        else if (line.startsWith('data:')) event.data += line.slice(5).trim();
        else if (line.startsWith('id:')) event.id = line.slice(3).trim();
      }
      if (block.trim() && !block.startsWith(':')) onEvent(event);
    }
  }
}

// A lost stream is opened again this many times in a row at most, 2 s apart.
const kWatchReconnects = 5;

function renderWatch(): void {
  main().append(h('h1', {}, 'Watch changes'));
  const prefix = h('input', { type: 'search', name: 'prefix', placeholder: 'everything' }) as HTMLInputElement;
  const start = h('button', { type: 'submit', id: 'watch-start' }, 'Start watching') as HTMLButtonElement;
  const stop = h('button', { type: 'button', class: 'secondary', id: 'watch-stop', disabled: true }, 'Stop') as HTMLButtonElement;
  const state = h('p', { class: 'notice', role: 'status', id: 'watch-state' });
  const error = errorBox('watch-error');
  const events = h('ol', { class: 'events', id: 'events', 'aria-live': 'polite', 'aria-label': 'Changes, newest first' });
  let controller: AbortController | null = null;

  const stopWatching = () => {
    controller?.abort();
    controller = null;
    start.disabled = false;
    stop.disabled = true;
  };
  leavePage = stopWatching;
  stop.addEventListener('click', () => { stopWatching(); show(state, 'Stopped.'); });
  const form = h('form', { class: 'row' }, field('Prefix', prefix), start, stop);
  const watching = () => `Watching ${prefix.value ? `keys under "${prefix.value}"` : 'every key'}`;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    stopWatching();
    show(error, '');
    const mine = new AbortController();
    controller = mine;
    start.disabled = true;
    stop.disabled = false;
    const query = new URLSearchParams({ prefix: prefix.value });
    // Where the stream stands (the last id it sent): a lost connection is
    // resumed from there, so no change is missed (the node says so in a
    // "reset" event when it cannot resume that far back).
    let lastId = '';
    let failures = 0;
    try {
      while (!mine.signal.aborted) {
        try {
          const headers = headersFor('apikey');
          if (lastId) headers['Last-Event-ID'] = lastId;
          const response = await fetch(`/v1/watch?${query}`, { headers, signal: mine.signal, cache: 'no-store' });
          if (!response.ok) {
            const body = await response.json().catch(() => ({ error: response.statusText }));
            throw new ApiError(response.status, body.error, response.headers.get('Retry-After'));
          }
          let ended = false;
          await readEvents(response, (sse) => {
            if (sse.id) lastId = sse.id;
            if (sse.event === 'ready') {
              failures = 0;
              show(state, `${watching()}${JSON.parse(sse.data).resumed ? ' (resumed after a lost connection)' : ''}: changes appear below as they happen.`);
              return;
            }
            if (sse.event === 'error') {
              ended = true;
              show(error, JSON.parse(sse.data).error);
              return;
            }
            if (sse.event === 'reset') {
              events.prepend(h('li', { class: 'reset' }, h('span', { class: 'tag reset' }, 'gap'), ' ',
                `Some changes may be missing here: ${JSON.parse(sse.data).error}`));
              return;
            }
            const change = JSON.parse(sse.data) as { type: string; key: string; value?: string; version: number; timestamp: string };
            const value = change.value === undefined ? '' : change.value.length > 120 ? `${change.value.slice(0, 120)}…` : change.value;
            events.prepend(h('li', {}, h('span', { class: `tag ${change.type}` }, change.type), ' ',
              h('code', {}, change.key), change.type === 'put' ? ` = ${value}` : '',
              h('span', { class: 'muted' }, ` · v${change.version} · ${new Date(change.timestamp).toLocaleTimeString()}`)));
          });
          if (ended) break;
        } catch (caught) {
          // A refusal (401, 429...) ends the watch; a lost connection does not.
          if (caught instanceof ApiError || mine.signal.aborted) throw caught;
        }
        if (mine.signal.aborted) break;
        if (++failures > kWatchReconnects) {
          show(state, 'The stream ended and could not be resumed.');
          break;
        }
        show(state, 'The connection was lost; resuming…');
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    } catch (caught) {
      if (!(caught instanceof DOMException && caught.name === 'AbortError')) show(error, describe(caught));
    } finally {
      if (controller === mine) {
        start.disabled = false;
        stop.disabled = true;
      }
    }
  });
  main().append(
    apiKeyCard(() => undefined) ?? authOffNote(),
    h('section', { class: 'card' }, form, state, error,
      h('p', { class: 'muted' }, 'The same stream with curl: ', h('code', {}, `curl -N "${location.origin}/v1/watch?prefix=…"${info.auth ? ' -H "X-API-Key: $LOGKV_KEY"' : ''}`))),
    h('section', { class: 'card' }, h('h2', {}, 'Changes'), events));
}

// ---- Cluster -----------------------------------------------------------------------

interface Member {
  id: string;
  http_address: string;
  state: string;
  self: boolean;
  role?: string;
  leader?: boolean;
  ownership: number;
  error?: string;
  figures?: Record<string, number | string>;
}

function bytes(value: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    ++unit;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

// Prometheus text: the sum of a metric's samples whose labels include the
// filter, by metric name (a histogram's _sum and _count included).
function sumMetric(text: string, name: string, filter = ''): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || line.startsWith('#')) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    if (filter && !rest.includes(filter)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) total += value;
  }
  return total;
}

// A line chart of the last samples on a canvas (no library: the CSP allows
// scripts from this origin only, and a canvas needs none).
function drawChart(canvas: HTMLCanvasElement, samples: number[], unit: string): void {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 160;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext('2d');
  if (!context) return;
  context.scale(ratio, ratio);
  context.clearRect(0, 0, width, height);
  const max = Math.max(1e-9, ...samples) * 1.2;
  context.strokeStyle = '#cbd5e1';
  context.fillStyle = '#475569';
  context.font = '12px system-ui, sans-serif';
  for (const fraction of [0, 0.5, 1]) {
    const y = height - 20 - fraction * (height - 30);
    context.beginPath();
    context.moveTo(40, y);
    context.lineTo(width - 5, y);
    context.stroke();
    context.fillText((max * fraction).toPrecision(2), 2, y + 4);
  }
  context.fillText(unit, 45, 12);
  context.strokeStyle = '#1d4ed8';
  context.lineWidth = 2;
  context.beginPath();
  samples.forEach((sample, index) => {
    const x = 40 + (index / Math.max(1, samples.length - 1)) * (width - 45);
    const y = height - 20 - (sample / max) * (height - 30);
    if (index === 0) context.moveTo(x, y);
    else context.lineTo(x, y);
  });
  context.stroke();
}

async function renderCluster(): Promise<void> {
  main().append(h('h1', {}, 'Cluster and health'));
  const error = errorBox('cluster-error');
  if (info.auth) {
    const secret = h('input', { type: 'password', name: 'operator', autocomplete: 'off' }) as HTMLInputElement;
    const form = h('form', { class: 'row card' },
      field('Operator credential', secret, 'The node\'s --cluster-secret: its figures are the operator\'s (it stays in this tab only).'),
      h('button', { type: 'submit' }, session.get('operator') ? 'Replace' : 'Use'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      session.set('operator', secret.value);
      void render();
    });
    main().append(form);
  }
  const health = h('div', { class: 'grid', id: 'health' });
  const tbody = h('tbody', { id: 'members' });
  const rateCanvas = h('canvas', { role: 'img', 'aria-label': 'HTTP requests per second, last two minutes' }) as HTMLCanvasElement;
  const latencyCanvas = h('canvas', { role: 'img', 'aria-label': 'Mean HTTP latency in milliseconds, last two minutes' }) as HTMLCanvasElement;
  const replication = h('dl', { class: 'grid', id: 'replication' });
  main().append(error, h('section', { class: 'card' }, h('h2', {}, 'This node'), health),
    h('section', { class: 'card' }, h('h2', {}, 'Members'), h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ...['Member', 'State', 'Role', 'Ring share', 'Keys', 'Disk (log)', 'Dead bytes', 'Replication queue'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody))),
    h('div', { class: 'grid' },
      h('section', { class: 'card' }, h('h2', {}, 'Requests per second'), rateCanvas),
      h('section', { class: 'card' }, h('h2', {}, 'Mean latency (ms)'), latencyCanvas)),
    h('section', { class: 'card' }, h('h2', {}, 'Replication and anti-entropy'), replication));

  const rates: number[] = [];
  const latencies: number[] = [];
  let last: { at: number; requests: number; seconds: number; count: number } | null = null;
  let stopped = false;
  leavePage = () => { stopped = true; };

  const figure = (label: string, value: string) => h('div', {}, h('div', { class: 'muted' }, label), h('div', { class: 'figure' }, value));

  async function poll(): Promise<void> {
    try {
      const status = await json<Record<string, string | number | boolean>>('GET', '/health', 'none');
      health.replaceChildren(figure('Status', String(status.status)), figure('Node', String(status.node_id)),
        figure('Members', String(status.member_count)), figure('Version', String(status.version)),
        figure('Up for', `${Math.round(Number(status.uptime_ms) / 1000)} s`),
        figure('View confirmed', status.view_confirmed ? 'yes' : 'no'));
      const summary = await json<{ members: Member[] }>('GET', '/console/cluster', 'operator');
      tbody.replaceChildren(...summary.members.map((member) => {
        const f = member.figures ?? {};
        return h('tr', {},
          h('td', {}, h('span', { class: 'mono' }, member.id), member.self ? ' (this node)' : '',
            member.error ? h('div', { class: 'error' }, member.error) : null),
          h('td', {}, h('span', { class: `tag ${member.state === 'alive' ? 'alive' : 'dead'}` }, member.state)),
          h('td', {}, member.leader ? 'leader' : member.role ?? '—'),
          h('td', {}, `${(member.ownership * 100).toFixed(1)} %`),
          h('td', {}, f.key_count === undefined ? '—' : String(f.key_count)),
          h('td', {}, f.wal_size === undefined ? '—' : bytes(Number(f.wal_size))),
          h('td', {}, f.dead_bytes === undefined ? '—' : bytes(Number(f.dead_bytes))),
          h('td', {}, f.queue_size === undefined ? '—' : String(f.queue_size)));
      }));
      const text = await (await request('GET', '/metrics?format=prometheus', 'operator')).text();
      const now = performance.now();
      const sample = {
        at: now,
        requests: sumMetric(text, 'logkv_http_requests_total'),
        seconds: sumMetric(text, 'logkv_http_request_duration_seconds_sum'),
        count: sumMetric(text, 'logkv_http_request_duration_seconds_count'),
      };
      if (last) {
        const elapsed = (now - last.at) / 1000;
        rates.push(Math.max(0, (sample.requests - last.requests) / elapsed));
        const count = sample.count - last.count;
        latencies.push(count > 0 ? ((sample.seconds - last.seconds) / count) * 1000 : 0);
        if (rates.length > 60) rates.shift();
        if (latencies.length > 60) latencies.shift();
      }
      last = sample;
      drawChart(rateCanvas, rates, 'requests/s');
      drawChart(latencyCanvas, latencies, 'ms');
      const self = summary.members.find((member) => member.self)?.figures ?? {};
      const entries: [string, string][] = [
        ['Replications', String(self.total_replications ?? 0)],
        ['Successful replicas', String(self.successful_replicas ?? 0)],
        ['Failed replicas', String(self.failed_replicas ?? 0)],
        ['Retries in progress', String(self.retries_in_progress ?? 0)],
        ['Mean ack time', `${Number(self.average_ack_time_ms ?? 0).toFixed(2)} ms`],
        ['Max replication lag', `${self.max_replication_lag_ms ?? 0} ms`],
        ['Anti-entropy rounds', String(sumMetric(text, 'logkv_anti_entropy_rounds_total'))],
        ['Anti-entropy keys repaired', String(sumMetric(text, 'logkv_anti_entropy_keys_repaired_total') || sumMetric(text, 'logkv_anti_entropy_peer_keys_repaired'))],
        ['Hints pending', String(sumMetric(text, 'logkv_hinted_handoff_pending'))],
      ];
      replication.replaceChildren(...entries.map(([label, value]) => h('div', {}, h('dt', { class: 'muted' }, label), h('dd', { class: 'figure' }, value))));
      show(error, '');
    } catch (caught) {
      show(error, caught instanceof ApiError && (caught.status === 401 || caught.status === 403)
        ? `The cluster's figures need the operator credential. (${caught.message})` : describe(caught));
    }
    if (!stopped) window.setTimeout(() => void poll(), 2000);
  }
  await poll();
}

// ---- Start -------------------------------------------------------------------------

document.addEventListener('click', (event) => {
  const link = (event.target as Element).closest('a');
  if (!link || link.target || event.ctrlKey || event.metaKey || event.shiftKey) return;
  const url = new URL(link.href);
  if (url.origin === location.origin && url.pathname in pages) {
    event.preventDefault();
    navigate(url.pathname);
  }
});
window.addEventListener('popstate', () => void render());

async function start(): Promise<void> {
  try {
    info = await (await fetch('/console/info', { cache: 'no-store' })).json();
  } catch {
    // Defaults: accounts off.
  }
  (document.getElementById('version') as HTMLElement).textContent = `logkv ${info.version}`;
  if (signedIn()) scheduleRefresh(60);
  await render();
}

void start();
