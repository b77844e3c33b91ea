//! On-chain agreements against the real Nevermined contracts, deployed by the
//! `testchain/` fixture and restored into a fresh anvil per test (random
//! loopback port, killed on drop). `scripts/setup` builds the fixture; a
//! missing anvil or snapshot fails these tests, it never skips them.

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use insitu_chain::{
    Addresses, Chain, ChainAgreements, ConditionState, IComputeExecutionCondition, IDIDRegistry,
    IEscrowComputeExecutionTemplate, IEscrowPaymentCondition, ILockPaymentCondition, Price,
    TxPolicy, ids,
};
use insitu_runtime::Error;
use insitu_runtime::permissions::Permissions;
use insitu_runtime::receipt::ProviderKey;
use insitu_runtime::store::{DatasetSpec, Server, Store};
use insitu_runtime::workflow::Did;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// anvil's public dev keys: 1 is the provider, 2 the consumer, 3 a stranger.
const PROVIDER: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const CONSUMER: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const STRANGER: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
const PRICE_WEI: u64 = 1_000_000_000_000_000; // 0.001 ETH

fn fixture(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testchain")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: build the chain fixture with scripts/setup (npm ci and node build.mjs in testchain/)",
        p.display()
    );
    p
}

/// An anvil restored from the fixture's snapshot.
struct Anvil {
    child: Child,
    url: String,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Anvil {
    async fn start() -> Anvil {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(fixture(
            "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
        ))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--silent",
        ])
        .arg("--load-state")
        .arg(fixture("out/state.json"))
        .stdout(Stdio::null())
        .spawn()
        .expect("anvil starts");
        // Owned (killed on drop) before anything can panic.
        let anvil = Anvil {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        insitu_runtime::tls::install();
        let probe = ProviderBuilder::new().connect_http(anvil.url.parse().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while probe.get_block_number().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "anvil did not answer on {}",
                anvil.url
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anvil
    }

    fn wallet(&self, key: &str) -> DynProvider {
        let signer: PrivateKeySigner = key.parse().unwrap();
        insitu_runtime::tls::install();
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(self.url.parse().unwrap())
            .erased()
    }
}

fn address(key: &str) -> Address {
    key.parse::<PrivateKeySigner>().unwrap().address()
}

struct World {
    anvil: Anvil,
    /// The provider's data dir (`insitu.db` holds the catalog).
    data: PathBuf,
    /// A local OCI layout holding the word-count image the dataset allows.
    layout: PathBuf,
    addresses: Addresses,
    store: Arc<Store>,
    agreements: ChainAgreements,
    did: B256,
    workflow: String,
    price: Price,
    _tmp: tempfile::TempDir,
}

/// The provider registers a DID on-chain and the same DID as a priced
/// dataset in its catalog, plus a workflow reading it.
async fn world() -> World {
    let anvil = Anvil::start().await;
    let addresses = Addresses::from_file(&fixture("out/addresses.json")).unwrap();
    let provider = anvil.wallet(PROVIDER);
    let seed = B256::repeat_byte(0x42);
    let registry = IDIDRegistry::new(addresses.did_registry, &provider);
    registry
        .registerDID(
            seed,
            B256::ZERO,
            vec![address(PROVIDER)],
            String::new(),
            B256::ZERO,
            String::new(),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let did = ids::did(seed, address(PROVIDER));
    assert_eq!(
        registry
            .hashDID(seed, address(PROVIDER))
            .call()
            .await
            .unwrap(),
        did,
        "our DID hash is the registry's"
    );
    assert_eq!(
        registry.getDIDOwner(did).call().await.unwrap(),
        address(PROVIDER)
    );

    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("dataset");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), "paid for and counted in situ\n").unwrap();
    let layout = tmp.path().join("layout");
    let wc = insitu_runtime::image::package::wasm_artifact(insitu_tests::WORD_COUNT_P1).unwrap();
    insitu_runtime::image::package::write_layout(&layout, "wc", &wc).unwrap();
    let image = wc.manifest_digest.clone();
    let data = tmp.path().join("provider");
    std::fs::create_dir(&data).unwrap();
    let store = Arc::new(Store::open(data.join("insitu.db")).unwrap());
    let dataset = Did::parse(&format!("did:nv:{}", alloy::hex::encode(did))).unwrap();
    store
        .register_dataset(&DatasetSpec {
            name: "notes",
            path: &input,
            allowed_images: std::slice::from_ref(&image),
            timeout_secs: 3600,
            server: Server::default(),
            price: Some(PRICE_WEI.to_string()),
            price_token: None,
            access: false,
            did: Some(dataset.clone()),
            deterministic: false,
            about: Default::default(),
        })
        .unwrap();
    let workflow = store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "w", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": image}},
             "input": [{"index": 0, "id": dataset}]}]}}}))
        .unwrap()
        .to_string();
    let key = ProviderKey::from_hex(PROVIDER).unwrap();
    let chain = Arc::new(Chain::connect(&anvil.url, addresses.clone(), &key).unwrap());
    let agreements = ChainAgreements::new(chain, store.clone(), Duration::from_secs(5));
    let price = Price {
        token: Address::ZERO,
        amounts: vec![U256::from(PRICE_WEI)],
        receivers: vec![address(PROVIDER)],
    };
    World {
        anvil,
        data,
        layout,
        addresses,
        store,
        agreements,
        did,
        workflow,
        price,
        _tmp: tmp,
    }
}

impl World {
    /// The consumer creates a compute agreement (and locks the payment when
    /// `pay`); returns the agreement id and its compute condition id.
    async fn agreement(&self, seed: u8, pay: bool) -> (B256, B256) {
        self.agreement_with(seed, pay, [0, 0, 0]).await
    }

