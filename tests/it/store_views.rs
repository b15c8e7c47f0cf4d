//! The store conformance suite, continued: the operator's views of devices (totals, paging,
//! seen-since filter) and of activity per day, and exports, on SQLite and PostgreSQL.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use xiaozhi_gateway::store::devices::decode_device_cursor;
use xiaozhi_gateway::store::model::{DeviceSighting, StoreOp};

use crate::store_search::said;
use crate::store_suite::{Kind, TestDb, conformance, session, turn};

fn seen(device: &str, board: Option<&str>, at: DateTime<Utc>) -> StoreOp {
    StoreOp::DeviceSeen(DeviceSighting {
        device_id: device.into(),
        client_id: Some(format!("client-{device}")),
        board: board.map(str::to_owned),
        firmware_version: Some("1.6.2".into()),
        seen_at: at,
    })
}

async fn devices_are_listed_with_their_totals(db: TestDb) {
    let now = Utc::now();
    let first = now - Duration::days(3);
    // Ten devices, seen one hour apart (device 9 most recently).
    for i in 0..10 {
        let d = format!("aa:00:00:00:20:{i:02}");
        db.store
            .write_batch(&[seen(&d, None, first), seen(&d, Some("esp-box-3"), now - Duration::hours(10 - i))])
            .await
            .unwrap();
    }
    // Device 9 talked: two sessions, three turns (each turn one user and one reply clip of 1.2 s).
    let talker = "aa:00:00:00:20:09";
    let (s1, s2) = (session(talker, now - Duration::hours(2)), session(talker, now - Duration::hours(1)));
    db.store.write_turn(turn(&s1, 0, now - Duration::hours(2))).await.unwrap();
    db.store.write_turn(turn(&s1, 2, now - Duration::hours(2))).await.unwrap();
    db.store.write_turn(turn(&s2, 0, now - Duration::hours(1))).await.unwrap();

    let d = db.store.device(talker).await.unwrap().expect("the device is known");
    assert_eq!((d.sessions, d.turns), (2, 3));
    assert!((d.audio_in_secs - 3.6).abs() < 1e-9 && (d.audio_out_secs - 3.6).abs() < 1e-9, "{d:?}");
    assert_eq!(d.board.as_deref(), Some("esp-box-3"), "the later sighting brought the board");
    assert_eq!(d.firmware_version.as_deref(), Some("1.6.2"));
    assert_eq!(d.first_seen.timestamp_micros(), first.timestamp_micros());
    assert_eq!(d.last_seen.timestamp_micros(), (now - Duration::hours(1)).timestamp_micros());
    assert!(!d.activated);
    let quiet = db.store.device("aa:00:00:00:20:00").await.unwrap().unwrap();
    assert_eq!((quiet.sessions, quiet.turns, quiet.audio_in_secs), (0, 0, 0.0));
    assert_eq!(db.store.device("aa:00:00:00:20:99").await.unwrap(), None);

    // Newest seen first, page by page, each device once.
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let page = db.store.devices(None, after, 4).await.unwrap();
        assert!(page.items.len() <= 4);
        ids.extend(page.items.into_iter().map(|d| d.device_id));
        match page.next_cursor {
            Some(c) => after = Some(decode_device_cursor(&c).expect("cursor decodes")),
            None => break,
        }
    }
    let expected: Vec<String> = (0..10).rev().map(|i| format!("aa:00:00:00:20:{i:02}")).collect();
    assert_eq!(ids, expected);
    assert!(decode_device_cursor("garbage").is_none());

    // Seen in the last 3.5 hours: devices 7, 8, 9.
    let recent = db.store.devices(Some(now - Duration::minutes(210)), None, 100).await.unwrap();
    let ids: Vec<&str> = recent.items.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["aa:00:00:00:20:09", "aa:00:00:00:20:08", "aa:00:00:00:20:07"]);
    assert_eq!(recent.next_cursor, None);
}

