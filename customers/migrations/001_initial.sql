-- 001: the customer store's first schema.
--
-- Applied by customers/migrate.py inside one transaction, then PRAGMA user_version = 1.
-- Times are UTC epoch seconds (REAL). Customer ids are TEXT (generated time-ordered hex, or given);
-- every other table refers to customers(id).
-- No BEGIN/COMMIT here: the runner owns the transaction.

-- pk: a stable rowid for the FTS index (VACUUM may renumber implicit rowids); id: the public id.
CREATE TABLE customers (
    pk           INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    given_name   TEXT NOT NULL DEFAULT '',
    family_name  TEXT NOT NULL DEFAULT '',
    company      TEXT NOT NULL DEFAULT '',
    language     TEXT NOT NULL DEFAULT '',
    timezone     TEXT NOT NULL DEFAULT '',
    birthday     TEXT NOT NULL DEFAULT '',
    attributes   TEXT NOT NULL DEFAULT '{}',  -- JSON object
    source       TEXT NOT NULL DEFAULT '',
    import_key   TEXT,                        -- NewCustomer.key: re-imports update this profile
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    merged_into  TEXT REFERENCES customers(id)
);
CREATE UNIQUE INDEX customers_import_key ON customers(import_key) WHERE import_key IS NOT NULL;
CREATE INDEX customers_merged_into ON customers(merged_into) WHERE merged_into IS NOT NULL;

-- Identities are keyed by what a lookup knows: (kind, system, value). Clustered (WITHOUT ROWID)
-- on that key, so a caller-id lookup is one B-tree descent that reads every holder's row.
-- Several customers may hold one identity (shared = 1 when known to be shared).
CREATE TABLE identities (
    kind        TEXT NOT NULL,              -- phone, email, member, external, im
    system      TEXT NOT NULL DEFAULT '',   -- external system / IM network; '' otherwise
    value       TEXT NOT NULL,              -- E.164, lower-cased email, bare id
    customer_id TEXT NOT NULL REFERENCES customers(id),
    raw         TEXT NOT NULL DEFAULT '',
    label       TEXT NOT NULL DEFAULT '',
    extension   TEXT NOT NULL DEFAULT '',
    shared      INTEGER NOT NULL DEFAULT 0,
    verified    INTEGER NOT NULL DEFAULT 0,
    source      TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    PRIMARY KEY (kind, system, value, customer_id)
) WITHOUT ROWID;
CREATE INDEX identities_customer ON identities(customer_id);

-- The timeline: append-only (the triggers below refuse updates and deletes; a merge only moves
-- rows to the surviving customer). (source, external_id) makes feeds idempotent.
CREATE TABLE interactions (
    id          INTEGER PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    channel     TEXT NOT NULL,
    at          REAL NOT NULL,
    direction   TEXT NOT NULL DEFAULT '',
    summary     TEXT NOT NULL DEFAULT '',
    data        TEXT NOT NULL DEFAULT '{}',  -- JSON object
    source      TEXT NOT NULL DEFAULT '',
    external_id TEXT NOT NULL DEFAULT '',
    recorded_at REAL NOT NULL
);
-- The screen-pop path: the newest few per channel, one index seek per channel.
CREATE INDEX interactions_latest ON interactions(customer_id, channel, at DESC, id DESC);
-- The timeline across channels, the last contact of a lookup candidate.
CREATE INDEX interactions_customer_at ON interactions(customer_id, at DESC, id DESC);
CREATE UNIQUE INDEX interactions_idempotency ON interactions(source, external_id)
    WHERE external_id <> '';

CREATE TRIGGER interactions_append_only_delete BEFORE DELETE ON interactions
BEGIN
    SELECT RAISE(ABORT, 'interactions are append-only: no delete');
END;
CREATE TRIGGER interactions_append_only_update
BEFORE UPDATE OF id, channel, at, direction, summary, data, source, external_id, recorded_at
ON interactions
BEGIN
    SELECT RAISE(ABORT, 'interactions are append-only: only a merge moves them');