    /// [`World::agreement`] with time-outs (in blocks) for [compute, lock, escrow].
    async fn agreement_with(&self, seed: u8, pay: bool, time_outs: [u64; 3]) -> (B256, B256) {
        let consumer = self.anvil.wallet(CONSUMER);
        let who = address(CONSUMER);
        let a = &self.addresses;
        let seed = B256::repeat_byte(seed);
        let id = ids::agreement_id(seed, who);
        let compute_hash = ids::compute_hash(self.did, who);
        let lock_hash = ids::lock_hash(self.did, a.escrow_payment, &self.price);
        let compute_id = ids::condition_id(id, a.compute, compute_hash);
        let lock_id = ids::condition_id(id, a.lock_payment, lock_hash);
        // As the Nevermined SDK does: the escrow's `lockPaymentAddress` is the
        // escrow contract the payment is locked into.
        let escrow_hash = ids::escrow_hash(
            self.did,
            &self.price,
            who,
            a.escrow_payment,
            lock_id,
            compute_id,
        );
        IEscrowComputeExecutionTemplate::new(a.template, &consumer)
            .createAgreement(
                seed,
                self.did,
                vec![compute_hash, lock_hash, escrow_hash],
                vec![U256::ZERO; 3],
                time_outs.iter().map(|t| U256::from(*t)).collect(),
                who,
            )
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        if pay {
            let r = ILockPaymentCondition::new(a.lock_payment, &consumer)
                .fulfill(
                    id,
                    self.did,
                    a.escrow_payment,
                    Address::ZERO,
                    self.price.amounts.clone(),
                    self.price.receivers.clone(),
                )
                .value(U256::from(PRICE_WEI))
                .send()
                .await
                .unwrap()
                .get_receipt()
                .await
                .unwrap();
            assert!(r.status(), "lock payment");
        }
        (id, compute_id)
    }

