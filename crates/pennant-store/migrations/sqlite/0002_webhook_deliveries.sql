-- Webhook delivery attempts: when each attempt was made, a guard against enqueuing an attempt twice, and an
-- index for listing a webhook's attempts newest first.
ALTER TABLE webhook_deliveries ADD COLUMN attempted_at INTEGER;
CREATE UNIQUE INDEX webhook_deliveries_attempt ON webhook_deliveries (webhook_id, changelog_id, attempt);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
