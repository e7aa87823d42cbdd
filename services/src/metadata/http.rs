//! The little HTTP/1.x the proxy speaks: a VM's request read from at most a bounded number
//! of bytes, the request sent upstream with the instance's identity, and the error answers.
//!
//! One request per connection: the proxy answers the first request and closes, so
//! pipelined requests after it are never read (a VM cannot queue work), and the upstream
//! request says `Connection: close` so its end is the end of the answer.
//!
//! Hostile input ends in a status, never in unbounded memory: the head and body together
//! fit `max_request_bytes` or the answer is 431/413; a request line, header or framing
//! this parser does not take exactly is 400 (chunked bodies 501, other methods 405).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Most header lines a request may carry.
pub const MAX_HEADERS: usize = 64;

/// A request that reached its end (head and body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// GET, HEAD or POST.
    pub method: &'static str,
    /// The origin-form target (`/latest/meta-data/instance-id`).
    pub target: String,
    /// The headers the proxy passes on (see [`PASSED_HEADERS`]), as received.
    pub passed: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; empty without one).
    pub body: Vec<u8>,
}

/// Why a request gets an error answer instead of being proxied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// 400: a request line, header or length this parser does not take.
    BadRequest,
    /// 405: a method other than GET, HEAD, POST.
    MethodNotAllowed,
    /// 413: the body announced would pass the request limit.
    TooLarge,
    /// 431: the head does not end within the request limit.
    HeadTooLarge,
    /// 501: `Transfer-Encoding` (chunked bodies are not taken).
    NotImplemented,
    /// 505: neither HTTP/1.0 nor HTTP/1.1.
    VersionNotSupported,
}

impl RequestError {
    /// Its status code.
    pub const fn status(self) -> u16 {
        match self {
            RequestError::BadRequest => 400,
            RequestError::MethodNotAllowed => 405,
            RequestError::TooLarge => 413,
            RequestError::HeadTooLarge => 431,
            RequestError::NotImplemented => 501,
            RequestError::VersionNotSupported => 505,
        }
    }
}

/// Client headers the proxy passes upstream; every other one stays behind (hop-by-hop
/// ones, and above all any identity header a VM writes itself: `X-Forwarded-For`,
/// `X-Instance-ID`, `X-Neutron-*`, ... are the proxy's to set).
pub const PASSED_HEADERS: [&str; 3] = ["accept", "content-type", "user-agent"];

/// Reads the request at the start of `buf`, which holds every byte received so far (at
/// most `max_bytes`, the caller's bound). `Ok(None)`: not complete yet and may still be.
pub fn parse_request(buf: &[u8], max_bytes: usize) -> Result<Option<Request>, RequestError> {
    let Some(head_len) = find_head_end(buf) else {
        return if buf.len() >= max_bytes {
            Err(RequestError::HeadTooLarge)
        } else {
            // Anything but CR/LF framing or text is refused as soon as it shows, so a
            // client cannot hold the connection with a head that could never parse.
            check_partial_head(buf).map(|()| None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_len - 4]).map_err(|_| RequestError::BadRequest)?;
    let mut lines = head.split("\r\n");
    let (method, target) = parse_request_line(lines.next().unwrap_or_default())?;
    let mut passed = Vec::new();
    let mut content_length: Option<usize> = None;
    for (count, line) in lines.enumerate() {
        if count >= MAX_HEADERS {
            return Err(RequestError::HeadTooLarge);
        }
        let (name, value) = parse_header(line)?;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::NotImplemented);
        }
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some()
                || value.is_empty()
                || !value.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(RequestError::BadRequest);
            }
            content_length = Some(value.parse().map_err(|_| RequestError::TooLarge)?);
        } else if PASSED_HEADERS.iter().any(|p| name.eq_ignore_ascii_case(p)) {
            passed.push((name.to_owned(), value.to_owned()));
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_bytes.saturating_sub(head_len) {
        return Err(RequestError::TooLarge);
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    Ok(Some(Request {
        method,
        target: target.to_owned(),
        passed,
        body: buf[head_len..head_len + body_len].to_vec(),
    }))
}

/// Offset just past the blank line ending the head, if it is in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Refuses a head in progress that can never be one: a byte that is neither printable
/// ASCII, tab, nor part of a CRLF.
fn check_partial_head(buf: &[u8]) -> Result<(), RequestError> {
    for (i, &b) in buf.iter().enumerate() {
        let ok = match b {
            b'\r' => buf.get(i + 1).is_none_or(|&n| n == b'\n'),
            b'\n' => i > 0 && buf[i - 1] == b'\r',
            b'\t' | 0x20..=0x7e => true,
            _ => false,
        };
        if !ok {
            return Err(RequestError::BadRequest);
        }
    }
    Ok(())
}

fn parse_request_line(line: &str) -> Result<(&'static str, &str), RequestError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::BadRequest);
    };
    if !method.bytes().all(is_token) || method.is_empty() {
        return Err(RequestError::BadRequest);
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::BadRequest);
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => return Err(RequestError::VersionNotSupported),
        _ => return Err(RequestError::BadRequest),
    }
    let method = match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        _ => return Err(RequestError::MethodNotAllowed),
    };
    Ok((method, target))
}

