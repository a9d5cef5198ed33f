//! `vigilctl`: a command-line client for a running Vigil coordinator's REST API.
//!
//! - [`cli`]: the command line (clap), also the source of the man page and completions;
//! - [`routes`]: the REST routes it calls, each written once;
//! - [`api`]: the HTTP client (token, TLS, the API's errors);
//! - [`table`]: the JSON answers as tables for people;
//! - [`follow`]: `actions --follow` over the event stream.
//!
//! Every command prints the API's JSON as it came with `--json`, else a table; an error
//! the API answered with is printed with its message, and the exit code is not zero.

pub mod api;
pub mod cli;
pub mod follow;
pub mod routes;
pub mod table;

use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::api::{Client, CtlError};
use crate::cli::{ActionsArgs, Cli, Command, NewActionArgs, ViolationsArgs};
use crate::follow::{Filter, Follow};

/// Exit code of an error the API answered with, or of a coordinator out of reach.
const EXIT_FAILED: u8 = 1;
/// Exit code of a bad argument found before asking (clap's own errors use 2 too).
const EXIT_USAGE: u8 = 2;

/// Runs `cli`; the process's exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigilctl: {e}");
            ExitCode::from(match e {
                CtlError::Usage(_) | CtlError::Url(_) | CtlError::NoToken => EXIT_USAGE,
                _ => EXIT_FAILED,
            })
        }
    }
}

async fn execute(cli: Cli) -> Result<(), CtlError> {
    let client = Client::new(&cli.connection)?;
    let json = cli.json;
    match cli.command {
        Command::Hosts => show(&client, routes::HOSTS, &[], json, table::hosts).await,
        Command::Actions(args) => actions(&client, args, json).await,
        Command::Violations(args) => violations(&client, args, json).await,
        Command::Drift => show(&client, routes::DRIFT, &[], json, table::drift).await,
        Command::Action(args) => create(&client, args, json).await,
        Command::Pause(host) => kill_switch(&client, routes::PAUSE, &host.host, json).await,
        Command::Resume(host) => kill_switch(&client, routes::RESUME, &host.host, json).await,
    }
}

/// Asks `route` with `query` and prints the answer: as it came, or as `render` draws it.
async fn show(
    client: &Client,
    route: routes::Route,
    query: &[(&str, Option<String>)],
    json: bool,
    render: fn(&Value) -> String,
) -> Result<(), CtlError> {
    let (text, value) = client.call(route, route.path, query, None).await?;
    if json {
        println!("{}", text.trim_end());
    } else {
        print!("{}", render(&value));
    }
    Ok(())
}

async fn actions(client: &Client, args: ActionsArgs, json: bool) -> Result<(), CtlError> {
    let query = [
        ("host", args.host.clone()),
        ("status", args.status.clone()),
        ("policy", args.policy.clone()),
        ("target", args.target.clone()),
        ("since", args.since.clone()),
        ("limit", args.limit.map(|l| l.to_string())),
    ];
    if !args.follow {
        return show(client, routes::ACTIONS, &query, json, table::actions).await;
    }
    let filter = Filter {
        host: args.host,
        status: args.status,
        policy: args.policy,
        target: args.target,
    };
    // The stream first: a transition between the listing and the stream is not lost.
    let follow = Follow::open(client, filter).await?;
    show(client, routes::ACTIONS, &query, json, table::actions).await?;
    eprintln!("vigilctl: following new action transitions (Ctrl-C to stop)");
    let print = |entry: &Value| {
        if json {
            println!("{entry}");
        } else {
            println!("{}", table::transition(entry));
        }
    };
    tokio::select! {
        result = follow.run(print) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn violations(client: &Client, args: ViolationsArgs, json: bool) -> Result<(), CtlError> {
    let query = [
        ("host", args.host),
        ("policy", args.policy),
        ("target", args.target),
        ("kind", args.kind),
        ("since", args.since),
        ("limit", args.limit.map(|l| l.to_string())),
    ];
    show(client, routes::VIOLATIONS, &query, json, table::violations).await
}

/// The body of `POST /api/v1/actions` for `args`.
pub fn new_action_body(args: &NewActionArgs) -> Result<Value, CtlError> {
    let mut params = Map::new();
    for pair in &args.params {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| CtlError::Usage(format!("--param `{pair}` is not NAME=VALUE")))?;
        if name.is_empty() {
            return Err(CtlError::Usage(format!("--param `{pair}` has no name")));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        params.insert(name.to_string(), value);
    }
    let mut body = json!({
        "host": args.host,
        "target": args.target,
        "action": args.action,
    });
    if !params.is_empty() {
        body["params"] = Value::Object(params);
    }
    if let Some(details) = &args.details {
        body["details"] = json!(details);
    }
    if args.dry_run {
        body["dry_run"] = json!(true);
    }
    Ok(body)
}

async fn create(client: &Client, args: NewActionArgs, json: bool) -> Result<(), CtlError> {
    let body = new_action_body(&args)?;
    let route = routes::ACTIONS_CREATE;
    let (text, value) = client.call(route, route.path, &[], Some(&body)).await?;
    if json {
        println!("{}", text.trim_end());
    } else {
        println!(
            "{} {} on {} ({}): action {}",
            args.action,
            args.target,
            args.host,
            table::cell(&value["message"]),
            table::cell(&value["action_id"])
        );
    }
    Ok(())
}

async fn kill_switch(
    client: &Client,
    route: routes::Route,
    host: &str,
    json: bool,
) -> Result<(), CtlError> {
    let (text, value) = client
        .call(route, &route.with_host(host), &[], None)
        .await?;
    if json {
        println!("{}", text.trim_end());
    } else {
        println!("{}", table::cell(&value["message"]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(params: &[&str]) -> NewActionArgs {
        NewActionArgs {
            host: "web-01".into(),
            target: "nginx".into(),
            action: "restart".into(),
            params: params.iter().map(|s| s.to_string()).collect(),
            details: None,
            dry_run: false,
        }
    }

    #[test]
    fn params_are_json_when_they_parse_else_strings() {
        let body =
            new_action_body(&args(&["timeout_seconds=30", "signal=HUP", "x={\"a\":1}"])).unwrap();
        assert_eq!(
            body,
            json!({"host": "web-01", "target": "nginx", "action": "restart",
                   "params": {"timeout_seconds": 30, "signal": "HUP", "x": {"a": 1}}})
        );
        assert!(matches!(
            new_action_body(&args(&["novalue"])),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            new_action_body(&args(&["=1"])),
            Err(CtlError::Usage(_))
        ));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