END;

CREATE TABLE notes (
    id          INTEGER PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    at          REAL NOT NULL,
    author      TEXT NOT NULL,
    text        TEXT NOT NULL,
    pinned      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX notes_customer ON notes(customer_id, pinned DESC, at DESC, id DESC);

-- Consent: per-channel permissions (absent = unknown), quiet hours, do-not-call entries.
CREATE TABLE channel_permissions (
    customer_id TEXT NOT NULL REFERENCES customers(id),
    channel     TEXT NOT NULL,
    allowed     INTEGER NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (customer_id, channel)
) WITHOUT ROWID;

CREATE TABLE quiet_hours (
    customer_id TEXT PRIMARY KEY REFERENCES customers(id),
    start_time  TEXT NOT NULL,   -- local HH:MM
    end_time    TEXT NOT NULL,
    updated_at  REAL NOT NULL
) WITHOUT ROWID;

-- scope 'customer': target is a customer id; scope 'number': an E.164 number, whoever holds it.
-- One entry per source (a customer request and the national registry both count).
CREATE TABLE do_not_call (
    scope   TEXT NOT NULL CHECK (scope IN ('customer', 'number')),
    target  TEXT NOT NULL,
    source  TEXT NOT NULL,
    at      REAL NOT NULL,
    until   REAL,
    reason  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (scope, target, source)
) WITHOUT ROWID;

-- Value and segments (written by customers/value.py and customers/segments.py).
CREATE TABLE customer_values (
    customer_id  TEXT PRIMARY KEY REFERENCES customers(id),
    score        REAL NOT NULL,
    recency_days REAL,
    frequency    INTEGER NOT NULL DEFAULT 0,
    monetary     REAL NOT NULL DEFAULT 0,
    source       TEXT NOT NULL DEFAULT 'rfm',
    explanation  TEXT NOT NULL DEFAULT '',
    computed_at  REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE segment_members (
    segment     TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    computed_at REAL NOT NULL,
    PRIMARY KEY (segment, customer_id)
) WITHOUT ROWID;
CREATE INDEX segment_members_customer ON segment_members(customer_id, segment);

-- What merges happened, for audit (the merged row keeps merged_into).
CREATE TABLE merges (
    id       INTEGER PRIMARY KEY,
    keep_id  TEXT NOT NULL REFERENCES customers(id),
    merge_id TEXT NOT NULL REFERENCES customers(id),
    at       REAL NOT NULL,
    actor    TEXT NOT NULL DEFAULT '',
    moved    TEXT NOT NULL DEFAULT '{}'  -- JSON: counts of identities, interactions, notes ...
);

-- Name search: FTS5 over the customers table (external content). The store inserts the rows of
-- new customers itself, in bulk after a batch: a per-row AFTER INSERT trigger costs 4x more
-- (measured: 12k against 51k rows/s). Updates and deletes are kept by the triggers below.
CREATE VIRTUAL TABLE customers_fts USING fts5(
    display_name, given_name, family_name, company,
    content = 'customers', content_rowid = 'pk',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER customers_fts_update
AFTER UPDATE OF display_name, given_name, family_name, company ON customers
WHEN old.display_name IS NOT new.display_name OR old.given_name IS NOT new.given_name
    OR old.family_name IS NOT new.family_name OR old.company IS NOT new.company
BEGIN
    INSERT INTO customers_fts(customers_fts, rowid, display_name, given_name, family_name, company)
    VALUES ('delete', old.pk, old.display_name, old.given_name, old.family_name, old.company);
    INSERT INTO customers_fts(rowid, display_name, given_name, family_name, company)
    VALUES (new.pk, new.display_name, new.given_name, new.family_name, new.company);
END;
CREATE TRIGGER customers_fts_delete AFTER DELETE ON customers
BEGIN
    INSERT INTO customers_fts(customers_fts, rowid, display_name, given_name, family_name, company)
    VALUES ('delete', old.pk, old.display_name, old.given_name, old.family_name, old.company);
END;