    async fn check(
        &self,
        id: B256,
        consumer: &str,
    ) -> Result<insitu_runtime::store::Agreement, Error> {
        self.agreements
            .check_execute(
                &format!("{id:#x}"),
                &format!("{:#x}", address(consumer)),
                &self.workflow,
                0,
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_ids_are_the_contracts_ids() {
    let w = world().await;
    let p = w.anvil.wallet(CONSUMER);
    let a = &w.addresses;
    let who = address(CONSUMER);
    assert_eq!(
        IComputeExecutionCondition::new(a.compute, &p)
            .hashValues(w.did, who)
            .call()
            .await
            .unwrap(),
        ids::compute_hash(w.did, who)
    );
    assert_eq!(
        ILockPaymentCondition::new(a.lock_payment, &p)
            .hashValues(
                w.did,
                a.escrow_payment,
                Address::ZERO,
                w.price.amounts.clone(),
                w.price.receivers.clone()
            )
            .call()
            .await
            .unwrap(),
        ids::lock_hash(w.did, a.escrow_payment, &w.price)
    );
    let (l, r) = (B256::repeat_byte(1), B256::repeat_byte(2));
    assert_eq!(
        IEscrowPaymentCondition::new(a.escrow_payment, &p)
            .hashValues(
                w.did,
                w.price.amounts.clone(),
                w.price.receivers.clone(),
                who,
                a.lock_payment,
                Address::ZERO,
                l,
                r
            )
            .call()
            .await
            .unwrap(),
        ids::escrow_hash(w.did, &w.price, who, a.lock_payment, l, r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_agreement_is_granted_compute_and_permitted() {
    let w = world().await;
    let (id, compute_id) = w.agreement(7, true).await;
    let chain = &w.agreements.chain;
    assert_eq!(
        chain.condition(compute_id).await.unwrap().state,
        ConditionState::Unfulfilled
    );
    let a = w.check(id, CONSUMER).await.unwrap();
    assert_eq!(a.consumer, format!("{:#x}", address(CONSUMER)));
    assert_eq!(
        a.dataset.as_str(),
        format!("did:nv:{}", alloy::hex::encode(w.did))
    );
    // The provider granted compute on-chain, on demand.
    assert_eq!(
        chain.condition(compute_id).await.unwrap().state,
        ConditionState::Fulfilled
    );
    // Mirrored locally so executions can refer to it.
    assert_eq!(w.store.agreement(&format!("{id:#x}")).unwrap(), a);
    // Asking again is answered (from the cache or the chain) the same way.
    assert_eq!(w.check(id, CONSUMER).await.unwrap(), a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_per_agreement() {
    let w = world().await;
    let (paid, _) = w.agreement(1, true).await;
    w.check(paid, CONSUMER).await.unwrap();
    // Pitfall 1: wasComputeTriggered(did, consumer) is now true, yet a second,
    // unpaid agreement of the same consumer is refused.
    let (unpaid, _) = w.agreement(2, false).await;
    let err = w.check(unpaid, CONSUMER).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "not permitted: agreement {unpaid:#x}: the payment is not locked"
        )),
        "{err}"
    );
    // A stranger with the consumer's agreement.
    let err = w.check(paid, STRANGER).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("not permitted: agreement {paid:#x} belongs to another consumer")
    );
    // An agreement that does not exist.
    let err = w.check(B256::repeat_byte(9), CONSUMER).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_down_is_unavailable_not_denied() {
    let mut w = world().await;
    let (id, _) = w.agreement(3, true).await;
    let _ = w.anvil.child.kill();
    let _ = w.anvil.child.wait();
    let err = w.check(id, CONSUMER).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&w.anvil.url), "{err}");
}

/// The seed's flow: the consumer creates the agreement and locks payment,
/// the gateway grants compute, runs the workflow executed over HTTP with a
/// JWT grant, releases the payment to the provider and commits the receipt
/// hash on-chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreement_execute_and_release_over_http() {
    use insitu_gateway::client::Consumer;
    use insitu_gateway::config::{ChainConfig, ServeConfig};
    use insitu_gateway::http::Local;
    let w = world().await;
    let (id, _) = w.agreement(5, true).await;
    let provider = address(PROVIDER);
    let rpc = w.anvil.wallet(CONSUMER);
    let balance_before = rpc.get_balance(provider).await.unwrap();
    let block_before = rpc.get_block_number().await.unwrap();

    let mut config = ServeConfig::new(w.data.clone());
    config.layouts = vec![w.layout.clone()];
    config.workers = 1;
    config.provider_key = Some(ProviderKey::from_hex(PROVIDER).unwrap());
    config.chain = Some(ChainConfig::new(
        w.anvil.url.clone(),
        fixture("out/addresses.json"),
    ));
    let local = Local::start(&config, Duration::from_secs(5)).await.unwrap();
    let base = local.base.clone();

    let client = Consumer::new(base, ProviderKey::from_hex(CONSUMER).unwrap());
    let agreement = format!("{id:#x}");
    let t = client
        .token(&client.claims(&agreement, &w.workflow, None))
        .await
        .unwrap();
    let exec = client.execute(&t, &agreement, &w.workflow).await.unwrap();
    let t = client
        .token(&client.claims(&agreement, &w.workflow, Some(&exec)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = client.get(&t, &format!("status/{exec}")).await.unwrap();
        let settlement = &s["execution"]["settlement"];
        if settlement.get("release_tx").is_some() || settlement.get("error").is_some() {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["workflowStatus"]["status"], "succeeded", "{status}");
    let settlement = &status["execution"]["settlement"];
    assert!(settlement["release_tx"].as_str().is_some(), "{settlement}");
    let receipt_hash: B256 = status["execution"]["receipt"]["hash"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(settlement["receipt_hash"], format!("{receipt_hash:#x}"));

    // The provider was paid: its balance grew by the price, less the gas of
    // its own transactions (grant compute, release, commit the receipt).
    let after = rpc.get_balance(provider).await.unwrap();
    let mut fees = U256::ZERO;
    let last = rpc.get_block_number().await.unwrap();
    for n in block_before + 1..=last {
        let block = rpc
            .get_block_by_number(n.into())
            .full()
            .await
            .unwrap()
            .unwrap();
        for tx in block.transactions.txns() {
            let receipt = rpc
                .get_transaction_receipt(*tx.inner.hash())
                .await
                .unwrap()
                .unwrap();
            if receipt.from == provider {
                fees += U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
            }
        }
    }
    assert_eq!(after + fees, balance_before + U256::from(PRICE_WEI));
    // The receipt hash is on-chain, as a provenance entry of the dataset's DID.
    let entry = IDIDRegistry::new(w.addresses.did_registry, &rpc)
        .getProvenanceEntry(receipt_hash)
        .call()
        .await
        .unwrap();
    assert_eq!(entry.did, w.did);
    assert_eq!(entry.createdBy, provider);
    // `insitu verify`'s chain check finds it, for the dataset, by the signer;
    // a receipt whose hash is not on-chain fails it.
    let signed: insitu_runtime::receipt::Receipt =
        serde_json::from_value(status["execution"]["receipt"].clone()).unwrap();
    let reader = Chain::connect(&w.anvil.url, w.addresses.clone(), &ProviderKey::random()).unwrap();
    let check = insitu_chain::verify_committed(&reader, &signed).await;
    assert!(check.ok, "{check}");
    assert!(
        check
            .detail
            .contains(&format!("for dataset {}", insitu_chain::did_of(w.did))),
        "{check}"
    );
    let mut other = signed.clone();
    other.hash = format!("{:#x}", B256::repeat_byte(7));
    let check = insitu_chain::verify_committed(&reader, &other).await;
    assert!(!check.ok);
    assert!(check.detail.ends_with("is not committed on-chain (no DIDRegistry provenance entry); the provider has not settled it yet, or it is not the receipt it committed"), "{check}");

    // Settling again (a retry after a confirmation timed out) sends nothing.
    let agreement = w.store.agreement(&agreement).unwrap();
    let again = w
        .agreements
        .settle(&agreement, &format!("{receipt_hash:#x}"))
        .await
        .unwrap();
    assert_eq!(again["release_tx"], serde_json::Value::Null, "{again}");
    assert_eq!(again["receipt_tx"], serde_json::Value::Null, "{again}");
    assert_eq!(
        rpc.get_block_number().await.unwrap(),
        last,
        "no transaction"
    );
}

/// `insitu asset add` in chain mode: the DID is registered on-chain by the
/// provider first, and the catalog holds the same value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_add_registers_the_did_on_chain() {
    use insitu_gateway::commands::catalog::{OnChain, add_dataset_on_chain};
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let (data, path) = (dir.path().join("data"), dir.path().join("ds"));
    std::fs::create_dir(&path).unwrap();
    let chain = OnChain {
        rpc: w.anvil.url.clone(),
        contracts: fixture("out/addresses.json"),
        key: ProviderKey::from_hex(PROVIDER).unwrap(),
    };
    let line = {
        let (data, path, chain) = (data.clone(), path.clone(), chain.clone());
        tokio::task::spawn_blocking(move || {
            add_dataset_on_chain(
                &data,
                &path,
                "ds",
                &[],
                &insitu_gateway::commands::catalog::Offer {
                    timeout_secs: 60,
                    price: Some("5000".into()),
                    ..Default::default()
                },
                &chain,
            )
        })
        .await
        .unwrap()
        .unwrap()
    };
    assert!(
        line.starts_with("dataset `ds` registered on-chain (tx 0x"),
        "{line}"
    );
    let did = Did::parse(line.split_whitespace().last().unwrap()).unwrap();
    let on_chain: B256 = format!("0x{}", did.as_str().trim_start_matches("did:nv:"))
        .parse()
        .unwrap();
    let rpc = w.anvil.wallet(CONSUMER);
    assert_eq!(
        IDIDRegistry::new(w.addresses.did_registry, &rpc)
            .getDIDOwner(on_chain)
            .call()
            .await
            .unwrap(),
        address(PROVIDER)
    );
    let store = Store::open(data.join("insitu.db")).unwrap();
    assert_eq!(
        insitu_chain::price_of(&store, &did, address(PROVIDER))
            .unwrap()
            .amounts,
        vec![U256::from(5000)]
    );
    // A bad price is refused before any transaction.
    let bad = chain;
    let err = tokio::task::spawn_blocking(move || {
        add_dataset_on_chain(
            &data,
            &path,
            "ds",
            &[],
            &insitu_gateway::commands::catalog::Offer {
                timeout_secs: 60,
                price: Some("1 eth".into()),
                ..Default::default()
            },
            &bad,
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--price must be an amount in wei (digits only), not `1 eth`"
    );
}

/// Chain id, gas multiplier, fee cap and confirmations of `TxPolicy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_policy_is_applied() {
    let w = world().await;
    let key = ProviderKey::from_hex(PROVIDER).unwrap();
    let rpc = w.anvil.wallet(CONSUMER);
    let with = |policy: TxPolicy| {
        Chain::connect_with(&w.anvil.url, w.addresses.clone(), &key, policy).unwrap()
    };
    let nonce = || rpc.get_transaction_count(address(PROVIDER));
    let before = nonce().await.unwrap();

    // Another chain's node is refused before anything is read or sent.
    let mainnet = with(TxPolicy {
        chain_id: Some(1),
        ..TxPolicy::default()
    });
    let err = mainnet
        .register_did(B256::repeat_byte(1), B256::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the chain RPC at {} serves chain id 31337, not the configured 1; fix chain_rpc or chain_id",
            w.anvil.url
        )
    );
    assert!(mainnet.block_number().await.is_err());
    assert!(matches!(Error::from(err), Error::Unavailable(_)));

    // A fee cap below the base fee: nothing is sent.
    let stingy = with(TxPolicy {
        max_fee_per_gas: Some(1),
        ..TxPolicy::default()
    });
    let err = stingy
        .register_did(B256::repeat_byte(2), B256::ZERO)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("DIDRegistry.registerDID not sent: the chain's base fee of ")
            && err.ends_with(
                "is above max_fee_per_gas (1 wei); it is retried later, or raise the cap"
            ),
        "{err}"
    );
    assert_eq!(nonce().await.unwrap(), before, "no transaction was sent");

    // The right chain, a generous multiplier and a cap above the base fee.
    let careful = with(TxPolicy {
        chain_id: Some(31337),
        gas_multiplier: 2.0,
        max_fee_per_gas: Some(100_000_000_000),
        ..TxPolicy::default()
    });
    let (_, hash) = careful
        .register_did(B256::repeat_byte(3), B256::ZERO)
        .await
        .unwrap();
    let tx = rpc.get_transaction_by_hash(hash).await.unwrap().unwrap();
    let receipt = rpc.get_transaction_receipt(hash).await.unwrap().unwrap();
    use alloy::consensus::Transaction as _;
    assert!(
        tx.gas_limit() >= 2 * receipt.gas_used,
        "gas limit {} for {} used",
        tx.gas_limit(),
        receipt.gas_used
    );
    assert!(tx.max_fee_per_gas() <= 100_000_000_000);

    // Two confirmations: the transaction is mined at once (automine), but
    // only done when a further block exists.
    let patient = with(TxPolicy {
        confirmations: 2,
        timeout: Duration::from_millis(1500),
        ..TxPolicy::default()
    });
    let err = patient
        .register_did(B256::repeat_byte(4), B256::ZERO)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("sent but not confirmed by 2 block(s) within 1.5s"),
        "{err}"
    );
    assert!(matches!(Error::from(err), Error::Unavailable(_)));
    let miner = {
        let rpc = rpc.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            rpc.raw_request::<_, serde_json::Value>("anvil_mine".into(), ("0x1",))
                .await
                .unwrap();
        })
    };
    let (_, hash) = patient
        .register_did(B256::repeat_byte(5), B256::ZERO)
        .await
        .unwrap();
    miner.await.unwrap();
    let mined = rpc.get_transaction_receipt(hash).await.unwrap().unwrap();
    let head = rpc.get_block_number().await.unwrap();
    assert!(
        head > mined.block_number.unwrap(),
        "confirmed by a later block"
    );
}

