// Greedy completions through llama.cpp, using node-llama-cpp's prebuilt CPU binaries (npm), for
// scripts/llama_cpp_check.py. Prompts arrive already rendered in the model's format (the same
// text the GGUF's chat template renders; tests/test_export_gguf.py checks that they are equal).
//   node llama_cpp_generate.mjs <model.gguf> <prompts.json: [text, ...]> <max new tokens>
import {getLlama, LlamaCompletion} from "node-llama-cpp";
import fs from "node:fs";

const [modelPath, promptFile, maxTokens] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath});
// one thread: llama.cpp's threads wait for each other by spinning, which crawls on a busy 2-core machine
const context = await model.createContext({contextSize: 4096, threads: Number(process.env.LLAMA_THREADS || 1)});
const completion = new LlamaCompletion({contextSequence: context.getSequence()});
const prompts = JSON.parse(fs.readFileSync(promptFile, "utf8"));
const results = [];
const t0 = Date.now();
for (const p of prompts) {
  // special tokens in the text are parsed as such; Gemma needs the BOS, which tokenize() does not add
  const tokens = [model.tokens.bos, ...model.tokenize(p, true)];
  const text = await completion.generateCompletion(tokens, {maxTokens: Number(maxTokens || 64), temperature: 0});
  results.push({prompt_tokens: tokens.length, text});
}
console.log(JSON.stringify({llama_cpp: llama.llamaCppRelease, seconds: (Date.now() - t0) / 1000, results}));
