"""seqio Task and Mixture registrations; importing `tasks` registers them (they arrive with the data pipeline)."""
