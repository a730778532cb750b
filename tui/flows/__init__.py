"""What the dashboard's actions do, step by step: the gate (verify, promote, roll back) and training."""
