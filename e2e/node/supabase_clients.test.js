// The API as the original's clients call it, with Supabase's own packages: `functions.invoke` with tokens signed
// by each of the project's keys (ES256, RS256 by JWKS kid; HS256 with the legacy secret), `createSignedUrl(s)` of
// the results fetched and compared with S3, another user's paths refused, and the tokens that must be refused.
// One file, its tests in order: the JWKS is taken down first, while the functions have no cached key set.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { exportJWK, generateKeyPair } from 'jose';

import {
  claims,
  closeDb,
  invokeFalImage,
  jwksStatus,
  newUser,
  prompt,
  rsaPublicPem,
  s3Object,
  sessionClients,
  setJwksStatus,
  sign,
  signWith,
  signingKeys,
  sleep,
  stackVar,
  tokenFor,
  viewJob,
  waitForResult,
  workspaceTemp,
  writtenFor,
} from './lib/stack.js';

const syncBody = () => ({ prompt: prompt('node sync'), apiModelId: stackVar('SYNC_MODEL_ID') });
const asyncBody = () => ({ prompt: prompt('node async'), apiModelId: stackVar('ASYNC_MODEL_ID') });

after(closeDb);

const AUTH_FAILED = { 401: 'Authentication failed' };

// Sends `token` through `functions.invoke` on both routes and checks the refusal (`refusals`: the statuses it may
// get, with their error; 401 by default) and that nothing was written for `users`.
async function assertRefused(token, users, refusals = AUTH_FAILED) {
  const was = await Promise.all(users.map(writtenFor));
  // The async route too: a refused caller reaches neither fal nor the queue.
  for (const body of [syncBody(), asyncBody()]) {
    const answer = await invokeFalImage(token, body);
    assert.ok(answer.status in refusals, `${answer.status} ${JSON.stringify(answer.body)}`);
    assert.deepEqual(answer.body, { error: refusals[answer.status] });
  }
  assert.deepEqual(await Promise.all(users.map(writtenFor)), was, 'nothing written');
}

// A new ES256 key the project's JWKS does not hold.
async function strangerKey() {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = `stranger-${(await exportJWK(publicKey)).x.slice(0, 8)}`;
  return { kid, privateKey };
}

const b64url = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

describe('tokens that must be refused: 401, nothing written', () => {
  let user;
  before(async () => {
    user = await newUser();
  });

  test('a JWKS endpoint that is down: a kid the functions have not seen is refused', async () => {
    const { kid, privateKey } = await strangerKey();
    const token = await signWith(claims(user), { alg: 'ES256', kid, typ: 'JWT' }, privateKey);
    await setJwksStatus(503);
    try {
      assert.equal(await jwksStatus(), 503, 'the JWKS is down');
      // An instance holding the key set refuses the unknown kid; one that never fetched it cannot tell a valid
      // token from a forged one, and says so (503) rather than blaming the caller's session.
      await assertRefused(token, [user], {
        ...AUTH_FAILED,
        503: 'Authentication temporarily unavailable',
      });
    } finally {
      await setJwksStatus(200);
    }
    assert.equal(await jwksStatus(), 200, 'the JWKS is back');
    // A function whose fetch failed waits a second before the next (key_cache.rs): let that pass.
    await sleep(1500);
  });

  test('unknown kid: a valid token signed by a key not in the JWKS', async () => {
    const { kid, privateKey } = await strangerKey();
    await assertRefused(await signWith(claims(user), { alg: 'ES256', kid, typ: 'JWT' }, privateKey), [user]);
  });

  for (const alg of ['ES256', 'RS256', 'HS256']) {
    const now = Math.floor(Date.now() / 1000);
    const cases = {
      expired: { iat: now - 7200, exp: now - 3600 },
      'wrong aud': { aud: 'https://other.example' },
      'wrong iss': { iss: 'https://other-project.supabase.co/auth/v1' },
      'anon role': { role: 'anon' },
    };
    for (const [name, overrides] of Object.entries(cases)) {
      test(`${alg}: ${name}`, async () => {
        // Fresh times for the valid claims: the cases are built when the file loads.
        const t = Math.floor(Date.now() / 1000);
        await assertRefused(await sign(alg, { ...claims(user, { iat: t, exp: t + 3600 }), ...overrides }), [user]);
      });
    }
  }

  test('alg: none', async () => {
    const { ES256 } = await signingKeys();
    for (const header of [{ alg: 'none', typ: 'JWT' }, { alg: 'none', kid: ES256.kid, typ: 'JWT' }]) {
      await assertRefused(`${b64url(header)}.${b64url(claims(user))}.`, [user]);
    }
  });

  test("HS256 signed with the RSA public key's bytes", async () => {
    const { RS256 } = await signingKeys();
    const pem = new TextEncoder().encode(await rsaPublicPem());
    for (const header of [{ alg: 'HS256', kid: RS256.kid, typ: 'JWT' }, { alg: 'HS256', typ: 'JWT' }]) {
      await assertRefused(await signWith(claims(user), header, pem), [user]);
    }
  });

  test('tampered payload: a valid signature over another user', async () => {
    const victim = await newUser();
    for (const alg of ['ES256', 'RS256', 'HS256']) {
      const [header, , signature] = (await tokenFor(alg, user)).split('.');
      const forged = `${header}.${b64url(claims(victim))}.${signature}`;
      await assertRefused(forged, [user, victim]);
    }
  });

  test('the valid token of the same user is accepted (the refusals were the tokens)', async () => {
    const answer = await invokeFalImage(await tokenFor('ES256', user), syncBody());
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.status, 'completed');
  });
});

