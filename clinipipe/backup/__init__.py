"""WORM backups and the tamper-evident audit trail.

* `audit`: the hash-chained audit log in the warehouse (`_clinipipe.audit_log`) and the
  `append` call every state-changing command makes.
* `store` / `s3`: where backups live (a local directory, or S3 with Object Lock), write-once.
* `manifest`: one manifest per backup, chained by the previous manifest's hash.
* `service`: create, list, restore, prune, delete, legal holds (and `REQUESTS`, the same for
  the control socket of a running `cdc start`).
* `verify`: check the store and the chain, against the audit log, naming every problem.

The warehouse side is the target's `Backup` capability
(`clinipipe.targets.capabilities.backup`): consistent snapshots to Parquet and restores, or the
warehouse's native backups (`backs_up_natively`). Nothing here knows a dialect.
"""
