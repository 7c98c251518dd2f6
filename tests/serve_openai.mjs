// Drives `loom serve` with OpenAI's official Node.js client (the npm package openai, pinned by
// scripts/fetch_openai_client.sh): what client code sends, and every field it reads back, as the client parses it
// (its SSE reader, its error classes, its streaming helper). tests/test_serve.py starts the server, computes the
// expected greedy texts with `loom generate` and runs this.
//   node serve_openai.mjs OPENAI_DIR BASE_URL API_KEY CASES.json
// CASES.json: {"model": NAME, "completion": {prompt, max_tokens, text, prompt_tokens}, "length": {...same},
//              "stop": {prompt, max_tokens, stop, text, prompt_tokens}, "chat": {messages, max_tokens, text,
//              prompt_tokens}} where text is the greedy continuation (`loom generate --temperature 0`), cut before
// the stop string for "stop", and for "chat" after the prompt the server's chat template makes of the messages.
// Prints one line per check ("ok   ..." or "FAIL ..."); exits 1 on any failure.
import {pathToFileURL} from "node:url";
import path from "node:path";
import fs from "node:fs";

const [openaiDir, baseURL, apiKey, casesPath] = process.argv.slice(2);
if (!casesPath) {
    console.error("usage: node serve_openai.mjs OPENAI_DIR BASE_URL API_KEY CASES.json");
    process.exit(2);
}
const {default: OpenAI} = await import(pathToFileURL(path.join(openaiDir, "node_modules/openai/index.mjs")).href);
const C = JSON.parse(fs.readFileSync(casesPath, "utf8"));
const model = C.model;
// no retries: a 5xx or 429 must show as what it is, not be hidden by the client retrying it
const client = new OpenAI({apiKey, baseURL, maxRetries: 0, timeout: 120000});

let fails = 0;
const show = (x) => JSON.stringify(x);
function check(ok, what, detail) {
    console.log((ok ? "ok   " : "FAIL ") + what + (!ok && detail !== undefined ? "\n       " + detail : ""));
    if (!ok) fails++;
}
// runs one group of checks; an exception (a refused request, a broken stream) is one failure naming it
async function group(name, fn) {
    try {
        await fn();
    } catch (e) {
        check(false, `${name}: threw ${e?.constructor?.name}: ${e?.message}`,
              e?.status ? `status ${e.status}, error ${show(e.error)}` : e?.stack?.split("\n").slice(1, 4).join(" | "));
    }
}
const now = () => Math.floor(Date.now() / 1000);
const isCreated = (t) => Number.isInteger(t) && Math.abs(t - now()) < 3600; // seconds since the epoch, not ms
function usageOk(u, promptTokens, completionTokens) {
    return u && Number.isInteger(u.prompt_tokens) && Number.isInteger(u.completion_tokens) &&
        u.total_tokens === u.prompt_tokens + u.completion_tokens &&
        (promptTokens === undefined || u.prompt_tokens === promptTokens) &&
        (completionTokens === undefined || u.completion_tokens === completionTokens);
}
async function collect(stream) {
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    return chunks;
}
// the shape every streamed chunk shares, and the rules of stream_options.include_usage
function checkChunks(name, chunks, {idPrefix, object, includeUsage}) {
    check(chunks.length > 0, `${name}: ${chunks.length} chunks`);
    if (!chunks.length) return {};
    const id = chunks[0].id;
    check(typeof id === "string" && id.startsWith(idPrefix) && chunks.every((c) => c.id === id),
          `${name}: every chunk has the id ${show(id)} (${idPrefix}...)`, show(chunks.map((c) => c.id)));
    check(chunks.every((c) => c.object === object), `${name}: every chunk's object is ${object}`,
          show([...new Set(chunks.map((c) => c.object))]));
    check(chunks.every((c) => c.model === model && isCreated(c.created)),
          `${name}: every chunk has model ${show(model)} and created in seconds`,
          show(chunks.map((c) => [c.model, c.created]).slice(0, 3)));
    const content = includeUsage ? chunks.slice(0, -1) : chunks;
    check(content.every((c) => Array.isArray(c.choices) && c.choices.length === 1 && c.choices[0].index === 0),
          `${name}: every content chunk has one choice, index 0`);
    check(content.every((c) => c.usage === undefined || c.usage === null),
          `${name}: no usage on content chunks`, show(content.map((c) => c.usage).filter((u) => u)));
    const finishes = content.map((c) => c.choices?.[0]?.finish_reason ?? null);
    const set = finishes.map((f, i) => [f, i]).filter(([f]) => f !== null);
    check(set.length === 1 && set[0][1] === finishes.length - 1,
          `${name}: finish_reason is set once, on the last content chunk`, show(finishes));
    let usage;
    if (includeUsage) {
        const last = chunks[chunks.length - 1];
        check(Array.isArray(last.choices) && last.choices.length === 0 && last.usage,
              `${name}: include_usage: the last chunk has empty choices and the usage`, show(last));
        usage = last.usage;
    } else {
        check(chunks.every((c) => !c.usage), `${name}: without include_usage no chunk carries usage`);
    }
    return {finish: set.length ? set[0][0] : null, usage, content};
}

