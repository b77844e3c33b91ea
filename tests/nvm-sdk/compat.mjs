// Nevermined's own JavaScript SDK (@nevermined-io/sdk, pinned in
// package-lock.json) against a running insitu gateway: every compute route,
// the token exchange, DDO resolution, search and access downloads, each
// through the SDK's own classes (NeverminedNode, JwtUtils, SignatureUtils,
// WebServiceConnector, MetadataService, EthSignJWT) with a minimal config and
// no chain connection. Run by `gateway/tests/api/sdk.rs` against a real
// `insitu serve`; usable by hand:
//
//   INSITU_URL=http://127.0.0.1:8030 CONSUMER_KEY=0x… COMPUTE_AGREEMENT=0x… \
//   WORKFLOW=did:nv:… DATASET=did:nv:… ACCESS_AGREEMENT=0x… \
//   SLOW_WORKFLOW=did:nv:… SLOW_AGREEMENT=0x… node tests/nvm-sdk/compat.mjs
//
// Prints one line per check (`ok …` / `FAIL …`) and a final JSON summary;
// exits 1 if any check failed.
import { createRequire } from 'node:module'
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const require = createRequire(import.meta.url)
const sdk = require('@nevermined-io/sdk')
const { privateKeyToAccount } = require('viem/accounts')

const env = (name) => {
  const v = process.env[name]
  if (!v) {
    console.error(`${name} is not set (see the header of compat.mjs)`)
    process.exit(2)
  }
  return v
}
const base = env('INSITU_URL')
const agreement = env('COMPUTE_AGREEMENT')
const workflow = env('WORKFLOW')
const dataset = env('DATASET')
const access = env('ACCESS_AGREEMENT')
const slowWorkflow = env('SLOW_WORKFLOW')
const slowAgreement = env('SLOW_AGREEMENT')
const chainId = Number(process.env.CHAIN_ID || '31337')

// The SDK's classes wired as Nevermined.getInstance wires them, minus the
// chain: the node client needs only config, logger and the utils.
const config = { neverminedNodeUri: base, marketplaceUri: base, verbose: false }
const instance = { config, logger: sdk.Logger, nevermined: {} }
const nvm = instance.nevermined
nvm.utils = {
  jwt: new sdk.JwtUtils(instance),
  signature: new sdk.SignatureUtils(instance),
  fetch: new sdk.WebServiceConnector(instance),
}
nvm.keeper = { getNetworkId: async () => chainId }
const node = new sdk.NeverminedNode(instance)
const metadata = new sdk.MetadataService(instance)
nvm.services = { node, metadata }
const account = sdk.NvmAccount.fromAccount(privateKeyToAccount(env('CONSUMER_KEY')))

