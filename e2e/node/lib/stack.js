// The local stack as a Supabase client meets it: its coordinates (stack.env), users in its database, access
// tokens signed with its keys, and Supabase's own client packages pointed at the API.

import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import aws4 from 'aws4';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { FunctionsClient } from '@supabase/functions-js';
import { StorageClient } from '@supabase/storage-js';
import { SignJWT, exportSPKI, importJWK } from 'jose';
import pg from 'pg';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const ENV_FILE = join(ROOT, 'target', 'stack', 'stack.env');

// `stack.env` as `envfile.rs` writes it: KEY=VALUE, values plain or single-quoted ('\'' inside).
function parseEnvFile(text) {
  const vars = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim().replace(/^export /, '');
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    let value = '';
    const rest = line.slice(eq + 1);
    for (let i = 0; i < rest.length; i++) {
      const c = rest[i];
      if (c === "'") {
        const end = rest.indexOf("'", i + 1);
        value += rest.slice(i + 1, end < 0 ? rest.length : end);
        i = end < 0 ? rest.length : end;
      } else if (c === '\\') {
        value += rest[++i] ?? '';
      } else {
        value += c;
      }
    }
    vars[line.slice(0, eq).trim()] = value;
  }
  return vars;
}

let fileVars;
// A stack variable: the process environment's when set (`cargo xtask test` passes the stack's), else stack.env's.
export function stackVar(key) {
  if (process.env[key]) return process.env[key];
  if (fileVars === undefined) {
    try {
      fileVars = parseEnvFile(readFileSync(ENV_FILE, 'utf8'));
    } catch (e) {
      throw new Error(`${key} is not set and ${ENV_FILE} cannot be read (is the stack up?): ${e.message}`);
    }
  }
  const value = fileVars[key];
  if (!value) throw new Error(`${key} is missing from ${ENV_FILE}`);
  return value;
}

export const apiUrl = () => stackVar('API_URL').replace(/\/+$/, '');
export const supabaseUrl = () => stackVar('SUPABASE_URL').replace(/\/+$/, '');
export const issuer = () => `${supabaseUrl()}/auth/v1`;

// ---- the database ----

let pool;
function db() {
  pool ??= new pg.Pool({ connectionString: stackVar('DATABASE_URL'), max: 2 });
  return pool;
}

export async function closeDb() {
  await pool?.end();
  pool = undefined;
}

// A fresh user in `auth.users` and `public.profiles` (Supabase Auth makes them in production).
export async function newUser() {
  const id = randomUUID();
  await db().query(
    `WITH u AS (INSERT INTO auth.users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING)
     INSERT INTO public.profiles (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`,
    [id],
  );
  return id;
}

// What a submission writes for a user: jobs, assets, usage rows, and objects under its prefix in S3.
export async function writtenFor(userId) {
  const { rows } = await db().query(
    `SELECT (SELECT count(*) FROM public.jobs WHERE user_id = $1)::int AS jobs,
            (SELECT count(*) FROM public.workspace_assets WHERE user_id = $1)::int AS assets,
            (SELECT count(*) FROM public.api_usage_logs WHERE user_id = $1)::int AS usage`,
    [userId],
  );
  return { ...rows[0], objects: await objectCount(`${userId}/`) };
}

// Keys under `prefix` in the workspace bucket.
async function objectCount(prefix) {
  const res = await s3Get(stackVar('WORKSPACE_BUCKET'), '', { 'list-type': '2', prefix });
  const body = await res.text();
  if (!res.ok) throw new Error(`S3 list ${prefix}: ${res.status} ${body}`);
  const count = /<KeyCount>(\d+)<\/KeyCount>/.exec(body);
  if (!count) throw new Error(`S3 list ${prefix}: no KeyCount in ${body}`);
  return Number(count[1]);
}

// The bytes of an object in the workspace bucket, straight from S3.
export async function s3Object(key) {
  const res = await s3Get(stackVar('WORKSPACE_BUCKET'), key);
  if (!res.ok) throw new Error(`S3 GET ${key}: ${res.status} ${await res.text()}`);
  return Buffer.from(await res.arrayBuffer());
}

// A path-style GET to the stack's S3 (moto), signed with SigV4 by the aws4 package: moto refuses anonymous reads of
// private objects.
function s3Get(bucket, key, query = {}) {
  const endpoint = new URL(stackVar('AWS_ENDPOINT_URL'));
  const search = new URLSearchParams(query).toString();
  const path = `/${bucket}/${key.split('/').map(encodeURIComponent).join('/')}${search ? `?${search}` : ''}`;
  const request = aws4.sign(
    { host: endpoint.host, path, service: 's3', region: stackVar('AWS_REGION'), method: 'GET' },
    { accessKeyId: stackVar('AWS_ACCESS_KEY_ID'), secretAccessKey: stackVar('AWS_SECRET_ACCESS_KEY') },
  );
  return fetch(`${endpoint.origin}${path}`, { headers: request.headers });
}

// ---- tokens ----

