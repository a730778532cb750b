"""The dashboard's four views and the training panel: widgets that show what the services return."""
