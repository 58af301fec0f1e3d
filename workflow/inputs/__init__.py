"""What comes in: source listing and reading (`sources`), per-image work (`imaging`)."""