/// Settling decides from the chain's state, so it waits while an earlier
/// transaction of the provider is unmined (one a killed run left in the
/// mempool would otherwise be sent again), and says so when it times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_waits_for_the_providers_unmined_transactions() {
    let w = world().await;
    let rpc = w.anvil.wallet(PROVIDER);
    let key = ProviderKey::from_hex(PROVIDER).unwrap();
    let chain = Chain::connect_with(
        &w.anvil.url,
        w.addresses.clone(),
        &key,
        TxPolicy {
            timeout: Duration::from_millis(600),
            ..TxPolicy::default()
        },
    )
    .unwrap();
    rpc.raw_request::<_, serde_json::Value>("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    // An earlier run's transaction, sent and not mined.
    let _pending = IDIDRegistry::new(w.addresses.did_registry, &rpc)
        .registerDID(
            B256::repeat_byte(9),
            B256::ZERO,
            vec![address(PROVIDER)],
            String::new(),
            B256::ZERO,
            String::new(),
        )
        .send()
        .await
        .unwrap();
    let count = |tag: &'static str| {
        let rpc = rpc.clone();
        async move {
            let c = rpc.get_transaction_count(address(PROVIDER));
            match tag {
                "pending" => c.pending().await.unwrap(),
                _ => c.latest().await.unwrap(),
            }
        }
    };
    let sent = count("pending").await;
    assert_eq!(sent, count("latest").await + 1);
    let err = chain
        .commit_receipt(B256::repeat_byte(7), w.did)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "DIDRegistry.used not sent: 1 earlier transaction(s) of the provider {} still wait to be mined after 600ms; it is retried later (raise tx_timeout, or the fee cap if they are underpriced)",
            address(PROVIDER)
        )
    );
    assert!(matches!(Error::from(err), Error::Unavailable(_)));
    assert_eq!(count("pending").await, sent, "nothing more was sent");
    // Once it is mined, settling goes ahead.
    rpc.raw_request::<_, serde_json::Value>("evm_setAutomine".into(), (true,))
        .await
        .unwrap();
    rpc.raw_request::<_, serde_json::Value>("anvil_mine".into(), ("0x1",))
        .await
        .unwrap();
    assert!(
        chain
            .commit_receipt(B256::repeat_byte(7), w.did)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(count("latest").await, sent + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_agreement_is_refused() {
    let w = world().await;
    // The compute condition times out 2 blocks after the agreement's block.
    let (id, _) = w.agreement_with(11, true, [2, 0, 0]).await;
    let rpc = w.anvil.wallet(CONSUMER);
    rpc.raw_request::<_, serde_json::Value>("anvil_mine".into(), ("0x5",))
        .await
        .unwrap();
    let err = w.check(id, CONSUMER).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "not permitted: agreement {id:#x}: its compute condition timed out at block"
        )),
        "{err}"
    );
}

