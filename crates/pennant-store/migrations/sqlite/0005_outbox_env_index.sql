-- An environment's data version (its newest outbox row) names its SDK payload in the shared payload cache, so
-- streaming nodes look it up per environment.
CREATE INDEX outbox_env ON outbox (project_key, env_key, id);