fn parse_header(line: &str) -> Result<(&str, &str), RequestError> {
    // No obsolete line folding, no space before the colon (RFC 9112 §5.1, §5.2).
    let (name, value) = line.split_once(':').ok_or(RequestError::BadRequest)?;
    if name.is_empty() || !name.bytes().all(is_token) {
        return Err(RequestError::BadRequest);
    }
    let value = value.trim_matches([' ', '\t']);
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
    {
        return Err(RequestError::BadRequest);
    }
    Ok((name, value))
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Who is asking, as the proxy tells the metadata server: all from the port the request
/// came in on, never from the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The VM's fixed IP (`X-Forwarded-For`).
    pub address: Ipv4Addr,
    /// The port's `device_id` (`X-Instance-ID`).
    pub instance_id: &'a str,
    /// The port's `project_id` (`X-Tenant-ID`).
    pub project_id: &'a str,
    /// HMAC-SHA256 of the instance id (`X-Instance-ID-Signature`).
    pub signature: &'a str,
    /// `X-Neutron-Router-ID` or `X-Neutron-Network-ID` and its value.
    pub via: (&'static str, &'a str),
}

/// The request to send upstream, to `host` (the `Host` header).
pub fn upstream_request(req: &Request, who: &Identity<'_>, host: &str) -> Vec<u8> {
    let mut head = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "{} {} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: {}\r\nX-Instance-ID: {}\r\n\
         X-Tenant-ID: {}\r\nX-Instance-ID-Signature: {}\r\n{}: {}\r\n",
        req.method,
        req.target,
        who.address,
        who.instance_id,
        who.project_id,
        who.signature,
        who.via.0,
        who.via.1,
    );
    for (name, value) in &req.passed {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if req.method == "POST" || !req.body.is_empty() {
        let _ = write!(head, "Content-Length: {}\r\n", req.body.len());
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&req.body);
    out
}