/// A settlement cut short (the gateway stopped before releasing the payment)
/// is retried when the gateway starts again: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_settlement_is_retried_after_a_restart() {
    use insitu_gateway::config::{ChainConfig, ServeConfig};
    use insitu_gateway::http::build;
    use insitu_runtime::Status;
    let w = world().await;
    let (id, _) = w.agreement(21, true).await;
    let agreement = w.check(id, CONSUMER).await.unwrap();
    // A succeeded execution whose settlement was marked pending, as a crash
    // between publishing and the release transaction leaves it.
    let exec = w.store.create_execution(&agreement).unwrap();
    for s in [Status::Configuring, Status::Running, Status::Publishing] {
        w.store.advance(&exec, s, None, None).unwrap();
    }
    let key = ProviderKey::from_hex(PROVIDER).unwrap();
    let receipt = insitu_runtime::receipt::sign(&key, json!({"execution": exec})).unwrap();
    let result = w.store.new_result_did().unwrap();
    w.store
        .publish(
            &exec,
            &result,
            &json!({"type": "result"}),
            &w.data,
            &receipt,
        )
        .unwrap();
    w.store
        .set_settlement(&exec, &json!({"pending": true}))
        .unwrap();
    assert_eq!(w.store.pending_settlements().unwrap().len(), 1);

    let mut config = ServeConfig::new(w.data.clone());
    config.provider_key = Some(key);
    config.chain = Some(ChainConfig::new(
        w.anvil.url.clone(),
        fixture("out/addresses.json"),
    ));
    let (_router, gateway) = build(&config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let settlement = loop {
        let s = gateway.store.execution(&exec).unwrap().settlement;
        if let Some(s) = s.filter(|s| s.get("release_tx").is_some()) {
            break s;
        }
        assert!(Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(settlement["receipt_hash"], receipt.hash);
    assert!(w.store.pending_settlements().unwrap().is_empty());
}

/// Spec step 7: once the consumer locks the payment, the gateway grants
/// compute by itself, before any execute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_grants_compute_when_payment_is_locked() {
    use insitu_gateway::config::{ChainConfig, ServeConfig};
    use insitu_gateway::http::build;
    let w = world().await;
    let mut config = ServeConfig::new(w.data.clone());
    config.provider_key = Some(ProviderKey::from_hex(PROVIDER).unwrap());
    config.chain = Some(ChainConfig::new(
        w.anvil.url.clone(),
        fixture("out/addresses.json"),
    ));
    let (_router, _gateway) = build(&config).unwrap();
    let (_, unpaid_compute) = w.agreement(31, false).await;
    let (_, compute_id) = w.agreement(32, true).await;
    let chain = &w.agreements.chain;
    let deadline = Instant::now() + Duration::from_secs(20);
    while chain.condition(compute_id).await.unwrap().state != ConditionState::Fulfilled {
        assert!(Instant::now() < deadline, "compute was not granted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The unpaid one is left alone.
    assert_eq!(
        chain.condition(unpaid_compute).await.unwrap().state,
        ConditionState::Unfulfilled
    );
}

/// With the chain's RPC down, new executions get 503 with the reason, and
/// nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_answers_503_while_the_chain_is_down() {
    use insitu_gateway::client::{ClientError, Consumer};
    use insitu_gateway::config::{ChainConfig, ServeConfig};
    use insitu_gateway::http::Local;
    let mut w = world().await;
    let (id, _) = w.agreement(41, true).await;
    let mut config = ServeConfig::new(w.data.clone());
    config.provider_key = Some(ProviderKey::from_hex(PROVIDER).unwrap());
    config.chain = Some(ChainConfig::new(
        w.anvil.url.clone(),
        fixture("out/addresses.json"),
    ));
    let local = Local::start(&config, Duration::from_secs(1)).await.unwrap();
    let client = Consumer::new(local.base.clone(), ProviderKey::from_hex(CONSUMER).unwrap());
    let agreement = format!("{id:#x}");
    let t = client
        .token(&client.claims(&agreement, &w.workflow, None))
        .await
        .unwrap();
    let _ = w.anvil.child.kill();
    let _ = w.anvil.child.wait();
    match client.execute(&t, &agreement, &w.workflow).await {
        Err(ClientError::Refused { status, body, .. }) => {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"], "unavailable");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("the chain RPC at {} is unavailable", w.anvil.url)),
                "{body}"
            );
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert!(
        local
            .gateway
            .store
            .executions_of(&format!("{:#x}", address(CONSUMER)))
            .unwrap()
            .is_empty()
    );
}

/// anvil's dev key 0: deployed the fixture, mints NeverminedToken.
const DEPLOYER: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Data sharing on-chain, priced in an ERC-20 token: the provider offers a
/// dataset for download at 2,500 NeverminedToken; the consumer (as `insitu
/// agreement create --service access --price-token` does) approves, creates
/// an AccessTemplate agreement and locks the tokens; the gateway grants
/// access on-chain, releases the tokens to the provider, and serves the file
/// byte-exact. An underpaid agreement is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_paid_in_an_erc20_token_is_granted_released_and_downloaded() {
    use insitu_chain::IERC20;
    use insitu_gateway::commands::consumer::{Payment, create_agreement};
    use insitu_gateway::config::{ChainConfig, ServeConfig};
    use insitu_gateway::http::Local;
    let w = world().await;
    let names: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("out/addresses.json")).unwrap())
            .unwrap();
    let token: Address = names["NeverminedToken"].as_str().unwrap().parse().unwrap();
    let access = w
        .addresses
        .access
        .expect("the fixture deploys AccessTemplate");
    // The provider registers a second DID and offers its files for download.
    let provider = w.anvil.wallet(PROVIDER);
    let seed = B256::repeat_byte(0x43);
    IDIDRegistry::new(w.addresses.did_registry, &provider)
        .registerDID(
            seed,
            B256::ZERO,
            vec![address(PROVIDER)],
            String::new(),
            B256::ZERO,
            String::new(),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let did = ids::did(seed, address(PROVIDER));
    let shared = insitu_chain::did_of(did);
    let input = w._tmp.path().join("dataset");
    w.store
        .register_dataset(&DatasetSpec {
            name: "shared notes",
            path: &input,
            allowed_images: &[],
            timeout_secs: 3600,
            server: Server::default(),
            price: Some("2500".into()),
            price_token: Some(format!("{token:#x}")),
            access: true,
            did: Some(shared.clone()),
            deterministic: false,
            about: Default::default(),
        })
        .unwrap();
    let erc20 = |key: &str| IERC20::new(token, w.anvil.wallet(key));
    erc20(DEPLOYER)
        .mint(address(CONSUMER), U256::from(10_000))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    let mut config = ServeConfig::new(w.data.clone());
    config.workers = 1;
    config.provider_key = Some(ProviderKey::from_hex(PROVIDER).unwrap());
    config.chain = Some(ChainConfig::new(
        w.anvil.url.clone(),
        fixture("out/addresses.json"),
    ));
    let local = Local::start(&config, Duration::from_secs(5)).await.unwrap();
    let base = local.base.clone();
    let http = insitu_runtime::tls::http_client();

    // The DDO names the template and the token a client pays with.
    let ddo: serde_json::Value = http
        .get(format!("{base}/api/v1/metadata/assets/ddo/{shared}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let service = &ddo["service"][2];
    assert_eq!(service["type"], "access");
    assert_eq!(service["templateId"], format!("{:#x}", access.template));
    let lock = &service["attributes"]["serviceAgreementTemplate"]["conditions"][0];
    assert_eq!(
        lock["parameters"][2]["value"],
        format!("{token:#x}"),
        "{lock}"
    );
    assert_eq!(
        lock["parameters"][1]["value"],
        format!("{:#x}", w.addresses.escrow_payment)
    );

    // The consumer pays, through the CLI's code path.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("consumer.key");
    std::fs::write(&key_file, CONSUMER).unwrap();
    let pay = |price: &str| {
        let (url, key_file, shared) = (w.anvil.url.clone(), key_file.clone(), shared.to_string());
        let payment = Payment {
            price: price.into(),
            token: Some(format!("{token:#x}")),
            access: true,
        };
        tokio::task::spawn_blocking(move || {
            let line = create_agreement(
                &url,
                &fixture("out/addresses.json"),
                &key_file,
                &shared,
                &format!("{:#x}", address(PROVIDER)),
                &payment,
            )
            .unwrap();
            line.rsplit(' ').next().unwrap().to_string()
        })
    };
    let agreement = pay("2500").await.unwrap();
    let balance = |who: Address| {
        let e = erc20(CONSUMER);
        async move { e.balanceOf(who).call().await.unwrap() }
    };
    assert_eq!(balance(address(CONSUMER)).await, U256::from(7_500));
    assert_eq!(balance(w.addresses.escrow_payment).await, U256::from(2_500));

    let consumer = ProviderKey::from_hex(CONSUMER).unwrap();
    let access_token = |agreement: String| {
        let (http, base, consumer, shared) =
            (http.clone(), base.clone(), consumer.clone(), shared.clone());
        async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let grant = insitu_gateway::auth::make_grant(
                &consumer,
                &json!({"iss": consumer.address(), "aud": insitu_gateway::auth::AUD_ACCESS,
                        "sub": agreement, "did": shared, "eths": "personal", "iat": now, "exp": now + 300}),
            )
            .unwrap();
            let r: serde_json::Value = http
                .post(format!("{base}/api/v1/node/services/oauth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={grant}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["access_token"].as_str().unwrap().to_string()
        }
    };
    let t = access_token(agreement.clone()).await;
    let r = http
        .get(format!("{base}/api/v1/node/services/access/{agreement}/0"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "paid for and counted in situ\n");
    // Access granted on-chain, the tokens released to the provider.
    let id: B256 = agreement.parse().unwrap();
    let access_id = ids::condition_id(
        id,
        access.condition,
        ids::compute_hash(did, address(CONSUMER)),
    );
    let reader = Chain::connect(&w.anvil.url, w.addresses.clone(), &ProviderKey::random()).unwrap();
    assert_eq!(
        reader.condition(access_id).await.unwrap().state,
        ConditionState::Fulfilled
    );
    assert_eq!(balance(address(PROVIDER)).await, U256::from(2_500));
    assert_eq!(balance(w.addresses.escrow_payment).await, U256::ZERO);
    let recorded = w.store.downloads(Some(&shared), 10).unwrap();
    assert_eq!(recorded.len(), 1);
    assert!(
        recorded[0].complete && recorded[0].bytes == 29,
        "{recorded:?}"
    );

    // Underpaid: locked, but not what the access service asks.
    let cheap = pay("1").await.unwrap();
    let t = access_token(cheap.clone()).await;
    let r = http
        .get(format!("{base}/api/v1/node/services/access/{cheap}/0"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the payment is not locked as the access service prices it"),
        "{body}"
    );
    // A compute agreement is no access agreement.
    let (compute, _) = w.agreement(9, true).await;
    let compute = format!("{compute:#x}");
    let t = access_token(compute.clone()).await;
    let r = http
        .get(format!("{base}/api/v1/node/services/access/{compute}/0"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
    local.stop().await.unwrap();
}

/// A stage reading two datasets on-chain: each needs a paid agreement of the
/// consumer. Without one for the second dataset the execute check names it;
/// once the consumer pays for it, the check finds that agreement from the
/// chain's lock-payment events (granting compute on it), and resolving
/// records it as covering the second dataset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_reading_two_datasets_needs_a_paid_agreement_for_each() {
    let w = world().await;
    let (first, _) = w.agreement(11, true).await;
    // A second priced dataset, registered on-chain by the provider.
    let seed = B256::repeat_byte(0x44);
    IDIDRegistry::new(w.addresses.did_registry, &w.anvil.wallet(PROVIDER))
        .registerDID(
            seed,
            B256::ZERO,
            vec![address(PROVIDER)],
            String::new(),
            B256::ZERO,
            String::new(),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let did2 = ids::did(seed, address(PROVIDER));
    let second = insitu_chain::did_of(did2);
    let image = w
        .store
        .dataset(&insitu_chain::did_of(w.did))
        .unwrap()
        .allowed_images;
    w.store
        .register_dataset(&DatasetSpec {
            name: "more notes",
            path: &w._tmp.path().join("dataset"),
            allowed_images: &image,
            timeout_secs: 3600,
            server: Server::default(),
            price: Some(PRICE_WEI.to_string()),
            price_token: None,
            access: false,
            did: Some(second.clone()),
            deterministic: false,
            about: Default::default(),
        })
        .unwrap();
    let both = w
        .store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "both", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": image[0]}},
             "input": [{"index": 0, "id": insitu_chain::did_of(w.did)}, {"index": 1, "id": second}]}]}}}))
        .unwrap()
        .to_string();
    let consumer = format!("{:#x}", address(CONSUMER));
    let first = format!("{first:#x}");
    let check = || w.agreements.check_execute(&first, &consumer, &both, 0);
    let err = check().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("workflow {both} reads {second}"))
            && err.contains("has no paid agreement for it on-chain"),
        "{err}"
    );
    // The consumer pays for the second dataset.
    let payer = Chain::connect(
        &w.anvil.url,
        w.addresses.clone(),
        &ProviderKey::from_hex(CONSUMER).unwrap(),
    )
    .unwrap();
    let paid = payer
        .create_agreement_and_pay(B256::repeat_byte(12), did2, &w.price)
        .await
        .unwrap();
    let agreement = check().await.unwrap();
    let resolved = insitu_runtime::resolve::resolve(&w.store, &agreement, 0).unwrap();
    assert_eq!(
        resolved.covering.get(&second),
        Some(&format!("{paid:#x}")),
        "{:?}",
        resolved.covering
    );
    // Compute was granted on the second agreement too.
    let compute_id = ids::condition_id(
        paid,
        w.addresses.compute,
        ids::compute_hash(did2, address(CONSUMER)),
    );
    let reader = Chain::connect(&w.anvil.url, w.addresses.clone(), &ProviderKey::random()).unwrap();
    assert_eq!(
        reader.condition(compute_id).await.unwrap().state,
        ConditionState::Fulfilled
    );
}

