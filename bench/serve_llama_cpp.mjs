// bench/bench_serve.py's peer: llama.cpp (node-llama-cpp's prebuilt CPU binary, scripts/fetch_llama_cpp.sh) decoding
// N sequences at once in one context, as a server batching N clients would: a LlamaContext with `sequences: N`,
// each sequence evaluating its own prompts one after another, all N concurrently (Promise.all), so node-llama-cpp
// puts their tokens into shared batches. Greedy, end-of-text ignored, max_tokens new tokens per prompt.
//   node serve_llama_cpp.mjs PEER_DIR MODEL.gguf THREADS MAX_TOKENS PROMPTS.json
// PROMPTS.json: [[prompt, ...] for each sequence]. Prints one JSON line: {wall_ms, context_size, requests: [{seq,
// index, prompt_tokens, ids, text, start_ms, token_ms: [...]}]} (times from the start of the timed part, which
// excludes loading the model and creating the context).
import {pathToFileURL} from "node:url";
import path from "node:path";
import fs from "node:fs";

const [peer, modelPath, threads, maxTokensArg, promptsPath] = process.argv.slice(2);
const maxTokens = +maxTokensArg;
const perSeq = JSON.parse(fs.readFileSync(promptsPath, "utf8"));
const {getLlama} = await import(pathToFileURL(path.join(peer, "node_modules/node-llama-cpp/dist/index.js")).href);
const llama = await getLlama({gpu: false, logLevel: "error", build: "never"});
const model = await llama.loadModel({modelPath});
const tokenized = perSeq.map((ps) => ps.map((p) => model.tokenize(p)));
const longest = Math.max(...tokenized.flat().map((t) => t.length));
// contextSize is per sequence (node-llama-cpp gives each sequence its own cells)
const context = await model.createContext({contextSize: longest + maxTokens + 8, sequences: perSeq.length,
                                           threads: +threads});
const seqs = perSeq.map(() => context.getSequence());
{ // warm-up (first-call allocations), not timed
    for await (const t of seqs[0].evaluate(tokenized[0][0].slice(0, 4), {temperature: 0})) break;
    await seqs[0].clearHistory();
}
const requests = [];
const t0 = performance.now();
await Promise.all(seqs.map(async (seq, s) => {
    for (let i = 0; i < tokenized[s].length; i++) {
        if (i > 0) await seq.clearHistory();
        const ids = tokenized[s][i];
        const start = performance.now() - t0;
        const out = [], tokenMs = [];
        for await (const t of seq.evaluate(ids, {temperature: 0})) {
            out.push(t);
            tokenMs.push(performance.now() - t0);
            if (out.length >= maxTokens) break;
        }
        requests.push({seq: s, index: i, prompt_tokens: ids.length, ids: out, text: model.detokenize(out),
                       start_ms: start, token_ms: tokenMs});
    }
}));
const wall = performance.now() - t0;
console.log(JSON.stringify({wall_ms: wall, context_size: context.contextSize, requests}));
await context.dispose();
await model.dispose();
