//! Calling other services by name: [`Client`].
//!
//! A narun service is a NATS Micro service whose endpoint takes Binary HTTP requests on
//! the subject named after the service (what [`crate::serve`] answers, and Go's
//! `nconsumer`). [`Client::call`] sends a typed request to one of them as an HTTP `POST`
//! with a JSON body and decodes the JSON answer; [`Client::request`] sends any HTTP
//! request. NATS picks one replica of the service's queue group, so calls are load
//! balanced across its instances.
//!
//! ```no_run
//! # async fn demo(nats: async_nats::Client) -> Result<(), narun::CallError> {
//! #[derive(serde::Serialize)]
//! struct Add { a: i64, b: i64 }
//! #[derive(serde::Deserialize)]
//! struct Sum { sum: i64 }
//! let client = narun::Client::new(nats);
//! let s: Sum = client.call("calc", "/add", &Add { a: 1, b: 2 }).await?;
//! # Ok(()) }
//! ```
//!
//! **Deadlines travel.** Every call carries its budget in the `Narun-Timeout-Ms`
//! header (the gateway's convention): the called service drops the handler when it
//! passes. Inside a request handler of a narun service, a call's budget is the lesser
//! of the client's timeout and what is left of the incoming request's deadline
//! ([`crate::deadline`]) less a small margin (so the handler can still answer with the
//! failure), and a chain of calls never outlives the first caller.
//!
//! **Waiting for a service that is not there yet.** By default a call to a service with
//! no running instance fails at once ([`CallError::NoResponders`]). A client made with
//! [`Client::wait_for_responder`] waits up to the given time for an instance to appear
//! instead (a dependency still starting, a replica restarting; a scaled-to-zero app is
//! woken only by the gateway, not by a client call):
//! the server answers a request with nobody subscribed at once with "no responders", and
//! the client sends the request again after a backoff of 20 ms doubling up to 250 ms
//! ([`narun_wire::discovery::Backoff`]), so it sees the service within a quarter of a
//! second of its appearance, without busy polling. The wait is part of the call's
//! budget: it never outlasts the client's timeout nor the incoming request's deadline.
//! A request that nobody received is safe to send again (no instance saw it).
//!
//! ```no_run
//! # async fn demo(nats: async_nats::Client) -> Result<(), narun::CallError> {
//! use std::time::Duration;
//! let client = narun::Client::new(nats).wait_for_responder(Duration::from_secs(5));
//! let answer: serde_json::Value = client.call("db", "/get", &"key").await?;
//! # Ok(()) }
//! ```
//!
//! **Codecs.** [`Client::call`] writes and reads JSON; [`Client::call_with`] takes a
//! [`Codec`]: [`Json`], or [`Protobuf`] (feature `protobuf`) for prost messages
//! (`Content-Type: application/x-protobuf`), or one of your own.
//!
//! **Errors are typed** ([`CallError`]): no responders, timeout, an HTTP error status
//! with its body, an ADR-32 service error (`Nats-Service-Error-Code`), or a body that
//! does not decode.

use bytes::Bytes;
use narun_wire::names::{
    SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER, TIMEOUT_MS, timeout_ms_value,
};
use std::time::Duration;

/// Default budget of a call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Inside a handler, a call gives up this much (at most a tenth of what is left)
/// before the handler's own deadline, when the runner would drop the handler.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// Calls other narun services by name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    timeout: Duration,
    /// How long a call waits for an instance of the service to appear.
    wait: Duration,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No instance of the service is subscribed (after waiting `waited` for one to
    /// appear, with [`Client::wait_for_responder`]).
    #[error(
        "calling {service}: no instance of the service answers{} (is it deployed and running? `narunctl services ls` lists them)",
        if waited.is_zero() { String::new() } else { format!(" (waited {waited:?} for one)") }
    )]
    NoResponders { service: String, waited: Duration },
    /// The budget ran out (the client's timeout, or the incoming request's deadline).
    #[error("calling {service} {path}: no answer within {budget:?}")]
    Timeout {
        service: String,
        path: String,
        budget: Duration,
    },
    /// The service answered with an HTTP error status.
    #[error("calling {service} {path}: the service answered {status}: {}", String::from_utf8_lossy(.body))]
    Status {
        service: String,
        path: String,
        status: http::StatusCode,
        body: Bytes,
    },
    /// The service answered with an ADR-32 service error (`Nats-Service-Error-Code`).
    #[error("calling {service}: service error {code}: {description}")]
    Service {
        service: String,
        code: u16,
        description: String,
    },
    /// The request could not be encoded (a serializer error, a bad path).
    #[error("calling {service} {path}: encoding the request: {reason}")]
    Encode {
        service: String,
        path: String,
        reason: String,
    },
    /// The answer is not a Binary HTTP response, or its body not the expected JSON.
    #[error("calling {service} {path}: decoding the answer: {reason}")]
    Decode {
        service: String,
        path: String,
        reason: String,
    },
    /// NATS failed otherwise (connection lost, bad subject).
    #[error("calling {service}: {reason}")]
    Nats { service: String, reason: String },
}

