-- Feature flags (canonical flagd JSON), target groups, and the audit log of their changes.

CREATE TABLE flags (
    flag_key TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    revision BIGINT NOT NULL CHECK (revision > 0),
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    update_actor TEXT NOT NULL
);

CREATE TABLE target_groups (
    name TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    revision BIGINT NOT NULL CHECK (revision > 0),
    updated_at DOUBLE PRECISION NOT NULL,
    update_actor TEXT NOT NULL
);

-- Append-only; `sequence` is taken as max + 1 in the writing transaction, so two writers
-- racing for one number collide on the primary key and one retries.
CREATE TABLE flag_audit (
    sequence BIGINT PRIMARY KEY,
    subject TEXT NOT NULL,
    change_type TEXT NOT NULL CHECK (change_type IN ('CREATED', 'UPDATED', 'DELETED')),
    actor TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    before_json TEXT NOT NULL,
    after_json TEXT NOT NULL,
    comment TEXT NOT NULL,
    -- JSON list of the flags a target group change recompiled (empty for flag changes).
    affected_flags TEXT NOT NULL
);
CREATE INDEX flag_audit_by_subject ON flag_audit (subject, sequence);
