//! `narunctl request SERVICE [METHOD] PATH`: one HTTP request to a service over NATS,
//! encoded as Binary HTTP like the gateway does; the response is printed as HTTP/1.

use crate::cli::{ConnArgs, RequestArgs};
use crate::session::Session;
use anyhow::{Context, Result, anyhow, bail};
use narun_wire::names;
use std::io::Write;

/// Run `request`.
pub async fn run(conn: &ConnArgs, args: RequestArgs) -> Result<()> {
    let (method, path) = match args.target.as_slice() {
        [path] => (
            if args.data.is_some() { "POST" } else { "GET" }.to_string(),
            path.clone(),
        ),
        [m, path] => (m.to_uppercase(), path.clone()),
        _ => bail!("expected [METHOD] PATH"),
    };
    let body: Vec<u8> = match &args.data {
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).with_context(|| format!("cannot read body file {}", &d[1..]))?
        }
        Some(d) => d.clone().into_bytes(),
        None => Vec::new(),
    };
    let mut builder = http::Request::builder()
        .method(method.as_str())
        .uri(path.as_str());
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("invalid header {h:?}: expected 'Name: value'"))?;
        builder = builder.header(k.trim(), v.trim());
    }
    let req = builder
        .body(())
        .map_err(|e| anyhow!("invalid request {method} {path}: {e}"))?;
    let (parts, ()) = req.into_parts();
    let payload = narun_wire::bhttp::encode_request(&parts, &body);
    let session = Session::connect(conn, "request").await?;
    let reply = match tokio::time::timeout(
        session.timeout,
        session.client.request(args.service.clone(), payload.into()),
    )
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            bail!(
                "no service is listening on {} (see `narunctl svc ls`)",
                args.service
            )
        }
        Ok(Err(e)) => bail!("request to {}: {e}", args.service),
        Err(_) => bail!(
            "request to {}: no answer within {:?}",
            args.service,
            session.timeout
        ),
    };
    if let Some(h) = &reply.headers
        && let Some(err) = h.get(names::SERVICE_ERROR_HEADER)
    {
        let code = h
            .get(names::SERVICE_ERROR_CODE_HEADER)
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        bail!(
            "service {} answered with error {code}: {}",
            args.service,
            err.as_str()
        );
    }
    let resp = narun_wire::bhttp::decode_response(&reply.payload).map_err(|e| {
        anyhow!(
            "the answer of {} is not a Binary HTTP response: {e}",
            args.service
        )
    })?;
    let mut out = std::io::stdout();
    writeln!(out, "{:?} {}", resp.version(), resp.status())?;
    for (k, v) in resp.headers() {
        writeln!(out, "{k}: {}", String::from_utf8_lossy(v.as_bytes()))?;
    }
    writeln!(out)?;
    out.write_all(resp.body())?;
    out.flush()?;
    Ok(())
}