async fn statistics_count_each_day(db: TestDb) {
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let at = |d: u32, h: u32| day(d).and_hms_opt(h, 30, 0).unwrap().and_utc();
    let (a, b) = ("aa:00:00:00:30:01", "aa:00:00:00:30:02");
    // 10 Nov: device a, one session, two turns. 12 Nov: a and b, one session each, one turn
    // each, b's session started at 23:30 on the 11th.
    let s1 = session(a, at(10, 8));
    db.store.write_turn(said(&s1, 0, at(10, 8), "早上好", "早上好！")).await.unwrap();
    db.store.write_turn(said(&s1, 2, at(10, 9), "几点了", "九点半")).await.unwrap();
    let s2 = session(a, at(12, 0));
    db.store.write_turn(said(&s2, 0, at(12, 1), "hello", "hi")).await.unwrap();
    let s3 = session(b, at(11, 23));
    db.store.write_turn(said(&s3, 0, at(12, 2), "晚安", "晚安")).await.unwrap();
    // One of b's clips failed to upload.
    let clip = db.store.session_clips(s3.session_id).await.unwrap()[0].file_id;
    db.store.mark_attempt_failed(clip, "403 Forbidden", None).await.unwrap();

    let stats = db.store.daily_stats(day(9), day(14), None).await.unwrap();
    let days: Vec<NaiveDate> = stats.iter().map(|s| s.day).collect();
    assert_eq!(days, [day(9), day(10), day(11), day(12), day(13)], "every day of the range, oldest first");
    let row = |d: u32| stats.iter().find(|s| s.day == day(d)).unwrap();
    assert_eq!((row(9).sessions, row(9).turns, row(9).clips), (0, 0, 0));
    let ten = row(10);
    assert_eq!((ten.sessions, ten.turns, ten.active_devices, ten.clips), (1, 2, 1, 4));
    assert!((ten.speech_in_secs - 2.4).abs() < 1e-9 && (ten.speech_out_secs - 2.4).abs() < 1e-9);
    let clip_bytes = (b"OggS user clip bytes".len() + b"OggS reply clip bytes".len()) as i64;
    assert_eq!(ten.bytes, 2 * clip_bytes);
    assert_eq!(ten.failed_uploads, 0);
    assert_eq!((row(11).sessions, row(11).turns), (1, 0), "b's session started on the 11th");
    let twelve = row(12);
    assert_eq!((twelve.sessions, twelve.turns, twelve.active_devices, twelve.clips), (1, 2, 2, 4));
    assert_eq!(twelve.failed_uploads, 1);

    let only_b = db.store.daily_stats(day(12), day(13), Some(b)).await.unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!((only_b[0].turns, only_b[0].active_devices, only_b[0].clips), (1, 1, 2));
    assert!(db.store.daily_stats(day(13), day(13), None).await.unwrap().is_empty());
}

async fn export_reads_everything_oldest_first_in_batches(db: TestDb) {
    use xiaozhi_gateway::export::{ExportFormat, MessageExport};
    use xiaozhi_gateway::store::export::ExportFilter;
    let t0 = Utc::now() - Duration::hours(2);
    let (a, b) = ("aa:00:00:00:40:01", "aa:00:00:00:40:02");
    let (sa, sb) = (session(a, t0), session(b, t0));
    for i in 0..15 {
        let at = t0 + Duration::seconds(i / 2);
        db.store
            .write_turn(said(&sa, i as i32 * 2, at, &format!("第{i}句, \"quoted\"\nnew line"), "好"))
            .await
            .unwrap();
    }
    db.store.write_turn(said(&sb, 0, t0 + Duration::hours(1), "b speaks", "b hears")).await.unwrap();

    // Keyset batches: every message once, oldest first, filters applied.
    let only_a = ExportFilter { device_id: Some(a.into()), ..ExportFilter::default() };
    assert_eq!(db.store.export_count(&only_a).await.unwrap(), 30);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let batch = db.store.export_batch(&only_a, after, 7).await.unwrap();
        if batch.is_empty() {
            break;
        }
        after = batch.last().map(|m| (m.created_at, m.message_id));
        seen.extend(batch);
    }
    assert_eq!(seen.len(), 30);
    assert!(seen.windows(2).all(|w| (w[0].created_at, w[0].message_id) < (w[1].created_at, w[1].message_id)));
    assert!(seen.iter().all(|m| m.device_id == a));
    let late = ExportFilter { from: Some(t0 + Duration::minutes(30)), ..ExportFilter::default() };
    assert_eq!(db.store.export_count(&late).await.unwrap(), 2);
    let early = ExportFilter { to: Some(t0 + Duration::seconds(1)), ..ExportFilter::default() };
    assert_eq!(db.store.export_count(&early).await.unwrap(), 4, "turns 0 and 1");

    // CSV: a header, then one record per message; commas, quotes and newlines survive.
    let mut export = MessageExport::new(db.store.clone(), ExportFilter::default(), ExportFormat::Csv);
    let mut csv_bytes = Vec::new();
    while let Some((chunk, _)) = export.next_chunk().await.unwrap() {
        csv_bytes.extend_from_slice(&chunk);
    }
    let mut reader = csv::Reader::from_reader(&csv_bytes[..]);
    assert_eq!(reader.headers().unwrap().get(5), Some("content"));
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 32);
    assert_eq!(&rows[0][5], "第0句, \"quoted\"\nnew line");
    assert_eq!((&rows[0][1], &rows[0][4]), (a, "user"));
    assert_eq!(&rows[31][5], "b hears");

    // JSON lines: one message per line.
    let mut export = MessageExport::new(db.store.clone(), ExportFilter::default(), ExportFormat::Jsonl);
    let mut lines = Vec::new();
    while let Some((chunk, n)) = export.next_chunk().await.unwrap() {
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        assert_eq!(text.lines().count(), n);
        lines.extend(text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
    }
    assert_eq!(lines.len(), 32);
    assert_eq!(lines[1]["content"], "好");
    assert_eq!(lines[31]["session_id"], sb.session_id.to_string());
}