const results = []
async function check(name, f) {
  try {
    const detail = await f()
    results.push({ name, ok: true })
    console.log(`ok ${name}${detail ? ` — ${detail}` : ''}`)
  } catch (e) {
    results.push({ name, ok: false, error: String(e?.message || e) })
    console.log(`FAIL ${name}: ${e?.message || e}${e?.cause ? ` (${e.cause})` : ''}`)
  }
}
function assert(cond, what) {
  if (!cond) throw new Error(what)
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// A compute-audience token the way NeverminedNode.computeStatus makes it.
async function computeToken(executionId, a = agreement) {
  const grant = await nvm.utils.jwt.generateComputeGrantToken(account, a, executionId)
  return node.fetchToken(grant)
}
async function waitFor(executionId, wanted, a = agreement) {
  for (let i = 0; i < 300; i++) {
    const s = await node.computeStatus(a, executionId, account)
    const status = s.workflowStatus?.status
    if (wanted.includes(status)) return s
    assert(!['failed', 'stopped', 'succeeded'].includes(status), `ended ${status}: ${JSON.stringify(s)}`)
    await sleep(100)
  }
  throw new Error(`${executionId} did not reach ${wanted}`)
}

let executionId
await check('token exchange (JwtUtils execute grant → NeverminedNode.fetchToken)', async () => {
  const grant = await nvm.utils.jwt.generateExecuteGrantToken(account, agreement, workflow)
  const token = await node.fetchToken(grant)
  assert(typeof token === 'string' && token.length > 20, `no access_token: ${token}`)
})
await check('execute (NeverminedNode.execute: agreement id without 0x in the path)', async () => {
  const r = await node.execute(agreement, workflow, account)
  executionId = r.workflowId
  assert(/^nv-[0-9a-f]{32}$/.test(executionId), `workflowId ${JSON.stringify(r)}`)
  return executionId
})
await check('status (NeverminedNode.computeStatus until succeeded)', async () => {
  const s = await waitFor(executionId, ['succeeded'])
  assert(s.workflowStatus.status === 'succeeded', JSON.stringify(s.workflowStatus))
  assert(Array.isArray(s.workflowStatus.pods), 'workflowStatus.pods')
  return s.workflowStatus.status
})
await check('logs (NeverminedNode.computeLogs)', async () => {
  const text = await node.computeLogs(agreement, executionId, account)
  assert(text.includes('words'), `logs: ${text.slice(0, 200)}`)
})
await check('list (WebServiceConnector.get /compute/list with a compute token)', async () => {
  const token = await computeToken(executionId)
  const r = await nvm.utils.fetch.get(`${base}/api/v1/node/services/compute/list`, {
    Authorization: `Bearer ${token}`,
  })
  assert(r.ok, `HTTP ${r.status}`)
  const body = await r.json()
  assert(JSON.stringify(body).includes(executionId), `not listed: ${JSON.stringify(body).slice(0, 200)}`)
})
await check('results and download (WebServiceConnector.downloadFile)', async () => {
  const token = await computeToken(executionId)
  const headers = { Authorization: `Bearer ${token}` }
  const r = await nvm.utils.fetch.get(`${base}/api/v1/node/services/compute/results/${executionId}`, headers)
  assert(r.ok, `HTTP ${r.status}`)
  const body = await r.json()
  const file = body.files.find((f) => f.path === 'counts.json')
  assert(file, `no counts.json in ${JSON.stringify(body.files)}`)
  const dir = mkdtempSync(join(tmpdir(), 'nvm-sdk-')) + '/'
  await nvm.utils.fetch.downloadFile(
    `${base}/api/v1/node/services/compute/results/${executionId}/counts.json`,
    dir,
    0,
    headers,
  )
  const got = readdirSync(dir)
  assert(got.length === 1, `downloaded ${got}`)
  const counts = JSON.parse(readFileSync(join(dir, got[0]), 'utf8'))
  assert(counts.words === 6, `counts ${JSON.stringify(counts)}`)
})
await check('identifiers in any spelling (upper-case agreement and DID, DID as bare hex)', async () => {
  const hex = workflow.slice('did:nv:'.length)
  const spellings = [
    [agreement.toUpperCase().replace('0X', '0x'), workflow.toUpperCase().replace('DID:NV:', 'did:nv:')],
    [agreement.slice(2), hex],
    [agreement, `0x${hex.toUpperCase()}`],
  ]
  for (const [a, w] of spellings) {
    nvm.utils.jwt.tokenCache.clear()
    const r = await node.execute(a, w, account)
    assert(/^nv-[0-9a-f]{32}$/.test(r.workflowId), `${a} ${w}: ${JSON.stringify(r)}`)
    const s = await node.computeStatus(a, r.workflowId.toUpperCase(), account)
    assert(s.workflowStatus, `status of ${r.workflowId} with ${a}`)
  }
})
await check('stop (WebServiceConnector.delete /compute/stop)', async () => {
  nvm.utils.jwt.tokenCache.clear()
  const r = await node.execute(slowAgreement, slowWorkflow, account)
  await waitFor(r.workflowId, ['running'], slowAgreement)
  const token = await computeToken(r.workflowId, slowAgreement)
  const stop = await nvm.utils.fetch.delete(
    `${base}/api/v1/node/services/compute/stop/${r.workflowId}`,
    undefined,
    { Authorization: `Bearer ${token}` },
  )
  assert(stop.ok, `HTTP ${stop.status} ${await stop.text()}`)
  for (let i = 0; i < 100; i++) {
    const s = await node.computeStatus(slowAgreement, r.workflowId, account)
    if (s.workflowStatus.status === 'stopped') return 'stopped'
    await sleep(100)
  }
  throw new Error('never stopped')
})
let ddo
await check('DDO resolve (MetadataService.retrieveDDO)', async () => {
  ddo = await metadata.retrieveDDO(dataset)
  assert(ddo.id === dataset, `id ${ddo.id}`)
  const compute = ddo.findServiceByType('compute')
  assert(compute.serviceEndpoint.startsWith(base), `compute endpoint ${compute.serviceEndpoint}`)
  const accessService = ddo.findServiceByType('access')
  assert(accessService.serviceEndpoint.startsWith(base), `access endpoint ${accessService.serviceEndpoint}`)
  const main = ddo.findServiceByType('metadata').attributes.main
  assert(main.files.length === 1, `files ${JSON.stringify(main.files)}`)
})
await check('search (MetadataService.queryMetadata)', async () => {
  const r = await metadata.queryMetadata({ text: 'notes', offset: 10, page: 1 })
  assert(r.results.some((d) => d.id === dataset), `not found: ${r.results.map((d) => d.id)}`)
  assert(r.totalResults >= 1, `totalResults ${r.totalResults}`)
})
await check('access download (NeverminedNode.consumeService)', async () => {
  const service = ddo.findServiceByType('access')
  const files = ddo.findServiceByType('metadata').attributes.main.files
  const dir = mkdtempSync(join(tmpdir(), 'nvm-sdk-')) + '/'
  await node.consumeService(dataset, access, service.serviceEndpoint, account, files, dir)
  const got = readdirSync(dir)
  assert(got.length === 1 && got[0] === 'a.txt', `downloaded ${got}`)
  assert(readFileSync(join(dir, 'a.txt'), 'utf8') === 'the cat saw the other cat\n', 'content')
})
await check('EIP-712 grant (EthSignJWT.ethSign with eip712Data)', async () => {
  const grant = await new sdk.EthSignJWT({
    iss: account.getId(),
    aud: '/api/v1/node/services/execute',
    sub: agreement,
    did: workflow,
  })
    .setProtectedHeader({ alg: 'ES256K' })
    .setIssuedAt()
    .setExpirationTime('1h')
    .ethSign(nvm.utils.signature, account, { message: 'insitu compat', chainId })
  const token = await node.fetchToken(grant)
  const r = await nvm.utils.fetch.post(
    `${base}/api/v1/node/services/compute/execute/${agreement}`,
    JSON.stringify({ workflowDid: workflow, consumer: account.getId() }),
    { Authorization: `Bearer ${token}` },
  )
  assert(r.status === 202, `HTTP ${r.status} ${await r.text()}`)
})
await check('client assertion (JwtUtils.generateClientAssertion) is refused with a reason', async () => {
  const assertion = await nvm.utils.jwt.generateClientAssertion(account, 'login')
  const r = await nvm.utils.fetch.fetchToken(`${base}/api/v1/node/services/oauth/token`, assertion)
  assert(r.status === 401, `HTTP ${r.status}`)
  const body = await r.json()
  assert(/aud/.test(body.message), `message: ${body.message}`)
})

const failed = results.filter((r) => !r.ok)
console.log(JSON.stringify({ passed: results.length - failed.length, failed: failed.length, results }))
process.exit(failed.length ? 1 : 0)
