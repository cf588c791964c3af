"""Versioned SQL migrations, applied in file-name order by the pre-start step."""
