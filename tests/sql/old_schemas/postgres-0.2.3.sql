-- The DDL pyworkflow-engine 0.2.3 runs on a new store: every CREATE TABLE / CREATE INDEX
-- statement of pyworkflow/storage/postgres.py (ensure_schema_versions_table, _initialize_schema), verbatim and
-- in source order, extracted from the wheel pyworkflow_engine-0.2.3-py3-none-any.whl on PyPI
-- by tests/sql/old_schemas/extract.py. Statements are separated by ';' at the end of a line.

-- ensure_schema_versions_table, line 52
CREATE TABLE IF NOT EXISTS schema_versions (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL,
    description TEXT
);

-- _initialize_schema, line 284
CREATE TABLE IF NOT EXISTS workflow_runs (
    run_id TEXT PRIMARY KEY,
    workflow_name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    input_args TEXT NOT NULL DEFAULT '[]',
    input_kwargs TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    idempotency_key TEXT,
    max_duration TEXT,
    metadata TEXT DEFAULT '{}',
    recovery_attempts INTEGER DEFAULT 0,
    max_recovery_attempts INTEGER DEFAULT 3,
    recover_on_worker_loss BOOLEAN DEFAULT TRUE,
    parent_run_id TEXT REFERENCES workflow_runs(run_id),
    nesting_depth INTEGER DEFAULT 0,
    continued_from_run_id TEXT,
    continued_to_run_id TEXT
);

-- _initialize_schema, line 312
CREATE INDEX IF NOT EXISTS idx_runs_status ON workflow_runs(status);

-- _initialize_schema, line 315
CREATE INDEX IF NOT EXISTS idx_runs_workflow_name ON workflow_runs(workflow_name);

-- _initialize_schema, line 318
CREATE INDEX IF NOT EXISTS idx_runs_created_at ON workflow_runs(created_at DESC);

-- _initialize_schema, line 321
CREATE UNIQUE INDEX IF NOT EXISTS idx_runs_idempotency_key ON workflow_runs(idempotency_key) WHERE idempotency_key IS NOT NULL;

-- _initialize_schema, line 324
CREATE INDEX IF NOT EXISTS idx_runs_parent_run_id ON workflow_runs(parent_run_id);

-- _initialize_schema, line 328
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES workflow_runs(run_id) ON DELETE CASCADE,
    sequence INTEGER NOT NULL,
    type TEXT NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    step_id TEXT
);

-- _initialize_schema, line 342
CREATE INDEX IF NOT EXISTS idx_events_run_id_sequence ON events(run_id, sequence);

-- _initialize_schema, line 346
CREATE INDEX IF NOT EXISTS idx_events_run_id_type ON events(run_id, type);

-- _initialize_schema, line 350
CREATE INDEX IF NOT EXISTS idx_events_run_id_step_id_type ON events(run_id, step_id, type);

-- _initialize_schema, line 354
CREATE TABLE IF NOT EXISTS steps (
    step_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES workflow_runs(run_id) ON DELETE CASCADE,
    step_name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    input_args TEXT NOT NULL DEFAULT '[]',
    input_kwargs TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    retry_count INTEGER DEFAULT 0
);

-- _initialize_schema, line 372
CREATE INDEX IF NOT EXISTS idx_steps_run_id ON steps(run_id);

-- _initialize_schema, line 375
CREATE TABLE IF NOT EXISTS hooks (
    run_id TEXT NOT NULL REFERENCES workflow_runs(run_id) ON DELETE CASCADE,
    hook_id TEXT NOT NULL,
    token TEXT UNIQUE NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    status TEXT NOT NULL,
    payload TEXT,
    metadata TEXT DEFAULT '{}',
    PRIMARY KEY (run_id, hook_id)
);

-- _initialize_schema, line 391
CREATE UNIQUE INDEX IF NOT EXISTS idx_hooks_token ON hooks(token);

-- _initialize_schema, line 392
CREATE INDEX IF NOT EXISTS idx_hooks_run_id ON hooks(run_id);

-- _initialize_schema, line 393
CREATE INDEX IF NOT EXISTS idx_hooks_status ON hooks(status);

-- _initialize_schema, line 396
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
    next_run_time TIMESTAMPTZ,
    last_run_time TIMESTAMPTZ,
    running_run_ids TEXT DEFAULT '[]',
    metadata TEXT DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    paused_at TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ
);

-- _initialize_schema, line 420
CREATE INDEX IF NOT EXISTS idx_schedules_status ON schedules(status);

-- _initialize_schema, line 423
CREATE INDEX IF NOT EXISTS idx_schedules_next_run_time ON schedules(next_run_time);

-- _initialize_schema, line 426
CREATE INDEX IF NOT EXISTS idx_schedules_workflow_name ON schedules(workflow_name);

-- _initialize_schema, line 430
CREATE TABLE IF NOT EXISTS cancellation_flags (
    run_id TEXT PRIMARY KEY REFERENCES workflow_runs(run_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL
);

-- _initialize_schema, line 438
CREATE TABLE IF NOT EXISTS checkpoints (
    step_run_id TEXT PRIMARY KEY,
    data JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
