// One chat completion through the official Node `openai` client at its
// defaults (maxRetries 2, its own retry rules), as a user's program makes it;
// prints what happened as JSON. The tests that hold Tollgate's answers to
// the client run it (tests/clients/README.md). argv[2] is the spec:
//   base_url, api_key, model, headers (sent with every request),
//   at_second: first wait for this second of a UTC minute (real-clock
//     servers: a burst lands in one minute, its refusal near the next),
//   before: calls made first by a client that never retries (statuses
//     reported), to bring the key to its limit.
import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const spec = JSON.parse(process.argv[2]);
const common = { baseURL: spec.base_url, apiKey: spec.api_key, defaultHeaders: spec.headers ?? {} };
const messages = [{ role: 'user', content: 'hi' }];

let t0 = 0;
let attempts = [];
const client = new OpenAI({
  ...common,
  // Every attempt the client makes, its retries too, on its way to the real
  // fetch: when it was sent and what came back.
  fetch: async (url, init) => {
    const a = { at: (performance.now() - t0) / 1000 };
    attempts.push(a);
    const res = await fetch(url, init);
    a.status = res.status;
    a.retry_after = res.headers.get('retry-after');
    a.should_retry = res.headers.get('x-should-retry');
    return res;
  },
});

if (spec.at_second != null) {
  let wait = spec.at_second - ((Date.now() / 1000) % 60);
  if (wait < 0) wait += 60;
  await new Promise((r) => setTimeout(r, wait * 1000));
}

const once = new OpenAI({ ...common, maxRetries: 0 });
const before = [];
for (let i = 0; i < (spec.before ?? 0); i++) {
  try {
    await once.chat.completions.create({ model: spec.model, messages });
    before.push(200);
  } catch (e) {
    before.push(e.status ?? String(e));
  }
}

const call = {};
t0 = performance.now();
try {
  const c = await client.chat.completions.create({ model: spec.model, messages });
  call.ok = true;
  call.content = c.choices[0].message.content;
} catch (e) {
  call.ok = false;
  call.error = e.constructor.name;
  call.status = e.status ?? null;
  call.code = e.code ?? null;
}
call.seconds = (performance.now() - t0) / 1000;
call.attempts = attempts;
console.log(JSON.stringify({ client: `node openai ${VERSION}`, before, call }));
