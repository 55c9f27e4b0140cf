// Replicate's webhook signatures checked against the reference Standard Webhooks library (the `standardwebhooks`
// package): a delivery it signs is accepted by our webhook function and completes the job, one signed with another
// secret is refused, and what the stack's Replicate emulator signs verifies with it.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';

import { Webhook } from 'standardwebhooks';

import { closeDb, invokeFalImage, newUser, prompt, sleep, stackVar, tokenFor, viewJob } from './lib/stack.js';

after(closeDb);

const replicateEmulator = () => stackVar('REPLICATE_EMULATOR_URL').replace(/\/+$/, '');

// The prediction as the emulator holds it (its webhook URL, status and output).
async function prediction(id) {
  const res = await fetch(`${replicateEmulator()}/_emulator/predictions/${id}`);
  assert.equal(res.status, 200, `inspection of ${id}`);
  return res.json();
}

async function until(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

// POSTs `body` to `url` signed by the reference library with `secret`.
async function deliver(url, body, secret) {
  const raw = JSON.stringify(body);
  const id = `msg_${randomUUID().replaceAll('-', '')}`;
  const signature = new Webhook(secret).sign(id, new Date(), raw);
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'webhook-id': id,
      'webhook-timestamp': String(Math.floor(Date.now() / 1000)),
      'webhook-signature': signature,
    },
    body: raw,
  });
  return { status: res.status, text: await res.text() };
}

test('a delivery signed by the reference library completes the job; another secret is refused', async () => {
  const user = await newUser();
  // HS256: this file runs beside one that takes the project's JWKS down for a moment.
  const token = await tokenFor('HS256', user);
  const body = { prompt: prompt('interop #no-webhook #delay-ms=20'), apiModelId: stackVar('REPLICATE_MODEL_ID') };
  const { status, body: answer } = await invokeFalImage(token, body);
  assert.equal(status, 200, JSON.stringify(answer));
  assert.equal(answer.status, 'queued');
  const p = await until('the prediction to succeed', async () => {
    const view = await prediction(answer.requestId);
    return view.status === 'succeeded' && view;
  });
  const delivery = { ...p };
  for (const key of ['webhook', 'webhook_events_filter', 'webhook_id', 'deliveries', 'media_fetches']) {
    delete delivery[key];
  }
  const otherSecret = `whsec_${Buffer.from(randomUUID()).toString('base64')}`;
  assert.equal((await deliver(p.webhook, delivery, otherSecret)).status, 401);
  assert.equal((await viewJob(token, answer.jobId)).body.status, 'queued');

  const accepted = await deliver(p.webhook, delivery, stackVar('REPLICATE_WEBHOOK_SIGNING_SECRET'));
  assert.equal(accepted.status, 200, accepted.text);
  const done = await until('the job to complete', async () => {
    const view = (await viewJob(token, answer.jobId)).body;
    return view.status === 'completed' && view;
  });
  assert.ok(done.result?.storagePath.startsWith(`${user}/`), JSON.stringify(done));
});

test("the emulator's deliveries verify with the reference library", async () => {
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200).end('{}');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const hook = `http://127.0.0.1:${server.address().port}/hook`;
    const res = await fetch(`${replicateEmulator()}/models/emulator/replicate-image/predictions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${stackVar('REPLICATE_API_TOKEN')}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        input: { prompt: prompt('interop emulator #delay-ms=20') },
        webhook: hook,
        webhook_events_filter: ['completed'],
      }),
    });
    assert.equal(res.status, 201, await res.text());
    const [delivery] = await until('the emulator to deliver', async () => received.length > 0 && received);
    const wh = new Webhook(stackVar('REPLICATE_WEBHOOK_SIGNING_SECRET'));
    const verified = wh.verify(delivery.body, delivery.headers);
    assert.equal(verified.status, 'succeeded');
    assert.throws(() => wh.verify(delivery.body.replace('succeeded', 'failed'), delivery.headers));
    assert.throws(() => new Webhook(`whsec_${Buffer.from('another').toString('base64')}`).verify(delivery.body, delivery.headers));
  } finally {
    server.close();
  }
});