// ---- models
await group("models.list", async () => {
    const page = await client.models.list();
    const m = page.data.find((x) => x.id === model);
    check(Array.isArray(page.data) && m !== undefined, `models.list: lists ${show(model)}`, show(page.data));
    if (m) check(m.object === "model" && typeof m.owned_by === "string" && Number.isInteger(m.created),
                 `models.list: the entry has object "model", created (an integer) and owned_by`, show(m));
    const ids = [];
    for await (const x of client.models.list()) ids.push(x.id); // the client's auto-paginating iterator
    check(ids.includes(model), "models.list: the client's async iterator ends and yields the model", show(ids));
});

// ---- completions
const cc = C.completion;
let nonStreamedUsage;
await group("completions.create", async () => {
    const r = await client.completions.create({model, prompt: cc.prompt, max_tokens: cc.max_tokens, temperature: 0,
                                               user: "serve-test"});
    check(typeof r.id === "string" && r.id.startsWith("cmpl-"), `completions: id ${show(r.id)} starts with cmpl-`);
    check(r.object === "text_completion", `completions: object is text_completion`, show(r.object));
    check(r.model === model, `completions: model is ${show(model)}`, show(r.model));
    check(isCreated(r.created), `completions: created is the time in seconds`, show(r.created));
    check(Array.isArray(r.choices) && r.choices.length === 1 && r.choices[0].index === 0,
          "completions: one choice, index 0", show(r.choices));
    const c = r.choices?.[0] ?? {};
    check(c.text === cc.text, `completions: greedy text equals loom generate's (${cc.max_tokens} tokens)`,
          `server: ${show(c.text)}\n       loom generate: ${show(cc.text)}`);
    check(c.finish_reason === "length", `completions: finish_reason "length" at max_tokens`, show(c.finish_reason));
    check(usageOk(r.usage, cc.prompt_tokens, cc.max_tokens),
          `completions: usage {prompt_tokens: ${cc.prompt_tokens}, completion_tokens: ${cc.max_tokens}, total}`,
          show(r.usage));
    nonStreamedUsage = r.usage;
});
await group("completions stream", async () => {
    const chunks = await collect(await client.completions.create({
        model, prompt: cc.prompt, max_tokens: cc.max_tokens, temperature: 0, stream: true,
        stream_options: {include_usage: true}}));
    const s = checkChunks("completions stream", chunks, {idPrefix: "cmpl-", object: "text_completion", includeUsage: true});
    const text = (s.content ?? []).map((c) => c.choices?.[0]?.text ?? "").join("");
    check(text === cc.text, "completions stream: the chunks' text joined equals the greedy text",
          `stream: ${show(text)}\n       expected: ${show(cc.text)}`);
    check(s.finish === "length", `completions stream: finish_reason "length"`, show(s.finish));
    check(usageOk(s.usage, cc.prompt_tokens, cc.max_tokens), "completions stream: usage as non-streamed",
          `${show(s.usage)} vs ${show(nonStreamedUsage)}`);
});
await group("completions stream without usage", async () => {
    const chunks = await collect(await client.completions.create({
        model, prompt: cc.prompt, max_tokens: cc.max_tokens, temperature: 0, stream: true}));
    const s = checkChunks("completions stream (no include_usage)", chunks,
                          {idPrefix: "cmpl-", object: "text_completion", includeUsage: false});
    const text = (s.content ?? []).map((c) => c.choices?.[0]?.text ?? "").join("");
    check(text === cc.text, "completions stream (no include_usage): text equals the greedy text", show(text));
});
const cl = C.length;
await group("max_tokens reached", async () => {
    const r = await client.completions.create({model, prompt: cl.prompt, max_tokens: cl.max_tokens, temperature: 0});
    const c = r.choices?.[0] ?? {};
    check(c.finish_reason === "length" && r.usage?.completion_tokens === cl.max_tokens && c.text === cl.text,
          `max_tokens ${cl.max_tokens}: finish_reason "length", usage.completion_tokens ${cl.max_tokens}, greedy text`,
          `${show(c.finish_reason)} ${show(r.usage)} ${show(c.text)} (expected ${show(cl.text)})`);
});
const cs = C.stop;
await group("stop (list)", async () => {
    const r = await client.completions.create({model, prompt: cs.prompt, max_tokens: cs.max_tokens, temperature: 0,
                                               stop: [cs.stop, "\u0000never"]});
    const c = r.choices?.[0] ?? {};
    check(c.finish_reason === "stop", `stop [${show(cs.stop)}, ...]: finish_reason "stop"`, show(c.finish_reason));
    check(c.text === cs.text, "stop: text is the greedy text cut before the stop string",
          `server: ${show(c.text)}\n       expected: ${show(cs.text)}`);
    check(usageOk(r.usage, cs.prompt_tokens) && r.usage.completion_tokens >= 1 &&
          r.usage.completion_tokens < cs.max_tokens, "stop: usage counts the tokens up to the stop", show(r.usage));
});
await group("stop (string, streamed)", async () => {
    const chunks = await collect(await client.completions.create({
        model, prompt: cs.prompt, max_tokens: cs.max_tokens, temperature: 0, stop: cs.stop, stream: true,
        stream_options: {include_usage: true}}));
    const s = checkChunks("stop stream", chunks, {idPrefix: "cmpl-", object: "text_completion", includeUsage: true});
    const text = (s.content ?? []).map((c) => c.choices?.[0]?.text ?? "").join("");
    check(text === cs.text && s.finish === "stop",
          `stop stream ${show(cs.stop)}: finish_reason "stop", no part of the stop string streamed`,
          `stream: ${show(text)} (${show(s.finish)})\n       expected: ${show(cs.text)}`);
});
await group("sampling", async () => {
    const p = {model, prompt: cc.prompt, max_tokens: 16, temperature: 0.9, top_p: 0.95, top_k: 20, seed: 42,
               presence_penalty: 0.5, frequency_penalty: 0.5};
    const a = await client.completions.create(p);
    const b = await client.completions.create(p);
    check(a.choices[0].text === b.choices[0].text && a.usage.completion_tokens === 16,
          "sampling (temperature, top_p, top_k, penalties): the same seed gives the same text",
          `${show(a.choices[0].text)} vs ${show(b.choices[0].text)}`);
});

