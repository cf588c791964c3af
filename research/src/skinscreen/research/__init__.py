"""The papers' experiments, apart from production: no service installs this package."""
