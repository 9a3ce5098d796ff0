//! `shoal config …` and `shoal secret …` (docker's `config` and `secret`
//! commands), and the `--config` / `--secret` flags of `service create`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use shoal_api::client::{self, ClientError};
use shoal_api::{ApiError, Request, Response};
use shoal_model::configs::{FileKind, FileRef};

use super::output::{print_json, print_table};
use super::Format;

/// `shoal config …` / `shoal secret …` (run on a manager).
#[derive(Debug, Subcommand)]
pub enum FileCmd {
    /// Create one from a file, or from stdin with `-`: `create NAME FILE|-`.
    Create {
        /// Its name.
        name: String,
        /// The file with its content (`-`: stdin).
        file: PathBuf,
        /// Labels `key=value` (repeatable).
        #[arg(short, long)]
        label: Vec<String>,
    },
    /// List them: ID NAME CREATED UPDATED.
    Ls,
    /// Show them in detail (JSON; a secret's data never).
    Inspect {
        /// Names or ids.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Remove them (refused while a service uses one).
    Rm {
        /// Names or ids.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn bad(m: String) -> ClientError {
    ClientError::Api(ApiError::invalid(m))
}

/// Parse `--config` / `--secret`: `NAME`, or
/// `source=NAME[,target=PATH][,uid=N][,gid=N][,mode=0444]`.
pub fn parse_ref(flag: &str, s: &str) -> Result<FileRef, ClientError> {
    let mut r = FileRef {
        id: String::new(),
        name: String::new(),
        target: String::new(),
        uid: String::new(),
        gid: String::new(),
        mode: 0,
    };
    if !s.contains('=') {
        r.name = s.to_string();
        return Ok(r);
    }
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("--{flag} {s:?}: expected key=value in {part:?}")))?;
        match k {
            "source" | "src" => r.name = v.to_string(),
            "target" => r.target = v.to_string(),
            "uid" => r.uid = v.to_string(),
            "gid" => r.gid = v.to_string(),
            "mode" => {
                r.mode = u32::from_str_radix(v, 8)
                    .map_err(|_| bad(format!("--{flag} {s:?}: mode {v:?} is not octal")))?
            }
            _ => {
                return Err(bad(format!(
                    "--{flag} {s:?}: unknown key {k:?} (source, target, uid, gid, mode)"
                )))
            }
        }
    }
    if r.name.is_empty() {
        return Err(bad(format!("--{flag} {s:?}: source= is required")));
    }
    Ok(r)
}

/// Run a `config` or `secret` subcommand.
pub async fn run(
    host: &std::path::Path,
    format: Format,
    kind: FileKind,
    cmd: &FileCmd,
) -> Result<(), ClientError> {
    match cmd {
        FileCmd::Create { name, file, label } => {
            let mut data = Vec::new();
            let read = if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut data).map(|_| ())
            } else {
                std::fs::read(file).map(|d| data = d)
            };
            read.map_err(|e| {
                bad(format!(
                    "{kind} create: cannot read {}: {e}",
                    file.display()
                ))
            })?;
            let mut labels = BTreeMap::new();
            for l in label {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_string(), v.to_string());
            }
            let req = Request::FileCreate {
                kind,
                name: name.clone(),
                labels,
                data,
            };
            match client::call(host, req).await? {
                Response::Created { id, .. } => {
                    outln!("{id}");
                    Ok(())
                }
                other => Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
        FileCmd::Ls | FileCmd::Inspect { .. } => {
            let keys = match cmd {
                FileCmd::Inspect { keys } => keys.clone(),
                _ => Vec::new(),
            };
            let files = match client::call(host, Request::FileList { kind, keys }).await? {
                Response::Files(f) => f,
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            };
            if matches!(cmd, FileCmd::Inspect { .. }) || format == Format::Json {
                print_json(&files);
                return Ok(());
            }
            print_table(
                &["ID", "NAME", "CREATED", "UPDATED"],
                files
                    .iter()
                    .map(|f| {
                        vec![
                            f.id.clone(),
                            f.name.clone(),
                            super::output::ago(f.created_at),
                            super::output::ago(f.updated_at),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        FileCmd::Rm { keys } => {
            let req = Request::FileRemove {
                kind,
                keys: keys.clone(),
            };
            match client::call(host, req).await? {
                Response::Message(m) => {
                    outln!("{m}");
                    Ok(())
                }
                other => Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_in_docker_syntax() {
        let r = parse_ref("config", "app.conf").unwrap();
        assert_eq!(
            (r.name.as_str(), r.target.as_str(), r.mode),
            ("app.conf", "", 0)
        );
        let r = parse_ref("secret", "source=pw,target=db_pw,uid=1000,mode=0400").unwrap();
        assert_eq!(
            (r.name.as_str(), r.target.as_str(), r.uid.as_str(), r.mode),
            ("pw", "db_pw", "1000", 0o400)
        );
        assert!(parse_ref("secret", "target=x").is_err());
        assert!(parse_ref("secret", "source=x,mode=9").is_err());
        assert!(parse_ref("secret", "source=x,owner=1").is_err());
    }
}
