// Builds the chain fixture for insitu's chain tests (`cargo test --test chain`):
//
// 1. fetches @nevermined-io/contracts@3.5.9 with `npm pack` and checks its
//    sha512 (it is not `npm install`ed: that would drag in hardhat);
// 2. compiles the ten compute-flow contracts and the two of data sharing
//    with solc-js 0.8.17 (optimizer on, runs = 10, evmVersion london, as
//    upstream builds them);
// 3. starts anvil (the pinned npm binary), deploys them from dev account 0
//    without proxies, initializes and wires them (33 transactions);
// 4. writes out/addresses.json (contract name → address), out/abi/NAME.json
//    and out/state.json (anvil_dumpState, restored with `anvil --load-state`).
//
// Run: `npm ci && node build.mjs` in this directory. Nothing here is needed at
// run time by insitu itself.

import { execFileSync, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "out");
const work = path.join(here, "work");
const PACKAGE = "@nevermined-io/contracts@3.5.9";
const INTEGRITY =
  "sha512-rkHyWv/pYKMRdSl6W8w2s9b4xAzC4bata8K1v98dd3kkYlXHYekWbPKlgHsLX84yp65/9BOE7zUXS1q0TifxFg==";
const ANVIL = path.join(here, "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
/** anvil's dev account 0 (public test key). */
const DEPLOYER = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
const ZERO = "0x0000000000000000000000000000000000000000";

/** Contract name → source under the package's lib/. */
const CONTRACTS = {
  NeverminedConfig: "governance/NeverminedConfig.sol",
  DIDRegistry: "registry/DIDRegistry.sol",
  NeverminedToken: "NeverminedToken.sol",
  ConditionStoreManager: "conditions/ConditionStoreManager.sol",
  TemplateStoreManager: "templates/TemplateStoreManager.sol",
  EscrowPaymentCondition: "conditions/rewards/EscrowPaymentCondition.sol",
  AgreementStoreManager: "agreements/AgreementStoreManager.sol",
  LockPaymentCondition: "conditions/LockPaymentCondition.sol",
  ComputeExecutionCondition: "conditions/ComputeExecutionCondition.sol",
  EscrowComputeExecutionTemplate: "templates/EscrowComputeExecutionTemplate.sol",
  // Data sharing (insitu asset add --access): appended, so the contracts
  // above keep their addresses.
  AccessCondition: "conditions/AccessCondition.sol",
  AccessTemplate: "templates/AccessTemplate.sol",
};

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

function sources() {
  const lib = path.join(work, "package/lib");
  if (fs.existsSync(lib)) return lib;
  fs.mkdirSync(work, { recursive: true });
  const tgz = execFileSync("npm", ["pack", PACKAGE, "--silent", "--pack-destination", work], {
    encoding: "utf8",
  }).trim().split("\n").pop();
  const file = path.join(work, tgz);
  const integrity = "sha512-" + crypto.createHash("sha512").update(fs.readFileSync(file)).digest("base64");
  if (integrity !== INTEGRITY) fail(`${PACKAGE} has integrity ${integrity}, expected ${INTEGRITY}`);
  execFileSync("tar", ["xzf", file, "-C", work]);
  return lib;
}

function compile(lib) {
  const started = Date.now();
  const input = {
    language: "Solidity",
    sources: Object.fromEntries(
      Object.values(CONTRACTS).map((p) => [p, { content: fs.readFileSync(path.join(lib, p), "utf8") }]),
    ),
    settings: {
      optimizer: { enabled: true, runs: 10 },
      evmVersion: "london",
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.methodIdentifiers"] } },
    },
  };
  const findImports = (p) => {
    // Common.sol imports it without using it.
    if (p === "hardhat/console.sol") return { contents: "// SPDX-License-Identifier: MIT\npragma solidity >=0.4.22 <0.9.0;\nlibrary console {}\n" };
    const candidates = p.startsWith("@") ? [path.join(here, "node_modules", p)] : [path.join(lib, p)];
    for (const c of candidates) if (fs.existsSync(c)) return { contents: fs.readFileSync(c, "utf8") };
    return { error: `not found: ${p}` };
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) fail(errors.map((e) => e.formattedMessage).join("\n"));
  const artifacts = {};
  for (const [name, p] of Object.entries(CONTRACTS)) {
    const c = output.contracts[p][name];
    artifacts[name] = { abi: c.abi, bytecode: "0x" + c.evm.bytecode.object, selectors: c.evm.methodIdentifiers };
  }
  console.log(`compiled ${Object.keys(artifacts).length} contracts in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return artifacts;
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function main() {
  // Compiling takes ~25 s: reuse the artifacts of the same sources and settings.
  const key = crypto
    .createHash("sha256")
    .update(JSON.stringify({ PACKAGE, CONTRACTS, solc: solc.version(), optimizer: 10, evm: "london" }))
    .digest("hex")
    .slice(0, 16);
  const cache = path.join(work, `artifacts-${key}.json`);
  const artifacts = fs.existsSync(cache) ? JSON.parse(fs.readFileSync(cache, "utf8")) : compile(sources());
  fs.writeFileSync(cache, JSON.stringify(artifacts));
  const port = await freePort();
  const anvil = spawn(ANVIL, ["--port", String(port), "--host", "127.0.0.1", "--silent"], { stdio: "inherit" });
  const url = `http://127.0.0.1:${port}`;
  let id = 0;
  const rpc = async (method, params = []) => {
    const r = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }),
    });
    const body = await r.json();
    if (body.error) throw new Error(`${method}: ${JSON.stringify(body.error)}`);
    return body.result;
  };
  try {
    for (let i = 0; ; i++) {
      try {
        await rpc("eth_chainId");
        break;
      } catch (e) {
        if (i > 100) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    let txs = 0;
    const send = async (tx) => {
      // anvil's own estimate is sometimes a little short (refunds); add a margin.
      const estimate = parseInt(await rpc("eth_estimateGas", [{ from: DEPLOYER, ...tx }]));
      const gas = "0x" + Math.min(Math.ceil(estimate * 1.5) + 50000, 16_000_000).toString(16);
      const hash = await rpc("eth_sendTransaction", [{ from: DEPLOYER, gas, ...tx }]);
      let receipt = null;
      for (let i = 0; !receipt; i++) {
        receipt = await rpc("eth_getTransactionReceipt", [hash]);
        if (!receipt) {
          if (i > 200) throw new Error(`transaction ${hash} was not mined`);
          await new Promise((r) => setTimeout(r, 5));
        }
      }
      if (!receipt || receipt.status !== "0x1") {
        let reason = "";
        try {
          await rpc("eth_call", [{ from: DEPLOYER, ...tx }, receipt ? receipt.blockNumber : "latest"]);
        } catch (e) {
          reason = `: ${e.message}`;
        }
        const sent = await rpc("eth_getTransactionByHash", [hash]);
        throw new Error(`transaction ${hash} reverted${reason} (gas ${parseInt(receipt.gasUsed)} of ${parseInt(sent.gas)})`);
      }
      txs++;
      return receipt;
    };
    const word = (v) => {
      if (typeof v === "boolean") return (v ? "1" : "0").padStart(64, "0");
      return v.toLowerCase().replace(/^0x/, "").padStart(64, "0");
    };
    const addr = {};
    for (const name of Object.keys(CONTRACTS)) {
      try {
        addr[name] = (await send({ data: artifacts[name].bytecode })).contractAddress;
      } catch (e) {
        throw new Error(`deploying ${name} (${(artifacts[name].bytecode.length - 2) / 2} bytes): ${e.message}`);
      }
    }
    const call = (name, signature, ...args) => {
      const selector = artifacts[name].selectors[signature];
      if (!selector) throw new Error(`${name} has no ${signature}`);
      return send({ to: addr[name], data: "0x" + selector + args.map(word).join("") }).catch((e) => {
        throw new Error(`${name}.${signature}: ${e.message}`);
      });
    };
    const a = addr;
    await call("NeverminedConfig", "initialize(address,address,bool)", DEPLOYER, DEPLOYER, false);
    await call("DIDRegistry", "initialize(address,address,address,address,address)", DEPLOYER, ZERO, ZERO, a.NeverminedConfig, ZERO);
    await call("NeverminedToken", "initialize(address,address)", DEPLOYER, DEPLOYER);
    await call("ConditionStoreManager", "initialize(address,address,address)", DEPLOYER, DEPLOYER, a.NeverminedConfig);
    await call("TemplateStoreManager", "initialize(address)", DEPLOYER);
    await call("EscrowPaymentCondition", "initialize(address,address)", DEPLOYER, a.ConditionStoreManager);
    await call("AgreementStoreManager", "initialize(address,address,address,address)", DEPLOYER, a.ConditionStoreManager, a.TemplateStoreManager, a.DIDRegistry);
    await call("LockPaymentCondition", "initialize(address,address,address)", DEPLOYER, a.ConditionStoreManager, a.DIDRegistry);
    await call("ComputeExecutionCondition", "initialize(address,address,address)", DEPLOYER, a.ConditionStoreManager, a.AgreementStoreManager);
    await call(
      "EscrowComputeExecutionTemplate",
      "initialize(address,address,address,address,address,address)",
      DEPLOYER, a.AgreementStoreManager, a.DIDRegistry, a.ComputeExecutionCondition, a.LockPaymentCondition, a.EscrowPaymentCondition,
    );
    await call("AccessCondition", "initialize(address,address,address)", DEPLOYER, a.ConditionStoreManager, a.AgreementStoreManager);
    await call(
      "AccessTemplate",
      "initialize(address,address,address,address,address,address)",
      DEPLOYER, a.AgreementStoreManager, a.DIDRegistry, a.AccessCondition, a.LockPaymentCondition, a.EscrowPaymentCondition,
    );
    await call("TemplateStoreManager", "proposeTemplate(address)", a.EscrowComputeExecutionTemplate);
    await call("TemplateStoreManager", "approveTemplate(address)", a.EscrowComputeExecutionTemplate);
    await call("TemplateStoreManager", "proposeTemplate(address)", a.AccessTemplate);
    await call("TemplateStoreManager", "approveTemplate(address)", a.AccessTemplate);
    await call("ConditionStoreManager", "delegateCreateRole(address)", a.AgreementStoreManager);
    await call("ConditionStoreManager", "grantProxyRole(address)", a.EscrowPaymentCondition);
    await call("LockPaymentCondition", "grantProxyRole(address)", a.AgreementStoreManager);
    await call("AgreementStoreManager", "grantProxyRole(address)", a.EscrowComputeExecutionTemplate);
    await call("AgreementStoreManager", "grantProxyRole(address)", a.AccessTemplate);

    const dump = Buffer.from((await rpc("anvil_dumpState")).replace(/^0x/, ""), "hex");
    const state = dump[0] === 0x1f && dump[1] === 0x8b ? zlib.gunzipSync(dump) : dump;
    fs.rmSync(out, { recursive: true, force: true });
    fs.mkdirSync(path.join(out, "abi"), { recursive: true });
    fs.writeFileSync(path.join(out, "addresses.json"), JSON.stringify(addr, null, 2) + "\n");
    for (const [name, art] of Object.entries(artifacts)) {
      fs.writeFileSync(path.join(out, "abi", `${name}.json`), JSON.stringify(art.abi) + "\n");
    }
    fs.writeFileSync(path.join(out, "state.json"), state);
    console.log(`deployed and wired with ${txs} transactions; wrote ${out}`);
  } finally {
    anvil.kill();
  }
}

main().catch((e) => fail(e.stack || String(e)));