impl CallError {
    /// The HTTP status this error stands for: the service's own status, the ADR-32 code
    /// when it is one, 503 for no responders, 504 for a timeout, 502 otherwise (what a
    /// handler forwarding the failure would answer).
    pub fn status(&self) -> http::StatusCode {
        match self {
            CallError::NoResponders { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
            CallError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            CallError::Status { status, .. } => *status,
            CallError::Service { code, .. } => {
                http::StatusCode::from_u16(*code).unwrap_or(http::StatusCode::BAD_GATEWAY)
            }
            CallError::Encode { .. } => http::StatusCode::INTERNAL_SERVER_ERROR,
            CallError::Decode { .. } | CallError::Nats { .. } => http::StatusCode::BAD_GATEWAY,
        }
    }
}

impl Client {
    /// A client on `nats` with the [`DEFAULT_TIMEOUT`].
    pub fn new(nats: async_nats::Client) -> Client {
        Client {
            nats,
            timeout: DEFAULT_TIMEOUT,
            wait: Duration::ZERO,
        }
    }

    /// The same client, waiting up to `wait` for an instance of the called service to
    /// appear when none runs (instead of failing at once with
    /// [`CallError::NoResponders`]); bounded by the call's budget. See the module docs.
    pub fn wait_for_responder(mut self, wait: Duration) -> Client {
        self.wait = wait;
        self
    }

    /// The same client with another budget per call.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// `POST path` to `service` with `req` as JSON; the 2xx answer's body decoded as JSON.
    pub async fn call<Req, Resp>(
        &self,
        service: &str,
        path: &str,
        req: &Req,
    ) -> Result<Resp, CallError>
    where
        Req: serde::Serialize + ?Sized,
        Resp: serde::de::DeserializeOwned,
    {
        self.call_with(&Json, service, path, req).await
    }

    /// `POST path` to `service` with `req` written by `codec` (its `Content-Type` and
    /// `Accept`); the 2xx answer's body read by `codec`. [`Json`] is what [`Client::call`]
    /// uses; [`Protobuf`] (feature `protobuf`) sends prost messages.
    pub async fn call_with<C, Req, Resp>(
        &self,
        codec: &C,
        service: &str,
        path: &str,
        req: &Req,
    ) -> Result<Resp, CallError>
    where
        C: Codec<Req, Resp>,
        Req: ?Sized,
    {
        let encode_error = |reason: String| CallError::Encode {
            service: service.into(),
            path: path.into(),
            reason,
        };
        let body = codec.encode(req).map_err(encode_error)?;
        let request = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, codec.content_type())
            .header(http::header::ACCEPT, codec.content_type())
            .body(Bytes::from(body))
            .map_err(|e| encode_error(e.to_string()))?;
        let response = self.request(service, request).await?;
        if !response.status().is_success() {
            return Err(CallError::Status {
                service: service.into(),
                path: path.into(),
                status: response.status(),
                body: response.into_body(),
            });
        }
        codec
            .decode(response.body())
            .map_err(|reason| CallError::Decode {
                service: service.into(),
                path: path.into(),
                reason,
            })
    }