describe('generations through invoke, results through signed URLs', () => {
  // Another user's finished generation: its paths and job are what the callers below must not reach.
  let neighbour;
  before(async () => {
    neighbour = await syncResult();
    assert.equal(neighbour.path.split('/')[0], neighbour.user);
  });

  for (const alg of ['ES256', 'RS256', 'HS256']) {
    for (const mode of ['sync', 'async']) {
      test(`${alg}, ${mode}: invoke, then createSignedUrl(s) give S3's bytes; another user's paths refused`, async () => {
        const user = await newUser();
        const token = await tokenFor(alg, user);

        const answer = await invokeFalImage(token, mode === 'sync' ? syncBody() : asyncBody());
        assert.equal(answer.status, 200, JSON.stringify(answer.body));
        const { jobId } = answer.body;
        if (mode === 'sync') {
          assert.equal(answer.body.status, 'completed', JSON.stringify(answer.body));
          assert.ok(answer.body.resultUrl && answer.body.assetId, JSON.stringify(answer.body));
        } else {
          assert.equal(answer.body.status, 'queued', JSON.stringify(answer.body));
          assert.ok(answer.body.requestId, JSON.stringify(answer.body));
        }
        const view = await waitForResult(token, jobId);
        const path = view.result.storagePath;
        assert.equal(path.split('/')[0], user, `${path} is under the user's id`);
        const stored = await s3Object(path);
        assert.ok(stored.length > 0);

        const bucket = workspaceTemp(token);
        const one = await bucket.createSignedUrl(path, 3600);
        assert.equal(one.error, null, String(one.error));
        await assertServes(one.data.signedUrl, stored);

        // A path of the user's with no object: Supabase answers from its object rows, so no link to nothing.
        const missing = `${user}/${jobId}_missing.png`;
        const many = await bucket.createSignedUrls([path, neighbour.path, missing], 3600);
        assert.equal(many.error, null, String(many.error));
        assert.equal(many.data.length, 3);
        assert.equal(many.data[0].path, path);
        assert.equal(many.data[0].error, null);
        await assertServes(many.data[0].signedUrl, stored);
        for (const [i, p, what] of [[1, neighbour.path, "another user's path"], [2, missing, 'a missing object']]) {
          assert.equal(many.data[i].path, p);
          assert.equal(many.data[i].error, 'Either the object does not exist or you do not have access to it', what);
          assert.equal(many.data[i].signedUrl, null, what);
        }

        const theirs = await bucket.createSignedUrl(neighbour.path, 3600);
        assert.equal(theirs.data, null);
        assert.equal(theirs.error?.status, 403, `another user's path is not signed: ${theirs.error}`);
        const nothing = await bucket.createSignedUrl(missing, 3600);
        assert.equal(nothing.data, null);
        assert.equal(nothing.error?.status, 404, `a missing object is not signed: ${nothing.error}`);
        assert.equal(nothing.error?.message, 'Object not found');

        // My link's token does not open another path.
        const redirected = one.data.signedUrl.replace(encodeURI(path), encodeURI(neighbour.path));
        assert.notEqual(redirected, one.data.signedUrl);
        const res = await fetch(redirected, { redirect: 'follow' });
        await res.arrayBuffer();
        assert.ok(res.status >= 400 && res.status < 500, `another path with my token: ${res.status}`);

        const job = await viewJob(token, neighbour.jobId);
        assert.equal(job.status, 404, "another user's job is not found");
      });
    }
  }
});