// ---- chat
const ch = C.chat;
let chatText, chatUsage;
await group("chat.completions.create", async () => {
    const r = await client.chat.completions.create({model, messages: ch.messages, max_tokens: ch.max_tokens,
                                                    temperature: 0});
    check(typeof r.id === "string" && r.id.startsWith("chatcmpl-"), `chat: id ${show(r.id)} starts with chatcmpl-`);
    check(r.object === "chat.completion", "chat: object is chat.completion", show(r.object));
    check(r.model === model && isCreated(r.created), `chat: model ${show(model)}, created in seconds`,
          show([r.model, r.created]));
    check(Array.isArray(r.choices) && r.choices.length === 1 && r.choices[0].index === 0, "chat: one choice, index 0",
          show(r.choices));
    const m = r.choices?.[0]?.message ?? {};
    check(m.role === "assistant" && typeof m.content === "string" && m.content.length > 0,
          "chat: message {role: assistant, content: a string}", show(m));
    check(m.content === ch.text, "chat: the content is loom generate's greedy text after the templated prompt",
          `server: ${show(m.content)}\n       loom generate: ${show(ch.text)}`);
    check(r.choices?.[0]?.finish_reason === "length", `chat: finish_reason "length"`, show(r.choices?.[0]?.finish_reason));
    check(usageOk(r.usage, ch.prompt_tokens, ch.max_tokens),
          `chat: usage {prompt_tokens: ${ch.prompt_tokens} (the templated prompt), completion_tokens: ${ch.max_tokens}}`,
          show(r.usage));
    chatText = m.content;
    chatUsage = r.usage;
});
await group("chat stream", async () => {
    const chunks = await collect(await client.chat.completions.create({
        model, messages: ch.messages, max_tokens: ch.max_tokens, temperature: 0, stream: true,
        stream_options: {include_usage: true}}));
    const s = checkChunks("chat stream", chunks, {idPrefix: "chatcmpl-", object: "chat.completion.chunk",
                                                  includeUsage: true});
    const content = s.content ?? [];
    check(content.length > 0 && content[0].choices?.[0]?.delta?.role === "assistant",
          `chat stream: the first chunk's delta has role "assistant"`, show(content[0]));
    check(content.slice(1).every((c) => c.choices?.[0]?.delta?.role === undefined ||
                                        c.choices?.[0]?.delta?.role === "assistant"),
          "chat stream: no other role in later deltas");
    const text = content.map((c) => c.choices?.[0]?.delta?.content ?? "").join("");
    check(text === chatText, "chat stream: the deltas joined equal the non-streamed content (greedy)",
          `stream: ${show(text)}\n       non-streamed: ${show(chatText)}`);
    check(s.finish === "length", `chat stream: finish_reason "length"`, show(s.finish));
    check(usageOk(s.usage, chatUsage?.prompt_tokens, ch.max_tokens), "chat stream: usage as non-streamed",
          `${show(s.usage)} vs ${show(chatUsage)}`);
});
await group("chat stream helper", async () => {
    // the client's ChatCompletionStream: accumulates deltas into a ChatCompletion (and checks their structure)
    const runner = client.chat.completions.stream({model, messages: ch.messages, max_tokens: ch.max_tokens,
                                                   temperature: 0});
    const fin = await runner.finalChatCompletion();
    check(fin.choices?.[0]?.message?.content === chatText && fin.choices?.[0]?.finish_reason === "length",
          "chat.completions.stream(): finalChatCompletion() has the content and finish_reason",
          show(fin.choices?.[0]));
});
await group("max_completion_tokens", async () => {
    const r = await client.chat.completions.create({model, messages: ch.messages, max_completion_tokens: 4,
                                                    temperature: 0});
    check(r.usage?.completion_tokens === 4 && r.choices?.[0]?.finish_reason === "length" &&
          chatText?.startsWith(r.choices?.[0]?.message?.content ?? "\u0000"),
          "chat: max_completion_tokens 4 gives 4 tokens, the greedy content's start",
          `${show(r.usage)} ${show(r.choices?.[0])}`);
});

