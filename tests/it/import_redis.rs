//! `xiaozhi-gateway import redis` from a real Redis loaded the way the Go server's
//! `llm_memory` writes it (a sorted set per device scored in Unix nanoseconds, JSON members
//! with OpenAI-shaped tool calls, older members with a `timestamp`, a prompt string per
//! device), into SQLite and PostgreSQL: the database number in the URL is honoured, pauses
//! split conversations, broken members are reported and skipped, a second run adds nothing.

use std::time::Duration;

use serde_json::json;
use xiaozhi_gateway::config::DatabaseKind;
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::Role;
use xiaozhi_gateway::store::queries::Table;

use crate::binary_e2e::{Finished, gateway_command, run_within};
use crate::import_mysql::{assert_nothing_added, assert_untouched, line, target_url};

const DEV1: &str = "aa:bb:cc:00:00:11";
const DEV2: &str = "aa:bb:cc:00:00:12";
/// 2025-03-01T00:00:00Z in Unix nanoseconds.
const T0: i64 = 1_740_787_200_000_000_000;
const SEC: i64 = 1_000_000_000;

fn long_reply() -> String {
    "很久很久以前，在一座大山里住着一只小熊猫 🐼。".repeat(60)
}

/// Loads the fixture into database 3 (and a decoy into database 0).
async fn load(url0: &str, url3: &str) {
    let mut db3 = redis::Client::open(url3).unwrap().get_multiplexed_async_connection().await.unwrap();
    let tool_calls = json!([{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"北京\"}"}}]);
    let members: Vec<(i64, String)> = vec![
        (T0, json!({"role": "user", "content": "你好小智 😊"}).to_string()),
        (T0 + 2 * SEC, json!({"role": "assistant", "content": "你好呀！"}).to_string()),
        (T0 + 5 * SEC, json!({"role": "user", "content": "北京天气怎么样？"}).to_string()),
        (T0 + 6 * SEC, json!({"role": "assistant", "content": "", "tool_calls": tool_calls}).to_string()),
        (
            T0 + 7 * SEC,
            json!({"role": "tool", "content": "{\"temp\":\"晴 25℃\"}", "tool_call_id": "call_1"}).to_string(),
        ),
        (T0 + 8 * SEC, "this is not json".to_owned()),
        (T0 + 9 * SEC, json!({"role": "robot", "content": "beep"}).to_string()),
        // Two hours later: a new conversation (an older server version adds a timestamp).
        (
            T0 + 7200 * SEC,
            json!({"role": "user", "content": "讲个故事", "timestamp": 1_740_794_400}).to_string(),
        ),
        (T0 + 7203 * SEC, json!({"role": "assistant", "content": long_reply()}).to_string()),
        (T0 + 7300 * SEC, json!({"role": "user", "content": "谢谢 🙏"}).to_string()),
    ];
    for (score, member) in &members {
        let _: () = redis::cmd("ZADD")
            .arg(format!("xiaozhi:llm:{DEV1}"))
            .arg(*score as f64)
            .arg(member)
            .query_async(&mut db3)
            .await
            .unwrap();
    }
    for (i, content) in ["在吗", "在的"].iter().enumerate() {
        let role = if i == 0 { "user" } else { "assistant" };
        let _: () = redis::cmd("ZADD")
            .arg(format!("xiaozhi:llm:{DEV2}"))
            .arg((T0 + 86_400 * SEC + i as i64 * SEC) as f64)
            .arg(json!({"role": role, "content": content}).to_string())
            .query_async(&mut db3)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg(format!("xiaozhi:llm:system:{DEV1}"))
        .arg("你是小智，一个温柔的助手 😊")
        .query_async(&mut db3)
        .await
        .unwrap();
    // Not the server's: a string under the memory prefix, and another prefix.
    let _: () = redis::cmd("SET").arg("xiaozhi:llm:stray").arg("x").query_async(&mut db3).await.unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("other:llm:{DEV2}"))
        .arg(T0 as f64)
        .arg(json!({"role": "user", "content": "other prefix"}).to_string())
        .query_async(&mut db3)
        .await
        .unwrap();
    // Database 0 is someone else's.
    let mut db0 = redis::Client::open(url0).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("xiaozhi:llm:ff:ff:ff:ff:ff:ff")
        .arg(T0 as f64)
        .arg(json!({"role": "user", "content": "database 0"}).to_string())
        .query_async(&mut db0)
        .await
        .unwrap();
}

