//! Engine API routes of services (`/services`, their logs) and tasks
//! (`/tasks`).

use std::collections::BTreeMap;

use hyper::body::{Bytes, Frame};
use hyper::StatusCode;
use serde_json::json;
use shoal_api::engine::convert::{self, service_to_docker, spec_from_docker, task_to_docker};
use shoal_api::engine::gojson::{self, any_match, labels_match};
use shoal_api::engine::types as d;
use shoal_api::{Request, Response, ServiceRow, ServiceUpdate, TaskRow};

use super::objects::nets;
use super::system::{require_manager, unexpected};
use super::{ask, empty, json as reply, ok, Answer, Call, Failure};
use crate::daemon::Daemon;

async fn rows(d: &Daemon, keys: Vec<String>) -> Result<Vec<ServiceRow>, Failure> {
    match ask(d, Request::ServiceList { services: keys }).await? {
        Response::Services(r) => Ok(r),
        other => Err(unexpected(&other)),
    }
}

/// `GET /services[?filters=&status=]`.
pub async fn list(d: &Daemon, c: &Call) -> Answer {
    require_manager(d).await?;
    let f = c.filters()?;
    gojson::check_filters(&f, &["id", "name", "label", "mode", "runtime"]).map_err(Failure::bad)?;
    let nets = nets(d).await?;
    let status = c.flag("status");
    let out: Vec<d::Service> = rows(d, Vec::new())
        .await?
        .iter()
        .filter(|r| {
            let s = &r.service;
            any_match(f.get("id"), |v| s.id.starts_with(v))
                && any_match(f.get("name"), |v| s.spec.name.starts_with(v))
                && any_match(f.get("mode"), |v| v == s.spec.mode.to_string())
                && any_match(f.get("runtime"), |v| v == "container")
                && labels_match(&s.spec.labels, f.get("label"))
        })
        .map(|r| service_to_docker(r, &nets, status))
        .collect();
    ok(&out)
}

/// `GET /services/{id}`.
pub async fn inspect(d: &Daemon, id: &str) -> Answer {
    require_manager(d).await?;
    let nets = nets(d).await?;
    let row = rows(d, vec![id.into()]).await?;
    let row = row
        .first()
        .ok_or_else(|| Failure::not_found(format!("service {id} not found")))?;
    ok(&service_to_docker(row, &nets, false))
}

/// `POST /services/create` (201 `{ID, Warnings}`). The CLI has pinned the
/// image already (`/distribution`), or was told not to.
pub async fn create(d: &Daemon, c: &Call) -> Answer {
    require_manager(d).await?;
    let (spec, mut warnings) = spec_from_docker(&c.json()?).map_err(Failure::bad)?;
    match ask(
        d,
        Request::ServiceCreate {
            spec: Box::new(spec),
            resolve_image: false,
        },
    )
    .await?
    {
        Response::Created { id, warnings: w } => {
            warnings.extend(w);
            reply(
                StatusCode::CREATED,
                &json!({"ID": id, "Warnings": warnings}),
            )
        }
        other => Err(unexpected(&other)),
    }
}

/// `POST /services/{id}/update?version=N[&rollback=previous]` with the
/// whole spec.
pub async fn update(d: &Daemon, c: &Call, id: &str) -> Answer {
    require_manager(d).await?;
    let version = c.version()?;
    if c.query.get("rollback").is_some_and(|r| r == "previous") {
        ask(d, Request::ServiceRollback { service: id.into() }).await?;
        return ok(&json!({"Warnings": []}));
    }
    let (spec, warnings) = spec_from_docker(&c.json()?).map_err(Failure::bad)?;
    ask(
        d,
        Request::ServiceUpdate {
            service: id.into(),
            update: Box::new(ServiceUpdate {
                spec: Some(Box::new(spec)),
                version: Some(version),
                ..Default::default()
            }),
        },
    )
    .await?;
    ok(&json!({"Warnings": warnings}))
}

/// `DELETE /services/{id}`.
pub async fn remove(d: &Daemon, id: &str) -> Answer {
    require_manager(d).await?;
    ask(
        d,
        Request::ServiceRemove {
            services: vec![id.into()],
        },
    )
    .await?;
    empty(StatusCode::OK)
}

/// Every task of every service, each with the task template it runs.
async fn all_tasks(d: &Daemon) -> Result<Vec<(TaskRow, d::TaskSpec, ServiceRow)>, Failure> {
    let services = rows(d, Vec::new()).await?;
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let ids = services.iter().map(|r| r.service.id.clone()).collect();
    let tasks = match ask(d, Request::ServicePs { services: ids }).await? {
        Response::Tasks(t) => t,
        other => return Err(unexpected(&other)),
    };
    let by_id: BTreeMap<&str, &ServiceRow> = services
        .iter()
        .map(|r| (r.service.id.as_str(), r))
        .collect();
    Ok(tasks
        .into_iter()
        .filter_map(|t| {
            let svc = *by_id.get(t.task.service.as_str())?;
            // A task of an older spec runs the one before the last update.
            let spec = match &svc.service.previous_spec {
                Some(prev) if t.task.spec_version != svc.service.spec_version => prev,
                _ => &svc.service.spec,
            };
            let template = convert::spec_to_docker(spec).task_template;
            Some((t, template, svc.clone()))
        })
        .collect())
}

