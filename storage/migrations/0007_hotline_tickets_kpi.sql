-- What the hotline workflow (接诉即办) publishes: the latest state of every
-- ticket (city.hotline.tickets: routed departments, deadlines, first contact,
-- resolution, satisfaction, overdue) and the latest 三率 per scope and month
-- (city.kpi). The raw calls stay in hotline_events (replay reads those).
-- Plain tables in both flavours: one row per ticket / per scope and month,
-- the highest revision kept.
CREATE TABLE IF NOT EXISTS hotline_tickets (
    ticket_id         text PRIMARY KEY,
    revision          integer NOT NULL,
    change            text NOT NULL,
    category          text NOT NULL,
    urgency           text NOT NULL,
    status            text NOT NULL,
    district          text NOT NULL,
    street            text,
    grid              text,
    lat               double precision NOT NULL,
    lon               double precision NOT NULL,
    departments       text[] NOT NULL DEFAULT '{}',
    created           timestamptz NOT NULL,
    first_contact_by  timestamptz NOT NULL,
    resolve_by        timestamptz NOT NULL,
    responded_at      timestamptz,
    resolved_at       timestamptz,
    overdue           text[] NOT NULL DEFAULT '{}',
    satisfaction      smallint,
    mode              text NOT NULL,
    updated           timestamptz NOT NULL,
    payload           jsonb NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS hotline_tickets_created ON hotline_tickets (created DESC, ticket_id);
CREATE INDEX IF NOT EXISTS hotline_tickets_departments ON hotline_tickets USING gin (departments);

CREATE TABLE IF NOT EXISTS hotline_kpi (
    scope              text NOT NULL,
    period             text NOT NULL,
    revision           integer NOT NULL,
    response_rate      double precision,
    resolution_rate    double precision,
    satisfaction_rate  double precision,
    counts             jsonb NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, period)
);
