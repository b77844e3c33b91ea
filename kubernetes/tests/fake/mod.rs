//! An in-process fake of the Kubernetes API: the subset the backend uses
//! (pods: create, get, list by label, watch by name, delete, logs; network
//! policies: create, get, list, delete), with the real JSON shapes (objects,
//! `PodList`, `Status` errors, watch events one per line). A pod's image names
//! what the "kubelet" does with it (see [`Fake::lifecycle`]); the fake writes
//! into the pod's hostPath output mount as a container would.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

#[derive(Default)]
pub struct Inner {
    /// (collection, name) → object.
    pub objects: BTreeMap<(String, String), Value>,
    pub logs: HashMap<String, String>,
    rv: u64,
    /// Answer this many pod creations with 500 (without creating).
    pub fail_creates: u32,
    /// Close every watch right after it starts.
    pub drop_watches: bool,
    /// Every request, as `METHOD path`.
    pub requests: Vec<String>,
}

#[derive(Clone)]
pub struct Fake {
    pub inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<(String, Value)>,
    pub url: String,
}

fn status(code: u16, reason: &str, message: String) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}),
        ),
    )
        .into_response()
}

fn collection_of(kind: &str) -> &'static str {
    if kind == "pods" {
        "pods"
    } else {
        "networkpolicies"
    }
}

