// insitu_guest: write an insitu algorithm in JavaScript.
//
// An algorithm is a `wasi:cli/command` component that insitu runs next to the
// data (docs/ARCHITECTURE.md in the insitu repository, "Guest contract"):
// datasets read-only at /data/inputs/N (`--inputN=`), results in
// /data/outputs (`--output=`), logs in /data/logs (`--logs=`); anything after
// those arguments is the algorithm's own (`job.args`). This module turns the
// arguments into a `Job` and gives helpers to list and read inputs, write
// outputs atomically, log and report progress (progress.jsonl). Components
// built by componentize-js have no `fs` module: files are reached through the
// WASI preopens the sandbox grants, which this module wraps.
//
//   import { command } from "./insitu_guest.js";
//   export const run = command((job) => {
//     const files = job.inputFiles();
//     job.writeOutput("files.json", JSON.stringify({ files: files.length }));
//   });
//
// `insitu build` compiles it with componentize-js (world
// insitu:guest/algorithm); `insitu run --module app.wasm --input DIR --output
// DIR` runs it in the sandbox. A thrown error fails the run (exit code 1)
// with `error: <message>` on stderr.

import { getArguments } from "wasi:cli/environment@0.2.12";
import { getDirectories } from "wasi:filesystem/preopens@0.2.12";

const encoder = new TextEncoder();

/** The arguments did not follow the contract. */
export class ArgsError extends Error {
  constructor(message) {
    super(`bad arguments: ${message}`);
    this.name = "ArgsError";
  }
}

/** The directory descriptor of the preopen holding `path`, and the rest of the path. */
function locate(path) {
  let best = null;
  for (const [descriptor, root] of getDirectories()) {
    const prefix = root.endsWith("/") ? root : `${root}/`;
    if ((path === root || path.startsWith(prefix)) && (!best || root.length > best.root.length)) {
      best = { descriptor, root };
    }
  }
  if (!best) {
    throw new Error(`${path} is outside what the sandbox granted (the inputs, /data/outputs, /data/logs)`);
  }
  const rest = path === best.root ? "." : path.slice(best.root.length).replace(/^\/+/, "");
  return { dir: best.descriptor, rest };
}

/** Turns a WASI error (a ComponentError with a payload) into a readable one. */
function wasiError(what, path, e) {
  const code = e && e.payload !== undefined ? e.payload : e;
  return new Error(`cannot ${what} ${path}: ${code}`);
}

function open(path, flags, how) {
  const { dir, rest } = locate(path);
  try {
    return dir.openAt({}, rest, flags, how);
  } catch (e) {
    throw wasiError("open", path, e);
  }
}

/** The whole file at `path` as bytes. */
export function readFile(path) {
  const fd = open(path, {}, { read: true });
  const size = Number(fd.stat().size);
  const out = new Uint8Array(size);
  let at = 0;
  while (at < size) {
    const [chunk, end] = fd.read(BigInt(Math.min(size - at, 1 << 20)), BigInt(at));
    out.set(chunk, at);
    at += chunk.length;
    if (end || chunk.length === 0) break;
  }
  return at === size ? out : out.subarray(0, at);
}

/** The whole file at `path` as text (UTF-8, invalid bytes replaced). */
export function readText(path) {
  return new TextDecoder().decode(readFile(path));
}

/** Every regular file under `root`, recursively, sorted by path. */
export function listFiles(root) {
  const out = [];
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop();
    const fd = open(dir, { directory: true }, { read: true });
    const entries = fd.readDirectory();
    for (let e = entries.readDirectoryEntry(); e; e = entries.readDirectoryEntry()) {
      const path = `${dir}/${e.name}`;
      if (e.type === "directory") stack.push(path);
      else if (e.type === "regular-file") out.push(path);
    }
  }
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

function writeAll(fd, bytes, at) {
  let offset = at;
  let rest = bytes;
  while (rest.length) {
    const n = Number(fd.write(rest, BigInt(offset)));
    rest = rest.subarray(n);
    offset += n;
  }
  return offset;
}

/** The job insitu gave this run. */
export class Job {
  constructor(name, inputs, output, logs, args) {
    /** argv[0]: the algorithm's name. */
    this.name = name;
    /** `[{ index, path }]`, numbered from 1. */
    this.inputs = inputs;
    this.output = output;
    this.logs = logs;
    /** The arguments after the contract's, in order. */
    this.args = args;
  }

