//! Regression notifications: a Slack-compatible JSON message (`text` plus mrkdwn `blocks`: verdict, benchmark,
//! change, link) POSTed to each configured incoming webhook, retried with doubling delays on connection errors,
//! 5xx and 429 answers. Failures are logged through `tracing` and returned as a summary, never raised: a webhook
//! that is down must not stop the scheduler.

use std::time::Duration;

use serde::Serialize;

/// One regressed (benchmark, metric) line.
#[derive(Debug, Clone, Serialize)]
pub struct Regression {
    pub bench: String,
    pub metric: String,
    /// Relative change (head − base) / |base|, when defined.
    pub change: Option<f64>,
    pub detail: String,
}

/// What a notification says.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub verdict: String,
    pub job: String,
    pub commit: String,
    pub branch: String,
    pub run_id: Option<String>,
    pub base_run_id: Option<String>,
    pub regressions: Vec<Regression>,
    /// Dashboard or commit URL.
    pub link: Option<String>,
}

impl Message {
    /// The Slack-compatible payload.
    pub fn payload(&self) -> serde_json::Value {
        let short = &self.commit[..self.commit.len().min(10)];
        let head = format!(
            "saeperf: {} on {} ({short}) — job {}, {} regressed",
            self.verdict,
            self.branch,
            self.job,
            match self.regressions.len() {
                1 => "1 measurement".to_string(),
                n => format!("{n} measurements"),
            }
        );
        let mut lines: Vec<String> = self
            .regressions
            .iter()
            .take(20)
            .map(|r| {
                let change = r
                    .change
                    .map(|c| format!("{:+.1}%", c * 100.0))
                    .unwrap_or_else(|| "-".into());
                format!("• `{}` {}: {change} — {}", r.bench, r.metric, r.detail)
            })
            .collect();
        if self.regressions.len() > 20 {
            lines.push(format!("… and {} more", self.regressions.len() - 20));
        }
        if let Some(l) = &self.link {
            lines.push(format!("<{l}|details>"));
        }
        let text = format!("{head}\n{}", lines.join("\n"));
        serde_json::json!({
            "text": text,
            "blocks": [
                { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{head}*") } },
                { "type": "section", "text": { "type": "mrkdwn", "text": lines.join("\n") } },
            ],
        })
    }
}

/// How to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub attempts: u32,
    pub first_delay: Duration,
    pub timeout: Duration,
}

/// Result per webhook: Ok(attempts used) or Err(last error).
pub type Outcomes = Vec<(String, Result<u32, String>)>;

/// POST the message to every webhook; never fails (errors are logged and returned).
pub fn send(webhooks: &[String], msg: &Message, d: &Delivery) -> Outcomes {
    if webhooks.is_empty() {
        return vec![];
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::blocking::Client::builder()
        .timeout(d.timeout)
        .user_agent(concat!("saeperf-runner/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot build the HTTP client for notifications: {e}");
            return webhooks
                .iter()
                .map(|w| (w.clone(), Err(format!("no HTTP client: {e}"))))
                .collect();
        }
    };
    let body = msg.payload();
    webhooks
        .iter()
        .map(|url| {
            let r = post_with_retries(&client, url, &body, d);
            match &r {
                Ok(n) => tracing::info!(url = %redact(url), attempts = n, "notification delivered"),
                Err(e) => tracing::warn!(url = %redact(url), "notification failed: {e}"),
            }
            (redact(url), r)
        })
        .collect()
}

fn post_with_retries(
    client: &reqwest::blocking::Client,
    url: &str,
    body: &serde_json::Value,
    d: &Delivery,
) -> Result<u32, String> {
    let mut delay = d.first_delay;
    let mut last = String::new();
    for attempt in 1..=d.attempts.max(1) {
        match client.post(url).json(body).send() {
            Ok(resp) if resp.status().is_success() => return Ok(attempt),
            Ok(resp) => {
                let status = resp.status();
                last = format!("HTTP {status}");
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(format!("{last} (not retried)"));
                }
            }
            Err(e) => last = format!("{e}"),
        }
        if attempt < d.attempts {
            tracing::debug!(url = %redact(url), attempt, "notification failed ({last}); retrying in {delay:?}");
            std::thread::sleep(delay);
            delay *= 2;
        }
    }
    Err(format!("{last} after {} attempts", d.attempts))
}

/// Webhook URLs carry secrets in their path: log only scheme, host and port.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split('/').next().unwrap_or("");
            format!("{scheme}://{host}/…")
        }
        None => "<webhook>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A real local HTTP server answering the given statuses in turn; returns the bodies it received.
    fn server(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook/secret", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut bodies = vec![];
            for st in statuses {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut b = vec![0; len];
                r.read_exact(&mut b).unwrap();
                bodies.push(String::from_utf8(b).unwrap());
                let mut s = s;
                write!(
                    s,
                    "HTTP/1.1 {st} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                .unwrap();
            }
            bodies
        });
        (url, h)
    }

    fn msg() -> Message {
        Message {
            verdict: "regression".into(),
            job: "nightly".into(),
            commit: "0123456789abcdef".into(),
            branch: "main".into(),
            run_id: Some("r".into()),
            base_run_id: None,
            regressions: vec![Regression {
                bench: "tiny-relu".into(),
                metric: "mse".into(),
                change: Some(0.5),
                detail: "worse".into(),
            }],
            link: Some("https://example.invalid/d".into()),
        }
    }

    #[test]
    fn retries_server_errors_then_delivers() {
        let (url, h) = server(vec![503, 500, 200]);
        let d = Delivery {
            attempts: 4,
            first_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        };
        let out = send(&[url], &msg(), &d);
        assert_eq!(out[0].1, Ok(3));
        let bodies = h.join().unwrap();
        assert_eq!(bodies.len(), 3);
        let v: serde_json::Value = serde_json::from_str(&bodies[2]).unwrap();
        let t = v["text"].as_str().unwrap();
        assert!(
            t.contains("regression") && t.contains("tiny-relu") && t.contains("+50.0%"),
            "{t}"
        );
    }

    #[test]
    fn failures_are_returned_not_raised() {
        let (url, h) = server(vec![400]);
        let d = Delivery {
            attempts: 3,
            first_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        };
        let out = send(&[url, "http://127.0.0.1:1/x".into()], &msg(), &d);
        assert!(out[0].1.as_ref().unwrap_err().contains("400"));
        assert!(out[1].1.is_err());
        assert!(!out[0].0.contains("secret"));
        h.join().unwrap();
    }
}