// ---- errors, as the client raises them
async function expectError(name, fn, Klass, status, type) {
    try {
        const r = await fn();
        if (r && typeof r[Symbol.asyncIterator] === "function") await collect(r);
        check(false, `${name}: is refused`, "the request succeeded");
    } catch (e) {
        check(e instanceof Klass && e.status === status, `${name}: the client throws ${Klass.name} (${status})`,
              `${e?.constructor?.name} status ${e?.status}: ${e?.message}`);
        check(e.error && typeof e.error.message === "string" && e.error.message.length > 0 &&
              (type === undefined || e.type === type),
              `${name}: the error has a message${type ? " and type " + type : ""}`, show(e.error));
    }
}
const bad = new OpenAI({apiKey: apiKey + "-wrong", baseURL, maxRetries: 0});
await expectError("wrong key (completions)", () => bad.completions.create({model, prompt: "a", max_tokens: 1}),
                  OpenAI.AuthenticationError, 401);
await expectError("wrong key (models.list)", () => bad.models.list(), OpenAI.AuthenticationError, 401);
await expectError("n: 2", () => client.completions.create({model, prompt: cc.prompt, max_tokens: 2, n: 2}),
                  OpenAI.BadRequestError, 400, "invalid_request_error");
await expectError("n: 2 on chat, streamed", () => client.chat.completions.create({
    model, messages: ch.messages, max_tokens: 2, n: 2, stream: true}), OpenAI.BadRequestError, 400,
                  "invalid_request_error");
await expectError("max_tokens: -1", () => client.completions.create({model, prompt: cc.prompt, max_tokens: -1}),
                  OpenAI.BadRequestError, 400, "invalid_request_error");
// as OpenAI answers it: 404, code model_not_found
await expectError("unknown model", () => client.completions.create({model: model + "-nope", prompt: "a", max_tokens: 1}),
                  OpenAI.NotFoundError, 404, "invalid_request_error");

// ---- a client that goes away mid-stream, then the server still answers (and the right text)
await group("abort mid-stream", async () => {
    const stream = await client.completions.create({model, prompt: cc.prompt, max_tokens: 200, temperature: 0,
                                                    stream: true});
    let n = 0;
    for await (const c of stream) {
        if (++n === 2) {
            stream.controller.abort();
            break;
        }
    }
    const r = await client.completions.create({model, prompt: cc.prompt, max_tokens: cc.max_tokens, temperature: 0});
    check(r.choices?.[0]?.text === cc.text, "after a client aborted a stream, the next request gets the greedy text",
          show(r.choices?.[0]?.text));
});

const version = JSON.parse(fs.readFileSync(path.join(openaiDir, "node_modules/openai/package.json"), "utf8")).version;
console.log(`${fails ? "FAILED" : "passed"}: ${fails} failure(s) (openai ${version}, Node.js ${process.version})`);
process.exit(fails ? 1 : 0);
