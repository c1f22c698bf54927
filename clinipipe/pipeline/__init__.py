"""The pipeline's jobs: deploy, backfill, CDC apply, dynamic-table refresh, publish."""
