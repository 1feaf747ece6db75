-- Audit trail: alert actions, rules changes, emergency-mode switches, replay
-- runs. Append-only, one linear hash chain (storage/audit.py appends under an
-- advisory lock and verifies). The triggers make an accidental UPDATE or
-- DELETE fail; a deliberate one (an owner disabling the triggers) is what the
-- hash chain exists to expose.
CREATE TABLE IF NOT EXISTS audit_log (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    kind        text NOT NULL,
    subject     text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash   text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash        text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_log_subject ON audit_log (subject, seq);
CREATE INDEX IF NOT EXISTS audit_log_kind_at ON audit_log (kind, at);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