impl Fake {
    pub async fn start() -> Fake {
        let (events, _) = broadcast::channel(1024);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Fake {
            inner: Arc::default(),
            events,
            url,
        };
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/pods", get(list).post(create_pod))
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_one).delete(delete),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(logs))
            .route(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
                get(list).post(create_policy),
            )
            .route(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}",
                get(get_one).delete(delete),
            )
            .layer(axum::middleware::from_fn_with_state(fake.clone(), record))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// A kubeconfig file for this server.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: insitu\ncurrent-context: fake\n",
                self.url
            ),
        )
        .unwrap();
    }

    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.default_namespace = "insitu".into();
        insitu_kubernetes::client(config).unwrap()
    }

    pub fn names(&self, collection: &str) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .objects
            .keys()
            .filter(|(c, _)| c == collection)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn object(&self, collection: &str, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap()
            .objects
            .get(&(collection.to_string(), name.to_string()))
            .cloned()
    }

    /// Stores `obj` as the API server would (resourceVersion, uid, creation
    /// time) and tells watchers.
    pub fn put(&self, collection: &str, mut obj: Value, kind: &str) -> Value {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let fresh = !inner
            .objects
            .contains_key(&(collection.to_string(), name.clone()));
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if fresh {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
            obj["metadata"]["creationTimestamp"] = json!("2026-11-23T00:00:00Z");
        }
        inner
            .objects
            .insert((collection.to_string(), name.clone()), obj.clone());
        drop(inner);
        let _ = self.events.send((
            name,
            json!({"type": if fresh { "ADDED" } else { "MODIFIED" }, "object": obj.clone()}),
        ));
        let _ = kind;
        obj
    }

    fn set_status(&self, name: &str, status: Value) {
        let Some(mut pod) = self.object("pods", name) else {
            return;
        };
        pod["status"] = status;
        self.put("pods", pod, "Pod");
    }

    /// The host directory mounted at `at` in `pod` (hostPath + subPath).
    pub fn host_dir(pod: &Value, at: &str) -> Option<std::path::PathBuf> {
        let c = &pod["spec"]["containers"][0];
        let m = c["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountPath"] == at)?;
        let v = pod["spec"]["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == m["name"])?;
        let base = std::path::PathBuf::from(v["hostPath"]["path"].as_str()?);
        Some(match m["subPath"].as_str() {
            Some(sub) => base.join(sub),
            None => base,
        })
    }

    /// What the "kubelet" does with a new pod, by a word in its image:
    /// `ok` (reads its input, writes `result.txt`, logs, exits 0), `exit3`,
    /// `oom`, `deadline`, `evicted`, `pull` (the image cannot be pulled),
    /// `flood` (writes 2 MiB), `sleep` (runs until deleted).
    fn lifecycle(&self, name: String, pod: Value) {
        let fake = self.clone();
        tokio::spawn(async move {
            let image = pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let word = image
                .split('@')
                .next()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let running = json!({"phase": "Running", "containerStatuses": [{"name": "stage", "ready": true,
                "restartCount": 0, "image": image, "imageID": "", "state": {"running": {"startedAt": "2026-11-23T00:00:01Z"}}}]});
            let terminated = |code: i32, reason: &str, phase: &str| {
                json!({"phase": phase, "containerStatuses": [{"name": "stage", "ready": false, "restartCount": 0,
                    "image": image, "imageID": "", "state": {"terminated": {"exitCode": code, "reason": reason,
                    "startedAt": "2026-11-23T00:00:01Z", "finishedAt": "2026-11-23T00:00:02Z"}}}]})
            };
            tokio::time::sleep(Duration::from_millis(30)).await;
            if word == "pull" {
                fake.set_status(&name, json!({"phase": "Pending", "containerStatuses": [{"name": "stage", "ready": false,
                    "restartCount": 0, "image": image, "imageID": "", "state": {"waiting": {"reason": "ErrImagePull",
                    "message": format!("failed to pull and unpack image \"{image}\": not found")}}}]}));
                return;
            }
            fake.set_status(&name, running);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let out = Fake::host_dir(&pod, "/data/outputs");
            let status = match word.as_str() {
                // `insitu run` in the pod: the guest's logs go to the logs
                // dir, its one JSON line to the pod's log.
                "insitu" => {
                    let module = pod["spec"]["containers"][0]["args"][2]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if let Some(logs) = Fake::host_dir(&pod, "/data/logs") {
                        std::fs::write(logs.join("stdout.log"), "guest output\n").unwrap();
                    }
                    let digest = Fake::host_dir(&pod, &module)
                        .and_then(|p| {
                            p.file_name()
                                .map(|n| format!("sha256:{}", n.to_string_lossy()))
                        })
                        .unwrap_or_default();
                    fake.inner.lock().unwrap().logs.insert(
                        name.clone(),
                        format!("{}\n", json!({"status": "succeeded", "outcome": "exited", "exit_code": 0,
                            "duration_ms": 3, "module_digest": digest, "output_bytes": 0, "log_bytes": 13})),
                    );
                    terminated(0, "Completed", "Succeeded")
                }
                "ok" => {
                    let input = Fake::host_dir(&pod, "/data/inputs/1");
                    let files = input
                        .and_then(|d| std::fs::read_dir(d).ok())
                        .map_or(0, |d| d.count());
                    if let Some(out) = &out {
                        std::fs::write(out.join("result.txt"), format!("{files} input files\n"))
                            .unwrap();
                    }
                    fake.inner
                        .lock()
                        .unwrap()
                        .logs
                        .insert(name.clone(), "hello from the pod\n".into());
                    terminated(0, "Completed", "Succeeded")
                }
                "flood" => {
                    if let Some(out) = &out {
                        std::fs::write(out.join("big.bin"), vec![7u8; 2 << 20]).unwrap();
                    }
                    terminated(0, "Completed", "Succeeded")
                }
                "exit3" => terminated(3, "Error", "Failed"),
                "oom" => terminated(137, "OOMKilled", "Failed"),
                "deadline" => {
                    let mut s = terminated(137, "Error", "Failed");
                    s["reason"] = json!("DeadlineExceeded");
                    s["message"] =
                        json!("Pod was active on the node longer than the specified deadline");
                    s
                }
                "evicted" => {
                    let mut s = terminated(137, "Error", "Failed");
                    s["reason"] = json!("Evicted");
                    s["message"] = json!(
                        "Pod ephemeral local storage usage exceeds the total limit of containers 64Mi."
                    );
                    s
                }
                _ => return, // `sleep`: runs until deleted.
            };
            fake.set_status(&name, status);
        });
    }
}

async fn record(
    State(fake): State<Fake>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!("{} {}", req.method(), req.uri());
    fake.inner.lock().unwrap().requests.push(line);
    next.run(req).await
}

