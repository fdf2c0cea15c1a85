//! The job API on the routed listener (only while async routes exist):
//!
//! | request | answer |
//! |---|---|
//! | `GET /_jobs/<id>` | 200, the [`JobRecord`] as JSON (state, attempts, result summary) |
//! | `GET /_jobs/<id>/result` | the stored response (status, headers, body); 409 while the job has none |
//! | `DELETE /_jobs/<id>` | 200 + the cancelled record; 409 unless queued or retrying |
//!
//! A malformed id is a 400, an unknown (or expired) one a 404, another method a 405; every
//! error is a short text naming what is wrong.
//!
//! # Who may see a job
//!
//! A job is guarded by the `auth` of the route that accepted it (found again by the
//! record's `host` and `route`, as configured now): a request without a credential that
//! route accepts gets the route's own refusal (401 with `WWW-Authenticate`, 400, 403), and
//! a credential of another identity than the job's `owner` gets 403. A credential of
//! `[gateway.jobs.auth]` opens every job (operators). Jobs of open routes stay open unless
//! `[gateway.jobs.auth]` is set; a job whose route is gone needs that credential.

use super::Jobs;
use crate::Shared;
use crate::proxy::{Resp, text};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use narun_wire::jobs::{self as wire, JobRecord, JobState, UpdateError};
use tokio::io::AsyncReadExt;

/// Whether `path` belongs to the job API.
pub(crate) fn is_api_path(path: &str) -> bool {
    path == "/_jobs" || path.starts_with(wire::HTTP_PREFIX)
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Resp {
    let mut body = serde_json::to_vec_pretty(value).expect("serializes");
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn store_error(e: impl std::fmt::Display) -> Resp {
    crate::proxy::limit_headers(text(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("Job store unavailable: {e}"),
    ))
}

/// The refusal of a request by `auth`.
fn denied(d: crate::auth::Denial) -> Resp {
    let mut r = text(d.status, d.message);
    for c in d.challenges {
        r.headers_mut().append(header::WWW_AUTHENTICATE, c);
    }
    r
}

/// Whether the client of `headers` may read or cancel job `rec` (see the module docs).
async fn access(
    state: &Shared,
    jobs: &Jobs,
    rec: &JobRecord,
    headers: &http::HeaderMap,
) -> Result<(), Resp> {
    use crate::auth::Outcome;
    let mut operator = None;
    if let Some(p) = &jobs.auth {
        match p.check(headers).await {
            Outcome::Allowed(_) => return Ok(()),
            Outcome::Denied(d) => operator = Some(d),
        }
    }
    let method = Method::from_bytes(rec.method.as_bytes()).unwrap_or(Method::POST);
    let router = state.router.load();
    let route = match router.find_on(&method, rec.host.as_deref(), &rec.route).m {
        crate::router::Match::Found(t) if *t.path == *rec.route => Some(t.auth.clone()),
        _ => None,
    };
    match (route, &rec.owner) {
        (Some(Some(policy)), owner) => match policy.check(headers).await {
            Outcome::Allowed(user) => match owner.as_deref() {
                Some(o)
                    if !o.is_empty()
                        && user.as_ref().map(|u| u.as_bytes()) != Some(o.as_bytes()) =>
                {
                    Err(text(
                        StatusCode::FORBIDDEN,
                        &format!("Forbidden: job {} was submitted by another client", rec.id),
                    ))
                }
                _ => Ok(()),
            },
            Outcome::Denied(d) => Err(denied(d)),
        },
        // The route is open now and the job was submitted without a credential.
        (Some(None), None) => match operator {
            Some(d) => Err(denied(d)),
            None => Ok(()),
        },
        // The route is gone, or it was guarded when the job was submitted and is open now:
        // only an operator may see the job.
        _ => Err(match operator {
            Some(d) => denied(d),
            None => text(
                StatusCode::FORBIDDEN,
                &format!(
                    "Forbidden: the route that accepted job {} is gone or changed its auth; \
                     [gateway.jobs.auth] credentials can see it",
                    rec.id
                ),
            ),
        }),
    }
}

pub(crate) async fn handle<B>(state: &Shared, jobs: &Jobs, req: &Request<B>) -> Resp {
    let rest = req
        .uri()
        .path()
        .strip_prefix(wire::HTTP_PREFIX)
        .unwrap_or("");
    let (id, result) = match rest.strip_suffix("/result") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if let Some(problem) = wire::id_problem(id) {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("Bad job id in {}: {problem}", req.uri().path()),
        );
    }
    let allowed = if result {
        "GET, HEAD"
    } else {
        "GET, HEAD, DELETE"
    };
    let method = req.method();
    if !(method == Method::GET || method == Method::HEAD || (!result && method == Method::DELETE)) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        return r;
    }
    let stores = match jobs.stores().await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let rec = match wire::read(&stores.state, id).await {
        Ok(Some((rec, _))) => rec,
        Ok(None) => return update_error(UpdateError::NotFound(id.into())),
        Err(e) => return update_error(e),
    };
    if let Err(r) = access(state, jobs, &rec, req.headers()).await {
        return r;
    }
    if method == Method::DELETE {
        return match wire::update(&stores.state, id, |rec| {
            if let Some(p) = rec.cancel_problem() {
                return Err(p);
            }
            rec.state = JobState::Cancelled;
            rec.next_attempt_at = None;
            rec.error = Some("cancelled".into());
            Ok(())
        })
        .await
        {
            Ok(rec) => json(StatusCode::OK, &rec),
            Err(e) => update_error(e),
        };
    }
    if !result {
        return json(StatusCode::OK, &rec);
    }
    stored_result(stores, &rec).await
}

fn update_error(e: UpdateError) -> Resp {
    match e {
        UpdateError::NotFound(_) => text(StatusCode::NOT_FOUND, &e.to_string()),
        UpdateError::Refused(why) => text(StatusCode::CONFLICT, &why),
        UpdateError::Store(why) => store_error(why),
    }
}

/// The stored response of a finished job, as it was answered.
async fn stored_result(stores: &wire::Stores, rec: &JobRecord) -> Resp {
    let Some(res) = &rec.result else {
        return text(
            StatusCode::CONFLICT,
            &format!(
                "job {} is {}: it has no result{}",
                rec.id,
                rec.state.as_str(),
                if rec.state.is_final() { "" } else { " yet" }
            ),
        );
    };
    let bytes = if res.stored == "object" {
        match stores.blobs.get(wire::result_object(&rec.id)).await {
            Ok(mut obj) => {
                let mut buf = Vec::new();
                if let Err(e) = obj.read_to_end(&mut buf).await {
                    return store_error(format!("reading the result of job {}: {e}", rec.id));
                }
                Bytes::from(buf)
            }
            Err(e) => return store_error(format!("the result of job {}: {e}", rec.id)),
        }
    } else {
        match stores.results.get(&rec.id).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return text(
                    StatusCode::NOT_FOUND,
                    &format!("the result of job {} expired", rec.id),
                );
            }
            Err(e) => return store_error(format!("the result of job {}: {e}", rec.id)),
        }
    };
    match narun_wire::bhttp::decode_response_shared(bytes) {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            if let Ok(v) = HeaderValue::from_str(&rec.id) {
                parts.headers.insert(wire::ID_HEADER, v);
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => store_error(format!(
            "the stored result of job {} is corrupt: {e}",
            rec.id
        )),
    }
}
