// word-count in JavaScript: counts words in every file of every input -- the
// same algorithm, arguments (`--top N`, default 10) and counts.json as the
// Rust example (examples/word-count).
//
// A word is a run of ASCII digits and letters of cased scripts (Latin, Greek,
// Cyrillic, Armenian, ...: a character whose upper and lower case differ),
// lowercased: the Rust example's words for text in those scripts. (The
// JavaScript engine componentize-js embeds has no Unicode property escapes
// such as `\p{L}`, so scripts without case, e.g. CJK, are not words here.)
//
//   insitu build examples/js/word-count
//   insitu run --module examples/js/word-count/app.wasm --input ./data --output ./out -- --top 5

import { command, readText } from "./insitu_guest.js";

/** JSON with two-space indents, keys in the order given: what the Rust example writes. */
function pretty(value, indent = "") {
  const inner = `${indent}  `;
  if (value instanceof Map) {
    if (value.size === 0) return "{}";
    const items = [...value].map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pretty(v, inner)}`);
    return `{\n${items.join(",\n")}\n${indent}}`;
  }
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return `[\n${value.map((v) => inner + pretty(v, inner)).join(",\n")}\n${indent}]`;
  }
  return JSON.stringify(value);
}

const isWordChar = (c) => (c >= "0" && c <= "9") || c.toLowerCase() !== c.toUpperCase();

/** The words of `text`, lowercased. */
function* wordsOf(text) {
  let word = "";
  for (const c of text) {
    if (isWordChar(c)) word += c;
    else if (word) {
      yield word.toLowerCase();
      word = "";
    }
  }
  if (word) yield word.toLowerCase();
}

const byString = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

function wordCount(job) {
  const top = job.arg("top") === null ? 10 : Number.parseInt(job.arg("top"), 10);
  if (!Number.isInteger(top) || top < 0) throw new Error(`--top must be a whole number, not ${job.arg("top")}`);
  const files = job.inputFiles();
  const counts = new Map();
  let words = 0;
  files.forEach((path, i) => {
    for (const w of wordsOf(readText(path))) {
      counts.set(w, (counts.get(w) ?? 0) + 1);
      words += 1;
    }
    job.progress((i + 1) / files.length, path);
  });
  const sorted = [...counts].sort((a, b) => byString(a[0], b[0]));
  const ranked = [...sorted].sort((a, b) => b[1] - a[1] || byString(a[0], b[0]));
  const result = new Map([
    ["counts", new Map(sorted)],
    ["files", files.length],
    ["top", ranked.slice(0, top)],
    ["unique", counts.size],
    ["words", words],
  ]);
  job.writeOutput("counts.json", pretty(result));
  job.log(`${files.length} files, ${words} words, ${counts.size} distinct`);
}

export const run = command(wordCount);