describe("clients built once follow the session's token (README: What a client changes)", () => {
  test('the same two clients are refused with an expired token and served once the session is refreshed', async () => {
    const user = await newUser();
    const expired = await sign('ES256', claims(user, { exp: Math.floor(Date.now() / 1000) - 300 }));
    const session = { access_token: expired };
    const { functions, storage } = sessionClients(async () => session.access_token);
    const was = await writtenFor(user);

    const refused = await functions.invoke('fal-image', { body: syncBody() });
    assert.equal(refused.error?.context?.status, 401, String(refused.error));
    assert.deepEqual(await writtenFor(user), was, 'nothing written for the expired token');
    const refusedLink = await storage.from('workspace-temp').createSignedUrl(`${user}/none.png`, 60);
    assert.equal(refusedLink.data, null);
    assert.equal(refusedLink.error?.status, 401, String(refusedLink.error));

    session.access_token = await tokenFor('ES256', user);
    const { data, error } = await functions.invoke('fal-image', { body: syncBody() });
    assert.equal(error, null, String(error));
    assert.equal(data.status, 'completed', JSON.stringify(data));
    const view = await waitForResult(session.access_token, data.jobId);
    const link = await storage.from('workspace-temp').createSignedUrl(view.result.storagePath, 60);
    assert.equal(link.error, null, String(link.error));
    await assertServes(link.data.signedUrl, await s3Object(view.result.storagePath));
  });
});

describe('signing bounds', () => {
  test('a lifetime past one year refuses the whole call, createSignedUrl and createSignedUrls alike', async () => {
    const { token, path } = await syncResult();
    const bucket = workspaceTemp(token);
    const year = 365 * 24 * 3600;
    const within = await bucket.createSignedUrls([path], year);
    assert.equal(within.error, null, String(within.error));
    assert.equal(within.data[0].error, null);
    for (const [what, call] of [
      ['createSignedUrl', () => bucket.createSignedUrl(path, year + 1)],
      ['createSignedUrls', () => bucket.createSignedUrls([path], year + 1)],
    ]) {
      const { data, error } = await call();
      assert.equal(data, null, what);
      assert.equal(error?.status, 400, `${what}: ${error}`);
    }
  });
});

describe('download links', () => {
  // storage-js sets `download` through URLSearchParams and then encodeURI()s the whole link, so a name beyond ASCII
  // reaches the function still percent-encoded once (ASCII); a link whose `download` a page or a user wrote by hand
  // is encoded once, and reaches it as UTF-8, which S3 refuses in a header value unless it goes in `filename*`.
  test("the download option names the file; a name beyond ASCII goes in filename* (S3 takes ISO-8859-1 only)", async () => {
    const { token, path } = await syncResult();
    const stored = await s3Object(path);
    const bucket = workspaceTemp(token);
    const plain = await bucket.createSignedUrl(path, 60);
    assert.equal(plain.error, null, String(plain.error));
    const links = [];
    for (const [download, disposition] of [
      [true, `attachment; filename="${path.split('/').pop()}"`],
      ['photo 1.png', 'attachment; filename="photo 1.png"'],
      ['사진.png', 'attachment; filename="%EC%82%AC%EC%A7%84.png"'],
    ]) {
      const { data, error } = await bucket.createSignedUrl(path, 60, { download });
      assert.equal(error, null, String(error));
      links.push([data.signedUrl, disposition, `storage-js, download: ${download}`]);
    }
    links.push([
      `${plain.data.signedUrl}&download=${encodeURIComponent('사진.png')}`,
      "attachment; filename=\"__.png\"; filename*=UTF-8''%EC%82%AC%EC%A7%84.png",
      'a link written by hand',
    ]);
    for (const [link, disposition, what] of links) {
      const hop = await fetch(link, { redirect: 'manual' });
      await hop.arrayBuffer();
      assert.ok(hop.status >= 300 && hop.status < 400, `${what}: ${hop.status}`);
      const location = hop.headers.get('location');
      assert.equal(new URL(location).searchParams.get('response-content-disposition'), disposition, what);
      const res = await fetch(location);
      const body = Buffer.from(await res.arrayBuffer());
      assert.equal(res.status, 200, `${what}: ${res.status} ${body.toString().slice(0, 200)}`);
      assert.ok(body.equals(stored), `${what}: the object's bytes`);
    }
  });
});

// A sync generation of a new user (HS256 token): the user, the token, the job and its stored result's path.
async function syncResult() {
  const user = await newUser();
  const token = await tokenFor('HS256', user);
  const answer = await invokeFalImage(token, syncBody());
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  const view = await waitForResult(token, answer.body.jobId);
  return { user, token, jobId: answer.body.jobId, path: view.result.storagePath };
}

// Follows a signed URL as a browser does (no Authorization, the redirect followed): the bytes must be `expected`.
async function assertServes(signedUrl, expected) {
  const res = await fetch(signedUrl, { redirect: 'follow' });
  const body = Buffer.from(await res.arrayBuffer());
  assert.equal(res.status, 200, `GET ${new URL(signedUrl).pathname}: ${res.status} ${body.toString().slice(0, 200)}`);
  assert.ok(res.redirected, 'the link redirects to the object');
  assert.ok(body.equals(expected), `the link serves S3's ${expected.length} bytes (got ${body.length})`);
}