  /**
   * Parses `argv` (including argv[0]): `--inputN=DIR`, `--output=DIR`,
   * `--logs=DIR` (also as two words); the rest goes to `args`. `--logs`
   * defaults to the output. Throws ArgsError when `--output` is missing or an
   * input index is repeated, zero or leaves a gap.
   */
  static parse(argv) {
    const name = argv.length ? argv[0] : "algorithm";
    const inputs = [];
    let output = null;
    let logs = null;
    const args = [];
    for (let i = 1; i < argv.length; ) {
      const arg = argv[i++];
      const m = /^--(output|logs|input(\d+))(?:=(.*))?$/s.exec(arg);
      if (!m) {
        args.push(arg);
        continue;
      }
      let value = m[3];
      if (value === undefined) {
        if (i >= argv.length) throw new ArgsError(`--${m[1]} needs a directory`);
        value = argv[i++];
      }
      if (m[1] === "output") output = value;
      else if (m[1] === "logs") logs = value;
      else {
        const index = Number(m[2]);
        if (index === 0) throw new ArgsError("inputs are numbered from 1 (--input1)");
        if (inputs.some((x) => x.index === index)) throw new ArgsError(`--input${index} given twice`);
        inputs.push({ index, path: value });
      }
    }
    inputs.sort((a, b) => a.index - b.index);
    inputs.forEach((x, pos) => {
      if (x.index !== pos + 1) {
        throw new ArgsError(`--input${x.index} given but --input${pos + 1} missing; inputs are numbered 1, 2, 3, ...`);
      }
    });
    if (output === null) throw new ArgsError("--output=DIR is required");
    return new Job(name, inputs, output, logs ?? output, args);
  }

  /** Parses this run's arguments (`wasi:cli/environment`). */
  static fromEnv() {
    return Job.parse(getArguments());
  }

  /** Every regular file of every input, input by input, each sorted by path. */
  inputFiles() {
    return this.inputs.flatMap((x) => listFiles(x.path));
  }

  /** The value of an extra argument `--name=value` or `--name value`. */
  arg(name) {
    const flag = `--${name}`;
    for (let i = 0; i < this.args.length; i++) {
      const a = this.args[i];
      if (a.startsWith(`${flag}=`)) return a.slice(flag.length + 1);
      if (a === flag) return i + 1 < this.args.length ? this.args[i + 1] : null;
    }
    return null;
  }

  /**
   * Writes an output file atomically (a string as UTF-8, or bytes): written
   * to a hidden partial file, then renamed into place. Throws for names that
   * are empty, absolute or contain `..`.
   */
  writeOutput(relative, data) {
    const parts = relative.split("/");
    if (!relative || relative.startsWith("/") || parts.some((p) => p === "" || p === "." || p === "..")) {
      throw new Error(`output name \`${relative}\` must be a relative path without \`..\``);
    }
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    const { dir, rest: base } = locate(this.output);
    const within = (p) => (base === "." ? p : `${base}/${p}`);
    for (let i = 1; i < parts.length; i++) {
      try {
        dir.createDirectoryAt(within(parts.slice(0, i).join("/")));
      } catch (e) {
        if ((e && e.payload) !== "exist") throw wasiError("create the directory for", relative, e);
      }
    }
    const name = parts[parts.length - 1];
    const tmp = within([...parts.slice(0, -1), `.${name}.partial`].join("/"));
    const fd = dir.openAt({}, tmp, { create: true, truncate: true }, { write: true });
    writeAll(fd, bytes, 0);
    dir.renameAt(tmp, dir, within(relative));
  }

  /** Writes a line to stderr (stderr.log in the logs dir under insitu). */
  log(message) {
    console.error(`[${this.name}] ${message}`);
  }

  /** Records progress (0 to 1) as a JSON line in progress.jsonl; failures are ignored. */
  progress(fraction, message = "") {
    let f = Number(fraction);
    if (!Number.isFinite(f)) f = 0;
    f = Math.min(Math.max(f, 0), 1);
    const line = `{"fraction":${f.toFixed(4)},"message":${JSON.stringify(String(message))}}\n`;
    try {
      const fd = open(`${this.logs}/progress.jsonl`, { create: true }, { write: true });
      writeAll(fd, encoder.encode(line), Number(fd.stat().size));
    } catch {
      // progress is best effort
    }
  }
}

/**
 * The `run` export of a `wasi:cli/command`: `export const run =
 * command(algorithm)`. Calls `algorithm(job)`; a thrown error (or bad
 * arguments) prints `error: <message>` on stderr and fails the run.
 */
export function command(algorithm) {
  return {
    run() {
      let job;
      try {
        job = Job.fromEnv();
        algorithm(job);
      } catch (e) {
        console.error(`error: ${e && e.message ? e.message : e}`);
        if (e && e.stack) console.error(e.stack);
        throw e;
      }
    },
  };
}
