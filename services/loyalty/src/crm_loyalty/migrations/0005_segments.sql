-- Value segments. RFM facts come from the orders, so an order needs its currency.
ALTER TABLE orders ADD COLUMN currency text;
CREATE INDEX orders_by_account ON orders (profile_id);

-- The cut points (20th, 40th, 60th, 80th percentiles) of the last full recompute.
CREATE TABLE rfm_cuts (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),
    recency     float8[]    NOT NULL,  -- epoch seconds of the last order
    frequency   float8[]    NOT NULL,  -- orders in the window
    monetary    float8[]    NOT NULL,  -- net spend in the program's currency in the window
    computed_at timestamptz NOT NULL,
    customers   integer     NOT NULL
);

CREATE TABLE rfm_scores (
    profile_id text        PRIMARY KEY,
    recency    smallint    NOT NULL,
    frequency  smallint    NOT NULL,
    monetary   smallint    NOT NULL,
    segment    text        NOT NULL,
    scored_at  timestamptz NOT NULL
);
CREATE INDEX rfm_scores_by_segment ON rfm_scores (segment, profile_id);

-- Members of the program file's rule segments: their last matching touchpoint.
CREATE TABLE rule_segment_members (
    segment    text        NOT NULL,
    profile_id text        NOT NULL,
    last_at    timestamptz NOT NULL,
    since      timestamptz NOT NULL,
    PRIMARY KEY (segment, profile_id)
);
CREATE INDEX rule_segment_members_by_profile ON rule_segment_members (profile_id);