/// `GET /tasks[?filters=]`.
pub async fn task_list(d: &Daemon, c: &Call) -> Answer {
    require_manager(d).await?;
    let f = c.filters()?;
    gojson::check_filters(
        &f,
        &[
            "id",
            "name",
            "label",
            "service",
            "node",
            "desired-state",
            "_up-to-date",
            "runtime",
        ],
    )
    .map_err(Failure::bad)?;
    let nets = nets(d).await?;
    let out: Vec<d::Task> = all_tasks(d)
        .await?
        .iter()
        .filter(|(t, _, svc)| {
            let task = &t.task;
            let s = &svc.service;
            any_match(f.get("id"), |v| task.id.starts_with(v))
                && any_match(f.get("name"), |v| task.name().starts_with(v))
                && any_match(f.get("service"), |v| s.id.starts_with(v) || s.spec.name == v)
                && any_match(f.get("node"), |v| task.node.starts_with(v) || t.node_hostname == v)
                && any_match(f.get("desired-state"), |v| {
                    v == convert::task_state(task.desired)
                        || v == "accepted" && task.desired <= shoal_model::service::TaskState::Running
                })
                && any_match(f.get("_up-to-date"), |v| {
                    !gojson::bool_value(v) || task.spec_version == s.spec_version
                })
                && any_match(f.get("runtime"), |v| v == "container")
                // As swarmkit: a task carries its service's labels.
                && labels_match(&s.spec.labels, f.get("label"))
        })
        .map(|(t, spec, _)| task_to_docker(t, spec, &nets))
        .collect();
    ok(&out)
}

/// `GET /tasks/{id}` (full id or a unique prefix).
pub async fn task_inspect(d: &Daemon, id: &str) -> Answer {
    require_manager(d).await?;
    let nets = nets(d).await?;
    let all = all_tasks(d).await?;
    let exact = all.iter().find(|(t, _, _)| t.task.id == id);
    let found = match exact {
        Some(t) => t,
        None => {
            let mut m = all.iter().filter(|(t, _, _)| t.task.id.starts_with(id));
            match (m.next(), m.next()) {
                (Some(t), None) => t,
                (Some(_), Some(_)) => {
                    return Err(Failure::bad(format!(
                        "task {id} is ambiguous (2 matches found)"
                    )))
                }
                _ => return Err(Failure::not_found(format!("task {id} not found"))),
            }
        }
    };
    ok(&task_to_docker(&found.0, &found.1, &nets))
}

/// `GET /services/{id}/logs?stdout=&stderr=&tail=&timestamps=&details=&follow=`:
/// docker's multiplexed stream (8-byte header per line: stream, size).
/// With `details`, each line starts with the attributes the CLI turns
/// into the `web.1.<task>@<node>` context.
pub async fn logs(d: &std::sync::Arc<Daemon>, c: &Call, id: &str) -> Answer {
    require_manager(d).await?;
    let (stdout, stderr) = (c.flag("stdout"), c.flag("stderr"));
    if !stdout && !stderr {
        return Err(Failure::bad(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let tail = match c.query.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| Failure::bad(format!("invalid tail {n:?}")))?,
        ),
    };
    let (follow, timestamps, details) = (c.flag("follow"), c.flag("timestamps"), c.flag("details"));
    // Task id -> (node id, service id) of this service's tasks, for the
    // details.
    let owners: BTreeMap<String, (String, String)> = match ask(
        d,
        Request::ServicePs {
            services: vec![id.into()],
        },
    )
    .await?
    {
        Response::Tasks(ts) => ts
            .into_iter()
            .map(|t| (t.task.id, (t.task.node, t.task.service)))
            .collect(),
        other => return Err(unexpected(&other)),
    };
    let first = fetch_logs(d, id, tail, BTreeMap::new()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    let daemon = d.clone();
    let service = id.to_string();
    tokio::spawn(async move {
        let mut batch = first;
        loop {
            let (lines, cursors) = batch;
            for l in lines {
                let err = l.stream == "stderr";
                if err && !stderr || !err && !stdout {
                    continue;
                }
                let mut text = String::new();
                if timestamps {
                    text.push_str(&l.stamp);
                    text.push(' ');
                }
                if details {
                    let task = l
                        .context
                        .split('@')
                        .next()
                        .and_then(|c| c.rsplit('.').next())
                        .unwrap_or_default();
                    let (node, svc) = owners.get(task).cloned().unwrap_or_default();
                    text.push_str(&format!(
                        "com.docker.swarm.node.id={node},com.docker.swarm.service.id={svc},com.docker.swarm.task.id={task} "
                    ));
                }
                text.push_str(&l.line);
                text.push('\n');
                if tx
                    .send(Ok(Frame::data(mux(err, text.as_bytes()))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if !follow {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if tx.is_closed() {
                return;
            }
            batch = match fetch_logs(&daemon, &service, None, cursors).await {
                Ok(b) => b,
                Err(_) => return,
            };
        }
    });
    super::stream(
        http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
            super::system::receiver_stream(rx),
        )),
        "application/vnd.docker.multiplexed-stream",
    )
}

type LogBatch = (Vec<shoal_api::LogLine>, BTreeMap<String, i64>);

async fn fetch_logs(
    d: &Daemon,
    service: &str,
    tail: Option<usize>,
    after: BTreeMap<String, i64>,
) -> Result<LogBatch, Failure> {
    match ask(
        d,
        Request::ServiceLogs {
            service: service.into(),
            tail,
            after,
        },
    )
    .await?
    {
        Response::Logs { lines, cursors, .. } => Ok((lines, cursors)),
        other => Err(unexpected(&other)),
    }
}

/// One frame of docker's multiplexed stream: 1 = stdout, 2 = stderr.
fn mux(stderr: bool, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(if stderr { 2 } else { 1 });
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplexed_frames_carry_stream_and_length() {
        let f = mux(true, b"hi\n");
        assert_eq!(&f[..], &[2, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']);
        assert_eq!(mux(false, b"")[0], 1);
    }
}