/// A compute service priced in an ERC-20 token: the consumer approves and
/// locks the tokens (`insitu agreement create --price-token`), the provider
/// grants compute and, settling, releases the tokens to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_paid_in_an_erc20_token_is_granted_and_released() {
    use insitu_chain::IERC20;
    let w = world().await;
    let names: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("out/addresses.json")).unwrap())
            .unwrap();
    let token: Address = names["NeverminedToken"].as_str().unwrap().parse().unwrap();
    let seed = B256::repeat_byte(0x45);
    IDIDRegistry::new(w.addresses.did_registry, &w.anvil.wallet(PROVIDER))
        .registerDID(
            seed,
            B256::ZERO,
            vec![address(PROVIDER)],
            String::new(),
            B256::ZERO,
            String::new(),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let did = ids::did(seed, address(PROVIDER));
    let dataset = insitu_chain::did_of(did);
    w.store
        .register_dataset(&DatasetSpec {
            name: "token-priced notes",
            path: &w._tmp.path().join("dataset"),
            allowed_images: &[],
            timeout_secs: 3600,
            server: Server::default(),
            price: Some("300".into()),
            price_token: Some(format!("{token:#x}")),
            access: false,
            did: Some(dataset.clone()),
            deterministic: false,
            about: Default::default(),
        })
        .unwrap();
    let price = insitu_chain::price_of(&w.store, &dataset, address(PROVIDER)).unwrap();
    assert_eq!(price.token, token);
    IERC20::new(token, w.anvil.wallet(DEPLOYER))
        .mint(address(CONSUMER), U256::from(1_000))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let payer = Chain::connect(
        &w.anvil.url,
        w.addresses.clone(),
        &ProviderKey::from_hex(CONSUMER).unwrap(),
    )
    .unwrap();
    let id = payer
        .create_agreement_and_pay(B256::repeat_byte(13), did, &price)
        .await
        .unwrap();
    let workflow = w
        .store
        .add_workflow(&json!({"main": {"type": "workflow", "name": "t", "workflow": {"stages": [
            {"index": 0, "requirements": {"container": {"image": "local/wc", "tag": "1", "checksum": format!("sha256:{}", "ab".repeat(32))}},
             "input": [{"index": 0, "id": dataset}]}]}}}))
        .unwrap()
        .to_string();
    let consumer = format!("{:#x}", address(CONSUMER));
    let agreement = w
        .agreements
        .check_execute(&format!("{id:#x}"), &consumer, &workflow, 0)
        .await
        .unwrap();
    let balance = |who: Address| {
        let t = IERC20::new(token, w.anvil.wallet(CONSUMER));
        async move { t.balanceOf(who).call().await.unwrap() }
    };
    assert_eq!(balance(address(CONSUMER)).await, U256::from(700));
    assert_eq!(balance(address(PROVIDER)).await, U256::ZERO);
    let settled = w
        .agreements
        .settle(&agreement, &format!("{:#x}", B256::repeat_byte(0x77)))
        .await
        .unwrap();
    assert!(settled["release_tx"].is_string(), "{settled}");
    assert_eq!(balance(address(PROVIDER)).await, U256::from(300));
    assert_eq!(balance(w.addresses.escrow_payment).await, U256::ZERO);
}

