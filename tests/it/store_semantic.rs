//! Search by meaning, on SQLite and PostgreSQL, with the in-process fake OpenAI-compatible
//! server returning embeddings: the background worker embeds history (backfill) and new
//! messages, survives provider failures, skips what the provider refuses for good, and the
//! query ranks by cosine similarity within the filters.

use std::time::Duration;

use chrono::Utc;
use testkit::fake_openai::FakeOpenAi;
use tokio_util::sync::CancellationToken;
use xiaozhi_gateway::config::EmbeddingsSettings;
use xiaozhi_gateway::embeddings::{self, EmbeddingsClient, semantic_search};
use xiaozhi_gateway::store::model::Role;
use xiaozhi_gateway::store::search::SearchQuery;

use crate::store_search::said;
use crate::store_suite::{Kind, TestDb, conformance, session};

async fn wait_embedded(db: &TestDb, model: &str, n: i64) {
    for _ in 0..200 {
        if db.store.embedded_count(model).await.unwrap() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} embeddings never appeared ({} so far)", db.store.embedded_count(model).await.unwrap());
}

async fn messages_are_embedded_in_the_background_and_ranked_by_meaning(db: TestDb) {
    let fake = FakeOpenAi::start().await;
    let settings = EmbeddingsSettings {
        url: Some(fake.base_url()),
        model: "fake-embed".into(),
        api_key: Some("ek".into()),
    };
    let client = EmbeddingsClient::from_settings(&settings).unwrap();
    let (a, b) = ("aa:00:00:00:60:01", "aa:00:00:00:60:02");
    let t0 = Utc::now() - chrono::Duration::hours(1);
    let (sa, sb) = (session(a, t0), session(b, t0));
    // History from before embeddings were configured: the worker backfills it.
    db.store.write_turn(said(&sa, 0, t0, "今天天气怎么样", "今天天气很好")).await.unwrap();
    db.store.write_turn(said(&sa, 2, t0, "播放周杰伦的歌", "好的，马上播放")).await.unwrap();
    db.store.write_turn(said(&sb, 0, t0, "what is the weather like", "sunny and warm")).await.unwrap();

    // The provider fails first (503, then a refusal of one text); the worker carries on.
    fake.push_embeddings_failure(503);
    let shutdown = CancellationToken::new();
    tokio::spawn(embeddings::run(db.store.clone(), client.clone(), shutdown.clone()));
    wait_embedded(&db, "fake-embed", 6).await;
    assert!(db.store.pending_embeddings("fake-embed", 10).await.unwrap().is_empty());
    let requests = fake.requests_to("/embeddings");
    assert_eq!(requests[0].bearer(), Some("ek"));
    assert_eq!(requests[0].json.as_ref().unwrap()["model"], "fake-embed");

    let q = |text: &str| SearchQuery { text: text.into(), limit: 3, ..SearchQuery::default() };
    let page = semantic_search(&db.store, &client, &q("天气好吗")).await.unwrap();
    assert_eq!(page.items.len(), 3);
    assert_eq!(page.items[0].message.content, "今天天气很好", "the closest in meaning first");
    let scores: Vec<f32> = page.items.iter().map(|h| h.score.unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert_eq!(page.next_cursor, None);
    let users = SearchQuery { role: Some(Role::User), device_id: Some(a.into()), ..q("天气好吗") };
    let page = semantic_search(&db.store, &client, &users).await.unwrap();
    let got: Vec<&str> = page.items.iter().map(|h| h.message.content.as_str()).collect();
    assert_eq!(got, ["今天天气怎么样", "播放周杰伦的歌"]);
    let english = semantic_search(&db.store, &client, &q("weather")).await.unwrap();
    assert_eq!(english.items[0].message.content, "what is the weather like");

    // New messages are embedded as they come; a text the provider refuses is skipped for
    // good (marked, never retried, never matched), the rest of its batch is embedded.
    let before = fake.requests_to("/embeddings").len();
    fake.push_embeddings_failure(400);
    fake.push_embeddings_failure(400);
    db.store.write_turn(said(&sb, 2, Utc::now(), "accepted text", "refused text")).await.unwrap();
    wait_embedded(&db, "fake-embed", 8).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // another poll: nothing is retried
    let later: Vec<usize> = fake.requests_to("/embeddings")[before..]
        .iter()
        .map(|r| r.json.as_ref().unwrap()["input"].as_array().map_or(1, Vec::len))
        .collect();
    assert_eq!(later, [2, 1, 1], "the batch, then each text alone");
    let all = semantic_search(&db.store, &client, &SearchQuery { limit: 100, ..q("text") }).await.unwrap();
    let contents: Vec<&str> = all.items.iter().map(|h| h.message.content.as_str()).collect();
    assert!(contents.contains(&"accepted text") && !contents.contains(&"refused text"), "{contents:?}");
    shutdown.cancel();
}

conformance!(messages_are_embedded_in_the_background_and_ranked_by_meaning);
