//! The `shoal` command: `shoal daemon` runs the agent ([`crate::daemon`]),
//! every other subcommand is a client of the local daemon over its unix
//! socket. Imports only `shoal-api` and `shoal-model`: the CLI knows the
//! API, never the agent's insides.

use serde::Serialize;
use shoal_api::client::{self, ClientError};
use shoal_api::{Request, Response, SwarmInitArgs, SwarmJoinArgs, VersionInfo};
use shoal_model::Role;

mod args;
mod exec;
mod logs;
#[macro_use]
mod output;
mod files;
mod service;
mod service_args;

pub use args::*;
use output::{print_info, print_json, print_response, print_table, print_version};
use service::{local_network_spec, network_spec, service_command};

/// Run a client subcommand; returns the process exit code.
pub async fn run_client(cli: Cli) -> i32 {
    if let Command::Exec {
        interactive,
        tty,
        workload,
        argv,
    } = &cli.command
    {
        let code = exec::run(&cli.host, workload, argv, *interactive, *tty).await;
        // The stdin reader may sit in a blocking read the runtime would
        // wait for: leave now.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::process::exit(code);
    }
    match client_command(&cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

async fn client_command(cli: &Cli) -> Result<(), ClientError> {
    match &cli.command {
        Command::Daemon(_) | Command::ContainerLog { .. } => {
            Err(ClientError::Unexpected("not a client command".into()))
        }
        Command::Version => {
            let client = VersionInfo::current();
            let server = client::call(&cli.host, Request::Version).await;
            let server = match server {
                Ok(Response::Version(v)) => Ok(v),
                Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
                Err(e) => Err(e),
            };
            match cli.format {
                Format::Json => {
                    #[derive(Serialize)]
                    struct Both<'a> {
                        client: &'a VersionInfo,
                        server: Option<&'a VersionInfo>,
                    }
                    print_json(&Both {
                        client: &client,
                        server: server.as_ref().ok(),
                    });
                }
                Format::Table => {
                    outln!("Client:");
                    print_version(&client);
                    if let Ok(s) = &server {
                        outln!("\nServer:");
                        print_version(s);
                    }
                }
            }
            server.map(|_| ())
        }
        Command::Config(cmd) => {
            files::run(
                &cli.host,
                cli.format,
                shoal_model::configs::FileKind::Config,
                cmd,
            )
            .await
        }
        Command::Secret(cmd) => {
            files::run(
                &cli.host,
                cli.format,
                shoal_model::configs::FileKind::Secret,
                cmd,
            )
            .await
        }
        Command::Info => {
            let info = match client::call(&cli.host, Request::Info).await? {
                Response::Info(i) => i,
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            };
            match cli.format {
                Format::Json => print_json(&info),
                Format::Table => print_info(&info),
            }
            Ok(())
        }
        Command::Swarm(cmd) => {
            let (req, quiet) = swarm_request(cmd);
            let resp = client::call(&cli.host, req).await?;
            print_response(cli.format, resp, quiet);
            Ok(())
        }
        Command::Run {
            network,
            name,
            ip,
            env,
            container,
            argv,
        } => {
            let (image, argv, spec, env) = service::container_settings(container, argv, env)?;
            let host = spec.runtime == shoal_model::service::Runtime::Host;
            if !env.is_empty() && host {
                return Err(ClientError::Api(shoal_api::ApiError::invalid(
                    "-e/--env-file need a container (not --runtime host)",
                )));
            }
            let resp = client::call(
                &cli.host,
                Request::Run {
                    network: network.clone(),
                    name: name.clone(),
                    ip: *ip,
                    argv,
                    image,
                    container: (!host).then(|| Box::new(spec)),
                    env,
                },
            )
            .await?;
            match (cli.format, resp) {
                (Format::Table, Response::Workloads(w)) => {
                    for w in w {
                        outln!("{}", w.id);
                    }
                }
                (f, r) => print_response(f, r, false),
            }
            Ok(())
        }
        Command::Ps => {
            let resp = client::call(&cli.host, Request::Ps).await?;
            print_response(cli.format, resp, false);
            Ok(())
        }
        Command::Stop { workload } => {
            let resp = client::call(
                &cli.host,
                Request::Stop {
                    workload: workload.clone(),
                },
            )
            .await?;
            print_response(cli.format, resp, false);
            Ok(())
        }
        Command::Exec { .. } => Err(ClientError::Unexpected("exec is run by run_client".into())),
        Command::Logs { opts, workload } => {
            logs::print(&cli.host, opts, |after| Request::Logs {
                workload: workload.clone(),
                tail: opts.tail.0,
                after: after.get(workload).copied(),
            })
            .await
        }
        Command::Service(cmd) => service_command(cli, cmd).await,
        Command::Image(cmd) => {
            let req = match cmd {
                ImageCmd::Ls => Request::ImageList,
                ImageCmd::Pull { reference } => Request::ImagePull {
                    reference: reference.clone(),
                },
                ImageCmd::Import { file, name } => Request::ImageImport {
                    // The daemon runs elsewhere: the archive by its full path.
                    file: std::path::absolute(file)
                        .map_err(|e| ClientError::Unexpected(format!("{}: {e}", file.display())))?,
                    name: name.clone(),
                },
                ImageCmd::Rm { images } => Request::ImageRemove {
                    images: images.clone(),
                },
            };
            let resp = client::call(&cli.host, req).await?;
            print_response(cli.format, resp, false);
            Ok(())
        }
        Command::Events { since, no_follow } => {
            let since_ms = match since {
                Some(s) => {
                    let back = parse_duration_ms(s).map_err(|e| {
                        ClientError::Api(shoal_api::ApiError::invalid(format!("--since {s}: {e}")))
                    })?;
                    Some(shoal_model::now_ms().saturating_sub(back))
                }
                None => None,
            };
            let mut after: Option<u64> = None;
            loop {
                match client::call(&cli.host, Request::Events { after, since_ms }).await? {
                    Response::Events { events, last_seq } => {
                        for e in &events {
                            match cli.format {
                                Format::Json => {
                                    outln!("{}", serde_json::to_string(e).unwrap_or_default())
                                }
                                Format::Table => outln!("{}", e.line()),
                            }
                        }
                        after = Some(last_seq.max(after.unwrap_or(0)));
                    }
                    other => {
                        print_response(cli.format, other, false);
                        return Ok(());
                    }
                }
                if *no_follow {
                    return Ok(());
                }
            }
        }
        Command::Network(cmd) => {
            let req = match cmd {
                NetworkCmd::Create { driver, .. } if driver == "bridge" => {
                    Request::LocalNetworkCreate(local_network_spec(cmd)?)
                }
                NetworkCmd::Create { .. } => Request::NetworkCreate(network_spec(cmd)?),
                NetworkCmd::Ls => Request::NetworkList,
                NetworkCmd::Inspect { networks, verbose } => Request::NetworkInspect {
                    networks: networks.clone(),
                    verbose: *verbose,
                },
                NetworkCmd::Rm { networks, force } => {
                    let mut confirmed = Vec::new();
                    for n in networks {
                        if *force || !is_ingress(&cli.host, n).await || confirm(INGRESS_WARNING) {
                            confirmed.push(n.clone());
                        }
                    }
                    if confirmed.is_empty() {
                        return Ok(());
                    }
                    Request::NetworkRemove {
                        networks: confirmed,
                    }
                }
            };
            let inspect = matches!(cmd, NetworkCmd::Inspect { .. });
            match client::call(&cli.host, req).await? {
                Response::Networks(docs) if inspect || cli.format == Format::Json => {
                    print_json(&docs)
                }
                Response::Networks(docs) => print_table(
                    &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                    docs.iter()
                        .map(|d| {
                            vec![
                                d["Id"].as_str().unwrap_or("").chars().take(12).collect(),
                                d["Name"].as_str().unwrap_or("").to_string(),
                                d["Driver"].as_str().unwrap_or("").to_string(),
                                d["Scope"].as_str().unwrap_or("").to_string(),
                            ]
                        })
                        .collect(),
                ),
                other => print_response(cli.format, other, false),
            }
            Ok(())
        }
        Command::Gossip(cmd) => {
            let req = match cmd {
                GossipCmd::Members => Request::GossipMembers,
                GossipCmd::Tables { network, table } => Request::GossipTables {
                    table: network
                        .as_ref()
                        .map(|n| shoal_api::endpoint_table(n))
                        .or_else(|| table.clone()),
                },
                GossipCmd::Put { table, key, value } => Request::GossipPut {
                    table: table.clone(),
                    key: key.clone(),
                    value: value.clone(),
                },
                GossipCmd::Rm { table, key } => Request::GossipDelete {
                    table: table.clone(),
                    key: key.clone(),
                },
                GossipCmd::Metrics => Request::GossipMetrics,
            };
            let resp = client::call(&cli.host, req).await?;
            print_response(cli.format, resp, false);
            Ok(())
        }
        Command::Node(cmd) => {
            let (req, inspect) = match cmd {
                NodeCmd::Ls => (Request::NodeList, false),
                NodeCmd::Inspect { nodes } => {
                    let mut all = Vec::new();
                    for n in nodes {
                        match client::call(&cli.host, Request::NodeInspect { node: n.clone() })
                            .await?
                        {
                            Response::Nodes(rows) => all.extend(rows),
                            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
                        }
                    }
                    print_json(&all);
                    return Ok(());
                }
                NodeCmd::Promote { nodes } => (
                    Request::NodeSetRole {
                        nodes: nodes.clone(),
                        role: Role::Manager,
                    },
                    false,
                ),
                NodeCmd::Demote { nodes } => (
                    Request::NodeSetRole {
                        nodes: nodes.clone(),
                        role: Role::Worker,
                    },
                    false,
                ),
                NodeCmd::Update {
                    availability,
                    label_add,
                    label_rm,
                    node,
                } => {
                    let mut add = std::collections::BTreeMap::new();
                    for l in label_add {
                        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                        if k.is_empty() {
                            return Err(ClientError::Api(shoal_api::ApiError::invalid(format!(
                                "--label-add {l:?}: expected key=value"
                            ))));
                        }
                        add.insert(k.to_string(), v.to_string());
                    }
                    (
                        Request::NodeUpdate {
                            node: node.clone(),
                            availability: *availability,
                            label_add: add,
                            label_rm: label_rm.clone(),
                        },
                        false,
                    )
                }
                NodeCmd::Rm { force, nodes } => (
                    Request::NodeRemove {
                        nodes: nodes.clone(),
                        force: *force,
                    },
                    false,
                ),
            };
            let resp = client::call(&cli.host, req).await?;
            print_response(cli.format, resp, inspect);
            Ok(())
        }
    }
}

fn swarm_request(cmd: &SwarmCmd) -> (Request, bool) {
    match cmd {
        SwarmCmd::Init {
            advertise_addr,
            data_path_addr,
            listen_addr,
            default_addr_pool,
            default_addr_pool_mask_length,
            data_path_port,
            dispatcher_heartbeat,
            key_rotation_interval,
        } => (
            Request::SwarmInit(SwarmInitArgs {
                dispatcher_heartbeat_ms: *dispatcher_heartbeat,
                key_rotation_interval_ms: *key_rotation_interval,
                advertise_addr: advertise_addr.clone(),
                data_path_addr: data_path_addr.clone(),
                listen_addr: listen_addr.clone(),
                default_addr_pool: default_addr_pool.clone(),
                default_addr_pool_mask_length: *default_addr_pool_mask_length,
                data_path_port: *data_path_port,
            }),
            false,
        ),
        SwarmCmd::Join {
            token,
            advertise_addr,
            data_path_addr,
            listen_addr,
            remote,
        } => (
            Request::SwarmJoin(SwarmJoinArgs {
                token: token.clone(),
                remote: remote.clone(),
                advertise_addr: advertise_addr.clone(),
                data_path_addr: data_path_addr.clone(),
                listen_addr: listen_addr.clone(),
            }),
            false,
        ),
        SwarmCmd::JoinToken {
            role,
            rotate,
            quiet,
        } => (
            Request::JoinToken {
                role: if role == "manager" {
                    Role::Manager
                } else {
                    Role::Worker
                },
                rotate: *rotate,
            },
            *quiet,
        ),
        SwarmCmd::Leave { force } => (Request::SwarmLeave { force: *force }, false),
        SwarmCmd::Ca { .. } => (Request::CaRotate, false),
        SwarmCmd::RotateKeys => (Request::RotateKeys, false),
    }
}

/// docker's warning before `network rm` of the routing-mesh network.
const INGRESS_WARNING: &str =
    "WARNING! Before removing the routing-mesh network, make sure all the nodes
in your swarm run the same docker engine version. Otherwise, removal may not
be effective and functionality of newly created ingress networks will be
impaired.
Are you sure you want to continue?";

/// Whether `network` names the ingress network (`false` when it cannot be
/// looked up: removing it then says why).
async fn is_ingress(host: &std::path::Path, network: &str) -> bool {
    let req = Request::NetworkInspect {
        networks: vec![network.to_string()],
        verbose: false,
    };
    matches!(
        client::call(host, req).await,
        Ok(Response::Networks(docs)) if docs.first().is_some_and(|d| d["Ingress"] == true)
    )
}

/// Prints `question` with ` [y/N] ` and reads the answer from stdin: yes
/// only for `y` or `yes`.
fn confirm(question: &str) -> bool {
    use std::io::Write;
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
