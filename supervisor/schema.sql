-- Desired state of the gateway. A row in `deployments` means "keep this model
-- version served"; the gateway replays every row at boot. `backends` holds one
-- row per replica: where it was last started, for re-attaching or sweeping it
-- at boot. `port` is the local placement's reservation (NULL for a placement
-- that reserves no local port); UNIQUE(port) makes a double allocation
-- impossible even across processes sharing this file.
-- StateStore.open migrates files written by earlier versions.
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
    key       TEXT NOT NULL REFERENCES deployments(key) ON DELETE CASCADE,
    replica   INTEGER NOT NULL DEFAULT 0,
    port      INTEGER UNIQUE,                 -- reserved local port
    pid       INTEGER,                        -- last local child, for orphan clean-up at boot
    ref       TEXT,                           -- the placement's handle to re-attach to it
    node      TEXT,                           -- where it last ran
    endpoint  TEXT,                           -- the URL it last listened on
    PRIMARY KEY (key, replica)
);

-- Weighted splits between versions of one model (`PUT /route/{name}`): the
-- route as JSON (versions and weights, shadow, sticky header), by model name.
CREATE TABLE IF NOT EXISTS routes (
    name   TEXT PRIMARY KEY,
    route  TEXT NOT NULL
);