/// `XIAOZHI_KEEP_AUDIO`: the writer keeps every clip, the user's only, or none; text always;
/// the user clip carries what was recognized.
async fn the_writer_keeps_the_clips_the_setting_asks_for(db: TestDb) {
    use xiaozhi_gateway::config::KeepAudio;
    use xiaozhi_gateway::store::writer::{StoreWriter, WriterConfig};
    for (keep, sources) in
        [(KeepAudio::All, vec!["tts", "user"]), (KeepAudio::User, vec!["user"]), (KeepAudio::None, vec![])]
    {
        let mut cfg = WriterConfig::new(db.dir.path());
        cfg.keep_audio = keep;
        let (writer, _task) = StoreWriter::start(db.store.clone(), cfg);
        let s = session("aa:00:00:00:50:01", Utc::now());
        writer.submit(StoreOp::Turn(Box::new(said(&s, 0, Utc::now(), "你好，小智", "你好！"))));
        writer.flush().await;
        let messages = db.store.session_messages(s.session_id).await.unwrap();
        assert_eq!(
            messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            ["你好，小智", "你好！"],
            "{keep:?}: text always kept"
        );
        let clips = db.store.session_clips(s.session_id).await.unwrap();
        let mut kept: Vec<&str> = clips.iter().map(|c| c.source_type.as_str()).collect();
        kept.sort();
        assert_eq!(kept, sources, "{keep:?}");
        for m in &messages {
            assert_eq!(
                m.audio_file_id.is_some(),
                clips.iter().any(|c| c.message_id == m.message_id),
                "{keep:?}: links follow the clips"
            );
        }
        for c in &clips {
            let expected = (c.source_type == "user").then_some("你好，小智");
            assert_eq!(
                c.transcription.as_deref(),
                expected,
                "{keep:?}: the user clip carries its transcript"
            );
        }
    }
    let staged = db.store.count_rows(xiaozhi_gateway::store::queries::Table::Staged, None).await.unwrap();
    assert_eq!(staged, 2 + 1, "dropped clips are not staged for upload either");
}

/// Conversation lists filter by device, time range and status; a conversation's messages
/// come page by page in speaking order.
async fn conversations_and_messages_page_with_filters(db: TestDb) {
    use xiaozhi_gateway::store::listing::SessionFilter;
    let device = "aa:00:00:00:80:01";
    let t0 = Utc::now() - Duration::days(10);
    let mut ids = Vec::new();
    for d in 0..10 {
        let s = session(device, t0 + Duration::days(d));
        db.store.write_turn(turn(&s, 0, s.started_at)).await.unwrap();
        if d % 2 == 0 {
            db.store
                .write_batch(&[StoreOp::SessionEnded { session: s.clone(), ended_at: s.started_at }])
                .await
                .unwrap();
        }
        ids.push(s.session_id);
    }
    db.store.write_turn(turn(&session("aa:00:00:00:80:02", t0), 0, t0)).await.unwrap();
    let f = SessionFilter {
        device_id: Some(device.into()),
        from: Some(t0 + Duration::days(2)),
        to: Some(t0 + Duration::days(8)),
        status: Some("ended".into()),
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = db.store.list_sessions(&f, after, 2).await.unwrap();
        seen.extend(page.items.iter().map(|s| s.session_id));
        match page.next_cursor {
            Some(c) => after = Some(xiaozhi_gateway::store::queries::decode_cursor(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, [ids[6], ids[4], ids[2]], "ended, days 2 to 7, newest first");
    let all = db.store.list_sessions(&SessionFilter::default(), None, 100).await.unwrap();
    assert_eq!(all.items.len(), 11);
    let active = SessionFilter { status: Some("active".into()), ..SessionFilter::default() };
    assert_eq!(db.store.list_sessions(&active, None, 100).await.unwrap().items.len(), 6);

    // 41 messages of one conversation, pages of 10.
    let s = session(device, Utc::now());
    for t in 0..20 {
        db.store.write_turn(turn(&s, t * 2, Utc::now())).await.unwrap();
    }
    let mut t = turn(&s, 40, Utc::now());
    t.messages.truncate(1);
    t.clips.truncate(1);
    db.store.write_turn(t).await.unwrap();
    let (mut seqs, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let (rows, next) = db.store.session_messages_page(s.session_id, after, 10).await.unwrap();
        assert!(rows.iter().all(|(m, clip)| m.audio_file_id.is_some() && clip.is_some()));
        seqs.extend(rows.iter().map(|(m, _)| m.sequence_num));
        pages += 1;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seqs, (0..41).collect::<Vec<_>>());
    assert_eq!(pages, 5);
}

conformance!(
    conversations_and_messages_page_with_filters,
    the_writer_keeps_the_clips_the_setting_asks_for,
    devices_are_listed_with_their_totals,
    statistics_count_each_day,
    export_reads_everything_oldest_first_in_batches,
);
