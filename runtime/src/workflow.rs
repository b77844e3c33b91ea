//! Nevermined compute workflows (the seed spec's JSON model): parsing and
//! validation with errors that say where (a JSON path) and how to fix.
//!
//! A workflow is the `main` attributes of a workflow asset:
//! `{"main": {"type": "workflow", "name": …, "workflow": {"stages": […]}}}`;
//! a full DDO holding it in its `metadata` service is accepted too. Stages run
//! in `index` order; each stage's inputs are dataset DIDs or the output of an
//! earlier stage (`previousStage`); its image is pinned by `sha256:` checksum.

use crate::Error;
use serde::Serialize;
use serde_json::Value;

/// Extra arguments a stage may carry (`arguments`).
pub const MAX_ARGUMENTS: usize = 64;
/// Bytes in one extra argument.
pub const MAX_ARGUMENT_BYTES: usize = 4096;

/// A `did:nv:` identifier: `did:nv:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Did(String);

impl Did {
    /// Parses a DID (hex is accepted in either case and stored lowercase).
    ///
    /// # Errors
    /// A reason suitable for [`Error::Workflow`].
    pub fn parse(s: &str) -> Result<Did, String> {
        let hex = s.strip_prefix("did:nv:").ok_or_else(|| {
            format!("`{s}` is not a DID: expected did:nv: followed by 64 hex digits")
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "`{s}` is not a DID: expected did:nv: followed by 64 hex digits"
            ));
        }
        Ok(Did(format!("did:nv:{}", hex.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 bytes as `0x`-prefixed hex (the on-chain `bytes32`).
    pub fn to_bytes32_hex(&self) -> String {
        format!("0x{}", &self.0["did:nv:".len()..])
    }
}

impl std::fmt::Display for Did {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a stage reads an input from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A dataset registered with the provider.
    Dataset(Did),
    /// The output directory of an earlier stage.
    PreviousStage(u32),
}

/// The container a stage runs in, pinned by checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub image: String,
    pub tag: String,
    /// `sha256:<64 hex>` of the image manifest.
    pub checksum: String,
}

impl Container {
    /// `image:tag@checksum`, the reference a registry pull uses.
    pub fn reference(&self) -> String {
        if self.tag.is_empty() {
            format!("{}@{}", self.image, self.checksum)
        } else {
            format!("{}:{}@{}", self.image, self.tag, self.checksum)
        }
    }
}

/// One stage of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    pub index: u32,
    pub stage_type: String,
    pub container: Container,
    pub inputs: Vec<Input>,
    /// The algorithm asset, when given (optional when the image is the algorithm).
    pub transformation: Option<Did>,
    /// `arguments`: extra arguments after the guest contract's (none by default).
    pub arguments: Vec<String>,
}

/// A validated workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workflow {
    pub name: String,
    pub stages: Vec<Stage>,
    /// `workflow.deterministic`: every stage runs in deterministic mode
    /// ([`crate::sandbox::Determinism`]). Default false.
    pub deterministic: bool,
}

