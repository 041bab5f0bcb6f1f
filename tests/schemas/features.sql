-- Every feature the Resource format can express, plus a few objects it cannot (a view, a trigger with its
-- function, a row-level security policy), for the import round-trip tests (tests/test_import.py).
-- Hand-written. Table names are unqualified, so the file loads into whatever schema is first on search_path
-- (public, or a tenant schema); what is shared by every copy (the billing schema, the enum type) is created
-- once, qualified, and referenced qualified.

CREATE SCHEMA IF NOT EXISTS billing;
CREATE TABLE IF NOT EXISTS billing.currencies (code char(3) PRIMARY KEY, name text NOT NULL);
DO $$ BEGIN
    CREATE TYPE public.mood AS ENUM ('calm', 'busy');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    handle varchar(40),
    status text NOT NULL DEFAULT 'active',
    note text DEFAULT 'it''s new',
    score integer DEFAULT 0,
    balance integer NOT NULL DEFAULT -1,
    ratio numeric(5,2) DEFAULT 1.5,
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    mood public.mood DEFAULT 'calm',
    tags text[] NOT NULL DEFAULT '{}',
    currency char(3) REFERENCES billing.currencies (code) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT accounts_email_key UNIQUE (email) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT score_non_negative CHECK (score >= 0)
);
CREATE UNIQUE INDEX accounts_lower_handle_index ON accounts (lower(handle));
CREATE UNIQUE INDEX accounts_unique_handle_index ON accounts (handle) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX accounts_status_score_idx ON accounts (status, score) WHERE active;
CREATE INDEX accounts_created_at_index ON accounts (created_at DESC);
CREATE INDEX accounts_handle_like ON accounts (handle varchar_pattern_ops);
CREATE INDEX accounts_tags_index ON accounts USING gin (tags);
CREATE INDEX accounts_status_index ON accounts (status) INCLUDE (score) WHERE NOT active;
CREATE INDEX accounts_email_hash ON accounts USING hash (email);

CREATE TABLE posts (
    id serial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    title varchar(200) NOT NULL,
    body text,
    published_at timestamp,
    UNIQUE (account_id, title) DEFERRABLE,
    CONSTRAINT posts_id_account_id_key UNIQUE (id, account_id),
    CONSTRAINT title_not_empty CHECK (length(title) > 0)
);
CREATE INDEX posts_account_id_index ON posts (account_id);
CREATE INDEX posts_recent ON posts (published_at DESC NULLS LAST, (lower(title)) text_pattern_ops);

CREATE TABLE comments (
    post_id integer NOT NULL,
    n integer NOT NULL,
    author_id bigint,
    reply_to integer,
    body text NOT NULL,
    PRIMARY KEY (post_id, n),
    CONSTRAINT comments_post_fkey FOREIGN KEY (post_id, author_id) REFERENCES posts (id, account_id)
        ON DELETE SET NULL (author_id) DEFERRABLE INITIALLY IMMEDIATE,
    FOREIGN KEY (post_id, reply_to) REFERENCES comments (post_id, n) MATCH FULL ON UPDATE CASCADE
);
CREATE INDEX comments_post_id_author_id_index ON comments (post_id, author_id);

CREATE TABLE events (
    id bigserial PRIMARY KEY,
    account_id bigint REFERENCES accounts (id) DEFERRABLE INITIALLY DEFERRED,
    payload jsonb NOT NULL DEFAULT '{}',
    kind smallint DEFAULT 3,
    happened_on date NOT NULL DEFAULT CURRENT_DATE
);
CREATE INDEX events_happened_on_index ON events USING brin (happened_on);

-- What the format cannot express: listed by the import, never dropped silently.
CREATE VIEW active_accounts AS SELECT id, email FROM accounts WHERE active;
CREATE FUNCTION touch_post() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.published_at := coalesce(NEW.published_at, now());
    RETURN NEW;
END $$;
CREATE TRIGGER posts_touch BEFORE INSERT ON posts FOR EACH ROW EXECUTE FUNCTION touch_post();
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY accounts_own ON accounts USING (email = current_user);
