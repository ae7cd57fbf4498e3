"""Stage 1, fetch: what is downloaded from where (the mirror rule), a resumable verified HTTP client,
and the safe extraction of the SMS archive."""
