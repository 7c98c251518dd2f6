// Runs a GGUF file in llama.cpp (the npm package node-llama-cpp, its prebuilt CPU binary): for each prompt,
// llama.cpp's tokenization and its greedy continuation. The GGUF export test's independent reference.
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
    for await (const t of seq.evaluate(ids, {temperature: 0})) {
        out.push(t);
        if (out.length >= +n) break;
    }
    console.log(JSON.stringify({prompt_ids: Array.from(ids), ids: out, text: model.detokenize(out)}));
    await context.dispose();
}
await model.dispose();
