//! The store conformance suite, continued: search over messages (Chinese two- and
//! three-character phrases, English words, one-character scans, role, device and time
//! filters, pagination), on SQLite and PostgreSQL.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;
use xiaozhi_gateway::store::model::{Role, SessionRecord, TurnRecord};
use xiaozhi_gateway::store::queries::decode_cursor;
use xiaozhi_gateway::store::search::SearchQuery;

use crate::store_suite::{Kind, TestDb, conformance, session, turn};

/// A turn whose user and assistant said these things.
pub fn said(s: &SessionRecord, seq: i32, at: DateTime<Utc>, user: &str, assistant: &str) -> TurnRecord {
    let mut t = turn(s, seq, at);
    t.messages[0].content = user.into();
    t.messages[1].content = assistant.into();
    t
}

fn q(text: &str) -> SearchQuery {
    SearchQuery { text: text.into(), limit: 50, ..SearchQuery::default() }
}

async fn contents(db: &TestDb, query: SearchQuery) -> Vec<String> {
    let page = db.store.search_messages(&query).await.unwrap();
    page.items.into_iter().map(|h| h.message.content).collect()
}

async fn search_finds_chinese_phrases_and_english_words(db: TestDb) {
    let (a, b) = ("aa:00:00:00:10:01", "aa:00:00:00:10:02");
    let t0 = Utc::now() - Duration::hours(3);
    let sa = session(a, t0);
    let turns = [
        ("今天天气怎么样", "今天天气很好，适合出去玩。"),
        ("讲个笑话", "Why did the CHICKEN cross the road?"),
        ("播放音乐", "好的，正在播放周杰伦的歌"),
        ("打折多少", "全场 100% 正品，打八折"),
    ];
    for (i, (u, r)) in turns.iter().enumerate() {
        let at = t0 + Duration::minutes(i as i64 * 10);
        db.store.write_turn(said(&sa, i as i32 * 2, at, u, r)).await.unwrap();
    }
    let sb = session(b, t0 + Duration::hours(1));
    db.store
        .write_turn(said(&sb, 0, t0 + Duration::hours(1), "天气预报", "The weather is sunny"))
        .await
        .unwrap();

    // Two characters (no trigram): a bounded scan, newest first.
    assert_eq!(contents(&db, q("天气")).await, ["天气预报", "今天天气很好，适合出去玩。", "今天天气怎么样"]);
    // Three characters: through the trigram index.
    assert_eq!(contents(&db, q("天气很")).await, ["今天天气很好，适合出去玩。"]);
    assert_eq!(contents(&db, q("周杰伦")).await, ["好的，正在播放周杰伦的歌"]);
    // One character.
    assert_eq!(contents(&db, q("歌")).await, ["好的，正在播放周杰伦的歌"]);
    // English, any case; a phrase with a space.
    assert_eq!(contents(&db, q("chicken")).await, ["Why did the CHICKEN cross the road?"]);
    assert_eq!(contents(&db, q("Weather")).await, ["The weather is sunny"]);
    assert_eq!(contents(&db, q("cross the")).await, ["Why did the CHICKEN cross the road?"]);
    // Wildcards and quotes are plain text.
    assert_eq!(contents(&db, q("100%")).await, ["全场 100% 正品，打八折"]);
    assert!(contents(&db, q("%")).await.len() == 1);
    assert!(contents(&db, q("_")).await.is_empty());
    assert!(contents(&db, q("\"road")).await.is_empty());
    assert!(contents(&db, q("nothing like this")).await.is_empty());

    // The snippet marks the match; the hit knows its conversation and clip.
    let hit = db.store.search_messages(&q("周杰伦")).await.unwrap().items.remove(0);
    assert_eq!(hit.snippet, "好的，正在播放<mark>周杰伦</mark>的歌");
    assert_eq!(hit.message.session_id, sa.session_id);
    assert_eq!(hit.message.role, Role::Assistant);
    let (key, status) = hit.clip.expect("the message has a clip");
    assert!(key.ends_with(".ogg") && status == "pending", "{key} {status}");

    // Filters: role, device, time.
    let by_role = SearchQuery { role: Some(Role::User), ..q("天气") };
    assert_eq!(contents(&db, by_role).await, ["天气预报", "今天天气怎么样"]);
    let by_device = SearchQuery { device_id: Some(a.into()), ..q("天气") };
    assert_eq!(contents(&db, by_device).await, ["今天天气很好，适合出去玩。", "今天天气怎么样"]);
    let window =
        SearchQuery { from: Some(t0 + Duration::minutes(5)), to: Some(t0 + Duration::minutes(25)), ..q("") };
    let got = contents(&db, window).await;
    assert_eq!(
        got,
        ["好的，正在播放周杰伦的歌", "播放音乐", "Why did the CHICKEN cross the road?", "讲个笑话"]
    );
    assert_eq!(contents(&db, q("")).await.len(), 10, "an empty query lists everything");

    // A deleted conversation is no longer found (on SQLite: the index follows the cascade).
    assert!(db.store.delete_session(sb.session_id).await.unwrap());
    assert_eq!(contents(&db, q("天气预报")).await, Vec::<String>::new());
    assert_eq!(contents(&db, q("weather")).await, Vec::<String>::new());
    assert_eq!(contents(&db, q("天气")).await.len(), 2);
}

async fn search_pages_through_many_matches(db: TestDb) {
    let device = "aa:00:00:00:10:03";
    let t0 = Utc::now() - Duration::hours(1);
    let s = session(device, t0);
    // 30 turns; every user message says 你好世界, and several share one timestamp.
    let mut expected = Vec::new();
    for i in 0..30 {
        let at = t0 + Duration::seconds(i / 3);
        let t = said(&s, i as i32 * 2, at, &format!("你好世界 第{i}次"), "嗯");
        expected.push(t.messages[0].message_id);
        db.store.write_turn(t).await.unwrap();
    }
    for text in ["你好世界", "你好"] {
        let mut seen: Vec<(DateTime<Utc>, Uuid)> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let query = SearchQuery { after, limit: 7, ..q(text) };
            let page = db.store.search_messages(&query).await.unwrap();
            assert!(page.items.len() <= 7);
            seen.extend(page.items.iter().map(|h| (h.message.created_at, h.message.message_id)));
            pages += 1;
            match page.next_cursor {
                Some(c) => after = Some(decode_cursor(&c).expect("cursor decodes")),
                None => break,
            }
        }
        assert_eq!(pages, 5, "{text}: 30 hits in pages of 7");
        let ids: HashSet<Uuid> = seen.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, expected.iter().copied().collect::<HashSet<_>>(), "{text}: each hit exactly once");
        assert_eq!(ids.len(), 30);
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "{text}: newest first, strictly");
    }
}

conformance!(search_finds_chinese_phrases_and_english_words, search_pages_through_many_matches);
