//! `tokenwell decode`: a JWT's header and claims, without verifying the signature.

use std::path::PathBuf;

use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};

use crate::util::{
    Failure, Outcome, bold, colour, date, left, now, out, print_json, read_text, relative,
};

pub const EXAMPLES: &str = "\
Examples:
  tokenwell decode eyJ0eXAiOiJKV1Qi…
  tokenwell token --scope api://x/.default | tokenwell decode -
  tokenwell decode --file token.txt --json

The signature is not verified: this shows what a token says, not that it is genuine.";

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// The token (`-` or nothing: read it from stdin). A leading `Bearer ` is ignored.
    token: Option<String>,
    /// Read the token from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    file: Option<PathBuf>,
    /// Print JSON (header, claims, and the times as dates).
    #[arg(long)]
    json: bool,
}

/// Claims holding Unix times.
const TIME_CLAIMS: [&str; 4] = ["exp", "nbf", "iat", "auth_time"];

fn segment(part: &str, name: &str) -> Outcome<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| Failure::error(format!("the token's {name} is not base64url")))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| Failure::error(format!("the token's {name} is not JSON")))?;
    if !value.is_object() {
        return Err(Failure::error(format!(
            "the token's {name} is not a JSON object"
        )));
    }
    Ok(value)
}

/// Header and claims of `token`.
pub fn decode(token: &str) -> Outcome<(Value, Value)> {
    let token = token.trim();
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("Authorization: Bearer "))
        .unwrap_or(token)
        .trim();
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, _signature] = parts.as_slice() else {
        return Err(Failure::error(format!(
            "not a JWT: expected 3 dot-separated parts, found {} (an opaque token cannot be decoded)",
            parts.len()
        )));
    };
    Ok((segment(header, "header")?, segment(claims, "claims")?))
}

pub fn run(args: &DecodeArgs) -> Outcome {
    let token = match (&args.file, args.token.as_deref()) {
        (Some(file), _) => read_text(file, "token file")?,
        (None, Some(token)) if token != "-" => token.to_owned(),
        _ => read_text(std::path::Path::new("-"), "token")?,
    };
    if token.trim().is_empty() {
        return Err(Failure::usage(
            "no token given: pass it, --file FILE, or pipe it to stdin",
        ));
    }
    let (header, claims) = decode(&token)?;
    let at = now();
    let mut times = serde_json::Map::new();
    for name in TIME_CLAIMS {
        if let Some(secs) = claims.get(name).and_then(Value::as_u64) {
            // Only `exp` expires; the others are just before or after now.
            let relative = if name == "exp" {
                left(secs, at)
            } else {
                relative(secs, at)
            };
            times.insert(
                name.to_owned(),
                json!({ "date": date(secs), "relative": relative }),
            );
        }
    }
    if args.json {
        return print_json(&json!({ "header": header, "claims": claims, "times": times }));
    }
    let colour = colour();
    out(bold("header", colour))?;
    if let Value::Object(fields) = &header {
        for (name, value) in fields {
            out(format!("  {name:<12} {value}"))?;
        }
    }
    out(bold("claims", colour))?;
    if let Value::Object(fields) = &claims {
        for (name, value) in fields {
            let note = match times.get(name) {
                Some(t) => format!(
                    "  ({}, {})",
                    t["date"].as_str().unwrap_or(""),
                    t["relative"].as_str().unwrap_or("")
                ),
                None => String::new(),
            };
            out(format!("  {name:<12} {value}{note}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_refuses() {
        let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!("{}.{}.sig", b(r#"{"alg":"RS256"}"#), b(r#"{"exp":1}"#));
        let (header, claims) = decode(&format!("Bearer {token}")).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(claims["exp"], 1);
        assert!(
            decode("abc")
                .unwrap_err()
                .message
                .contains("3 dot-separated")
        );
        assert!(decode("a.b.c").unwrap_err().message.contains("base64url"));
        assert!(
            decode(&format!("{}.x.y", b("[]")))
                .unwrap_err()
                .message
                .contains("header")
        );
    }
}
