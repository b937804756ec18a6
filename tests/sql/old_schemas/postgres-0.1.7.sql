-- The DDL pyworkflow-engine 0.1.7 runs on a new store: every CREATE TABLE / CREATE INDEX
-- statement of pyworkflow/storage/postgres.py (ensure_schema_versions_table, _initialize_schema), verbatim and
-- in source order, extracted from the wheel pyworkflow_engine-0.1.7-py3-none-any.whl on PyPI
-- by tests/sql/old_schemas/extract.py. Statements are separated by ';' at the end of a line.

-- _initialize_schema, line 113
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

-- _initialize_schema, line 141
CREATE INDEX IF NOT EXISTS idx_runs_status ON workflow_runs(status);

-- _initialize_schema, line 144
CREATE INDEX IF NOT EXISTS idx_runs_workflow_name ON workflow_runs(workflow_name);

-- _initialize_schema, line 147
CREATE INDEX IF NOT EXISTS idx_runs_created_at ON workflow_runs(created_at DESC);

-- _initialize_schema, line 150
CREATE UNIQUE INDEX IF NOT EXISTS idx_runs_idempotency_key ON workflow_runs(idempotency_key) WHERE idempotency_key IS NOT NULL;

-- _initialize_schema, line 153
CREATE INDEX IF NOT EXISTS idx_runs_parent_run_id ON workflow_runs(parent_run_id);

-- _initialize_schema, line 157
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES workflow_runs(run_id) ON DELETE CASCADE,
    sequence INTEGER NOT NULL,
    type TEXT NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);

-- _initialize_schema, line 170
CREATE INDEX IF NOT EXISTS idx_events_run_id_sequence ON events(run_id, sequence);

-- _initialize_schema, line 172
CREATE INDEX IF NOT EXISTS idx_events_type ON events(type);

-- _initialize_schema, line 175
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

-- _initialize_schema, line 193
CREATE INDEX IF NOT EXISTS idx_steps_run_id ON steps(run_id);

-- _initialize_schema, line 196
CREATE TABLE IF NOT EXISTS hooks (
    hook_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES workflow_runs(run_id) ON DELETE CASCADE,
    token TEXT UNIQUE NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    status TEXT NOT NULL,
    payload TEXT,
    metadata TEXT DEFAULT '{}'
);

-- _initialize_schema, line 211
CREATE UNIQUE INDEX IF NOT EXISTS idx_hooks_token ON hooks(token);

-- _initialize_schema, line 212
CREATE INDEX IF NOT EXISTS idx_hooks_run_id ON hooks(run_id);

-- _initialize_schema, line 213
CREATE INDEX IF NOT EXISTS idx_hooks_status ON hooks(status);

-- _initialize_schema, line 216
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

-- _initialize_schema, line 240
CREATE INDEX IF NOT EXISTS idx_schedules_status ON schedules(status);

-- _initialize_schema, line 243
CREATE INDEX IF NOT EXISTS idx_schedules_next_run_time ON schedules(next_run_time);

-- _initialize_schema, line 246
CREATE INDEX IF NOT EXISTS idx_schedules_workflow_name ON schedules(workflow_name);

-- _initialize_schema, line 250
CREATE TABLE IF NOT EXISTS cancellation_flags (
    run_id TEXT PRIMARY KEY REFERENCES workflow_runs(run_id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL
);
