-- The DDL pyworkflow-engine 0.3.2 runs on a new store: every CREATE TABLE / CREATE INDEX
-- statement of pyworkflow/storage/sqlite.py (ensure_schema_versions_table, _initialize_schema), verbatim and
-- in source order, extracted from the wheel pyworkflow_engine-0.3.2-py3-none-any.whl on PyPI
-- by tests/sql/old_schemas/extract.py. Statements are separated by ';' at the end of a line.

-- ensure_schema_versions_table, line 44
CREATE TABLE IF NOT EXISTS schema_versions (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP NOT NULL,
    description TEXT
);

-- _initialize_schema, line 217
CREATE TABLE IF NOT EXISTS workflow_runs (
    run_id TEXT PRIMARY KEY,
    workflow_name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    input_args TEXT NOT NULL DEFAULT '[]',
    input_kwargs TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    idempotency_key TEXT,
    max_duration TEXT,
    metadata TEXT DEFAULT '{}',
    recovery_attempts INTEGER DEFAULT 0,
    max_recovery_attempts INTEGER DEFAULT 3,
    recover_on_worker_loss INTEGER DEFAULT 1,
    parent_run_id TEXT,
    nesting_depth INTEGER DEFAULT 0,
    continued_from_run_id TEXT,
    continued_to_run_id TEXT,
    FOREIGN KEY (parent_run_id) REFERENCES workflow_runs(run_id)
);

-- _initialize_schema, line 245
CREATE INDEX IF NOT EXISTS idx_runs_status ON workflow_runs(status);

-- _initialize_schema, line 247
CREATE INDEX IF NOT EXISTS idx_runs_workflow_name ON workflow_runs(workflow_name);

-- _initialize_schema, line 250
CREATE INDEX IF NOT EXISTS idx_runs_created_at ON workflow_runs(created_at DESC);

-- _initialize_schema, line 253
CREATE UNIQUE INDEX IF NOT EXISTS idx_runs_idempotency_key ON workflow_runs(idempotency_key) WHERE idempotency_key IS NOT NULL;

-- _initialize_schema, line 256
CREATE INDEX IF NOT EXISTS idx_runs_parent_run_id ON workflow_runs(parent_run_id);

-- _initialize_schema, line 260
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    type TEXT NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    step_id TEXT,
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
);

-- _initialize_schema, line 275
CREATE INDEX IF NOT EXISTS idx_events_run_id_sequence ON events(run_id, sequence);

-- _initialize_schema, line 279
CREATE INDEX IF NOT EXISTS idx_events_run_id_type ON events(run_id, type);

-- _initialize_schema, line 283
CREATE INDEX IF NOT EXISTS idx_events_run_id_step_id_type ON events(run_id, step_id, type);

-- _initialize_schema, line 287
CREATE TABLE IF NOT EXISTS steps (
    step_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    input_args TEXT NOT NULL DEFAULT '[]',
    input_kwargs TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    retry_count INTEGER DEFAULT 0,
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
);

-- _initialize_schema, line 306
CREATE INDEX IF NOT EXISTS idx_steps_run_id ON steps(run_id);

-- _initialize_schema, line 309
CREATE TABLE IF NOT EXISTS hooks (
    run_id TEXT NOT NULL,
    hook_id TEXT NOT NULL,
    token TEXT UNIQUE NOT NULL,
    created_at TIMESTAMP NOT NULL,
    received_at TIMESTAMP,
    expires_at TIMESTAMP,
    status TEXT NOT NULL,
    payload TEXT,
    metadata TEXT DEFAULT '{}',
    PRIMARY KEY (run_id, hook_id),
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
);

-- _initialize_schema, line 326
CREATE UNIQUE INDEX IF NOT EXISTS idx_hooks_token ON hooks(token);

-- _initialize_schema, line 327
CREATE INDEX IF NOT EXISTS idx_hooks_run_id ON hooks(run_id);

-- _initialize_schema, line 328
CREATE INDEX IF NOT EXISTS idx_hooks_status ON hooks(status);

-- _initialize_schema, line 331
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id TEXT PRIMARY KEY,
    workflow_name TEXT NOT NULL,
    spec TEXT NOT NULL,
    spec_type TEXT NOT NULL,
    timezone TEXT,
    input_args TEXT NOT NULL DEFAULT '[]',
    input_kwargs TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    overlap_policy TEXT NOT NULL,
    next_run_time TIMESTAMP,
    last_run_time TIMESTAMP,
    running_run_ids TEXT DEFAULT '[]',
    metadata TEXT DEFAULT '{}',
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    paused_at TIMESTAMP,
    deleted_at TIMESTAMP
);

-- _initialize_schema, line 354
CREATE INDEX IF NOT EXISTS idx_schedules_status ON schedules(status);

-- _initialize_schema, line 356
CREATE INDEX IF NOT EXISTS idx_schedules_next_run_time ON schedules(next_run_time);

-- _initialize_schema, line 359
CREATE INDEX IF NOT EXISTS idx_schedules_workflow_name ON schedules(workflow_name);

-- _initialize_schema, line 363
CREATE TABLE IF NOT EXISTS cancellation_flags (
    run_id TEXT PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
);

-- _initialize_schema, line 372
CREATE TABLE IF NOT EXISTS checkpoints (
    step_run_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- _initialize_schema, line 382
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TIMESTAMP NOT NULL,
    metadata TEXT DEFAULT '{}'
);

-- _initialize_schema, line 392
CREATE TABLE IF NOT EXISTS signals (
    stream_run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    signal_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    signal_type TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    published_at TIMESTAMP NOT NULL,
    source_run_id TEXT,
    metadata TEXT DEFAULT '{}',
    PRIMARY KEY (stream_id, stream_run_id, sequence)
    /* stream_id is not FK-constrained — streams are code-defined */
);

-- _initialize_schema, line 408
CREATE UNIQUE INDEX IF NOT EXISTS idx_signals_signal_id ON signals(signal_id);

-- _initialize_schema, line 412
CREATE TABLE IF NOT EXISTS stream_subscriptions (
    stream_id TEXT NOT NULL,
    step_run_id TEXT NOT NULL,
    signal_types TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'waiting',
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (stream_id, step_run_id)
    /* stream_id is not FK-constrained — streams are code-defined */
);

-- _initialize_schema, line 424
CREATE INDEX IF NOT EXISTS idx_subscriptions_status ON stream_subscriptions(stream_id, status);

-- _initialize_schema, line 428
CREATE TABLE IF NOT EXISTS signal_acknowledgments (
    signal_id TEXT NOT NULL,
    step_run_id TEXT NOT NULL,
    acknowledged_at TIMESTAMP NOT NULL,
    PRIMARY KEY (signal_id, step_run_id)
);
