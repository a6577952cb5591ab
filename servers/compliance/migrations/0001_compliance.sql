-- The compliance service's store: assessments and their results, the evidence chain and its
-- signed heads, remediation tasks, alerts and their notification deliveries. Times are
-- microseconds since the epoch (BIGINT); JSON documents are TEXT.

CREATE TABLE assessments (
    assessment_id TEXT PRIMARY KEY,
    frameworks TEXT NOT NULL,
    state INTEGER NOT NULL,
    start_us BIGINT NOT NULL,
    finish_us BIGINT,
    error TEXT NOT NULL DEFAULT '',
    started_by TEXT NOT NULL DEFAULT '',
    evidence_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX assessments_newest ON assessments (start_us DESC, assessment_id);

CREATE TABLE control_results (
    assessment_id TEXT NOT NULL,
    control_id TEXT NOT NULL,
    framework INTEGER NOT NULL,
    status INTEGER NOT NULL,
    summary TEXT NOT NULL,
    evidence_ids TEXT NOT NULL,
    evaluate_us BIGINT NOT NULL,
    remediation_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (assessment_id, control_id)
);

-- The latest result of each control (a copy of its newest control_results row).
CREATE TABLE latest_results (
    control_id TEXT PRIMARY KEY,
    assessment_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    finish_us BIGINT NOT NULL
);

CREATE TABLE framework_scores (
    assessment_id TEXT NOT NULL,
    framework INTEGER NOT NULL,
    score TEXT NOT NULL,
    assess_us BIGINT NOT NULL,
    PRIMARY KEY (assessment_id, framework)
);
CREATE INDEX framework_scores_history ON framework_scores (framework, assess_us DESC);

-- Append-only evidence, chained by sequence (see evidence/domain.py).
CREATE TABLE evidence (
    sequence BIGINT PRIMARY KEY,
    evidence_id TEXT NOT NULL UNIQUE,
    assessment_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    target TEXT NOT NULL,
    passed BOOLEAN NOT NULL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL,
    collect_time TEXT NOT NULL,
    collect_us BIGINT NOT NULL,
    probe_us BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    previous_chain_sha256 TEXT NOT NULL,
    chain_sha256 TEXT NOT NULL
);
CREATE INDEX evidence_assessment ON evidence (assessment_id, sequence);

CREATE TABLE evidence_heads (
    sequence BIGINT PRIMARY KEY,
    chain_sha256 TEXT NOT NULL,
    sign_us BIGINT NOT NULL,
    signature TEXT NOT NULL,
    public_key TEXT NOT NULL
);

-- Each purge of evidence past its retention: the chain restarts verification from its anchor.
CREATE TABLE evidence_purges (
    purge_id TEXT PRIMARY KEY,
    purge_us BIGINT NOT NULL,
    through_sequence BIGINT NOT NULL,
    anchor_chain_sha256 TEXT NOT NULL,
    records BIGINT NOT NULL,
    older_than_us BIGINT NOT NULL
);

CREATE TABLE remediations (
    remediation_id TEXT PRIMARY KEY,
    control_id TEXT NOT NULL,
    framework INTEGER NOT NULL,
    state INTEGER NOT NULL,
    title TEXT NOT NULL,
    detail TEXT NOT NULL,
    opened_by_assessment_id TEXT NOT NULL,
    last_assessment_id TEXT NOT NULL,
    assignee TEXT NOT NULL DEFAULT '',
    due_us BIGINT,
    create_us BIGINT NOT NULL,
    update_us BIGINT NOT NULL,
    resolve_us BIGINT,
    severity INTEGER NOT NULL,
    notes TEXT NOT NULL DEFAULT '[]',
    version BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX remediations_control ON remediations (control_id, state);

CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    category TEXT NOT NULL,
    severity INTEGER NOT NULL,
    state INTEGER NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    subject TEXT NOT NULL,
    source_address TEXT NOT NULL,
    attributes TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_us BIGINT NOT NULL,
    last_us BIGINT NOT NULL,
    dedup_key TEXT NOT NULL,
    acknowledge_us BIGINT,
    acknowledged_by TEXT NOT NULL DEFAULT '',
    acknowledgement_note TEXT NOT NULL DEFAULT '',
    escalation_level INTEGER NOT NULL DEFAULT 0,
    escalate_us BIGINT,
    deadline_us BIGINT,
    notify_us BIGINT,
    authority TEXT NOT NULL DEFAULT '',
    authority_reference TEXT NOT NULL DEFAULT '',
    breach_stage INTEGER NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX alerts_recent ON alerts (last_us DESC, alert_id);
CREATE INDEX alerts_fold ON alerts (source, dedup_key, state);

-- Notifications to deliver (outbox) and every delivery attempt made.
CREATE TABLE notifications (
    notification_id TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_us BIGINT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX notifications_due ON notifications (done, next_us);

CREATE TABLE notification_attempts (
    attempt_id TEXT PRIMARY KEY,
    notification_id TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    delivered BOOLEAN NOT NULL,
    status_code INTEGER NOT NULL,
    error TEXT NOT NULL,
    attempt_us BIGINT NOT NULL
);
CREATE INDEX notification_attempts_recent ON notification_attempts (attempt_us DESC, attempt_id);
