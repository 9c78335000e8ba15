//! `mirrorplay`: the coordinator and the command-line client.

mod auth;
mod cli;
mod client;
mod config;
mod control;
mod drivers;
mod embedded;
mod exit;
mod export;
mod export_model;
mod generate;
mod k8s;
mod local;
mod metrics;
mod parent_death;
mod plot;
mod progress;
mod random_id;
mod run;
mod scheduler;
mod serve;
mod server;
mod state;
mod tls;

use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command, ConfigArgs};
use exit::Exit;
use mirrorplay_worker::connect::Token;

/// Seconds since the Unix epoch.
pub use mirrorplay_worker::clock::unix_now as now;

/// Loads a config; with `InputCheck::Local` its local inputs must exist on this machine
/// (docs/architecture.md#job-flow, step 1).
fn load_config(args: &ConfigArgs, check: config::InputCheck) -> Result<config::Loaded> {
    let cwd = std::env::current_dir()?;
    config::load(&args.config, &args.sets, &cwd)
        .and_then(|loaded| loaded.check_inputs(check).map(|()| loaded))
        .map_err(|e| anyhow::Error::new(Exit::Config(e.to_string())))
}

/// A coordinator's options from its flags (`serve`, `run`).
fn serve_options(a: cli::ServerArgs) -> Result<serve::ServeOptions, Exit> {
    let token = Token::resolve(a.token_file.as_deref()).map_err(|e| Exit::Config(e.to_string()))?;
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(tls::ServerTls {
            cert,
            key,
            client_ca: a.tls_client_ca,
        }),
        _ => None,
    };
    Ok(serve::ServeOptions {
        listen: a.listen,
        state: a.state,
        worker_lease: Duration::from_millis(a.lease_ms),
        lock_lease: Duration::from_millis(a.lock_lease_ms),
        token,
        insecure_no_auth: a.insecure_no_auth,
        tls,
        metrics_listen: a.metrics_listen,
        retry: scheduler::RetryPolicy {
            max_retries: a.task_retries,
            backoff: Duration::from_millis(a.retry_backoff_ms),
            ..Default::default()
        },
    })
}

