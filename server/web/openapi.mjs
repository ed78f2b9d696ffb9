// The OpenAPI 3.1 description of every HTTP route logkvd serves, every
// dialect's; build.mjs writes it as /openapi.json and tests/server/
// openapi_test.cc checks it against the router both ways (every route
// registered is here and everything here is registered), so it cannot drift.
// A pattern's "{name...}" capture (the rest of the path, slashes included)
// is written "{name}" as OpenAPI has it; its description says so.

const json = (schema, description = 'OK') => ({
  description,
  content: { 'application/json': { schema } },
});
const error = (description) => json({ $ref: '#/components/schemas/Error' }, description);
const object = (properties, required = []) => ({ type: 'object', properties, required });
const str = { type: 'string' };
const int = { type: 'integer' };
const bool = { type: 'boolean' };
const any = {};

const errors = {
  400: error('Bad input: the message says what'),
  401: error('Missing or invalid credentials'),
  403: error('The credential may not do this (scope, read-only node)'),
  429: error('Rate limited; Retry-After says when to retry'),
};

const path = (name, description) => ({
  name, in: 'path', required: true, description, schema: str,
});
const query = (name, description, schema = str, required = false) => ({
  name, in: 'query', required, description, schema,
});
const restOfPath = (name) => path(name,
  'The rest of the path, slashes included, percent-decoded (the router\'s "{' + name + '...}").');
const ttl = query('ttl', 'Time to live: a Go-style duration (1h, 30m, 500ms) or seconds.');
const consistency = {
  name: 'X-Consistency', in: 'header', required: false,
  description: 'eventual or strong (seed 000\'s dialect only)',
  schema: { type: 'string', enum: ['eventual', 'strong'] },
};
const ifMatch = {
  name: 'If-Match', in: 'header', required: false,
  description: 'Compare-and-set: write only if the key is at this version (its ETag, "3"); 412 ' +
    'otherwise. With replicas > 1 only on keys under the cluster\'s consensus prefixes (501 ' +
    'elsewhere)',
  schema: str,
};
const ifNoneMatch = {
  name: 'If-None-Match', in: 'header', required: false,
  description: '* : write only if the key is absent; 412 otherwise',
  schema: { type: 'string', enum: ['*'] },
};
const rawBody = {
  required: true,
  content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } },
};
const rawValue = {
  description: 'The value\'s bytes',
  content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } },
};
const jsonBody = (schema) => ({ required: true, content: { 'application/json': { schema } } });

const dataSecurity = [{ apiKey: [] }, {}];
const accountSecurity = [{ bearer: [] }];
const operatorSecurity = [{ operator: [] }, { apiKey: [] }, {}];

const adminSecurity = [{ clusterSecret: [] }, { apiKey: [] }];
const idParam = (name) => ({ name, in: 'path', required: true, schema: int });
const aclPrefix = query('prefix', 'The key prefix (bytes, percent-encoded) the ACL is on');
const aclPath = query('path', 'The prefix as a /kv/{path} path: its leading "/" is dropped');
const aclNamespace = query('namespace', 'The user whose namespace it is (default: the caller)', int);

function op(tag, summary, responses, extra = {}) {
  return { tags: [tag], summary, responses: { ...responses }, ...extra };
}

const placed = json(object({
  success: bool, key: str, primary_node: str, replicas: int,
}), 'Written (or deleted): where the key lives');
const versioned = json(object({
  key: str, value: any, encoding: { type: 'string', enum: ['base64'] }, version: int, timestamp: str,
}), 'The value with its version');
const page = (name) => ({ name, in: 'path', required: true, schema: str });
const html = { description: 'The console\'s page (HTML)', content: { 'text/html': { schema: str } } };