fn import(source: &str, target: &str, report: &std::path::Path, extra: &[&str]) -> Finished {
    let data = report.parent().unwrap().display().to_string();
    let mut args = vec!["import", "redis", "--url", source, "--report", report.to_str().unwrap()];
    args.extend_from_slice(extra);
    let env = [("DATABASE_URL", target.to_owned()), ("XIAOZHI_DATA_DIR", data)];
    run_within(gateway_command(&args, &env), Duration::from_secs(60))
}

async fn redis_into(kind: DatabaseKind) {
    let server = testkit::redis::Redis::start();
    load(&server.url(0), &server.url(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let target = target_url(kind, dir.path()).await;
    let report = dir.path().join("report.txt");

    let dry = import(&server.url(3), &target, &report, &["--dry-run"]);
    assert!(dry.stdout.contains("dry run"), "{}\n{}", dry.stdout, dry.stderr);
    assert!(line(&dry.stdout, "messages").contains("10 imported"), "{}", dry.stdout);
    assert_untouched(kind, dir.path(), &target).await;

    let first = import(&server.url(3), &target, &report, &[]);
    let out = &first.stdout;
    assert_eq!(first.status.code(), Some(1), "members were rejected: exit 1\n{out}\n{}", first.stderr);
    assert!(line(out, "conversations").contains("3 imported"), "{out}");
    assert!(
        line(out, "messages").contains("10 imported") && line(out, "messages").contains("2 rejected"),
        "{out}"
    );
    assert!(line(out, "prompts").contains("1 imported"), "{out}");
    let report_text = std::fs::read_to_string(&report).unwrap();
    for why in ["not a chat message", "role \"robot\"", "key xiaozhi:llm:stray"] {
        assert!(report_text.contains(why), "the report does not say {why:?}:\n{report_text}");
    }

    let store = Store::connect_url(&target).await.unwrap();
    assert_eq!(store.count_rows(Table::Sessions, None).await.unwrap(), 3);
    assert_eq!(store.count_rows(Table::Messages, None).await.unwrap(), 10);
    assert_eq!(
        store.count_rows(Table::Messages, Some("ff:ff:ff:ff:ff:ff")).await.unwrap(),
        0,
        "database 0 untouched"
    );
    let mut sessions = store.sessions(Some(DEV1), None, 10).await.unwrap().items;
    sessions.reverse();
    assert_eq!(sessions.len(), 2, "a two-hour pause starts a new conversation");
    let first_conv = store.session_messages(sessions[0].session_id).await.unwrap();
    let roles: Vec<Role> = first_conv.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::User, Role::Assistant, Role::Tool]);
    assert_eq!(first_conv[0].content, "你好小智 😊");
    assert_eq!(first_conv[0].created_at.to_rfc3339(), "2025-03-01T00:00:00+00:00");
    assert_eq!(first_conv[3].tool_calls.as_ref().unwrap()[0]["function"]["arguments"], "{\"city\":\"北京\"}");
    assert_eq!(first_conv[4].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(first_conv[4].content, "{\"temp\":\"晴 25℃\"}");
    let second_conv = store.session_messages(sessions[1].session_id).await.unwrap();
    let texts: Vec<&str> = second_conv.iter().map(|m| m.content.as_str()).collect();
    let long = long_reply();
    assert_eq!(texts, ["讲个故事", long.as_str(), "谢谢 🙏"]);
    assert_eq!(second_conv.iter().map(|m| m.sequence_num).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(store.system_prompt(DEV1).await.unwrap().as_deref(), Some("你是小智，一个温柔的助手 😊"));
    assert_eq!(store.system_prompt(DEV2).await.unwrap(), None);

    let again = import(&server.url(3), &target, &report, &[]);
    assert_nothing_added(&again.stdout, &[("messages", 10), ("conversations", 3), ("prompts", 1)]);
    assert_eq!(store.count_rows(Table::Messages, None).await.unwrap(), 10);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_memory_and_prompts_into_sqlite() {
    redis_into(DatabaseKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_memory_and_prompts_into_postgres() {
    redis_into(DatabaseKind::Postgres).await;
}