/// A complete answer with `status` and a one-line text body, closing the connection.
pub fn error_response(status: u16) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let body = format!("{status} {reason}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 8192;

    fn parse(s: &str) -> Result<Option<Request>, RequestError> {
        parse_request(s.as_bytes(), MAX)
    }

    #[test]
    fn a_curl_request_parses() {
        let r = parse(
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/latest/meta-data/instance-id");
        assert_eq!(
            r.passed,
            vec![
                ("User-Agent".into(), "curl/8.5.0".into()),
                ("Accept".into(), "*/*".into())
            ]
        );
        assert!(r.body.is_empty());
    }

    #[test]
    fn a_request_is_incomplete_until_its_blank_line_and_body() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse("GET / HTTP/1.1\r"), Ok(None));
        let post = "POST /openstack/latest/password HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc";
        assert_eq!(parse(post), Ok(None));
        let r = parse(&format!("{post}de")).unwrap().unwrap();
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn the_identity_headers_a_vm_writes_are_never_passed_on() {
        let r = parse(
            "GET / HTTP/1.1\r\nX-Instance-ID: someone-else\r\nX-Forwarded-For: 198.18.1.11\r\n\
             X-Tenant-ID: t\r\nX-Instance-ID-Signature: s\r\nX-Neutron-Router-ID: r\r\n\
             x-neutron-network-id: n\r\nConnection: keep-alive\r\nHost: h\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(r.passed.is_empty(), "{:?}", r.passed);
        let who = Identity {
            address: Ipv4Addr::new(198, 18, 1, 10),
            instance_id: "inst-1",
            project_id: "proj-1",
            signature: "abcd",
            via: ("X-Neutron-Router-ID", "r1"),
        };
        let up = String::from_utf8(upstream_request(&r, &who, "203.0.113.5:8775")).unwrap();
        assert_eq!(
            up,
            "GET / HTTP/1.1\r\nHost: 203.0.113.5:8775\r\nX-Forwarded-For: 198.18.1.10\r\n\
             X-Instance-ID: inst-1\r\nX-Tenant-ID: proj-1\r\nX-Instance-ID-Signature: abcd\r\n\
             X-Neutron-Router-ID: r1\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn bad_request_lines_and_headers_are_refused() {
        for (req, want) in [
            ("GET /\r\n\r\n", RequestError::BadRequest),
            ("GET  / HTTP/1.1\r\n\r\n", RequestError::BadRequest),
            ("GET http://x/ HTTP/1.1\r\n\r\n", RequestError::BadRequest),
            ("GET / HTTP/2.0\r\n\r\n", RequestError::VersionNotSupported),
            ("GET / FOO\r\n\r\n", RequestError::BadRequest),
            ("DELETE / HTTP/1.1\r\n\r\n", RequestError::MethodNotAllowed),
            (
                "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
                RequestError::BadRequest,
            ),
            ("GET / HTTP/1.1\r\nA : b\r\n\r\n", RequestError::BadRequest),
            (
                "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
                RequestError::BadRequest,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                RequestError::NotImplemented,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                RequestError::BadRequest,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                RequestError::BadRequest,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                RequestError::TooLarge,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\n",
                RequestError::TooLarge,
            ),
            ("GET / HTTP/1.1\nHost: x\n\n", RequestError::BadRequest),
            ("GET /\x01 HTTP/1.1", RequestError::BadRequest),
        ] {
            assert_eq!(parse(req), Err(want), "{req:?}");
        }
    }

    #[test]
    fn a_head_that_never_ends_is_refused_at_the_limit() {
        // Slowloris: header after header, never the blank line.
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        while buf.len() < MAX {
            buf.extend_from_slice(b"X-a: b\r\n");
            let r = parse_request(&buf[..buf.len().min(MAX)], MAX);
            if buf.len() < MAX {
                assert_eq!(r, Ok(None));
            }
        }
        assert_eq!(
            parse_request(&buf[..MAX], MAX),
            Err(RequestError::HeadTooLarge)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(RequestError::HeadTooLarge)
        );
    }

    #[test]
    fn pipelined_requests_after_the_first_are_not_read() {
        let r = parse("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.target, "/a");
    }

    #[test]
    fn error_answers_carry_their_length() {
        let r = String::from_utf8(error_response(504)).unwrap();
        assert!(r.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n504 Gateway Timeout\n"), "{r}");
        assert!(r.contains("Content-Length: 20\r\n"), "{r}");
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_answer_or_a_wait_never_a_panic(
            buf in proptest::collection::vec(any::<u8>(), 0..600),
            max in 16usize..1024,
        ) {
            let buf = &buf[..buf.len().min(max)];
            match parse_request(buf, max) {
                Ok(Some(r)) => prop_assert!(r.body.len() <= max),
                Ok(None) => prop_assert!(buf.len() < max),
                Err(_) => {}
            }
        }

        #[test]
        fn a_well_formed_request_parses_whole(
            path in "/[a-z0-9/_.-]{0,40}",
            body in proptest::collection::vec(any::<u8>(), 0..64),
            split in 0usize..200,
        ) {
            let mut req = format!(
                "POST {path} HTTP/1.1\r\nContent-Length: {}\r\nAccept: */*\r\n\r\n",
                body.len()
            ).into_bytes();
            req.extend_from_slice(&body);
            let cut = split.min(req.len().saturating_sub(1));
            prop_assert_eq!(parse_request(&req[..cut], MAX), Ok(None));
            let r = parse_request(&req, MAX).unwrap().unwrap();
            prop_assert_eq!(r.target, path);
            prop_assert_eq!(r.body, body);
        }
    }
}
