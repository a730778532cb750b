"""What the CLI and the dashboard call: workspace, init, artifact registration, promotion and rollback, the gallery and read models. No torch."""
