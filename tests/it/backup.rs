//! Backup and restore as docs/OPERATIONS.md tells operators to do them, round trip:
//! `pg_dump`/`pg_restore` into a fresh database, and the SQLite file both online (the
//! `sqlite3` shell's `.backup`) and offline (the file and its WAL copied while stopped). The
//! restored store holds the same conversations, clips and outbox, and search still works.

use std::process::Command;

use chrono::Utc;
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::queries::Table;
use xiaozhi_gateway::store::search::SearchQuery;

use crate::store_search::said;
use crate::store_suite::session;

/// A store with three conversations (Chinese and English, clips staged).
async fn fill(store: &Store) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for (i, (u, r)) in
        [("今天天气怎么样", "今天晴"), ("播放周杰伦的歌", "好的"), ("what time is it", "seven")]
            .into_iter()
            .enumerate()
    {
        let s = session(&format!("aa:00:00:00:70:0{i}"), Utc::now());
        store.write_turn(said(&s, 0, Utc::now(), u, r)).await.unwrap();
        ids.push(s.session_id);
    }
    ids
}

/// What an operator would check after a restore: the same rows, the outbox, and search.
async fn assert_same(original: &Store, restored: &Store, sessions: &[uuid::Uuid]) {
    restored.migrate().await.expect("a restored database is at the current schema");
    for t in [Table::Sessions, Table::Messages, Table::Clips, Table::Staged, Table::Devices] {
        assert_eq!(
            restored.count_rows(t, None).await.unwrap(),
            original.count_rows(t, None).await.unwrap(),
            "{t:?}"
        );
    }
    for sid in sessions {
        assert_eq!(
            restored.session_messages(*sid).await.unwrap(),
            original.session_messages(*sid).await.unwrap()
        );
        assert_eq!(restored.session_clips(*sid).await.unwrap(), original.session_clips(*sid).await.unwrap());
    }
    let q = |t: &str| SearchQuery { text: t.into(), limit: 10, ..SearchQuery::default() };
    for text in ["周杰伦", "天气", "time is"] {
        let hits = restored.search_messages(&q(text)).await.unwrap().items;
        assert_eq!(hits.len(), 1, "{text}");
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pg_dump_and_pg_restore_round_trip() {
    let url = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    let store = Store::connect_url(&url).await.unwrap();
    store.migrate().await.unwrap();
    let sessions = fill(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("xiaozhi.dump");
    run(Command::new("pg_dump").args(["--format=custom", "--no-owner", "--file"]).arg(&dump).arg(&url));
    let target = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    run(Command::new("pg_restore").args(["--no-owner", "--exit-on-error", "--dbname", &target]).arg(&dump));
    let restored = Store::connect_url(&target).await.unwrap();
    assert_same(&store, &restored, &sessions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_online_backup_and_offline_copy_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("xiaozhi.db");
    let store = Store::connect_url(&format!("sqlite://{}", db.display())).await.unwrap();
    store.migrate().await.unwrap();
    let sessions = fill(&store).await;

    // Online, while the gateway's pool is open and the WAL holds the latest writes.
    let online = dir.path().join("online.db");
    run(Command::new("sqlite3").arg(&db).arg(format!(".backup '{}'", online.display())));
    let restored = Store::connect_url(&format!("sqlite://{}", online.display())).await.unwrap();
    assert_same(&store, &restored, &sessions).await;
    restored.close().await;

    // Offline: the gateway stopped, the file copied with its WAL (if any is left).
    store.close().await;
    let offline = dir.path().join("offline");
    std::fs::create_dir(&offline).unwrap();
    for suffix in ["", "-wal"] {
        let from = dir.path().join(format!("xiaozhi.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, offline.join(format!("xiaozhi.db{suffix}"))).unwrap();
        }
    }
    let original = Store::connect_url(&format!("sqlite://{}", db.display())).await.unwrap();
    let restored =
        Store::connect_url(&format!("sqlite://{}", offline.join("xiaozhi.db").display())).await.unwrap();
    assert_same(&original, &restored, &sessions).await;
}