fn matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        obj["metadata"]["labels"][k] == v
    })
}

fn kind_of(uri: &axum::http::Uri) -> &'static str {
    if uri.path().contains("/networkpolicies") {
        "networkpolicies"
    } else {
        "pods"
    }
}

async fn list(
    State(fake): State<Fake>,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let collection = kind_of(&uri);
    if q.get("watch").map(String::as_str) == Some("true") {
        let name = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .unwrap_or_default()
            .to_string();
        let mut rx = fake.events.subscribe();
        let drop_now = fake.inner.lock().unwrap().drop_watches;
        let stream = async_stream(
            move |tx: tokio::sync::mpsc::Sender<Result<String, std::io::Error>>| async move {
                if drop_now {
                    return;
                }
                while let Ok((n, event)) = rx.recv().await {
                    if n == name && tx.send(Ok(format!("{event}\n"))).await.is_err() {
                        return;
                    }
                }
            },
        );
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let inner = fake.inner.lock().unwrap();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((c, _), o)| c == collection && matches(o, &selector))
        .map(|(_, o)| o.clone())
        .collect();
    let kind = if collection == "pods" {
        ("v1", "PodList")
    } else {
        ("networking.k8s.io/v1", "NetworkPolicyList")
    };
    axum::Json(json!({"apiVersion": kind.0, "kind": kind.1, "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}))
        .into_response()
}

/// A body stream fed by a task.
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Result<String, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<String, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

async fn create_pod(State(fake): State<Fake>, axum::Json(pod): axum::Json<Value>) -> Response {
    {
        let mut inner = fake.inner.lock().unwrap();
        if inner.fail_creates > 0 {
            inner.fail_creates -= 1;
            drop(inner);
            return status(500, "InternalError", "etcdserver: request timed out".into());
        }
    }
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if fake.object("pods", &name).is_some() {
        return status(
            409,
            "AlreadyExists",
            format!("pods \"{name}\" already exists"),
        );
    }
    let mut pod = pod;
    pod["status"] = json!({"phase": "Pending"});
    let stored = fake.put("pods", pod, "Pod");
    fake.lifecycle(name, stored.clone());
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

async fn create_policy(State(fake): State<Fake>, axum::Json(p): axum::Json<Value>) -> Response {
    let name = p["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if fake.object("networkpolicies", &name).is_some() {
        return status(
            409,
            "AlreadyExists",
            format!("networkpolicies.networking.k8s.io \"{name}\" already exists"),
        );
    }
    (
        StatusCode::CREATED,
        axum::Json(fake.put("networkpolicies", p, "NetworkPolicy")),
    )
        .into_response()
}

async fn get_one(
    State(fake): State<Fake>,
    uri: axum::http::Uri,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    let collection = collection_of(kind_of(&uri));
    match fake.object(collection, &name) {
        Some(o) => axum::Json(o).into_response(),
        None => status(
            404,
            "NotFound",
            format!("{collection} \"{name}\" not found"),
        ),
    }
}

async fn delete(
    State(fake): State<Fake>,
    uri: axum::http::Uri,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    let collection = collection_of(kind_of(&uri));
    let removed = fake
        .inner
        .lock()
        .unwrap()
        .objects
        .remove(&(collection.to_string(), name.clone()));
    match removed {
        Some(o) => {
            let _ = fake
                .events
                .send((name, json!({"type": "DELETED", "object": o.clone()})));
            axum::Json(o).into_response()
        }
        None => status(
            404,
            "NotFound",
            format!("{collection} \"{name}\" not found"),
        ),
    }
}

async fn logs(State(fake): State<Fake>, Path((_ns, name)): Path<(String, String)>) -> Response {
    if fake.object("pods", &name).is_none() {
        return status(404, "NotFound", format!("pods \"{name}\" not found"));
    }
    let text = fake
        .inner
        .lock()
        .unwrap()
        .logs
        .get(&name)
        .cloned()
        .unwrap_or_default();
    text.into_response()
}