const paths = {
  // ---- Seed 000: /v1/kv/{key}, raw bytes ----
  '/v1/kv/{key}': {
    parameters: [restOfPath('key')],
    get: op('kv (seed 000)', 'Read a key', { 200: rawValue, 404: error('Key not found'), ...errors },
      { security: dataSecurity, parameters: [consistency] }),
    put: op('kv (seed 000)', 'Write a key', { 200: placed, 412: error('If-Match or If-None-Match does not hold'), 413: error('Key or value too large'), 501: error('Compare-and-set on a replicated key outside the consensus prefixes'), 507: error('Disk full'), ...errors },
      { security: dataSecurity, parameters: [ttl, consistency, ifMatch, ifNoneMatch], requestBody: rawBody }),
    delete: op('kv (seed 000)', 'Delete a key (also when absent)', { 200: placed, 412: error('If-Match does not hold'), 501: error('Compare-and-set on a replicated key outside the consensus prefixes'), ...errors },
      { security: dataSecurity, parameters: [consistency, ifMatch] }),
  },
  '/v1/kv': {
    get: op('kv (seed 000)', 'List keys by prefix, a page at a time (with no query at all: 404, as seed 000 has it)', {
      200: json(object({
        keys: { type: 'array', items: object({
          key: str, key_encoding: { type: 'string', enum: ['base64'] }, version: int,
          timestamp: str, expires_at: { type: ['string', 'null'] }, size: int,
        }) },
        count: int,
        next_cursor: { type: ['string', 'null'], description: 'Pass as ?cursor= for the next page (through any node); null at the end' },
        unreachable: { type: 'array', items: str, description: 'Cluster members that did not answer (absent when all did)' },
      }), 'A page of keys in key order, of every member of the cluster, each key once'),
      ...errors,
    }, {
      security: dataSecurity,
      parameters: [
        query('prefix', 'Only keys beginning with it'),
        query('cursor', 'next_cursor of the previous page'),
        query('limit', 'Keys per page, 1 to 1000 (default 100)', int),
      ],
    }),
  },
  '/v1/watch': {
    get: op('kv (seed 000)', 'Follow changes under a prefix (Server-Sent Events)', {
      200: {
        description: 'A stream that does not end: "ready" once (data {"resumed"}), then one "put" or ' +
          '"delete" event per change written through any node of the cluster, data ' +
          '{"type","key","value","version","timestamp"} (key_encoding/value_encoding "base64" for ' +
          'bytes that are not UTF-8); "reset" (data {"error"}) where a resumed stream lost changes. ' +
          'The id ending each batch, {"<node id>":[<sequence per shard>],...}, sent back as ' +
          'Last-Event-ID resumes after it',
        content: { 'text/event-stream': { schema: str } },
      },
      429: error('Too many open watch streams on this node or for this user'),
      ...errors,
    }, {
      security: dataSecurity,
      parameters: [
        query('prefix', 'Only keys beginning with it'),
        { name: 'Last-Event-ID', in: 'header', required: false, schema: str,
          description: 'The id of the last event a client had: the stream resumes after it (400 when it is not such an id)' },
      ],
    }),
  },
  '/store/{key}': {
    parameters: [restOfPath('key')],
    get: op('kv (seed 000)', 'Read this node\'s copy of a key', { 200: rawValue, 404: error('Key not found'), ...errors },
      { security: dataSecurity }),
  },
  // ---- Seed 001: /kv?key= ----
  '/kv': {
    parameters: [query('key', 'The key', str, true)],
    get: op('kv (seed 001)', 'Read a key', { 200: rawValue, 404: error('Key not found'), ...errors }, { security: dataSecurity }),
    put: op('kv (seed 001)', 'Write a key', { 200: json(object({ success: bool, version: int })), ...errors },
      { security: dataSecurity, parameters: [ttl], requestBody: rawBody }),
    delete: op('kv (seed 001)', 'Delete a key', { 200: json(object({ success: bool })), ...errors }, { security: dataSecurity }),
  },
  // ---- Seed 002: base64 ----
  '/v0/kv': {
    post: op('kv (seed 002)', 'Write a key (key and value in base64)', { 200: json(object({})), ...errors },
      { security: dataSecurity, parameters: [ttl], requestBody: jsonBody(object({ key: str, value: str }, ['key', 'value'])) }),
  },
  '/v0/kv/key/{key}': {
    parameters: [restOfPath('key')],
    get: op('kv (seed 002)', 'Read a key named in base64', { 200: json(object({ key: str, value: str })), 404: error('key not found'), ...errors },
      { security: dataSecurity }),
  },
  // ---- Seed 003: JSON values with versions ----
  '/put/{key}': {
    parameters: [restOfPath('key')],
    put: op('kv (seed 003)', 'Write a JSON value', { 200: versioned, ...errors },
      { security: dataSecurity, parameters: [ttl], requestBody: jsonBody(object({ value: any }, ['value'])) }),
    post: op('kv (seed 003)', 'Write a JSON value', { 200: versioned, ...errors },
      { operationId: 'putPost', security: dataSecurity, parameters: [ttl], requestBody: jsonBody(object({ value: any }, ['value'])) }),
  },
  '/get/{key}': {
    parameters: [restOfPath('key')],
    get: op('kv (seed 003)', 'Read a value, or one of its kept versions', { 200: versioned, 404: error('Key not found'), ...errors },
      { security: dataSecurity, parameters: [query('version', 'A version still kept (--versions)', int)] }),
  },
  // ---- Seed 004: JSON documents ----
  '/kv/{path}': {
    parameters: [restOfPath('path')],
    put: op('kv (seed 004)', 'Write a JSON document', { 200: json(object({ uuid: str, timestamp: int })), 413: error('Document too large'), ...errors },
      { security: dataSecurity, parameters: [ttl], requestBody: jsonBody(any) }),
    get: op('kv (seed 004)', 'Read a JSON document', { 200: json(any), 404: error('not found'), ...errors }, { security: dataSecurity }),
    delete: op('kv (seed 004)', 'Delete a document', { 204: { description: 'Deleted' }, ...errors }, { security: dataSecurity }),
  },
  // ---- The node ----
  '/health': {
    get: op('node', 'Health of this node', {
      200: json(object({ status: str, version: str, node_id: str, mode: str, member_count: int, uptime_ms: int, view_confirmed: bool, reason: str })),
      503: json(object({ status: str }), 'Starting'),
    }, { security: [{}] }),
  },
  '/metrics': {
    get: op('node', 'This node\'s figures (JSON, or Prometheus text with ?format=prometheus or Accept: text/plain)', {
      200: { description: 'The figures', content: { 'application/json': { schema: object({}) }, 'text/plain': { schema: str } } },
      ...errors,
    }, { security: operatorSecurity, parameters: [query('format', 'prometheus for the text format')] }),
  },
  '/cache/stats': {
    get: op('node', 'Cache figures', { 200: json(object({ size: int, max_size: int, is_full: bool })), 307: { description: 'Asked of another member: its URL' }, ...errors },
      { security: operatorSecurity, parameters: [query('server', 'The member whose figures are wanted')] }),
  },
  '/db/stats': {
    get: op('node', 'Key and log figures', { 200: json(object({ total_keys: int, total_versions: int, file_size: int })), 307: { description: 'Asked of another member: its URL' }, ...errors },
      { security: operatorSecurity, parameters: [query('server', 'The member whose figures are wanted')] }),
  },
  '/nodes': { get: op('cluster', 'The members (seed 001)', { 200: json({ type: 'array', items: object({}) }) }, { security: [{}] }) },
  '/servers': { get: op('cluster', 'The serving members\' URLs (seed 003)', { 200: json({ type: 'array', items: str }) }, { security: [{}] }) },
  '/members/': { get: op('cluster', 'The members (seed 004)', { 200: json({ type: 'array', items: object({}) }) }, { security: [{}] }) },
  '/internal/ping': { get: op('cluster', 'Liveness', { 200: { description: 'Alive' } }, { security: [{}] }) },
  '/join': {
    post: op('cluster', 'Join a cluster through a member (address as the text body)', { 200: json(object({})), ...errors },
      { security: [{ clusterSecret: [] }, { apiKey: [] }], requestBody: { required: true, content: { 'text/plain': { schema: str } } } }),
  },
  '/members/join': {
    post: op('cluster', 'Join a cluster through a member', { 200: json(object({})), ...errors },
      { security: [{ clusterSecret: [] }, { apiKey: [] }], requestBody: jsonBody(object({ address: str }, ['address'])) }),
  },
  '/members/leave': {
    post: op('cluster', 'Leave the cluster gracefully', { 200: json(object({})), 409: error('The only member'), ...errors },
      { security: [{ clusterSecret: [] }, { apiKey: [] }] }),
  },
  '/members/remove': {
    post: op('cluster', 'Remove a member that died while joining (it is down and still joining)', { 200: json(object({ removed: bool, node_id: str })), 404: error('No such member'), 409: error('The member is not joining, or is alive'), ...errors },
      { security: [{ clusterSecret: [] }, { apiKey: [] }], requestBody: jsonBody(object({ node_id: str }, ['node_id'])) }),
  },
  '/internal/fault': {
    post: op('cluster', 'Tests only: cut links to members (fault-injection builds run with --fault-injection)', { 200: json(object({ dropped: { type: 'array', items: str } })), ...errors },
      { 'x-logkv-fault-injection': true, requestBody: jsonBody(object({ dropped: { type: 'array', items: str } })) }),
  },
  '/api/backup': {
    post: op('backup', 'Start a backup of this node', { 202: json(object({ started: bool, name: str, status: object({}) })), 409: error('A backup runs'), 503: error('No --backup-dir'), ...errors },
      { security: [{ clusterSecret: [] }, { apiKey: [] }] }),
  },
  '/api/backup/status': {
    get: op('backup', 'Backups: schedule, the last, the one running', { 200: json(object({})), ...errors },
      { security: [{ clusterSecret: [] }, { apiKey: [] }] }),
  },
  '/api/audit': {
    get: op('audit', 'The audit log: this node\'s signed, hash-chained entries after since (docs/security.md)', {
      200: json(object({ public_key: str, anchor: object({}), head: object({}), entries: { type: 'array', items: object({}) }, more: bool })),
      ...errors,
    }, {
      security: [{ clusterSecret: [] }, { apiKey: [] }],
      parameters: [query('since', 'Entries with a larger seq (default 0)', int),
        query('limit', 'At most this many entries (default 1000, at most 10000)', int)],
    }),
  },
  // ---- Accounts (--auth=on; 404 with a hint when off) ----
  '/signup': {
    get: op('console', 'The sign-up page', { 200: html }),
    post: op('accounts', 'Create an account', {
      201: json(object({ id: int, email: str, username: str, is_active: bool, created_at: str })),
      409: error('The email or username is taken'), 404: error('Accounts are off on this node'), ...errors,
    }, { requestBody: jsonBody(object({ email: str, username: str, password: { type: 'string', minLength: 8 } }, ['email', 'username', 'password'])) }),
  },
  '/login': {
    get: op('console', 'The sign-in page', { 200: html }),
    post: op('accounts', 'Sign in: access and refresh tokens', {
      200: json({ $ref: '#/components/schemas/Tokens' }), 404: error('Accounts are off on this node'), ...errors,
    }, { requestBody: jsonBody(object({ email: str, password: str }, ['email', 'password'])) }),
  },
  '/refresh': {
    post: op('accounts', 'New tokens for a refresh token', {
      200: json({ $ref: '#/components/schemas/Tokens' }), 404: error('Accounts are off on this node'), ...errors,
    }, { requestBody: jsonBody(object({ refresh_token: str }, ['refresh_token'])) }),
  },
  '/apikeys': {
    get: op('accounts', 'The caller\'s API keys', {
      200: json(object({ api_keys: { type: 'array', items: { $ref: '#/components/schemas/ApiKey' } }, count: int })), 404: error('Accounts are off on this node'), ...errors,
    }, { security: accountSecurity }),
    post: op('accounts', 'Create an API key (the full key is in this answer only)', {
      201: json({ $ref: '#/components/schemas/ApiKey' }), 404: error('Accounts are off on this node'), ...errors,
    }, { security: accountSecurity, requestBody: jsonBody(object({ name: str, scopes: { type: 'array', items: { type: 'string', enum: ['read', 'write'] } }, expires_in_days: int }, ['name', 'scopes'])) }),
  },
  '/apikeys/{id}': {
    parameters: [{ name: 'id', in: 'path', required: true, schema: int }],
    delete: op('accounts', 'Revoke an API key', { 200: json(object({ success: bool, id: int })), 404: error('No such key'), ...errors },
      { security: accountSecurity }),
  },
  // ---- Users, groups and ACLs (docs/security.md; --auth=on, 404 when off) ----
  '/api/users': {
    get: op('access', 'Every user (administrators)', { 200: json(object({ users: { type: 'array', items: { $ref: '#/components/schemas/AdminUser' } } })), ...errors },
      { security: adminSecurity }),
    post: op('access', 'Create a user (administrators)', { 201: json({ $ref: '#/components/schemas/AdminUser' }), 409: error('The email or username is taken'), ...errors },
      { security: adminSecurity, requestBody: jsonBody(object({ email: str, username: str, password: str, is_admin: bool }, ['email', 'username', 'password'])) }),
  },
  '/api/users/{id}': {
    parameters: [idParam('id')],
    get: op('access', 'A user with its API keys (administrators)', { 200: json({ $ref: '#/components/schemas/AdminUser' }), 404: error('No such user'), ...errors },
      { security: adminSecurity }),
    put: op('access', 'Deactivate or reactivate, make or unmake an administrator, revoke every key', { 200: json({ $ref: '#/components/schemas/AdminUser' }), 404: error('No such user'), 409: error('The first account stays an active administrator'), ...errors },
      { security: adminSecurity, requestBody: jsonBody(object({ is_active: bool, is_admin: bool, reset_keys: bool })) }),
    delete: op('access', 'Deactivate a user and revoke its keys', { 200: json({ $ref: '#/components/schemas/AdminUser' }), 404: error('No such user'), 409: error('The first account'), ...errors },
      { security: adminSecurity }),
  },
  '/api/groups': {
    get: op('access', 'Every group (administrators)', { 200: json(object({ groups: { type: 'array', items: { $ref: '#/components/schemas/Group' } } })), ...errors },
      { security: adminSecurity }),
    post: op('access', 'Create a group', { 201: json({ $ref: '#/components/schemas/Group' }), 409: error('The name is taken'), ...errors },
      { security: adminSecurity, requestBody: jsonBody(object({ name: str, members: { type: 'array', items: int } }, ['name'])) }),
  },
  '/api/groups/{id}': {
    parameters: [idParam('id')],
    get: op('access', 'A group', { 200: json({ $ref: '#/components/schemas/Group' }), 404: error('No such group'), ...errors },
      { security: adminSecurity }),
    put: op('access', 'Rename a group, add and remove members', { 200: json({ $ref: '#/components/schemas/Group' }), 404: error('No such group or user'), ...errors },
      { security: adminSecurity, requestBody: jsonBody(object({ name: str, add: { type: 'array', items: int }, remove: { type: 'array', items: int } })) }),
    delete: op('access', 'Delete a group', { 200: json(object({ id: int, deleted: bool })), 404: error('No such group'), ...errors },
      { security: adminSecurity }),
  },
  '/api/groups/{id}/members': {
    parameters: [idParam('id')],
    post: op('access', 'Add a member', { 200: json({ $ref: '#/components/schemas/Group' }), 404: error('No such group or user'), ...errors },
      { security: adminSecurity, requestBody: jsonBody(object({ user_id: int }, ['user_id'])) }),
  },
  '/api/groups/{id}/members/{user}': {
    parameters: [idParam('id'), idParam('user')],
    delete: op('access', 'Remove a member', { 200: json({ $ref: '#/components/schemas/Group' }), 404: error('No such group'), ...errors },
      { security: adminSecurity }),
  },
  '/api/acl': {
    parameters: [aclPrefix, aclPath, aclNamespace],
    get: op('access', 'The ACL at a prefix and the one deciding there; without a prefix, every entry of the namespace', { 200: json(object({ namespace: int, prefix: str, acl: { $ref: '#/components/schemas/AclEntry' }, effective: { $ref: '#/components/schemas/AclEntry' }, entries: { type: 'array', items: { $ref: '#/components/schemas/AclEntry' } } })), ...errors },
      { security: dataSecurity }),
    put: op('access', 'Set the ACL of a prefix (the namespace\'s user, administrators; whether keys are audited is an administrator\'s to change: without audit the entry takes the flag deciding for its prefix)', { 200: json({ $ref: '#/components/schemas/AclEntry' }), 404: error('No such owner or group'), ...errors },
      { security: dataSecurity, requestBody: jsonBody(object({ mode: str, owner: int, group: any, audit: bool }, ['mode'])) }),
    delete: op('access', 'Remove the ACL of a prefix (one whose audit flag differs from the entry above it: administrators)', { 200: json(object({ prefix: str, namespace: int, removed: bool })), 404: error('No ACL on this prefix'), ...errors },
      { security: dataSecurity }),
  },
  '/api/acl/check': {
    parameters: [aclPrefix, aclNamespace],
    get: op('access', 'What the caller may do at a prefix of a namespace', { 200: json(object({ namespace: int, user: int, permissions: str })), ...errors },
      { security: dataSecurity }),
  },
  // ---- The console ----
  '/': { get: op('console', 'The landing page', { 200: html }) },
  '/keys': { get: op('console', 'The API keys page', { 200: html }) },
  '/data': { get: op('console', 'The data browser', { 200: html }) },
  '/watch': { get: op('console', 'The live view of changes', { 200: html }) },
  '/cluster': { get: op('console', 'The cluster and health page', { 200: html }) },
  '/docs': { get: op('console', 'This reference, rendered by swagger-ui', { 200: html }) },
  '/openapi.json': { get: op('console', 'This document', { 200: json(object({})) }) },
  '/assets/{file}': {
    parameters: [restOfPath('file')],
    get: op('console', 'The console\'s scripts, styles and images (ETag; 304 on If-None-Match)', {
      200: { description: 'The file' }, 304: { description: 'Not modified' }, 404: error('No such file'),
    }),
  },
  '/console/info': {
    get: op('console', 'What the console needs to know of this node', { 200: json(object({ auth: bool, version: str })) }),
  },
  '/console/cluster': {
    get: op('console', 'Every member: state, role, ring share and figures (those of GET /metrics, asked of each)', {
      200: json(object({ node_id: str, members: { type: 'array', items: object({ id: str, http_address: str, state: str, self: bool, role: str, leader: bool, ownership: { type: 'number' }, figures: object({}), error: str }) } })),
      ...errors,
    }, { security: operatorSecurity }),
  },
};