/// Output control in chain mode (issue #26): for a dataset whose results are
/// held for review, the compute condition is not fulfilled when the payment
/// is locked nor when the execution is admitted; a release fulfils it,
/// releases the escrow to the provider and commits the receipt; a rejection
/// leaves the condition unfulfilled (the escrow times out to the consumer as
/// the contracts allow) and pays the provider nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_results_fulfil_compute_only_when_released() {
    use insitu_gateway::client::Consumer;
    use insitu_gateway::config::{ChainConfig, ServeConfig};
    use insitu_gateway::http::Local;
    use insitu_runtime::airlock::{OutputPolicy, Release};
    use insitu_runtime::store::Decision;
    let w = world().await;
    let dataset = insitu_chain::did_of(w.did);
    w.store
        .set_output_policy(
            &dataset,
            &OutputPolicy {
                release: Release::Review,
                reviewers: vec!["ann".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let mut config = ServeConfig::new(w.data.clone());
    config.layouts = vec![w.layout.clone()];
    config.workers = 1;
    config.provider_key = Some(ProviderKey::from_hex(PROVIDER).unwrap());
    config.chain = Some(ChainConfig::new(
        w.anvil.url.clone(),
        fixture("out/addresses.json"),
    ));
    let local = Local::start(&config, Duration::from_secs(5)).await.unwrap();
    let (released, released_compute) = w.agreement(41, true).await;
    let (rejected, rejected_compute) = w.agreement(42, true).await;
    let chain = &w.agreements.chain;
    let client = Consumer::new(local.base.clone(), ProviderKey::from_hex(CONSUMER).unwrap());
    let mut ids = Vec::new();
    for id in [released, rejected] {
        let agreement = format!("{id:#x}");
        let t = client
            .token(&client.claims(&agreement, &w.workflow, None))
            .await
            .unwrap();
        let exec = client.execute(&t, &agreement, &w.workflow).await.unwrap();
        let t = client
            .token(&client.claims(&agreement, &w.workflow, Some(&exec)))
            .await
            .unwrap();
        ids.push((exec, t));
    }
    let status = |i: usize| {
        let (exec, t) = ids[i].clone();
        let client = client.clone();
        async move { client.get(&t, &format!("status/{exec}")).await.unwrap() }
    };
    for i in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(i).await["workflowStatus"]["status"] != "held" {
            assert!(Instant::now() < deadline, "{}", status(i).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Paid and admitted, yet not granted (the payment watcher runs too).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for c in [released_compute, rejected_compute] {
        assert_eq!(
            chain.condition(c).await.unwrap().state,
            ConditionState::Unfulfilled
        );
    }
    let provider = address(PROVIDER);
    let rpc = w.anvil.wallet(CONSUMER);
    let balance_before = rpc.get_balance(provider).await.unwrap();
    w.store
        .decide(
            &ids[1].0,
            Decision::Reject,
            "ann",
            Some("not aggregate enough"),
        )
        .unwrap();
    w.store
        .decide(&ids[0].0, Decision::Release, "ann", Some("fine"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = status(0).await;
        let settlement = &s["execution"]["settlement"];
        if settlement.get("release_tx").is_some() || settlement.get("error").is_some() {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["workflowStatus"]["status"], "succeeded", "{s}");
    assert!(
        s["execution"]["settlement"]["release_tx"].is_string(),
        "{s}"
    );
    assert_eq!(
        s["execution"]["receipt"]["body"]["output_control"]["decision"],
        "released"
    );
    assert_eq!(
        chain.condition(released_compute).await.unwrap().state,
        ConditionState::Fulfilled
    );
    let r = status(1).await;
    assert_eq!(r["workflowStatus"]["status"], "failed", "{r}");
    assert_eq!(
        chain.condition(rejected_compute).await.unwrap().state,
        ConditionState::Unfulfilled,
        "a rejection grants nothing"
    );
    // Paid once (the released one), less its own gas.
    let after = rpc.get_balance(provider).await.unwrap();
    assert!(after > balance_before, "the release paid the provider");
    assert!(
        after < balance_before + U256::from(2 * PRICE_WEI),
        "the rejected one paid nothing"
    );
    local.stop().await.unwrap();
}
