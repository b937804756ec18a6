-- The DDL pyworkflow-engine 0.2.3 runs on a new store: every CREATE TABLE / CREATE INDEX
-- statement of pyworkflow/storage/mysql.py (ensure_schema_versions_table, _initialize_schema), verbatim and
-- in source order, extracted from the wheel pyworkflow_engine-0.2.3-py3-none-any.whl on PyPI
-- by tests/sql/old_schemas/extract.py. Statements are separated by ';' at the end of a line.

-- ensure_schema_versions_table, line 45
CREATE TABLE IF NOT EXISTS schema_versions (
    version INT PRIMARY KEY,
    applied_at DATETIME(6) NOT NULL,
    description TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- _initialize_schema, line 235
CREATE TABLE IF NOT EXISTS workflow_runs (
    run_id VARCHAR(255) PRIMARY KEY,
    workflow_name VARCHAR(255) NOT NULL,
    status VARCHAR(50) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    started_at DATETIME(6),
    completed_at DATETIME(6),
    input_args LONGTEXT NOT NULL DEFAULT '[]',
    input_kwargs LONGTEXT NOT NULL DEFAULT '{}',
    result LONGTEXT,
    error LONGTEXT,
    idempotency_key VARCHAR(255),
    max_duration VARCHAR(255),
    metadata LONGTEXT DEFAULT '{}',
    recovery_attempts INT DEFAULT 0,
    max_recovery_attempts INT DEFAULT 3,
    recover_on_worker_loss BOOLEAN DEFAULT TRUE,
    parent_run_id VARCHAR(255),
    nesting_depth INT DEFAULT 0,
    continued_from_run_id VARCHAR(255),
    continued_to_run_id VARCHAR(255),
    INDEX idx_runs_status (status),
    INDEX idx_runs_workflow_name (workflow_name),
    INDEX idx_runs_created_at (created_at DESC),
    UNIQUE INDEX idx_runs_idempotency_key (idempotency_key),
    INDEX idx_runs_parent_run_id (parent_run_id),
    FOREIGN KEY (parent_run_id) REFERENCES workflow_runs(run_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- _initialize_schema, line 268
CREATE TABLE IF NOT EXISTS events (
    event_id VARCHAR(255) PRIMARY KEY,
    run_id VARCHAR(255) NOT NULL,
    sequence INT NOT NULL,
    type VARCHAR(100) NOT NULL,
    timestamp DATETIME(6) NOT NULL,
    data LONGTEXT NOT NULL DEFAULT '{}',
    step_id VARCHAR(255),
    INDEX idx_events_run_id_sequence (run_id, sequence),
    INDEX idx_events_run_id_type (run_id, type),
    INDEX idx_events_run_id_step_id_type (run_id, step_id, type),
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- _initialize_schema, line 285
CREATE TABLE IF NOT EXISTS steps (
    step_id VARCHAR(255) PRIMARY KEY,
    run_id VARCHAR(255) NOT NULL,
    step_name VARCHAR(255) NOT NULL,
    status VARCHAR(50) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    started_at DATETIME(6),
    completed_at DATETIME(6),
    input_args LONGTEXT NOT NULL DEFAULT '[]',
    input_kwargs LONGTEXT NOT NULL DEFAULT '{}',
    result LONGTEXT,
    error LONGTEXT,
    retry_count INT DEFAULT 0,
    INDEX idx_steps_run_id (run_id),
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- _initialize_schema, line 305
CREATE TABLE IF NOT EXISTS hooks (
    run_id VARCHAR(255) NOT NULL,
    hook_id VARCHAR(255) NOT NULL,
    token VARCHAR(255) UNIQUE NOT NULL,
    created_at DATETIME(6) NOT NULL,
    received_at DATETIME(6),
    expires_at DATETIME(6),
    status VARCHAR(50) NOT NULL,
    payload LONGTEXT,
    metadata LONGTEXT DEFAULT '{}',
    PRIMARY KEY (run_id, hook_id),
    UNIQUE INDEX idx_hooks_token (token),
    INDEX idx_hooks_run_id (run_id),
    INDEX idx_hooks_status (status),
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- _initialize_schema, line 325
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id VARCHAR(255) PRIMARY KEY,
    workflow_name VARCHAR(255) NOT NULL,
    spec LONGTEXT NOT NULL,
    spec_type VARCHAR(50) NOT NULL,
    timezone VARCHAR(100),
    input_args LONGTEXT NOT NULL DEFAULT '[]',
    input_kwargs LONGTEXT NOT NULL DEFAULT '{}',
    status VARCHAR(50) NOT NULL,
    overlap_policy VARCHAR(50) NOT NULL,
    next_run_time DATETIME(6),
    last_run_time DATETIME(6),
    running_run_ids LONGTEXT DEFAULT '[]',
    metadata LONGTEXT DEFAULT '{}',
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    paused_at DATETIME(6),
    deleted_at DATETIME(6),
    INDEX idx_schedules_status (status),
    INDEX idx_schedules_next_run_time (next_run_time),
    INDEX idx_schedules_workflow_name (workflow_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- _initialize_schema, line 351
CREATE TABLE IF NOT EXISTS cancellation_flags (
    run_id VARCHAR(255) PRIMARY KEY,
    created_at DATETIME(6) NOT NULL,
    FOREIGN KEY (run_id) REFERENCES workflow_runs(run_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- _initialize_schema, line 360
CREATE TABLE IF NOT EXISTS checkpoints (
    step_run_id VARCHAR(255) PRIMARY KEY,
    data LONGTEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