fn err(path: &str, reason: impl Into<String>) -> Error {
    Error::Workflow {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, Error> {
    v.as_str()
        .ok_or_else(|| err(path, format!("must be a string, found {}", kind(v))))
}

fn index(v: &Value, path: &str) -> Result<u32, Error> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        // The seed's own example writes some indexes as strings.
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        err(
            path,
            format!("must be a non-negative integer, found {}", kind(v)),
        )
    })
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl Workflow {
    /// Parses workflow JSON text (see the module docs for the accepted shapes).
    ///
    /// # Errors
    /// [`Error::Workflow`] naming the JSON path and what to change.
    pub fn from_json(text: &[u8]) -> Result<Workflow, Error> {
        let v: Value = serde_json::from_slice(text).map_err(|e| {
            err(
                "$",
                format!(
                    "not valid JSON: {e} (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        Workflow::from_value(&v)
    }

    /// As [`Workflow::from_json`] for a parsed document.
    ///
    /// # Errors
    /// As [`Workflow::from_json`].
    pub fn from_value(v: &Value) -> Result<Workflow, Error> {
        let (main, base) = if let Some(main) = v.get("main") {
            (main, "$.main".to_string())
        } else if let Some(services) = v.get("service").and_then(Value::as_array) {
            let (i, s) = services
                .iter()
                .enumerate()
                .find(|(_, s)| {
                    s.pointer("/attributes/main/type").and_then(Value::as_str) == Some("workflow")
                })
                .ok_or_else(|| {
                    err(
                        "$.service",
                        "no service holds attributes.main of type \"workflow\"",
                    )
                })?;
            (
                &s["attributes"]["main"],
                format!("$.service[{i}].attributes.main"),
            )
        } else {
            return Err(err(
                "$",
                "expected {\"main\": {\"type\": \"workflow\", …}} or a DDO with a workflow service",
            ));
        };
        match main
            .get("type")
            .map(|t| string(t, &format!("{base}.type")))
            .transpose()?
        {
            Some("workflow") => {}
            Some(other) => {
                return Err(err(
                    &format!("{base}.type"),
                    format!("is \"{other}\"; a workflow asset has type \"workflow\""),
                ));
            }
            None => {
                return Err(err(
                    &format!("{base}.type"),
                    "is missing; set it to \"workflow\"",
                ));
            }
        }
        let name = match main.get("name") {
            Some(n) => string(n, &format!("{base}.name"))?.to_string(),
            None => "workflow".to_string(),
        };
        let stages_path = format!("{base}.workflow.stages");
        let stages = main
            .pointer("/workflow/stages")
            .ok_or_else(|| err(&stages_path, "is missing"))?
            .as_array()
            .ok_or_else(|| err(&stages_path, "must be an array of stages"))?;
        if stages.is_empty() {
            return Err(err(
                &stages_path,
                "is empty; a workflow needs at least one stage",
            ));
        }
        let mut parsed = Vec::with_capacity(stages.len());
        for (pos, s) in stages.iter().enumerate() {
            parsed.push(parse_stage(s, &format!("{stages_path}[{pos}]"), pos)?);
        }
        let deterministic = match main.pointer("/workflow/deterministic") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(err(
                    &format!("{base}.workflow.deterministic"),
                    format!("must be true or false, found {}", kind(other)),
                ));
            }
        };
        Ok(Workflow {
            name,
            stages: parsed,
            deterministic,
        })
    }

    /// Every dataset DID the workflow reads, in order of first use.
    pub fn datasets(&self) -> Vec<&Did> {
        let mut out: Vec<&Did> = Vec::new();
        for s in &self.stages {
            for i in &s.inputs {
                if let Input::Dataset(d) = i
                    && !out.contains(&d)
                {
                    out.push(d);
                }
            }
        }
        out
    }
}

fn parse_stage(s: &Value, path: &str, pos: usize) -> Result<Stage, Error> {
    if !s.is_object() {
        return Err(err(path, "must be an object"));
    }
    let idx = index(
        s.get("index")
            .ok_or_else(|| err(&format!("{path}.index"), "is missing"))?,
        &format!("{path}.index"),
    )?;
    if idx as usize != pos {
        return Err(err(
            &format!("{path}.index"),
            format!(
                "is {idx}, expected {pos}: stages are listed and run in index order 0, 1, 2, …"
            ),
        ));
    }
    let stage_type = match s.get("stageType") {
        Some(t) => string(t, &format!("{path}.stageType"))?.to_string(),
        None => String::new(),
    };
    let cpath = format!("{path}.requirements.container");
    let c = s.pointer("/requirements/container").ok_or_else(|| {
        err(
            &cpath,
            "is missing; give {\"image\", \"tag\", \"checksum\"}",
        )
    })?;
    let image = string(
        c.get("image")
            .ok_or_else(|| err(&format!("{cpath}.image"), "is missing"))?,
        &format!("{cpath}.image"),
    )?;
    if image.is_empty() {
        return Err(err(&format!("{cpath}.image"), "is empty"));
    }
    let tag = match c.get("tag") {
        Some(t) => string(t, &format!("{cpath}.tag"))?,
        None => "",
    };
    let checksum = string(
        c.get("checksum").ok_or_else(|| {
            err(
                &format!("{cpath}.checksum"),
                "is missing; images are pinned by their sha256 manifest digest",
            )
        })?,
        &format!("{cpath}.checksum"),
    )?;
    crate::image::check_digest(checksum).map_err(|_| {
        err(
            &format!("{cpath}.checksum"),
            format!("`{checksum}` is not sha256: followed by 64 lowercase hex digits (`insitu inspect` prints it)"),
        )
    })?;
    let ipath = format!("{path}.input");
    let inputs = match s.get("input") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, inp)| parse_input(inp, &format!("{ipath}[{i}]"), i, idx))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(err(
                &ipath,
                format!("must be an array, found {}", kind(other)),
            ));
        }
    };
    let transformation = match s.pointer("/transformation/id") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let p = format!("{path}.transformation.id");
            Some(Did::parse(string(v, &p)?).map_err(|r| err(&p, r))?)
        }
    };
    let apath = format!("{path}.arguments");
    let arguments = match s.get("arguments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() > MAX_ARGUMENTS => {
            return Err(err(
                &apath,
                format!(
                    "{} arguments; a stage takes at most {MAX_ARGUMENTS}",
                    a.len()
                ),
            ));
        }
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let p = format!("{apath}[{i}]");
                let arg = string(v, &p)?;
                if arg.len() > MAX_ARGUMENT_BYTES {
                    return Err(err(
                        &p,
                        format!(
                            "is {} bytes; an argument is at most {MAX_ARGUMENT_BYTES}",
                            arg.len()
                        ),
                    ));
                }
                if arg.contains('\0') {
                    return Err(err(&p, "contains a NUL character"));
                }
                Ok(arg.to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(err(
                &apath,
                format!("must be an array of strings, found {}", kind(other)),
            ));
        }
    };
    Ok(Stage {
        arguments,
        index: idx,
        stage_type,
        container: Container {
            image: image.to_string(),
            tag: tag.to_string(),
            checksum: checksum.to_string(),
        },
        inputs,
        transformation,
    })
}