    /// Send any HTTP request to `service`; its response whatever the status (only a
    /// failure to get one is an error).
    pub async fn request(
        &self,
        service: &str,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, CallError> {
        let path = request.uri().to_string();
        let budget = budget_within_deadline(self.timeout);
        let timeout = || CallError::Timeout {
            service: service.into(),
            path: path.clone(),
            budget,
        };
        if budget.is_zero() {
            return Err(timeout());
        }
        let (parts, body) = request.into_parts();
        let payload = Bytes::from(narun_wire::bhttp::encode_request(&parts, &body));
        let started = tokio::time::Instant::now();
        let give_up = started + budget;
        let stop_waiting = started + self.wait.min(budget);
        let mut backoff = narun_wire::discovery::Backoff::calls();
        let msg = loop {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(timeout());
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(TIMEOUT_MS, timeout_ms_value(left).as_str());
            crate::trace::inject(&mut headers);
            let req = async_nats::Request::new()
                .payload(payload.clone())
                .headers(headers)
                .timeout(Some(left));
            match self.nats.send_request(service.to_string(), req).await {
                Ok(m) => break m,
                Err(e) => {
                    use async_nats::RequestErrorKind;
                    return Err(match e.kind() {
                        RequestErrorKind::NoResponders => {
                            // Nobody received it: wait for an instance, then send again.
                            let now = tokio::time::Instant::now();
                            if now < stop_waiting {
                                let delay = backoff.next().unwrap_or(DEADLINE_MARGIN);
                                tokio::time::sleep_until((now + delay).min(stop_waiting)).await;
                                continue;
                            }
                            CallError::NoResponders {
                                service: service.into(),
                                // Zero when this client does not wait (failed at once).
                                waited: if self.wait.is_zero() {
                                    Duration::ZERO
                                } else {
                                    now.saturating_duration_since(started)
                                },
                            }
                        }
                        RequestErrorKind::TimedOut => timeout(),
                        _ => CallError::Nats {
                            service: service.into(),
                            reason: e.to_string(),
                        },
                    });
                }
            }
        };
        if let Some(h) = &msg.headers
            && let Some(code) = h.get(SERVICE_ERROR_CODE_HEADER)
        {
            return Err(CallError::Service {
                service: service.into(),
                code: code.as_str().trim().parse().unwrap_or(500),
                description: h
                    .get(SERVICE_ERROR_HEADER)
                    .map(|d| d.as_str().to_string())
                    .unwrap_or_default(),
            });
        }
        narun_wire::bhttp::decode_response_shared(msg.payload).map_err(|e| CallError::Decode {
            service: service.into(),
            path,
            reason: format!("not a Binary HTTP response: {e}"),
        })
    }
}

/// How [`Client::call_with`] writes a request body of type `Req` and reads an answer
/// body of type `Resp`. Errors are a sentence naming what is wrong; the client wraps
/// them into [`CallError::Encode`] / [`CallError::Decode`].
pub trait Codec<Req: ?Sized, Resp> {
    /// The media type sent as `Content-Type` and `Accept`.
    fn content_type(&self) -> &'static str;
    /// The request body.
    fn encode(&self, req: &Req) -> Result<Vec<u8>, String>;
    /// The answer, from a 2xx body.
    fn decode(&self, body: &[u8]) -> Result<Resp, String>;
}

/// JSON bodies (`application/json`, serde): [`Client::call`]'s codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<Req, Resp> Codec<Req, Resp> for Json
where
    Req: serde::Serialize + ?Sized,
    Resp: serde::de::DeserializeOwned,
{
    fn content_type(&self) -> &'static str {
        "application/json"
    }
    fn encode(&self, req: &Req) -> Result<Vec<u8>, String> {
        serde_json::to_vec(req).map_err(|e| e.to_string())
    }
    fn decode(&self, body: &[u8]) -> Result<Resp, String> {
        serde_json::from_slice(body).map_err(|e| format!("the body is not the expected JSON: {e}"))
    }
}

/// Protocol Buffers bodies (`application/x-protobuf`, prost messages: the types
/// `tonic-prost-build`/`prost-build` generate from a `.proto`). Feature `protobuf`.
#[cfg(feature = "protobuf")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Protobuf;

/// The media type [`Protobuf`] sends and expects.
#[cfg(feature = "protobuf")]
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

#[cfg(feature = "protobuf")]
impl<Req, Resp> Codec<Req, Resp> for Protobuf
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    fn content_type(&self) -> &'static str {
        PROTOBUF_CONTENT_TYPE
    }
    fn encode(&self, req: &Req) -> Result<Vec<u8>, String> {
        Ok(req.encode_to_vec())
    }
    fn decode(&self, body: &[u8]) -> Result<Resp, String> {
        Resp::decode(body)
            .map_err(|e| format!("the body is not the expected protobuf message: {e}"))
    }
}

tokio::task_local! {
    /// The deadline of the request being handled (set by the request runner).
    pub(crate) static DEADLINE: Option<tokio::time::Instant>;
}

/// The deadline of the request this task is handling (the caller's `Narun-Timeout-Ms`
/// counted from when it arrived), or `None` outside a handler or when the caller sent
/// none. [`Client`] calls made while handling a request never wait past it.
pub fn deadline() -> Option<tokio::time::Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// A call's budget: `timeout`, capped inside a handler by what is left of the request
/// being handled ([`deadline`]) less a small margin (at most [`DEADLINE_MARGIN`], a tenth
/// of what is left), so that the handler can still answer with the failure. Used by
/// [`Client`] and the gRPC channel.
pub(crate) fn budget_within_deadline(timeout: Duration) -> Duration {
    match deadline() {
        Some(at) => {
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            timeout.min(left.saturating_sub((left / 10).min(DEADLINE_MARGIN)))
        }
        None => timeout,
    }
}
