//! `tokenwell cache` on a Redis Cluster: partitions spread over every master are all listed
//! (cluster-aware SCAN), purged and exported. Uses cache-redis's cluster launcher.

#[path = "../../cache-redis/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::RedisCluster;
use tokenwell_idp_emulator::{Emulator, EmulatorConfig};

fn tokenwell(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwell"));
    command.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.stdin(Stdio::null()).output().unwrap()
}

fn json(output: &Output) -> Value {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn cache_commands_see_every_master_of_a_cluster() {
    let cluster = RedisCluster::start(3);
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let cache = format!("redis+cluster://{}", nodes.join(","));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = runtime
        .block_on(Emulator::start_with(
            EmulatorConfig::default().client_secret("c-app", "c-secret"),
        ))
        .unwrap();
    let tenants: Vec<String> = (0..12).map(|i| format!("tenant{i:02}")).collect();
    for tenant in &tenants {
        let env = [
            ("AZURE_CLIENT_ID", "c-app".to_owned()),
            ("AZURE_CLIENT_SECRET", "c-secret".to_owned()),
            ("TOKENWELL_AUTHORITY", emulator.authority(tenant)),
            ("TOKENWELL_CACHE", cache.clone()),
        ];
        let token = json(&tokenwell(
            &["token", "--scope", "api://x/.default", "--json"],
            &env,
        ));
        assert_eq!(token["source"], "identity_provider");
    }
    let env = [("TOKENWELL_CACHE", cache.clone())];
    let list = json(&tokenwell(&["cache", "list", "--json"], &env));
    let mut listed: Vec<String> = list["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tenant"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed, tenants,
        "every partition, on whichever master it lives"
    );

    let purged = json(&tokenwell(
        &["cache", "purge", "--tenant", "tenant03", "--json"],
        &env,
    ));
    assert_eq!(purged["removed"].as_array().unwrap().len(), 1);
    let stats = json(&tokenwell(&["cache", "stats", "--json"], &env));
    assert_eq!(stats["partitions"], 11);
    assert_eq!(stats["access_tokens"], 11);
    let export = json(&tokenwell(&["cache", "export"], &env));
    assert_eq!(export["AccessToken"].as_object().unwrap().len(), 11);
    runtime.block_on(emulator.shutdown());
}