fn parse_input(v: &Value, path: &str, pos: usize, stage: u32) -> Result<Input, Error> {
    if let Some(i) = v.get("index") {
        let i = index(i, &format!("{path}.index"))?;
        if i as usize != pos {
            return Err(err(
                &format!("{path}.index"),
                format!("is {i}, expected {pos}: inputs are listed in index order"),
            ));
        }
    }
    match (
        v.get("id"),
        v.get("previousStage")
            .or_else(|| v.get("previousIndexStage")),
    ) {
        (Some(id), None) => {
            let p = format!("{path}.id");
            Ok(Input::Dataset(
                Did::parse(string(id, &p)?).map_err(|r| err(&p, r))?,
            ))
        }
        (None, Some(prev)) => {
            let p = format!("{path}.previousStage");
            let prev = index(prev, &p)?;
            if prev >= stage {
                return Err(err(
                    &p,
                    format!(
                        "is {prev}; stage {stage} can only read the output of an earlier stage (0..{stage})"
                    ),
                ));
            }
            Ok(Input::PreviousStage(prev))
        }
        (Some(_), Some(_)) => Err(err(path, "has both `id` and `previousStage`; give one")),
        (None, None) => Err(err(
            path,
            "needs `id` (a dataset DID) or `previousStage` (an earlier stage's index)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "did:nv:0ebed8226ada17fde24b6bf2b95d27f8f05fcce09139ff5cec31f6d81a7cd2ea";
    const SUM: &str = "sha256:cb57ecfa6ebbefd8ffc7f75c0f00e57a7fa739578a429b6f72a0df19315deadc";

    fn two_stage() -> Value {
        serde_json::json!({"main": {"type": "workflow", "name": "stats then train", "workflow": {"stages": [
            {"index": 0, "stageType": "Filtering",
             "requirements": {"serverInstances": 1, "container": {"image": "r.example/csv-stats", "tag": "1", "checksum": SUM}},
             "input": [{"index": 0, "id": D1}], "transformation": {"id": D1}, "output": {}},
            {"index": "1", "stageType": "Transformation",
             "requirements": {"container": {"image": "r.example/linreg", "tag": "", "checksum": SUM}},
             "input": [{"index": 0, "previousStage": 0}], "output": {}}]}}})
    }

    #[test]
    fn parses_the_seed_model_and_a_ddo_holding_it() {
        let w = Workflow::from_value(&two_stage()).unwrap();
        assert_eq!(w.name, "stats then train");
        assert_eq!(w.stages[1].inputs, vec![Input::PreviousStage(0)]);
        assert_eq!(
            w.stages[0].container.reference(),
            format!("r.example/csv-stats:1@{SUM}")
        );
        assert_eq!(
            w.stages[1].container.reference(),
            format!("r.example/linreg@{SUM}")
        );
        assert_eq!(w.datasets(), vec![&Did::parse(D1).unwrap()]);
        let ddo = serde_json::json!({"id": D1, "service": [
            {"type": "access", "attributes": {"main": {"type": "dataset"}}},
            {"type": "metadata", "attributes": two_stage()}]});
        assert_eq!(Workflow::from_value(&ddo).unwrap(), w);
        assert_eq!(
            Did::parse(D1).unwrap().to_bytes32_hex(),
            format!("0x{}", &D1[7..])
        );
    }

    fn refused(edit: impl FnOnce(&mut Value)) -> String {
        let mut v = two_stage();
        edit(&mut v);
        Workflow::from_value(&v).unwrap_err().to_string()
    }

    #[test]
    fn stage_arguments_are_bounded() {
        let s = "$.main.workflow.stages[0].arguments";
        let args = |v: serde_json::Value| {
            move |w: &mut Value| w["main"]["workflow"]["stages"][0]["arguments"] = v
        };
        let ok = {
            let mut v = two_stage();
            v["main"]["workflow"]["stages"][0]["arguments"] = serde_json::json!(["--k", "3"]);
            Workflow::from_value(&v).unwrap()
        };
        assert_eq!(ok.stages[0].arguments, ["--k", "3"]);
        assert_eq!(
            refused(args(serde_json::json!(vec!["x"; 65]))),
            format!("workflow {s}: 65 arguments; a stage takes at most 64")
        );
        assert_eq!(
            refused(args(serde_json::json!(["ok", "y".repeat(4097)]))),
            format!("workflow {s}[1]: is 4097 bytes; an argument is at most 4096")
        );
        assert_eq!(
            refused(args(serde_json::json!(["a\u{0}b"]))),
            format!("workflow {s}[0]: contains a NUL character")
        );
        assert_eq!(
            refused(args(serde_json::json!("--k 3"))),
            format!("workflow {s}: must be an array of strings, found \"--k 3\"")
        );
    }

    #[test]
    fn refusals_name_the_path_and_the_fix() {
        let s = "$.main.workflow.stages";
        assert_eq!(
            refused(|v| v["main"]["workflow"]["stages"][1]["index"] = 3.into()),
            format!(
                "workflow {s}[1].index: is 3, expected 1: stages are listed and run in index order 0, 1, 2, …"
            )
        );
        assert_eq!(
            refused(|v| v["main"]["workflow"]["stages"][1]["input"][0]["previousStage"] = 1.into()),
            format!(
                "workflow {s}[1].input[0].previousStage: is 1; stage 1 can only read the output of an earlier stage (0..1)"
            )
        );
        assert_eq!(
            refused(
                |v| v["main"]["workflow"]["stages"][0]["input"][0]["id"] = "did:nv:12345".into()
            ),
            format!(
                "workflow {s}[0].input[0].id: `did:nv:12345` is not a DID: expected did:nv: followed by 64 hex digits"
            )
        );
        assert_eq!(
            refused(
                |v| v["main"]["workflow"]["stages"][0]["requirements"]["container"]["checksum"] =
                    "latest".into()
            ),
            format!(
                "workflow {s}[0].requirements.container.checksum: `latest` is not sha256: followed by 64 lowercase hex digits (`insitu inspect` prints it)"
            )
        );
        assert_eq!(
            refused(|v| v["main"]["workflow"]["stages"] = serde_json::json!([])),
            format!("workflow {s}: is empty; a workflow needs at least one stage")
        );
        assert_eq!(
            refused(|v| v["main"]["type"] = "dataset".into()),
            "workflow $.main.type: is \"dataset\"; a workflow asset has type \"workflow\""
        );
        assert_eq!(
            refused(|v| v["main"]["workflow"]["stages"][0]["input"][0] =
                serde_json::json!({"index": 0})),
            format!(
                "workflow {s}[0].input[0]: needs `id` (a dataset DID) or `previousStage` (an earlier stage's index)"
            )
        );
        let e = Workflow::from_json(b"{\"main\": ").unwrap_err().to_string();
        assert!(
            e.starts_with("workflow $: not valid JSON: EOF while parsing"),
            "{e}"
        );
    }
}
