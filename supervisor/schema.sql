-- Desired state of the gateway. A row in `deployments` means "keep this model
-- version served"; the gateway replays every row at boot. `backends` holds the
-- port of each running replica; UNIQUE(port) makes a double allocation
-- impossible even across processes sharing this file.
PRAGMA foreign_keys = ON;

CREATE TABLE IF NOT EXISTS deployments (
    key          TEXT PRIMARY KEY,            -- "{model_name}-{version}"
    model_name   TEXT NOT NULL,
    version      TEXT NOT NULL,
    run_uuid     TEXT,
    env_manager  TEXT NOT NULL DEFAULT 'local',
    options      TEXT NOT NULL DEFAULT '{}',  -- JSON: launch and routing options
    created_at   REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS backends (
    key      TEXT NOT NULL REFERENCES deployments(key) ON DELETE CASCADE,
    replica  INTEGER NOT NULL DEFAULT 0,
    port     INTEGER NOT NULL UNIQUE,
    pid      INTEGER,                         -- last child started, for orphan clean-up at boot
    PRIMARY KEY (key, replica)
);
