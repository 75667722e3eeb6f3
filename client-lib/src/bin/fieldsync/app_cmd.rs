//! `fieldsync app`: serves the rep's app ([`fieldsync_client::app`]) on 127.0.0.1 over the
//! replica, with the background sync running when a relay is configured, until Ctrl-C or
//! SIGTERM.

use super::*;
use fieldsync_client::app::{App, AppOptions};

pub(super) fn app_cmd(dir: &Path, args: AppArgs) -> Result<u8> {
    let client = open(dir)?;
    // Without a relay the app works offline; a config that does not parse is an error.
    let cfg = if dir.join(CONFIG_FILE).exists() {
        Some(sync_settings(dir, &client)?)
    } else {
        None
    };
    let rt = runtime()?;
    rt.block_on(serve(dir, client, cfg, args))
}

async fn serve(dir: &Path, client: Client, cfg: Option<SyncConfig>, args: AppArgs) -> Result<u8> {
    let relay = cfg.as_ref().map(|c| c.relay.clone());
    let sync = cfg.map(|c| SyncHandle::start(client.clone(), c));
    let mut events = sync.as_ref().map(SyncHandle::subscribe);
    let app = App::start(
        client,
        sync,
        AppOptions {
            port: args.port,
            lang: args.lang.clone(),
            relay: relay.clone(),
        },
    )
    .await
    .with_context(|| format!("cannot serve the app on 127.0.0.1:{}", args.port))?;
    if args.json {
        print_json(&serde_json::json!({"url": app.url(), "port": app.addr().port()}))?;
    } else {
        println!("The rep's app is at {}", app.url());
        match &relay {
            Some(r) => println!("Syncing with {r} in the background. Ctrl-C stops."),
            None => println!("No relay configured: working offline. Ctrl-C stops."),
        }
    }
    std::io::stdout().flush()?;
    let opener = args.open.then(|| open_in_browser(dir, &app.url()));
    if let Some(Err(e)) = &opener {
        eprintln!("fieldsync: could not open a browser ({e:#}); open the address above");
    }
    let ctrl_c = stop_signal();
    tokio::pin!(ctrl_c);
    loop {
        let event = async {
            match events.as_mut() {
                Some(rx) => loop {
                    match rx.recv().await {
                        Ok(e) => break Some(e),
                        // Missed events say nothing a later one will not.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break None,
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut ctrl_c => {
                r?;
                app.stop().await;
                return Ok(exit::OK);
            }
            e = event => match e {
                // IT ordered this laptop wiped: its replica is gone, so is the app.
                Some(SyncEvent::Disconnected { error })
                    if error.starts_with("this laptop's replica was wiped") =>
                {
                    app.stop().await;
                    forget_relay(dir);
                    return Err(Failure { code: exit::WIPED, message: error }.into());
                }
                Some(_) => {}
                // The sync stopped for good (its last error shows in the sync centre).
                None => events = None,
            }
        }
    }
}

/// Opens the app in the default browser without putting its key on a command line (which
/// every local user can read in the process list): the browser is given a file, readable by
/// the rep only, that sends it on to the address. The file is removed once the browser had
/// time to read it.
fn open_in_browser(dir: &Path, url: &str) -> Result<()> {
    let path = dir.join(format!("{REPLICA_FILE}.app-open.html"));
    let escaped = url.replace('&', "&amp;").replace('"', "&quot;");
    let page = format!(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url={escaped}\">\
         <title>fieldsync</title>"
    );
    // A new file, made private before the key is written into it.
    let _ = std::fs::remove_file(&path);
    fsmode::create_private_file(&path)
        .and_then(|_| std::fs::write(&path, page.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let shown = path.clone();
    std::thread::spawn(move || {
        if let Err(e) = open_with_viewer(&shown) {
            eprintln!("fieldsync: could not open a browser ({e:#}); open the address above");
        }
        std::thread::sleep(Duration::from_secs(60));
        let _ = std::fs::remove_file(&shown);
    });
    Ok(())
}

/// Ctrl-C, or (on Unix) SIGTERM from a service manager or `kill`.
async fn stop_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")
    }
}
