//! `insitu review`: the provider's reviewers list held results, read their
//! check reports (never their content here: the files are in the data dir)
//! and release or reject them. Decisions are recorded in the store; the
//! running `insitu serve` applies them within a second (or when it next
//! starts): a release publishes the results and their receipt, which
//! records the checks, the reviewer, the time and the reason.

use super::shared::print_line;
use clap::Subcommand;
use insitu_runtime::store::Decision;
use std::path::PathBuf;

/// `insitu review`.
#[derive(Subcommand, Debug, Clone)]
pub enum ReviewCommand {
    /// Executions whose results are held for review: id, since when, why.
    List {
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One execution's output checks and decision (JSON).
    Show {
        id: String,
        #[arg(long, default_value = "insitu-data")]
        data_dir: PathBuf,
    },
    /// Release held results to the consumer.
    Release {
        #[command(flatten)]
        held: Held,
        /// Why (recorded in the receipt).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Reject held results: the execution fails with the reason; nothing is
    /// released.
    Reject {
        #[command(flatten)]
        held: Held,
        /// Why (the consumer sees it as the execution's reason).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

/// Which held execution, in which data dir, decided by whom.
#[derive(clap::Args, Debug, Clone)]
pub struct Held {
    id: String,
    #[arg(long, default_value = "insitu-data")]
    data_dir: PathBuf,
    /// Who decides [default: $USER]; must be a reviewer of the datasets.
    #[arg(long, value_name = "NAME")]
    reviewer: Option<String>,
}

impl ReviewCommand {
    /// Runs the verb; prints its answer.
    ///
    /// # Errors
    /// An unknown execution, one not held, a reviewer the policy does not
    /// name; store errors.
    pub fn execute(self) -> anyhow::Result<bool> {
        match self {
            ReviewCommand::List { data_dir, json } => {
                let store = super::catalog::open(&data_dir)?;
                for e in store.held_executions()? {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"execution": e.id, "consumer": e.consumer, "since": e.updated_at, "reason": e.reason})
                        );
                    } else {
                        println!(
                            "{}  {}  {}",
                            e.id,
                            insitu_runtime::store::rfc3339(e.updated_at / 1000),
                            e.reason.unwrap_or_default()
                        );
                    }
                }
                Ok(true)
            }
            ReviewCommand::Show { id, data_dir } => {
                let store = super::catalog::open(&data_dir)?;
                let id = crate::ids::execution(&id);
                let e = store.execution(&id)?;
                // Held, withheld or decided: the store's record; released at
                // once: the receipt's.
                let mut out = match store.review(&id)? {
                    Some(review) => {
                        let mut out = review.record();
                        out["held"] = review.held.is_some().into();
                        out["applied"] = review.applied.into();
                        out
                    }
                    None => e
                        .receipt
                        .as_ref()
                        .map(|r| r["body"]["output_control"].clone())
                        .filter(|c| !c.is_null())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "execution {id} has no output checks: its datasets have no output policy"
                            )
                        })?,
                };
                out["execution"] = e.id.into();
                out["status"] = e.status.as_str().into();
                out["reason"] = e.reason.into();
                println!("{}", serde_json::to_string_pretty(&out)?);
                Ok(true)
            }
            ReviewCommand::Release { held, reason } => {
                decide(held, Decision::Release, reason.as_deref())
            }
            ReviewCommand::Reject { held, reason } => decide(held, Decision::Reject, Some(&reason)),
        }
    }
}

fn decide(held: Held, decision: Decision, reason: Option<&str>) -> anyhow::Result<bool> {
    let store = super::catalog::open(&held.data_dir)?;
    let id = crate::ids::execution(&held.id);
    let reviewer = held
        .reviewer
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "provider".into());
    store.decide(&id, decision, &reviewer, reason)?;
    print_line(Ok(match decision {
        Decision::Release => format!(
            "execution {id} released by {reviewer}; insitu serve publishes its results within a second"
        ),
        Decision::Reject => format!("execution {id} rejected by {reviewer}"),
    }))
}
