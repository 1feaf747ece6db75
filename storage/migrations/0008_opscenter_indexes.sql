-- The operations center pages alerts, incidents and 12345 tickets newest
-- first with keyset cursors on (time DESC, id DESC). An index in exactly that
-- order serves a page and its `(time, id) < (cursor)` condition without a
-- sort: the (last_seen DESC, alert_id) index of 0001 has the id ascending,
-- so every page needed an incremental sort and the cursor could not bound the
-- scan. Alerts of one sensor (`subject=`) had no index at all.
CREATE INDEX IF NOT EXISTS alerts_last_seen_id ON alerts (last_seen DESC, alert_id DESC);
DROP INDEX IF EXISTS alerts_last_seen;
CREATE INDEX IF NOT EXISTS alerts_subject ON alerts (subject, last_seen DESC);
CREATE INDEX IF NOT EXISTS incidents_last_seen_id ON incidents (last_seen DESC, incident_id DESC);
DROP INDEX IF EXISTS incidents_last_seen;
CREATE INDEX IF NOT EXISTS hotline_tickets_updated ON hotline_tickets (updated DESC, ticket_id DESC);
