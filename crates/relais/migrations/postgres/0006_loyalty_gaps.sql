-- Loyalty gaps (issue 5): the scheduled job releases reward reservations
-- nobody confirmed within their reward's hold. It looks for reservations
-- older than a day (the shortest hold) at every run: this partial index
-- holds only the reserved ones, so the hourly look-up stays small however
-- many redemptions were confirmed or cancelled. (Campaign segments and a
-- reward's hold_days live in their JSON definitions; tier e-mails use the
-- outbox.) On Citus, loyalty_redemptions is distributed by customer_id and
-- the look-up is a multi-shard query, once an hour.
CREATE INDEX loyalty_redemptions_reserved ON loyalty_redemptions (created_at) WHERE status = 'reserved';
