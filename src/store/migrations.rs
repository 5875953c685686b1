//! The database schema, as an ordered list of migrations.
//!
//! Migration `i` (0-based) brings the database from `PRAGMA user_version = i`
//! to `i + 1`. Each runs in its own transaction together with the version
//! bump, so a crash mid-migration leaves the previous version intact.
//! Append new migrations at the end; never edit or reorder released ones.

/// All migrations, oldest first. The schema version of a database created by
/// this binary is `MIGRATIONS.len()`.
pub const MIGRATIONS: &[&str] = &[
    // 1: traces ingestion — episodes, file cursors, pending spans, rejects.
    r#"
    -- One row per ingested episode. `body` is the Episode JSON (since
    -- migration 3, zstd-compressed MessagePack: see store/body.rs); the other
    -- columns are copies of its fields, kept for filtering and statistics.
    CREATE TABLE episodes (
        id                   INTEGER PRIMARY KEY,
        trace_id             TEXT    NOT NULL UNIQUE,
        format               TEXT    NOT NULL,
        prompt_name          TEXT,
        prompt_version       TEXT,
        status               TEXT    NOT NULL,
        start_time_unix_nano INTEGER,
        n_steps              INTEGER NOT NULL,
        source_file          TEXT    NOT NULL,
        source_line          INTEGER NOT NULL,
        ingested_at_unix_ms  INTEGER NOT NULL,
        body                 TEXT    NOT NULL,
        -- Space-separated ids of the spans the episode was assembled from,
        -- so a re-read span is recognized and a new one reported as late.
        span_ids             TEXT    NOT NULL DEFAULT ''
    );
    CREATE INDEX episodes_by_prompt ON episodes (prompt_name, prompt_version);
    CREATE INDEX episodes_by_format ON episodes (format);

    -- Final (episode-level) rewards, one row per episode and reward name.
    CREATE TABLE episode_rewards (
        episode_id INTEGER NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        name       TEXT    NOT NULL,
        value      REAL    NOT NULL,
        PRIMARY KEY (episode_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX episode_rewards_by_name ON episode_rewards (name);

    -- Tool executions per episode and tool name.
    CREATE TABLE episode_tools (
        episode_id INTEGER NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        tool_name  TEXT    NOT NULL,
        n_calls    INTEGER NOT NULL,
        n_errors   INTEGER NOT NULL,
        PRIMARY KEY (episode_id, tool_name)
    ) WITHOUT ROWID;
    CREATE INDEX episode_tools_by_name ON episode_tools (tool_name);

    -- How far each trace file has been read. `offset` is the end of the last
    -- fully processed line (or the size of a processed document), `line` the
    -- number of lines before it; `fingerprint` is a hash (128 bits of
    -- SHA-256, hex) of the first `fingerprint_len` bytes, used to notice
    -- truncated or replaced files. `layout` is `lines` or `document`.
    CREATE TABLE file_cursors (
        path                TEXT    PRIMARY KEY,
        device              INTEGER NOT NULL,
        inode               INTEGER NOT NULL,
        offset              INTEGER NOT NULL,
        line                INTEGER NOT NULL,
        fingerprint         TEXT    NOT NULL,
        fingerprint_len     INTEGER NOT NULL,
        layout              TEXT    NOT NULL,
        updated_at_unix_ms  INTEGER NOT NULL
    );

    -- Spans of traces that are not yet episodes (their root has not arrived
    -- and the quiet period has not passed). `body` is the Span JSON.
    CREATE TABLE pending_spans (
        trace_id           TEXT    NOT NULL,
        span_id            TEXT    NOT NULL,
        is_root            INTEGER NOT NULL,
        arrived_at_unix_ms INTEGER NOT NULL,
        body               TEXT    NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    );
    CREATE INDEX pending_spans_roots ON pending_spans (trace_id) WHERE is_root;

    -- Spans of traces rejected as a whole (no episode), so the trace counts
    -- as finalized: a re-read of the same span is ignored, a new one is late.
    CREATE TABLE consumed_spans (
        trace_id TEXT NOT NULL,
        span_id  TEXT NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    ) WITHOUT ROWID;

    -- Rejected input. `key` identifies the rejected content (a hash of the
    -- line's start and length, or of the span or trace id), so reading the
    -- same input again does not record the same reject twice.
    CREATE TABLE rejects (
        id                  INTEGER PRIMARY KEY,
        file                TEXT    NOT NULL,
        line                INTEGER NOT NULL,
        offset              INTEGER,
        reason              TEXT    NOT NULL,
        detail              TEXT    NOT NULL,
        key                 TEXT    NOT NULL,
        rejected_at_unix_ms INTEGER NOT NULL,
        UNIQUE (file, line, reason, key)
    );
    CREATE INDEX rejects_by_reason ON rejects (reason);
    "#,
    // 2: APO's evaluation cache, rewrite cache and LLM call ledger.
    APO_TABLES[0],
    // 3: episode bodies are zstd-compressed MessagePack blobs from now on
    // (JSON text ones still read), and the name indexes of the two narrow
    // per-episode tables go: statistics scan those tables whole anyway, and
    // each index cost every ingested episode another B-tree insert.
    r#"
    DROP INDEX episode_rewards_by_name;
    DROP INDEX episode_tools_by_name;
    "#,
    // 4: the daemon's rounds (APO rounds, PPO updates), so a restart resumes
    // an interrupted one on the same episodes and settings.
    r#"
    -- `kind` is `apo` or `rl`; `status` is `running`, `succeeded` or
    -- `failed`. A round covers the episodes with id <= `upto_episode_id`;
    -- `settings` is the configuration it runs with (JSON), kept so a resumed
    -- round asks exactly what it asked before and finds it in the caches.
    CREATE TABLE rounds (
        id                  INTEGER PRIMARY KEY,
        kind                TEXT    NOT NULL,
        subject             TEXT    NOT NULL,
        status              TEXT    NOT NULL,
        trigger             TEXT    NOT NULL,
        upto_episode_id     INTEGER NOT NULL,
        settings            TEXT    NOT NULL,
        output_dir          TEXT    NOT NULL,
        attempts            INTEGER NOT NULL DEFAULT 1,
        started_at_unix_ms  INTEGER NOT NULL,
        finished_at_unix_ms INTEGER,
        summary             TEXT,
        error               TEXT
    );
    CREATE INDEX rounds_by_kind ON rounds (kind, subject, status);
    "#,
    // 5: the prompt registry: immutable versions with lineage, labels, A/B
    // tests with their rollout stage, and an audit log of every change.
    r#"
    CREATE TABLE prompt_versions (
        id                 INTEGER PRIMARY KEY,
        prompt             TEXT    NOT NULL,
        version            TEXT    NOT NULL,
        text               TEXT    NOT NULL,
        parent_version     TEXT,
        operator           TEXT,
        round_id           INTEGER,
        -- JSON object of scores (e.g. APO's validation reward), or NULL.
        scores             TEXT,
        created_at_unix_ms INTEGER NOT NULL,
        created_by         TEXT    NOT NULL,
        UNIQUE (prompt, version)
    );

    CREATE TABLE prompt_labels (
        prompt  TEXT NOT NULL,
        label   TEXT NOT NULL,
        version TEXT NOT NULL,
        PRIMARY KEY (prompt, label)
    ) WITHOUT ROWID;

    -- `split` is the treatment's share of traffic now; `stages` the rollout
    -- plan (JSON array of shares, ending at 1.0), `stage` the index in it.
    -- Outcomes count from episodes with id > `start_episode_id` (and, for
    -- the stage gate, > `stage_episode_id`).
    CREATE TABLE ab_tests (
        id                  INTEGER PRIMARY KEY,
        prompt              TEXT    NOT NULL,
        control             TEXT    NOT NULL,
        treatment           TEXT    NOT NULL,
        split               REAL    NOT NULL,
        stages              TEXT    NOT NULL,
        stage               INTEGER NOT NULL,
        status              TEXT    NOT NULL,
        winner              TEXT,
        reason              TEXT,
        start_episode_id    INTEGER NOT NULL,
        stage_episode_id    INTEGER NOT NULL,
        started_at_unix_ms  INTEGER NOT NULL,
        stopped_at_unix_ms  INTEGER
    );
    CREATE UNIQUE INDEX ab_tests_one_running ON ab_tests (prompt) WHERE status = 'running';

    CREATE TABLE registry_audit (
        id         INTEGER PRIMARY KEY,
        at_unix_ms INTEGER NOT NULL,
        actor      TEXT    NOT NULL,
        action     TEXT    NOT NULL,
        prompt     TEXT    NOT NULL,
        detail     TEXT    NOT NULL
    );
    CREATE INDEX registry_audit_by_prompt ON registry_audit (prompt, id);
    "#,
    // 6: the judge's feedback beside each cached APO score (reflective
    // mutation shows it to the rewriter).
    APO_TABLES[1],
    // 7: what `traces stats` shows besides rewards: step rewards by name, and
    // `whetstone.*` attributes no reader uses (one row per name and place,
    // so re-reading a file counts nothing twice).
    r#"
    CREATE TABLE episode_step_rewards (
        episode_id INTEGER NOT NULL,
        name       TEXT    NOT NULL,
        n          INTEGER NOT NULL,
        total      REAL    NOT NULL,
        PRIMARY KEY (episode_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE unknown_attributes (
        name TEXT    NOT NULL,
        file TEXT    NOT NULL,
        line INTEGER NOT NULL,
        PRIMARY KEY (name, file, line)
    ) WITHOUT ROWID;
    "#,
];

/// APO's tables, as migrations 2 and 6 create them. Idempotent (`IF NOT
/// EXISTS`), so APO can also lay them out in a database that is not a store
/// (a scratch file in tests and benches).
pub const APO_TABLES: [&str; 2] = [
    r#"
    CREATE TABLE IF NOT EXISTS apo_eval_cache (
        prompt_hash TEXT NOT NULL,
        example_id TEXT NOT NULL,
        model TEXT NOT NULL,
        params_hash TEXT NOT NULL,
        response TEXT NOT NULL,
        score REAL NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (prompt_hash, example_id, model, params_hash)
    );
    CREATE TABLE IF NOT EXISTS apo_rewrite_cache (
        request_hash TEXT NOT NULL,
        model TEXT NOT NULL,
        params_hash TEXT NOT NULL,
        response TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (request_hash, model, params_hash)
    );
    CREATE TABLE IF NOT EXISTS llm_call_ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        role TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        outcome TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        created_unix_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS llm_call_ledger_run ON llm_call_ledger (run_id);
    "#,
    r#"
    CREATE TABLE IF NOT EXISTS apo_eval_feedback (
        prompt_hash TEXT NOT NULL,
        example_id TEXT NOT NULL,
        model TEXT NOT NULL,
        params_hash TEXT NOT NULL,
        feedback TEXT NOT NULL,
        PRIMARY KEY (prompt_hash, example_id, model, params_hash)
    );
    "#,
];