async fn run(cli: Cli) -> Result<Exit> {
    let log_format = cli.log_format.clone();
    match cli.command {
        Command::Serve { server } => serve::run(serve_options(server)?).await,
        Command::Submit {
            config,
            coordinator,
        } => {
            // The coordinator's machines read the inputs, not necessarily this one.
            let loaded = load_config(&config, config::InputCheck::Skip)?;
            let mut c = client::connect_arg(&coordinator).await?;
            let id = client::submit(&mut c, loaded.spec, loaded.resolved_toml).await?;
            println!("{id}");
            Ok(Exit::Ok)
        }
        Command::Status {
            job,
            json,
            coordinator,
        } => {
            let mut c = client::connect_arg(&coordinator).await?;
            client::status(&mut c, job, json).await?;
            Ok(Exit::Ok)
        }
        Command::Watch {
            job,
            json,
            coordinator,
        } => {
            let mut c = client::connect_arg(&coordinator).await?;
            let job = client::watch(&mut c, &job, json).await?;
            Ok(client::outcome(&job))
        }
        Command::Logs {
            job,
            follow,
            coordinator,
        } => {
            let mut c = client::connect_arg(&coordinator).await?;
            client::logs(&mut c, &job, follow).await?;
            Ok(Exit::Ok)
        }
        Command::Cancel { job, coordinator } => {
            let mut c = client::connect_arg(&coordinator).await?;
            client::cancel(&mut c, job).await?;
            Ok(Exit::Ok)
        }
        Command::Resume { job, coordinator } => {
            let mut c = client::connect_arg(&coordinator).await?;
            client::resume(&mut c, job).await?;
            Ok(Exit::Ok)
        }
        Command::Validate {
            config,
            no_input_check,
        } => {
            let check = if no_input_check {
                config::InputCheck::Skip
            } else {
                config::InputCheck::Local
            };
            let loaded = load_config(&config, check)?;
            print!("{}", loaded.resolved_toml);
            eprintln!("{}: ok", config.config.display());
            Ok(Exit::Ok)
        }
        Command::Convert {
            from: cli::ConvertFrom::Mergekit { file },
        } => {
            let display = file.display().to_string();
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Exit::Config(format!("{display}: cannot read the config: {e}")))?;
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "merge".into());
            let toml = config::mergekit::to_toml(&display, &text, &stem)
                .map_err(|e| Exit::Config(e.to_string()))?;
            print!("{toml}");
            Ok(Exit::Ok)
        }
        Command::Plot { input, out, size } => {
            let size = size.as_deref().map(plot::parse_size).transpose();
            match size.and_then(|size| plot::run(&input, &out, size)) {
                Ok(()) => {
                    eprintln!("wrote {}", out.display());
                    Ok(Exit::Ok)
                }
                Err(plot::PlotError::Input(m)) => Ok(Exit::Config(m)),
                Err(plot::PlotError::Draw(m)) => Ok(Exit::JobFailed(format!("error: {m}"))),
            }
        }
        Command::Generate(args) => {
            generate::run(&args).await?;
            Ok(Exit::Ok)
        }
        Command::Local {
            config,
            workers,
            worker_bin,
            lease_ms,
            state,
            json,
        } => {
            // The workers run here and read the inputs from this machine.
            let loaded = load_config(&config, config::InputCheck::Local)?;
            if workers == 0 {
                return Err(anyhow::Error::new(Exit::Config(
                    "--workers must be at least 1".into(),
                )));
            }
            let opts = local::LocalOptions {
                workers,
                worker_bin,
                lease: Duration::from_millis(lease_ms),
                state,
                log_format,
                json,
            };
            local::run(loaded.spec, loaded.resolved_toml, opts).await
        }
        Command::Run {
            config,
            server,
            workers,
            workers_timeout_secs,
            json,
        } => {
            // Workers in other pods or on other machines read the inputs.
            let loaded = load_config(&config, config::InputCheck::Skip)?;
            let opts = run::RunOptions {
                serve: serve_options(server)?,
                workers,
                workers_timeout: Duration::from_secs(workers_timeout_secs),
                json,
            };
            run::run(loaded.spec, loaded.resolved_toml, opts).await
        }
        Command::K8s { command } => k8s::main(command).await,
        Command::ExampleModels {
            dir,
            random_size,
            random_names,
            random_dtype,
        } => {
            match random_size {
                None => mirrorplay_worker::io::example::write_example_models(&dir).await?,
                Some(size) => {
                    let bytes = config::parse_size(&size).ok_or_else(|| {
                        Exit::Config(format!("--random-size `{size}` is not a size"))
                    })?;
                    let dtype = mirrorplay_worker::io::Dtype::parse(&random_dtype)
                        .filter(|d| d.is_float())
                        .ok_or_else(|| {
                            Exit::Config(format!(
                                "--random-dtype `{random_dtype}`: expected F32, F16 or BF16"
                            ))
                        })?;
                    mirrorplay_worker::io::example::write_random_models(
                        &dir,
                        &random_names,
                        bytes,
                        dtype,
                        0,
                    )
                    .await?;
                }
            }
            eprintln!("wrote models under {}", dir.display());
            Ok(Exit::Ok)
        }
        Command::Export {
            checkpoint,
            model,
            out,
            dtype,
            max_shard_size,
        } => {
            let dtype = match dtype {
                None => None,
                Some(d) => Some(export::parse_dtype(&d).ok_or_else(|| {
                    Exit::Config(format!("--dtype `{d}`: expected f32, bf16 or f16"))
                })?),
            };
            let max = config::parse_size(&max_shard_size).ok_or_else(|| {
                Exit::Config(format!("--max-shard-size `{max_shard_size}` is not a size"))
            })?;
            let files = match (checkpoint, model) {
                (Some(checkpoint), None) => export::run(&checkpoint, &out, dtype, max).await?,
                (None, Some(model)) => {
                    let (files, dtype) = export_model::run(&model, &out, dtype, max).await?;
                    eprintln!("{model}: written as {dtype}");
                    files
                }
                _ => {
                    return Err(anyhow::Error::new(Exit::Config(
                        "give exactly one of --checkpoint and --model".into(),
                    )))
                }
            };
            eprintln!("exported {} files to {out}", files.len());
            Ok(Exit::Ok)
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // Only `serve` logs at info by default; client commands show warnings and their own output.
    // `local`'s in-process coordinator logs each job log line, which `local` already shows as
    // it follows the job, so its control plane logs errors only (no line printed twice).
    let level = match cli.command {
        Command::Serve { .. } => "info",
        Command::Local { .. } => "warn,mirrorplay::control=error",
        // As `serve`, but the job's log lines are shown once, by the followed job.
        Command::Run { .. } => "info,mirrorplay::control=error",
        _ => "warn",
    };
    mirrorplay_worker::logging::init(&cli.log_format, level);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let exit = match runtime.block_on(run(cli)) {
        Ok(exit) => exit,
        Err(e) => match e.downcast::<Exit>() {
            Ok(exit) => exit,
            Err(e) => Exit::JobFailed(format!("error: {e:#}")),
        },
    };
    match &exit {
        Exit::Ok => {}
        Exit::Config(m) => eprintln!("error: {m}"),
        Exit::JobFailed(m) | Exit::Interrupted(m) => eprintln!("{m}"),
        Exit::Cancelled => eprintln!("job cancelled"),
    }
    // Dropping the runtime would wait for background tasks; exit directly.
    std::process::exit(exit.code());
}