let keys;
// The stack's signing keys (`SUPABASE_SIGNING_KEYS`, a private JWK set): `{ES256, RS256}`, each `{kid, key, jwk}`.
export async function signingKeys() {
  if (keys) return keys;
  const set = JSON.parse(readFileSync(stackVar('SUPABASE_SIGNING_KEYS'), 'utf8'));
  keys = {};
  for (const alg of ['ES256', 'RS256']) {
    const jwk = set.keys.find((k) => k.alg === alg);
    if (!jwk) throw new Error(`no ${alg} key in SUPABASE_SIGNING_KEYS`);
    keys[alg] = { kid: jwk.kid, key: await importJWK(jwk, alg), jwk };
  }
  return keys;
}

// The stack's RSA public key as PEM (SPKI): the bytes an algorithm-confusion attack uses as an HMAC secret.
export async function rsaPublicPem() {
  const { jwk } = (await signingKeys()).RS256;
  const { kty, n, e } = jwk;
  return exportSPKI(await importJWK({ kty, n, e }, 'RS256'));
}

// A signed-in user's access token's claims, as Supabase Auth issues them; `overrides` replace or add claims.
export function claims(userId, overrides = {}) {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: issuer(),
    aud: 'authenticated',
    role: 'authenticated',
    sub: userId,
    exp: now + 3600,
    iat: now,
    session_id: randomUUID(),
    is_anonymous: false,
    email: `${userId}@example.test`,
    phone: '',
    aal: 'aal1',
    amr: [{ method: 'password', timestamp: now }],
    app_metadata: { provider: 'email', providers: ['email'] },
    user_metadata: { email_verified: true },
    ...overrides,
  };
}

// `payload` signed with the stack's key for `alg`: ES256/RS256 with their `kid`, HS256 with the legacy secret.
export async function sign(alg, payload) {
  if (alg === 'HS256') {
    return signWith(payload, { alg, typ: 'JWT' }, new TextEncoder().encode(stackVar('SUPABASE_JWT_SECRET')));
  }
  const { kid, key } = (await signingKeys())[alg];
  return signWith(payload, { alg, kid, typ: 'JWT' }, key);
}

export function signWith(payload, header, key) {
  return new SignJWT(payload).setProtectedHeader(header).sign(key);
}

// A valid token of `userId` signed with `alg`.
export const tokenFor = (alg, userId) => sign(alg, claims(userId));

// ---- Supabase's clients against the API ----

export function functions(token) {
  return new FunctionsClient(`${apiUrl()}/functions/v1`, {
    headers: { Authorization: `Bearer ${token}` },
  });
}

export function workspaceTemp(token) {
  return new StorageClient(`${apiUrl()}/storage/v1`, {
    Authorization: `Bearer ${token}`,
    apikey: 'anon',
  }).from('workspace-temp');
}

// README's two constructors ("What a client changes"): built once, each request carrying the session's current
// token (`currentToken()`, read at every call, as supabase-js's own clients read theirs), so a refreshed session
// needs no new client.
export function sessionClients(currentToken) {
  const withSession = async (input, init = {}) => {
    const headers = new Headers(init.headers);
    headers.set('Authorization', `Bearer ${await currentToken()}`);
    return fetch(input, { ...init, headers });
  };
  return {
    functions: new FunctionsClient(`${apiUrl()}/functions/v1`, { customFetch: withSession }),
    storage: new StorageClient(`${apiUrl()}/storage/v1`, {}, withSession),
  };
}

// `functions.invoke('fal-image', {body})`: `{status, body}` of the answer, an error answer's included.
export async function invokeFalImage(token, body) {
  const { data, error } = await functions(token).invoke('fal-image', { body });
  if (!error) return { status: 200, body: data };
  if (!error.context || typeof error.context.status !== 'number') throw error;
  const res = error.context;
  return { status: res.status, body: await res.json().catch(() => null), error };
}

// `GET /jobs/{id}` as the holder of `token`.
export async function viewJob(token, jobId) {
  const res = await fetch(`${apiUrl()}/jobs/${jobId}`, { headers: { Authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json().catch(() => null) };
}

// The job's view once it has a result (or failed), polling for up to `timeoutMs`.
export async function waitForResult(token, jobId, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { status, body } = await viewJob(token, jobId);
    if (status !== 200) throw new Error(`GET /jobs/${jobId}: ${status} ${JSON.stringify(body)}`);
    if (body.status === 'failed' || body.status === 'cancelled') {
      throw new Error(`job ${jobId} ${body.status}: ${body.errorMessage}`);
    }
    if (body.status === 'completed' && body.result?.storagePath) return body;
    if (Date.now() > deadline) throw new Error(`job ${jobId} still ${body.status} after ${timeoutMs} ms`);
    await sleep(250);
  }
}

// The prompt of a generation, unique so the emulator's per-prompt state is this test's.
export const prompt = (text) => `${text} ${randomUUID().replaceAll('-', '')}`;

// The Supabase project's JWKS answering `status` (the stack's emulator serves it).
export async function setJwksStatus(status) {
  const res = await fetch(`${supabaseUrl()}/_emulator/auth/jwks-status`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ status }),
  });
  if (!res.ok) throw new Error(`jwks-status ${status}: ${res.status}`);
}

export async function jwksStatus() {
  const res = await fetch(`${issuer()}/.well-known/jwks.json`);
  await res.arrayBuffer();
  return res.status;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