for (const [route, item] of Object.entries(paths)) {
  for (const [method, operation] of Object.entries(item)) {
    if (method === 'parameters') continue;
    operation.operationId ??= `${method}${route.replace(/[^A-Za-z0-9]+(.)?/g, (_, c) => (c ? c.toUpperCase() : ''))}` || `${method}Root`;
    if (route === '/') operation.operationId = 'getRoot';
  }
}

export default {
  openapi: '3.1.0',
  info: {
    title: 'logkv HTTP API',
    version: '1',
    description: 'Every route logkvd serves on its --http addresses: five REST dialects of one ' +
      'key-value store (seeds 000 to 004), listing and watching keys, the node\'s health, ' +
      'figures and membership, backups, accounts and API keys (--auth=on), users, groups and ' +
      'ACLs (--auth=on), and the console. ' +
      'Errors are {"error": "<why>"}. With --auth=on data routes need X-API-Key.',
  },
  servers: [{ url: '/' }],
  tags: [
    { name: 'kv (seed 000)' }, { name: 'kv (seed 001)' }, { name: 'kv (seed 002)' },
    { name: 'kv (seed 003)' }, { name: 'kv (seed 004)' }, { name: 'node' }, { name: 'cluster' },
    { name: 'backup' }, { name: 'audit' }, { name: 'accounts' }, { name: 'access' }, { name: 'console' },
  ],
  paths,
  components: {
    securitySchemes: {
      apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'An API key (ydht_…), --auth=on' },
      bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'An access token from POST /login' },
      operator: { type: 'http', scheme: 'bearer', description: 'The node\'s --cluster-secret (its figures)' },
      clusterSecret: { type: 'apiKey', in: 'header', name: 'X-Cluster-Secret', description: 'The --cluster-secret' },
    },
    schemas: {
      Error: object({ error: str }, ['error']),
      Tokens: object({ access_token: str, refresh_token: str, token_type: str, expires_in: int, user: object({}) }),
      ApiKey: object({
        id: int, name: str, key_prefix: str, key: { type: 'string', description: 'Only when created' },
        scopes: { type: 'array', items: str }, is_active: bool, last_used_at: { type: ['string', 'null'] },
        expires_at: { type: ['string', 'null'] }, created_at: str,
      }),
      AdminUser: object({
        id: int, email: str, username: str, is_active: bool, is_admin: bool,
        groups: { type: 'array', items: int }, created_at: str,
        api_keys: { type: 'array', items: { $ref: '#/components/schemas/ApiKey' } },
        api_keys_revoked: int,
      }),
      Group: object({ id: int, name: str, members: { type: 'array', items: int }, created_at: str }),
      AclEntry: object({
        prefix: str, prefix_encoding: { type: 'string', enum: ['base64'] }, owner: int,
        group: { type: ['integer', 'null'] }, group_name: str,
        mode: { type: 'string', description: 'owner, group, others: each "cdwr" or "-"' },
        bits: int, audit: bool, default: bool,
      }),
    },
  },
};
