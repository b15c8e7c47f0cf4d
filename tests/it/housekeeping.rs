//! Housekeeping that would otherwise grow or hang without bound: the ids of deleted
//! conversations are forgotten once their retention has passed (on both backends), a statement
//! stuck behind a lock is cancelled by the statement timeout, and idle pool connections are
//! closed.

use std::time::Duration;

use chrono::Utc;
use xiaozhi_gateway::config::DatabaseSettings;
use xiaozhi_gateway::store::{PoolOptions, Store};

use crate::store_suite::{Kind, TestDb, session, turn};

async fn deleted_conversations_are_forgotten_after_their_retention(db: TestDb) {
    let device = "aa:00:00:00:00:1d";
    let s = session(device, Utc::now());
    db.store.write_turn(turn(&s, 0, Utc::now())).await.unwrap();
    assert!(db.store.delete_session(s.session_id).await.unwrap());
    // Within the retention the id is kept: a late write is still turned away.
    let day_ago = Utc::now() - chrono::Duration::days(1);
    assert_eq!(db.store.purge_deleted_before(day_ago).await.unwrap(), 0);
    db.store.write_turn(turn(&s, 2, Utc::now())).await.unwrap();
    assert_eq!(db.store.session(s.session_id).await.unwrap(), None, "still remembered as deleted");
    // Past it the id is forgotten, once.
    let later = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(db.store.purge_deleted_before(later).await.unwrap(), 1);
    assert_eq!(db.store.purge_deleted_before(later).await.unwrap(), 0);
    // Nothing remembers it now: a write for that id is an ordinary write again.
    db.store.write_turn(turn(&s, 4, Utc::now())).await.unwrap();
    assert_eq!(db.store.session_messages(s.session_id).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deleted_conversations_are_forgotten_after_their_retention() {
    deleted_conversations_are_forgotten_after_their_retention(TestDb::new(Kind::Sqlite).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deleted_conversations_are_forgotten_after_their_retention() {
    deleted_conversations_are_forgotten_after_their_retention(TestDb::new(Kind::Postgres).await).await
}

/// A store on `url` with the pool the settings describe.
async fn store_with(url: &str, db: DatabaseSettings) -> Store {
    let store = Store::connect_url_with(url, &PoolOptions::from_settings(&db)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_stuck_behind_a_lock_is_cancelled_by_the_statement_timeout() {
    use sqlx::Connection;
    let url = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    let store =
        store_with(&url, DatabaseSettings { statement_timeout_ms: 300, ..DatabaseSettings::default() }).await;
    // Another client holds the sessions table (a long migration, a stuck admin query).
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("LOCK TABLE conversation_sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut other)
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), store.session(uuid::Uuid::now_v7())).await;
    let err = answer.expect("the query hung behind the lock").expect_err("the lock is still held");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(store.session(uuid::Uuid::now_v7()).await.unwrap(), None, "the pool works again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pool_connections_are_closed() {
    use sqlx::Connection;
    let url = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    let store =
        store_with(&url, DatabaseSettings { idle_timeout_secs: 1, ..DatabaseSettings::default() }).await;
    store.ping().await.unwrap();
    // Counted from a connection of its own, to the same database.
    let mut observer = sqlx::PgConnection::connect(&url).await.unwrap();
    const OTHERS: &str = "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let first: i64 = sqlx::query_scalar(OTHERS).fetch_one(&mut observer).await.unwrap();
    assert!(first >= 1, "the pool holds a connection after a query");
    let mut left = first;
    for _ in 0..100 {
        left = sqlx::query_scalar(OTHERS).fetch_one(&mut observer).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left, 0, "idle connections are closed after the idle timeout");
}
