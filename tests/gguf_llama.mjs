// Runs a GGUF file in llama.cpp (the npm package node-llama-cpp, its prebuilt CPU binary): for each prompt,
// llama.cpp's tokenization, its greedy continuation and its timings. The GGUF export test's independent
// reference, and bench/bench_generate.py's peer.
//   node gguf_llama.mjs PEER_DIR MODEL.gguf N_TOKENS PROMPT...   -> one JSON line per prompt
import {pathToFileURL} from "node:url";
import path from "node:path";

const [peer, modelPath, n, ...prompts] = process.argv.slice(2);
const {getLlama} = await import(pathToFileURL(path.join(peer, "node_modules/node-llama-cpp/dist/index.js")).href);
const llama = await getLlama({gpu: false, logLevel: "error", build: "never"});
const model = await llama.loadModel({modelPath});
for (const prompt of prompts) {
    const context = await model.createContext({contextSize: 256, threads: 2}); // its default oversubscribes small machines
    const seq = context.getSequence();
    const ids = model.tokenize(prompt);
    const out = [];
    const t0 = performance.now();
    let first = 0;
    for await (const t of seq.evaluate(ids, {temperature: 0})) {
        if (!out.length) first = performance.now();
        out.push(t);
        if (out.length >= +n) break;
    }
    const end = performance.now();
    /* prefill: until the first token; decode: the tokens after it */
    console.log(JSON.stringify({prompt_ids: Array.from(ids), ids: out, text: model.detokenize(out),
                                prefill_ms: first - t0, decode_ms: end - first}));
    await context.dispose();
}
await model.dispose();
